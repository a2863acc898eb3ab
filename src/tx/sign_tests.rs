//! Signer tests: what `sign` and `sign_decision` refuse (foreign inputs, derivations
//! that are not escrow keys, another escrow, fees above the cap, keys the seed does not
//! derive) and what the arbiter signs.

use super::tests::{fixture, funding, request, sign_party, Fixture};
use super::*;
use crate::keys::{account_path, AccountKey, SigningKey};
use crate::policy::{EscrowHeights, EscrowKeys, PolicyTemplate};
use bitcoin::bip32::Xpriv;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::All;
use bitcoin::{Network, Txid};

/// A PSBT for the liquidation of two escrow UTXOs.
fn liquidation_psbt(f: &Fixture) -> Psbt {
    build(
        &f.escrow,
        &request(f, PathName::Liquidation, &[60_000_000, 50_000_000]),
    )
    .unwrap()
    .psbt
}

/// Append an input spending `owner`'s own coin at m/84'/1'/0'/0/0 (P2WPKH), listed in
/// `bip32_derivation` as a hardware wallet would want it.
fn add_own_coin(psbt: &mut Psbt, owner: &SigningKey, secp: &Secp256k1<All>) {
    use bitcoin::bip32::DerivationPath;
    let path: DerivationPath = "m/84'/1'/0'/0/0".parse().unwrap();
    let sk = owner.master().derive_priv(secp, &path).unwrap();
    let pk = sk.private_key.public_key(secp);
    let spk = ScriptBuf::new_p2wpkh(&bitcoin::CompressedPublicKey(pk).wpubkey_hash());
    let prev = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([77; 32]), 0),
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: Amount::from_sat(5_000_000),
            script_pubkey: spk,
        }],
    };
    psbt.unsigned_tx.input.push(TxIn {
        previous_output: OutPoint::new(prev.compute_txid(), 0),
        sequence: SEQUENCE,
        ..TxIn::default()
    });
    let mut input = bitcoin::psbt::Input {
        witness_utxo: Some(prev.output[0].clone()),
        non_witness_utxo: Some(prev),
        ..Default::default()
    };
    input
        .bip32_derivation
        .insert(pk, (owner.fingerprint(secp), path));
    psbt.inputs.push(input);
    // The thief's output takes the coin.
    psbt.unsigned_tx.output[0].value += Amount::from_sat(5_000_000);
}

/// Issue 9 item 1: the old signer signed every input naming its fingerprint, so a
/// counterparty could slip in an input spending the signer's own unrelated coin.
#[test]
fn a_foreign_input_spending_the_signers_own_coin_is_never_signed() {
    let f = fixture();
    let mut psbt = liquidation_psbt(&f);
    add_own_coin(&mut psbt, &f.lender, &f.secp);
    let before = psbt.clone();
    let err = sign_party(&mut psbt, &f.lender, &f).unwrap_err();
    assert!(
        matches!(err, TxError::ForeignInput { index: 2, .. }),
        "{err}"
    );
    assert_eq!(psbt, before, "nothing signed");
}

#[test]
fn a_derivation_that_is_not_an_escrow_key_is_refused() {
    let f = fixture();
    let mut psbt = liquidation_psbt(&f);
    // An escrow input that also asks the lender to sign for another key of its seed.
    let path: bitcoin::bip32::DerivationPath = "m/84'/1'/0'/0/0".parse().unwrap();
    let other = f.lender.master().derive_priv(&f.secp, &path).unwrap();
    psbt.inputs[0].bip32_derivation.insert(
        other.private_key.public_key(&f.secp),
        (f.lender.fingerprint(&f.secp), path),
    );
    let err = sign_party(&mut psbt, &f.lender, &f).unwrap_err();
    assert!(
        matches!(err, TxError::UnexpectedDerivation { index: 0, .. }),
        "{err}"
    );
    // A listed key that is not what the path derives.
    let mut psbt = liquidation_psbt(&f);
    let (pk, origin) = psbt.inputs[0]
        .bip32_derivation
        .iter()
        .find(|(_, (fp, _))| *fp == f.lender.fingerprint(&f.secp))
        .map(|(k, o)| (*k, o.clone()))
        .unwrap();
    psbt.inputs[0].bip32_derivation.remove(&pk);
    let stranger = other.private_key.public_key(&f.secp);
    psbt.inputs[0].bip32_derivation.insert(stranger, origin);
    let err = sign_party(&mut psbt, &f.lender, &f).unwrap_err();
    assert!(matches!(err, TxError::UnexpectedDerivation { .. }), "{err}");
}

#[test]
fn a_psbt_for_another_escrow_or_witness_script_is_refused() {
    let f = fixture();
    let mut psbt = liquidation_psbt(&f);
    psbt.inputs[1].witness_script = Some(ScriptBuf::from_bytes(vec![0x51]));
    let err = sign_party(&mut psbt, &f.arbiter, &f).unwrap_err();
    assert!(
        matches!(err, TxError::WrongWitnessScript { index: 1 }),
        "{err}"
    );
    // The same keys at another escrow index: every input is foreign to it.
    let mut keys = crate::policy::example_keys(Network::Regtest);
    let account = |k: &SigningKey| {
        AccountKey::from_master(
            k.master(),
            &account_path(Network::Regtest, 0).unwrap(),
            &f.secp,
        )
        .unwrap()
    };
    keys.borrower = account(&f.borrower);
    keys.lender = account(&f.lender);
    keys.arbiter = account(&f.arbiter);
    keys.index = 8;
    let other = PolicyTemplate::default()
        .instantiate(
            &keys,
            EscrowHeights::new(300, 400, 200).unwrap(),
            Network::Regtest,
        )
        .unwrap();
    let mut psbt = liquidation_psbt(&f);
    let err = sign(&mut psbt, &f.lender, &other, &FeeCap::default(), &f.secp).unwrap_err();
    assert!(
        matches!(err, TxError::ForeignInput { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn a_fee_above_the_cap_is_refused_with_both_numbers() {
    let f = fixture();
    let mut req = request(&f, PathName::Liquidation, &[60_000_000, 50_000_000]);
    req.fee_rate = FeeRate::from_sat_per_vb(1_000).unwrap();
    let mut psbt = build(&f.escrow, &req).unwrap().psbt;
    let cap = FeeCap {
        max_fee: Amount::from_sat(100_000),
        max_fee_bps: 200,
    };
    let err = sign(&mut psbt, &f.lender, &f.escrow, &cap, &f.secp).unwrap_err();
    let TxError::FeeAboveCap {
        fee, cap: limit, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*limit, Amount::from_sat(100_000));
    let text = err.to_string();
    assert!(
        text.contains(&fee.to_string()) && text.contains(&limit.to_string()),
        "{text}"
    );
    // The relative cap binds on a small escrow: 2 % of 0.01 BTC.
    let small = FeeCap::default().cap(Amount::from_sat(1_000_000));
    assert_eq!(small, Amount::from_sat(20_000));
    // Rounding: the relative cap rounds DOWN (never a satoshi above 2 %).
    let odd = FeeCap::default().cap(Amount::from_sat(99_999));
    assert_eq!(odd, Amount::from_sat(1_999), "2 % of 99,999 is 1,999.98");
}

#[test]
fn the_arbiter_signs_only_the_decided_transaction() {
    let f = fixture();
    let built = build(
        &f.escrow,
        &request(&f, PathName::Liquidation, &[60_000_000, 50_000_000]),
    )
    .unwrap();
    let decision = SpendDecision {
        tx: built.psbt.unsigned_tx.clone(),
    };
    let cap = FeeCap::default();
    // Through the party signer, the arbiter's key signs nothing.
    let mut psbt = built.psbt.clone();
    assert!(matches!(
        sign(&mut psbt, &f.arbiter, &f.escrow, &cap, &f.secp),
        Err(TxError::ArbiterNeedsDecision)
    ));
    let last = built.psbt.unsigned_tx.output.len() - 1;
    type Edit = fn(&mut Transaction, usize);
    let edits: [(&str, Edit); 4] = [
        // The lender's output raised by a satoshi, taken from the borrower's.
        ("output 0 amount", |tx, last| {
            tx.output[0].value += Amount::from_sat(1);
            tx.output[last].value -= Amount::from_sat(1);
        }),
        // A higher fee.
        ("amount", |tx, last| {
            tx.output[last].value -= Amount::from_sat(10)
        }),
        // RBF switched off (no fee bump possible later).
        ("sequence", |tx, _| tx.input[0].sequence = Sequence::MAX),
        ("nLockTime", |tx, _| {
            tx.lock_time = LockTime::from_height(499_999_999).unwrap()
        }),
    ];
    for (what, edit) in edits {
        let mut changed = built.psbt.clone();
        edit(&mut changed.unsigned_tx, last);
        let err = sign_decision(
            &mut changed,
            &f.arbiter,
            &f.escrow,
            &decision,
            &cap,
            &f.secp,
        )
        .unwrap_err();
        assert!(
            matches!(&err, TxError::NotTheDecision(d) if d.contains(what)),
            "{what}: {err}"
        );
    }
    let mut psbt = built.psbt;
    assert_eq!(
        sign_decision(&mut psbt, &f.arbiter, &f.escrow, &decision, &cap, &f.secp).unwrap(),
        2
    );
    // Signing again (a resumed action) gives the same signatures and is no error.
    let once = psbt.clone();
    assert_eq!(
        sign_decision(&mut psbt, &f.arbiter, &f.escrow, &decision, &cap, &f.secp).unwrap(),
        2
    );
    assert_eq!(psbt, once);
}

/// The account key registered for the lender claims the lender's fingerprint but is
/// another xpub: the PSBT lists that key, the lender's seed derives another one at the
/// path, and nothing is signed.
#[test]
fn a_listed_key_the_seed_does_not_derive_is_refused() {
    let f = fixture();
    let secp = &f.secp;
    let account = |k: &SigningKey| {
        AccountKey::from_master(
            k.master(),
            &account_path(Network::Regtest, 0).unwrap(),
            secp,
        )
        .unwrap()
    };
    let impostor_seed = Xpriv::new_master(Network::Regtest, &[55; 32]).unwrap();
    let impostor = AccountKey::from_master(
        &impostor_seed,
        &account_path(Network::Regtest, 0).unwrap(),
        secp,
    )
    .unwrap();
    // Same origin (the lender's fingerprint and path), another xpub.
    let text = impostor.to_string();
    let fake = format!(
        "[{}{}",
        f.lender.fingerprint(secp),
        &text[text.find('/').unwrap()..]
    );
    let lender = AccountKey::parse("lender", &fake, Network::Regtest).unwrap();
    let keys = EscrowKeys {
        borrower: account(&f.borrower),
        lender,
        arbiter: account(&f.arbiter),
        index: 7,
    };
    let escrow = PolicyTemplate::default()
        .instantiate(
            &keys,
            EscrowHeights::new(300, 400, 200).unwrap(),
            Network::Regtest,
        )
        .unwrap();
    let mut req = request(&f, PathName::Liquidation, &[60_000_000]);
    req.inputs = funding(&escrow, &[60_000_000]);
    let mut psbt = build(&escrow, &req).unwrap().psbt;
    let err = sign(&mut psbt, &f.lender, &escrow, &FeeCap::default(), secp).unwrap_err();
    assert!(
        matches!(err, TxError::DerivedKeyMismatch { index: 0, .. }),
        "{err}"
    );
}
