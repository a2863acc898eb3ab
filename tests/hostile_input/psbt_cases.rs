//! Loan A's co-signature in every hostile shape: altered transactions, scripts,
//! derivations, sighashes and signatures (1–9, 13), another loan's PSBT (10) and
//! truncated PSBTs (11). Each is refused as an invalid `psbt` and changes nothing.

use std::str::FromStr;

use anyhow::Context;
use bitcoin::base64::engine::general_purpose::STANDARD;
use bitcoin::base64::Engine;
use bitcoin::bip32::DerivationPath;
use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::{Amount, PublicKey, ScriptBuf, TxIn};
use reqwest::Method;
use serde_json::json;

use crate::breach::Breach;
use crate::refusal::{invalid, PSBT_REFUSED};
use crate::signing::{derived, sign, signature, Over};
use crate::snapshot::Cases;
use crate::Scene;

/// A change made to A's pending PSBT before it is posted.
type Edit<'a> = Box<dyn Fn(&mut Psbt) -> anyhow::Result<()> + 'a>;

/// 1–9, 13: A's pending PSBT altered, signed or not, posted as the co-signature.
pub fn altered(s: &Scene, x: &Breach, cases: &mut Cases) {
    let (m, secp) = (s.m, &s.secp);
    let (lender, lender_pk, arbiter_pk) = (&x.lender, x.lender.pk, x.arbiter_pk);
    let edits: Vec<(&str, Edit<'_>)> = vec![
        (
            "1 an output amount changed",
            Box::new(|p| {
                p.unsigned_tx.output[0].value -= Amount::from_sat(1_000);
                Ok(())
            }),
        ),
        (
            "1 an output amount changed and signed",
            Box::new(|p| {
                p.unsigned_tx.output[0].value -= Amount::from_sat(1_000);
                sign(p, lender, secp)
            }),
        ),
        (
            "2 an output added",
            Box::new(|p| {
                let mut extra = p.unsigned_tx.output[0].clone();
                extra.value = Amount::from_sat(10_000);
                p.unsigned_tx.output[0].value -= Amount::from_sat(10_000);
                p.unsigned_tx.output.push(extra);
                p.outputs.push(Default::default());
                Ok(())
            }),
        ),
        (
            "3 an input of the lender's own wallet added",
            Box::new(|p| {
                let wallet = &s.lender_wallet.wallet;
                let coin = wallet.list_unspent().next().context("the lender's coin")?;
                let prev = wallet
                    .get_tx(coin.outpoint.txid)
                    .context("the lender's coin's transaction")?
                    .tx_node
                    .tx
                    .as_ref()
                    .clone();
                p.unsigned_tx.input.push(TxIn {
                    previous_output: coin.outpoint,
                    ..TxIn::default()
                });
                p.unsigned_tx.output[0].value += coin.txout.value;
                p.inputs.push(bitcoin::psbt::Input {
                    witness_utxo: Some(coin.txout.clone()),
                    non_witness_utxo: Some(prev),
                    ..Default::default()
                });
                // The lender's escrow signature over this transaction.
                sign(p, lender, secp)
            }),
        ),
        (
            "4 a changed witness_script, signed over it",
            Box::new(|p| {
                let mut script = p.inputs[0]
                    .witness_script
                    .clone()
                    .context("script")?
                    .into_bytes();
                let last = script.len() - 1;
                script.insert(last, 0x75); // OP_DROP before the end: another script
                script.insert(last, 0x51);
                let script = ScriptBuf::from_bytes(script);
                let over = Over {
                    script: Some(&script),
                    ..Over::default()
                };
                let sig = signature(p, lender, over, secp)?;
                p.inputs[0].witness_script = Some(script);
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "5 a key not in the escrow added to bip32_derivation, and its signature",
            Box::new(|p| {
                let fp = m.parties.lender.master().fingerprint(secp);
                p.inputs[0].bip32_derivation.insert(
                    x.stranger.pk.inner,
                    (fp, DerivationPath::from_str("m/48'/1'/0'/2'/0/0")?),
                );
                sign(p, &x.stranger, secp)
            }),
        ),
        (
            "5 the lender's key at a wrong path, signed by the key at that path",
            Box::new(|p| {
                let wrong = DerivationPath::from_str("m/48'/1'/0'/2'/0/999")?;
                let key = derived(m.parties.lender.master(), &wrong, secp)?;
                p.inputs[0].bip32_derivation.remove(&lender_pk.inner);
                p.inputs[0]
                    .bip32_derivation
                    .insert(key.pk.inner, (x.lender_origin.0, wrong));
                sign(p, &key, secp)
            }),
        ),
        (
            "6 the lender's signature with sighash byte NONE",
            Box::new(|p| {
                let mut sig = signature(p, lender, Over::default(), secp)?;
                sig.sighash_type = EcdsaSighashType::None;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "6 the lender's signature with sighash byte ALL|ANYONECANPAY",
            Box::new(|p| {
                let mut sig = signature(p, lender, Over::default(), secp)?;
                sig.sighash_type = EcdsaSighashType::AllPlusAnyoneCanPay;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "6 input sighash_type SINGLE",
            Box::new(|p| {
                sign(p, lender, secp)?;
                p.inputs[0].sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::Single));
                Ok(())
            }),
        ),
        (
            "7 the lender's key signing loan B's sighash",
            Box::new(|p| {
                let sig = signature(&x.pending_b, lender, Over::default(), secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "7 loan B's lender signature moved into A's slot",
            Box::new(|p| {
                p.inputs[0].partial_sigs.insert(x.lender_b.pk, x.sig_b);
                Ok(())
            }),
        ),
        (
            "7 the arbiter's signature moved under the lender's key",
            Box::new(|p| {
                let sig = p.inputs[0].partial_sigs[&arbiter_pk];
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "8 a valid signature by the lender's timelocked default-claim key",
            Box::new(|p| sign(p, &x.claim, secp)),
        ),
        (
            "8 a signature by a key not in the escrow",
            Box::new(|p| sign(p, &x.stranger, secp)),
        ),
        (
            "9 the arbiter's signature under its uncompressed key",
            Box::new(|p| {
                let sig = p.inputs[0].partial_sigs[&arbiter_pk];
                let uncompressed = PublicKey {
                    compressed: false,
                    inner: arbiter_pk.inner,
                };
                p.inputs[0].partial_sigs.insert(uncompressed, sig);
                Ok(())
            }),
        ),
        (
            "9 the lender's signature, and again under its uncompressed key",
            Box::new(|p| {
                let sig = signature(p, lender, Over::default(), secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                let uncompressed = PublicKey {
                    compressed: false,
                    inner: lender_pk.inner,
                };
                p.inputs[0].partial_sigs.insert(uncompressed, sig);
                Ok(())
            }),
        ),
        (
            "13 witness_utxo amount raised, signed over the lie",
            Box::new(|p| {
                let utxo = p.inputs[0].witness_utxo.as_mut().context("utxo")?;
                utxo.value += Amount::from_sat(1_000_000);
                let over = Over {
                    amount: Some(utxo.value),
                    ..Over::default()
                };
                let sig = signature(p, lender, over, secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "13 witness_utxo amount lowered, signed over the lie",
            Box::new(|p| {
                let utxo = p.inputs[0].witness_utxo.as_mut().context("utxo")?;
                utxo.value -= Amount::from_sat(1_000_000);
                let over = Over {
                    amount: Some(utxo.value),
                    ..Over::default()
                };
                let sig = signature(p, lender, over, secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "13 witness_utxo amount lowered, with the honest signature",
            Box::new(|p| {
                sign(p, lender, secp)?;
                let utxo = p.inputs[0].witness_utxo.as_mut().context("utxo")?;
                utxo.value -= Amount::from_sat(1_000_000);
                Ok(())
            }),
        ),
        (
            "no new signature (the pending PSBT sent back)",
            Box::new(|_| Ok(())),
        ),
    ];
    let cosign_path = format!("/loans/{}/psbt", s.a);
    for (name, edit) in &edits {
        let mut psbt = x.pending_a.clone();
        if let Err(e) = edit(&mut psbt) {
            cases.keep(Err(e.context(format!("{name}: building the case"))));
            continue;
        }
        cases.run(name, &PSBT_REFUSED, || {
            s.raw.json(
                Method::POST,
                &cosign_path,
                &m.lender,
                &json!({"psbt": psbt.to_string()}),
            )
        });
    }
}

/// 10, 11: another loan's PSBT; truncated PSBTs.
pub fn unreadable(s: &Scene, x: &Breach, cases: &mut Cases) {
    let cosign_path = format!("/loans/{}/psbt", s.a);
    let half = &x.signed_a[..x.signed_a.len() / 2];
    let bytes = x.good.serialize();
    for (name, text) in [
        (
            "10 loan B's co-signed PSBT posted to A",
            x.signed_b.to_string(),
        ),
        ("11 a signed PSBT's base64 cut in half", half.to_owned()),
        (
            "11 a signed PSBT's bytes cut in half",
            STANDARD.encode(&bytes[..bytes.len() / 2]),
        ),
        (
            "11 a signed PSBT's last byte cut",
            STANDARD.encode(&bytes[..bytes.len() - 1]),
        ),
        ("11 an empty psbt", String::new()),
        ("11 not base64", "%%%".into()),
    ] {
        cases.run(name, &invalid("psbt"), || {
            s.raw.json(
                Method::POST,
                &cosign_path,
                &s.m.lender,
                &json!({ "psbt": text }),
            )
        });
    }
}
