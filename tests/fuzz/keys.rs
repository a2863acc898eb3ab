//! Keys and policies: account keys, signing keys, escrow descriptors (plain and
//! multipath) and the operator's policy template.

use btc_escrow::keys::{AccountKey, Chain, SigningKey};
use btc_escrow::policy::{EscrowDescriptor, PolicyTemplate};
use btc_escrow::verify::multipath_address;
use proptest::prelude::*;

use super::escrow::escrow;
use super::{bounded, config, input, refused_quickly, text, Seeds, MAX_INPUT, NETWORK};

const KEY_DICT: &[&[u8]] = &[
    b"'",
    b"h",
    b"/",
    b"*",
    b"/*",
    b"<0;1>",
    b"<0;1;2>",
    b"<2;3>/*",
    b"[",
    b"]",
    b"#",
    b"0",
    b"2147483647",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"xpub",
    b"tpub",
    b"00000000",
    b"pk(",
    b"pkh(",
    b"after(",
    b"older(1)",
    b"sha256(",
    b"multi(",
    b"thresh(",
    b"and_v(v:",
    b"or_d(",
    b"wsh(",
    b"sh(",
    b"tr(",
    b")",
    b",",
    b"500000000",
    b"02",
];

/// A BIP39 test vector (all-zero entropy).
const MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

fn key_bases() -> &'static [Vec<u8>] {
    static B: Seeds = Seeds::new();
    B.get(|| {
        let e = escrow();
        let a = &e.accounts;
        vec![
            a.borrower.to_string().into_bytes(),
            a.lender.to_string().into_bytes(),
            a.arbiter.to_string().into_bytes(),
            // Without the brackets' quote style: `h` for hardened.
            a.lender.to_string().replace('\'', "h").into_bytes(),
            e.borrower.master().to_string().into_bytes(),
            MNEMONIC.as_bytes().to_vec(),
        ]
    })
}

proptest! {
    #![proptest_config(config(512))]

    /// Account keys (`[fingerprint/path]xpub`) and signing keys (xprv or mnemonic):
    /// an accepted account key prints back as itself; every refusal names the field.
    #[test]
    fn account_and_signing_keys(
        bytes in input(key_bases(), KEY_DICT, true),
        chain in prop_oneof![Just(Chain::Multisig), Just(Chain::Timelocked)],
        index in any::<u32>(),
    ) {
        let text = text(&bytes);
        match bounded("AccountKey::parse", || AccountKey::parse("borrower", &text, NETWORK))? {
            Ok(key) => {
                let again = AccountKey::parse("borrower", &key.to_string(), NETWORK);
                prop_assert_eq!(again.as_ref(), Ok(&key));
                let _ = key.derive(chain, index);
                let _ = key.full_path(chain, index);
                let _ = key.master_fingerprint();
            }
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.starts_with("borrower: "), "{}", shown);
            }
        }
        match bounded("SigningKey::parse", || SigningKey::parse(&text, NETWORK))? {
            Ok(key) => {
                let _ = key.fingerprint(&escrow().secp);
            }
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.starts_with("key"), "{}", shown);
            }
        }
    }
}

fn descriptor_bases() -> &'static [Vec<u8>] {
    static B: Seeds = Seeds::new();
    B.get(|| {
        let e = escrow();
        let full = e.escrow.to_string();
        let body = full.split('#').next().unwrap_or(&full).to_owned();
        let multipath = e.escrow.multipath_descriptor();
        let multipath_body = multipath.split('#').next().unwrap_or(&multipath).to_owned();
        vec![
            full.into_bytes(),
            body.clone().into_bytes(),
            body.into_bytes(),
            multipath.into_bytes(),
            multipath_body.into_bytes(),
        ]
    })
}

proptest! {
    #![proptest_config(config(512))]

    /// An escrow descriptor given by a party (CLI, verify): refused unless it is
    /// exactly the template's escrow for the parties' keys; an accepted one prints back
    /// as itself. A multipath descriptor's address at an index.
    #[test]
    fn escrow_descriptor(
        bytes in input(descriptor_bases(), KEY_DICT, true),
        index in prop_oneof![Just(7u32), any::<u32>()],
    ) {
        let e = escrow();
        let text = text(&bytes);
        let parsed = bounded("EscrowDescriptor::parse", || {
            EscrowDescriptor::parse(&text, NETWORK, &e.accounts, &e.template)
        })?;
        if let Ok(d) = parsed {
            let again = EscrowDescriptor::parse(&d.to_string(), NETWORK, &e.accounts, &e.template);
            prop_assert_eq!(again.as_ref(), Ok(&d));
            prop_assert_eq!(d.index(), e.escrow.index());
            let _ = d.multipath_descriptor();
            let _ = d.wallet_policy();
        }
        let _ = bounded("multipath_address", || {
            multipath_address(&text, index, NETWORK)
        })?;
    }
}

/// Found by `escrow_descriptor` at 150,000 and 400,000 cases: a multipath step made
/// hardened (`/<0';1>/*`), or a hardened wildcard (`/*'`), made miniscript's
/// `at_derivation_index` panic.
#[test]
fn a_hardened_step_after_an_xpub_is_refused_not_a_panic() {
    let multipath = escrow().escrow.multipath_descriptor();
    let body = multipath.split('#').next().unwrap_or(&multipath);
    let hardened = body.replacen("/<0;1>/*", "/<0';1>/*", 1);
    assert_ne!(hardened, body, "the multipath descriptor has a <0;1> step");
    let refused = multipath_address(&hardened, 7, NETWORK).unwrap_err();
    assert!(refused.contains("hardened step"), "{refused}");
    for hardened in [
        body.replacen("/<0;1>/*", "/0'/<0;1>/*", 1),
        // At 400,000 cases: a hardened wildcard.
        body.replacen("/<2;3>/*", "/<2;3>/*'", 1),
    ] {
        assert_ne!(hardened, body);
        let refused = multipath_address(&hardened, 7, NETWORK).unwrap_err();
        assert!(refused.contains("hardened step"), "{refused}");
    }
    multipath_address(body, 7, NETWORK).expect("the escrow's own multipath descriptor");
}

fn template_bases() -> &'static [Vec<u8>] {
    static B: Seeds = Seeds::new();
    B.get(|| vec![PolicyTemplate::default().text().as_bytes().to_vec()])
}

const TEMPLATE_DICT: &[&[u8]] = &[
    b"{borrower}",
    b"{lender}",
    b"{arbiter}",
    b"{lender_default}",
    b"{borrower_recovery}",
    b"{default_height}",
    b"{recovery_height}",
    b"{",
    b"}",
    b"pk(",
    b"after(",
    b"older(",
    b"and(",
    b"or(",
    b"thresh(1,",
    b"sha256(",
    b"500000000",
    b")",
    b",",
    b"99@",
];

proptest! {
    #![proptest_config(config(128))]

    /// The operator's policy template: placeholders checked, then compiled and the
    /// guarantees checked for the parties' keys.
    #[test]
    fn policy_template(bytes in input(template_bases(), TEMPLATE_DICT, true)) {
        let e = escrow();
        let text = text(&bytes);
        if let Ok(template) = bounded("PolicyTemplate::new", || PolicyTemplate::new(&text))? {
            let _ = bounded("PolicyTemplate::instantiate", || {
                template.instantiate(&e.keys, e.heights, NETWORK)
            })?;
        }
    }
}

#[test]
fn descriptors_nested_200_000_deep_are_refused_without_overflowing_the_stack() {
    let e = escrow();
    let deep = format!(
        "wsh({}pk(A){})",
        "and_v(v:".repeat(200_000),
        ")".repeat(200_000)
    );
    refused_quickly("deep descriptor", || {
        EscrowDescriptor::parse(&deep, NETWORK, &e.accounts, &e.template)
    });
    refused_quickly("deep multipath descriptor", || {
        multipath_address(&deep, 0, NETWORK)
    });
    let brackets = "(".repeat(MAX_INPUT);
    refused_quickly("a megabyte of brackets", || {
        EscrowDescriptor::parse(&brackets, NETWORK, &e.accounts, &e.template)
    });
    // An origin path declaring 2^32 as a step.
    let key = e.accounts.lender.to_string();
    let bad = key.replacen("/48", "/4294967296", 1);
    refused_quickly("origin step 2^32", || {
        AccountKey::parse("lender", &bad, NETWORK)
    });
}

/// The account and signing keys parse; the descriptors are the escrow's.
pub(crate) fn seeds_are_accepted() {
    let e = escrow();
    for b in &key_bases()[..4] {
        AccountKey::parse("borrower", &text(b), NETWORK).expect("account key");
    }
    for b in &key_bases()[4..] {
        SigningKey::parse(&text(b), NETWORK).expect("signing key");
    }
    for b in &descriptor_bases()[..3] {
        EscrowDescriptor::parse(&text(b), NETWORK, &e.accounts, &e.template).expect("escrow");
    }
    for b in &descriptor_bases()[3..] {
        let address = multipath_address(&text(b), 7, NETWORK);
        assert_eq!(address, Ok(e.escrow.address().to_string()));
    }
}
