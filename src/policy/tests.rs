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

fn accounts() -> PartyAccounts {
    example_keys(Network::Regtest).accounts()
}

#[test]
fn descriptor_text_parses_back_with_the_same_roles() {
    let escrow = instantiate(DEFAULT_TEMPLATE).unwrap();
    let parsed = EscrowDescriptor::parse(
        &escrow.to_string(),
        Network::Regtest,
        &accounts(),
        &PolicyTemplate::default(),
    )
    .unwrap();
    assert_eq!(parsed, escrow);
}

fn parse(text: &str, accounts: &PartyAccounts) -> Result<EscrowDescriptor, PolicyError> {
    EscrowDescriptor::parse(text, Network::Regtest, accounts, &PolicyTemplate::default())
}

fn key_of(escrow: &EscrowDescriptor, role: Role) -> String {
    escrow
        .roles()
        .iter()
        .find(|(_, r)| **r == role)
        .map(|(k, _)| k.to_string())
        .unwrap()
}

#[test]
fn a_descriptor_with_the_timelocked_keys_swapped_is_refused() {
    let escrow = instantiate(DEFAULT_TEMPLATE).unwrap();
    let text = escrow.to_string();
    let body = text.split('#').next().unwrap();
    let (l, b) = (
        key_of(&escrow, Role::LenderDefault),
        key_of(&escrow, Role::BorrowerRecovery),
    );
    let swapped = body.replace(&l, "<L>").replace(&b, &l).replace("<L>", &b);
    assert_ne!(swapped, body);
    // The old parser took the earlier lock as the lender's and accepted this.
    let err = parse(&swapped, &accounts()).unwrap_err();
    assert!(
        matches!(err, PolicyError::RecoveryNotAfterDefault { .. }),
        "{err}"
    );
    // The multisig keys of borrower and arbiter swapped: the roles still follow the
    // accounts, so the descriptor is the same escrow, not a relabelled one.
    let (bk, ak) = (
        key_of(&escrow, Role::Borrower),
        key_of(&escrow, Role::Arbiter),
    );
    let relabelled = body
        .replace(&bk, "<B>")
        .replace(&ak, &bk)
        .replace("<B>", &ak);
    // The roles still follow the accounts, but multi() is ordered: another script, not
    // this template's escrow.
    assert!(matches!(
        parse(&relabelled, &accounts()),
        Err(PolicyError::NotTheTemplate { .. })
    ));
}

#[test]
fn a_descriptor_with_foreign_or_misplaced_keys_is_refused() {
    let escrow = instantiate(DEFAULT_TEMPLATE).unwrap();
    let text = escrow.to_string();
    let body = text.split('#').next().unwrap();
    // Parsed against other parties' accounts: the keys belong to nobody.
    let mut others = accounts();
    others.arbiter = example_keys_seeded(9).arbiter;
    assert!(matches!(
        parse(body, &others),
        Err(PolicyError::UnknownKey(_))
    ));
    // The lender's multisig key moved to chain 1 (not an escrow chain).
    let l = key_of(&escrow, Role::Lender);
    let moved = body.replace(&l, &l.replace("/0/0", "/1/0"));
    assert!(matches!(
        parse(&moved, &accounts()),
        Err(PolicyError::Roles(_))
    ));
    // Keys of another network.
    assert!(EscrowDescriptor::parse(
        body,
        Network::Bitcoin,
        &accounts(),
        &PolicyTemplate::default()
    )
    .is_err());
}

fn example_keys_seeded(seed: u8) -> EscrowKeys {
    let secp = Secp256k1::new();
    let master = bitcoin::bip32::Xpriv::new_master(Network::Regtest, &[seed; 32]).unwrap();
    let path = crate::keys::account_path(Network::Regtest, 0).unwrap();
    let account = AccountKey::from_master(&master, &path, &secp).unwrap();
    let mut keys = example_keys(Network::Regtest);
    keys.arbiter = account;
    keys
}

#[test]
fn the_wallet_policy_and_multipath_descriptor_give_the_escrow() {
    let mut keys = example_keys(Network::Regtest);
    keys.index = 7;
    let escrow = PolicyTemplate::default()
        .instantiate(&keys, heights(), Network::Regtest)
        .unwrap();
    // Keys on the BIP-388 chains.
    assert!(key_of(&escrow, Role::Lender).ends_with("/0/7"));
    assert!(key_of(&escrow, Role::LenderDefault).ends_with("/2/7"));
    // The multipath descriptor's receive index 7 is the escrow.
    let multi = escrow.multipath_descriptor();
    assert!(
        multi.contains("/<0;1>/*") && multi.contains("/<2;3>/*"),
        "{multi}"
    );
    assert!(multi.contains('#'), "{multi}");
    let parsed = Descriptor::<DescriptorPublicKey>::from_str(&multi).unwrap();
    let receive = parsed.into_single_descriptors().unwrap().remove(0);
    let derived = receive.at_derivation_index(7).unwrap();
    assert_eq!(derived.script_pubkey(), escrow.script_pubkey());
    // The wallet policy: three distinct account keys with origin, placeholders in
    // order of first appearance, each reused only on disjoint chains.
    let policy = escrow.wallet_policy();
    assert_eq!(policy.keys.len(), 3);
    let xpubs: Vec<bitcoin::bip32::Xpub> = policy
        .keys
        .iter()
        .map(|k| {
            assert!(k.starts_with('['), "{k}");
            *AccountKey::parse("key", k, Network::Regtest)
                .unwrap()
                .xpub()
        })
        .collect();
    for (i, a) in xpubs.iter().enumerate() {
        assert!(xpubs[i + 1..].iter().all(|b| b != a), "distinct xpubs");
    }
    // The full paths a hardware wallet sees: .../48'/1'/0'/2'/0/7 and .../2/7.
    let paths: Vec<(Role, String)> = escrow
        .key_origins()
        .into_iter()
        .map(|k| (k.role, k.path.to_string()))
        .collect();
    for (role, path) in paths {
        let chain = if matches!(role, Role::LenderDefault | Role::BorrowerRecovery) {
            2
        } else {
            0
        };
        assert_eq!(path, format!("48'/1'/0'/2'/{chain}/7"), "{role}");
    }
    assert_eq!(
        policy.template,
        format!(
            "wsh(or_d(multi(2,@0/<0;1>/*,@1/<0;1>/*,@2/<0;1>/*),or_i(and_v(v:pkh(@1/<2;3>/*),after({D})),and_v(v:pkh(@0/<2;3>/*),after({R})))))"
        )
    );
    assert_eq!(policy.keys[0], keys.borrower.to_string());
    assert_eq!(policy.keys[1], keys.lender.to_string());
    assert_eq!(policy.keys[2], keys.arbiter.to_string());
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

/// The escrow derives its keys once and plans each path on them; that must be exactly
/// what miniscript's planner and PSBT updater give on the xpub-keyed descriptor.
#[test]
fn what_the_escrow_derives_once_is_what_miniscript_plans_and_writes() {
    use bitcoin::psbt::Psbt;
    use miniscript::plan::Assets;
    use miniscript::psbt::PsbtExt;

    let escrow = PolicyTemplate::default()
        .instantiate(&example_keys(Network::Regtest), heights(), Network::Regtest)
        .unwrap();
    let slow = escrow.definite();
    assert_eq!(escrow.script_pubkey(), slow.script_pubkey());
    assert_eq!(escrow.witness_script(), slow.explicit_script().unwrap());
    for path in escrow.paths() {
        let mut assets = Assets::new().add(path.keys.clone());
        if let Some(h) = path.after_height {
            assets = assets.after(bitcoin::absolute::LockTime::from_height(h).unwrap());
        }
        let plan = slow.clone().plan(&assets).unwrap();
        assert_eq!(
            escrow.witness_size(path.name).unwrap(),
            plan.witness_size(),
            "{:?}",
            path.name
        );
    }
    let tx = bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![bitcoin::TxIn::default()],
        output: vec![],
    };
    let (mut p1, mut p2) = (
        Psbt::from_unsigned_tx(tx.clone()).unwrap(),
        Psbt::from_unsigned_tx(tx).unwrap(),
    );
    let utxo = bitcoin::TxOut {
        value: bitcoin::Amount::from_sat(100_000),
        script_pubkey: escrow.script_pubkey(),
    };
    p1.inputs[0].witness_utxo = Some(utxo.clone());
    p2.inputs[0].witness_utxo = Some(utxo);
    p1.inputs[0].witness_script = Some(escrow.witness_script());
    p1.inputs[0].bip32_derivation = escrow.bip32_derivations().clone();
    p2.update_input_with_descriptor(0, &slow).unwrap();
    assert_eq!(p1, p2);
    assert_eq!(p1.inputs[0].bip32_derivation.len(), 5);
}
