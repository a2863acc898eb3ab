use super::*;

const D: u32 = 1_000;
const R: u32 = 2_000;

fn heights() -> EscrowHeights {
    EscrowHeights::new(D, R, 100).unwrap()
}

fn instantiate(template: &str) -> Result<EscrowDescriptor, PolicyError> {
    PolicyTemplate::new(template)?.instantiate(
        &example_keys(Network::Regtest),
        heights(),
        Network::Regtest,
    )
}

const MULTI: &str = "thresh(2,pk({borrower}),pk({lender}),pk({arbiter}))";

#[test]
fn default_template_has_the_five_paths() {
    let escrow = PolicyTemplate::default()
        .instantiate(&example_keys(Network::Regtest), heights(), Network::Regtest)
        .unwrap();
    let text = escrow.to_string();
    assert!(text.starts_with("wsh(or_d(multi(2,"), "{text}");
    assert!(text.contains("or_i(and_v(v:pkh("), "{text}");
    assert!(text.contains('#'), "checksum: {text}");
    let summary: Vec<(PathName, Vec<Role>, Option<u32>)> = escrow
        .paths()
        .iter()
        .map(|p| (p.name, p.signers.clone(), p.after_height))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                PathName::Cooperative,
                vec![Role::Borrower, Role::Lender],
                None
            ),
            (
                PathName::ArbitratedRelease,
                vec![Role::Borrower, Role::Arbiter],
                None
            ),
            (
                PathName::Liquidation,
                vec![Role::Lender, Role::Arbiter],
                None
            ),
            (PathName::DefaultClaim, vec![Role::LenderDefault], Some(D)),
            (PathName::Recovery, vec![Role::BorrowerRecovery], Some(R)),
        ]
    );
    assert!(escrow.address().to_string().starts_with("bcrt1q"));
}

#[test]
fn descriptor_text_parses_back_with_the_same_roles() {
    let escrow = instantiate(DEFAULT_TEMPLATE).unwrap();
    let parsed = EscrowDescriptor::parse(&escrow.to_string(), Network::Regtest).unwrap();
    assert_eq!(parsed, escrow);
}

#[test]
fn single_key_path_is_refused() {
    let t = format!("or(pk({{borrower}}),{MULTI})");
    assert_eq!(
        instantiate(&t).unwrap_err(),
        PolicyError::SinglePartyBeforeDefault {
            party: Party::Borrower,
            height: 0,
            default_height: D
        }
    );
}

#[test]
fn arbiter_only_path_is_refused() {
    let t = format!("or(pk({{arbiter}}),{MULTI})");
    assert_eq!(instantiate(&t).unwrap_err(), PolicyError::ArbiterAlone);
    // Even behind a timelock.
    let t = format!("or({MULTI},and(pk({{arbiter}}),after({{recovery_height}})))");
    assert_eq!(instantiate(&t).unwrap_err(), PolicyError::ArbiterAlone);
}

#[test]
fn one_of_three_is_refused() {
    let t = "thresh(1,pk({borrower}),pk({lender}),pk({arbiter}))";
    assert_eq!(instantiate(t).unwrap_err(), PolicyError::ArbiterAlone);
    let t = "thresh(1,pk({borrower}),pk({lender}))";
    assert!(matches!(
        instantiate(t).unwrap_err(),
        PolicyError::SinglePartyBeforeDefault { .. }
    ));
}

#[test]
fn two_keys_of_one_party_count_as_one_party() {
    let t = format!("or({MULTI},and(pk({{borrower}}),pk({{borrower_recovery}})))");
    assert!(matches!(
        instantiate(&t).unwrap_err(),
        PolicyError::SinglePartyBeforeDefault {
            party: Party::Borrower,
            ..
        }
    ));
}

#[test]
fn lender_alone_before_default_is_refused() {
    let t = format!("or({MULTI},and(pk({{lender_default}}),after(500)))");
    assert_eq!(
        instantiate(&t).unwrap_err(),
        PolicyError::SinglePartyBeforeDefault {
            party: Party::Lender,
            height: 500,
            default_height: D
        }
    );
}

#[test]
fn borrower_alone_before_recovery_is_refused() {
    let t = format!("or({MULTI},and(pk({{borrower_recovery}}),after({{default_height}})))");
    assert_eq!(
        instantiate(&t).unwrap_err(),
        PolicyError::BorrowerAloneBeforeRecovery {
            height: D,
            recovery_height: R
        }
    );
}

#[test]
fn time_based_and_mixed_locks_are_refused() {
    let t = format!("or({MULTI},and(pk({{lender_default}}),after(1700000000)))");
    assert_eq!(instantiate(&t).unwrap_err(), PolicyError::TimeBasedLock);
    let t = format!(
        "or({MULTI},or(and(pk({{lender_default}}),after({{default_height}})),and(pk({{borrower_recovery}}),after(1700000000))))"
    );
    assert_eq!(instantiate(&t).unwrap_err(), PolicyError::MixedTimelocks);
    let t = format!("or({MULTI},and(pk({{lender_default}}),older(100)))");
    assert_eq!(instantiate(&t).unwrap_err(), PolicyError::RelativeTimelock);
}

#[test]
fn hash_locks_and_foreign_keys_are_refused() {
    let t = format!(
        "or({MULTI},and(pk({{lender_default}}),sha256(1111111111111111111111111111111111111111111111111111111111111111)))"
    );
    assert_eq!(instantiate(&t).unwrap_err(), PolicyError::HashLock);
    let foreign = "03a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd";
    let t = format!("or({MULTI},and(pk({foreign}),pk({{lender}})))");
    assert!(matches!(
        instantiate(&t).unwrap_err(),
        PolicyError::UnknownKey(_)
    ));
}

#[test]
fn heights_must_be_ordered_block_heights() {
    assert_eq!(
        EscrowHeights::new(D, D, 100).unwrap_err(),
        PolicyError::RecoveryNotAfterDefault {
            default: D,
            recovery: D
        }
    );
    assert_eq!(
        EscrowHeights::new(D, D - 1, 100).unwrap_err(),
        PolicyError::RecoveryNotAfterDefault {
            default: D,
            recovery: D - 1
        }
    );
    assert!(matches!(
        EscrowHeights::new(100, R, 100).unwrap_err(),
        PolicyError::DefaultNotAfterFunding { .. }
    ));
    assert!(matches!(
        EscrowHeights::new(D, 500_000_001, 100).unwrap_err(),
        PolicyError::NotAHeight { .. }
    ));
}

#[test]
fn unknown_placeholder_is_refused() {
    assert_eq!(
        PolicyTemplate::new("pk({treasurer})").unwrap_err(),
        PolicyError::UnknownPlaceholder("{treasurer}".into())
    );
}

#[test]
fn duplicate_party_keys_are_refused() {
    let mut keys = example_keys(Network::Regtest);
    keys.arbiter = keys.lender.clone();
    let err = PolicyTemplate::default()
        .instantiate(&keys, heights(), Network::Regtest)
        .unwrap_err();
    assert!(
        matches!(err, PolicyError::Key(KeyError::Duplicate { .. })),
        "{err}"
    );
}

#[test]
fn every_index_gives_a_new_address() {
    let mut keys = example_keys(Network::Regtest);
    let a = PolicyTemplate::default()
        .instantiate(&keys, heights(), Network::Regtest)
        .unwrap();
    keys.index = 1;
    let b = PolicyTemplate::default()
        .instantiate(&keys, heights(), Network::Regtest)
        .unwrap();
    assert_ne!(a.address(), b.address());
}

#[test]
fn compiled_with_stand_ins_equals_compiled_directly() {
    // The cache compiles with stand-in keys and heights; for several key sets and
    // heights (including heights equal to the stand-ins) the result must be what the
    // compiler gives for the real keys.
    for (seed, d, r) in [
        (0u32, 129, 128 + 2),
        (1, 128, 129),
        (2, 40_000, 9_000_000),
        (3, 17, 18),
    ] {
        let mut keys = example_keys(Network::Regtest);
        keys.index = seed;
        let h = EscrowHeights::new(d, r, 1).unwrap();
        let escrow = PolicyTemplate::default()
            .instantiate(&keys, h, Network::Regtest)
            .unwrap();
        let text = PolicyTemplate::default().substitute(&keys.derive().unwrap(), h);
        let direct = Concrete::<DescriptorPublicKey>::from_str(&text)
            .unwrap()
            .compile::<Segwitv0>()
            .unwrap();
        assert_eq!(escrow.descriptor(), &Descriptor::new_wsh(direct).unwrap());
    }
}
