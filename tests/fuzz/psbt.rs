//! PSBT intake: a party's co-signed PSBT, binary and base64, checked, merged into the
//! service's arbiter-signed copy and finalized.

use std::str::FromStr;

use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::sighash::EcdsaSighashType;
use btc_escrow::tx;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::escrow::{escrow, Escrow};
use super::{
    bounded, config, edit, input, mutate, noise, refused_quickly, text, Seeds, BYTES_DICT,
    DECLARED_2_POW_32, MAX_INPUT, NETWORK,
};

/// A structural change to the co-signed copy, made before it is serialized (byte
/// mutations alone rarely keep a PSBT parseable while changing what merge checks).
#[derive(Debug, Clone)]
enum Twist {
    /// Move the partial signatures of one input to another.
    MoveSigs(Index, Index),
    /// Set an input's PSBT_IN_SIGHASH_TYPE.
    SighashField(Index, u32),
    /// Relabel the sighash type of an input's signatures.
    SigSighash(Index, u32),
    DropPrevTx(Index),
    DropWitnessUtxo(Index),
    DropWitnessScript(Index),
    DropDerivations(Index),
    /// Swap two inputs' maps (not the unsigned transaction's inputs).
    SwapMaps(Index, Index),
    /// Put the finalized witness in an input (final_script_witness).
    FinalWitness(Index),
    /// A signature of another input's key under this input's key.
    SwapKeys(Index),
}

fn twist() -> impl Strategy<Value = Twist> {
    prop_oneof![
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Twist::MoveSigs(a, b)),
        (
            any::<Index>(),
            prop_oneof![Just(1u32), Just(2), Just(3), Just(0x81), any::<u32>()]
        )
            .prop_map(|(i, t)| Twist::SighashField(i, t)),
        (
            any::<Index>(),
            prop_oneof![Just(2u32), Just(3), Just(0x81), any::<u32>()]
        )
            .prop_map(|(i, t)| Twist::SigSighash(i, t)),
        any::<Index>().prop_map(Twist::DropPrevTx),
        any::<Index>().prop_map(Twist::DropWitnessUtxo),
        any::<Index>().prop_map(Twist::DropWitnessScript),
        any::<Index>().prop_map(Twist::DropDerivations),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Twist::SwapMaps(a, b)),
        any::<Index>().prop_map(Twist::FinalWitness),
        any::<Index>().prop_map(Twist::SwapKeys),
    ]
}

fn apply_twists(e: &Escrow, twists: &[Twist]) -> Psbt {
    let mut p = e.cosigned.clone();
    let n = p.inputs.len();
    for t in twists {
        match t {
            Twist::MoveSigs(a, b) => {
                let sigs = std::mem::take(&mut p.inputs[a.index(n)].partial_sigs);
                p.inputs[b.index(n)].partial_sigs.extend(sigs);
            }
            Twist::SighashField(i, ty) => {
                p.inputs[i.index(n)].sighash_type = Some(PsbtSighashType::from_u32(*ty))
            }
            Twist::SigSighash(i, ty) => {
                for sig in p.inputs[i.index(n)].partial_sigs.values_mut() {
                    sig.sighash_type = EcdsaSighashType::from_consensus(*ty);
                }
            }
            Twist::DropPrevTx(i) => p.inputs[i.index(n)].non_witness_utxo = None,
            Twist::DropWitnessUtxo(i) => p.inputs[i.index(n)].witness_utxo = None,
            Twist::DropWitnessScript(i) => p.inputs[i.index(n)].witness_script = None,
            Twist::DropDerivations(i) => p.inputs[i.index(n)].bip32_derivation.clear(),
            Twist::SwapMaps(a, b) => p.inputs.swap(a.index(n), b.index(n)),
            Twist::FinalWitness(i) => {
                let i = i.index(n);
                p.inputs[i].final_script_witness = Some(e.tx.input[i].witness.clone())
            }
            Twist::SwapKeys(i) => {
                let i = i.index(n);
                let other = p.inputs[(i + 1) % n].partial_sigs.keys().next().copied();
                if let (Some(key), Some(sig)) =
                    (other, p.inputs[i].partial_sigs.values().next().copied())
                {
                    p.inputs[i].partial_sigs = [(key, sig)].into_iter().collect();
                }
            }
        }
    }
    p
}

fn psbt_input() -> impl Strategy<Value = Vec<u8>> {
    let e = escrow();
    prop_oneof![
        1 => noise(),
        4 => (vec(twist(), 0..3), vec(edit(), 0..5)).prop_map(move |(t, edits)| {
            mutate(&apply_twists(e, &t).serialize(), &edits, BYTES_DICT)
        }),
    ]
}

/// Everything the service does with a co-signed PSBT, checked.
fn intake(theirs: &Psbt) -> Result<(), TestCaseError> {
    let e = escrow();
    // What it is encoded as reads back as itself.
    let again = Psbt::deserialize(&theirs.serialize());
    prop_assert_eq!(
        again.as_ref().ok(),
        Some(theirs),
        "{:?}",
        again.as_ref().err()
    );
    let _ = tx::check_inputs(theirs);
    let _ = tx::finalize(theirs, &e.secp);
    let _ = tx::describe(theirs, NETWORK);
    if let Ok(merged) = tx::merge(&e.ours, theirs, &e.secp) {
        prop_assert_eq!(&merged.unsigned_tx, &e.ours.unsigned_tx);
        for (m, o) in merged.inputs.iter().zip(&e.ours.inputs) {
            for (k, s) in &o.partial_sigs {
                prop_assert_eq!(m.partial_sigs.get(k), Some(s), "our signature kept");
            }
            prop_assert_eq!(&m.witness_script, &o.witness_script);
            prop_assert_eq!(&m.non_witness_utxo, &o.non_witness_utxo);
            prop_assert_eq!(&m.final_script_witness, &o.final_script_witness);
        }
    }
    if let Ok((next, tx)) = e.record.cosign(theirs, &e.secp) {
        prop_assert_eq!(tx.compute_txid(), e.ours.unsigned_tx.compute_txid());
        let stored = next.psbt();
        prop_assert!(stored.is_ok(), "the merged PSBT is stored readable");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// A party's co-signed PSBT, binary: parse, check, merge into the service's copy,
    /// finalize. Merge never changes the unsigned transaction nor drops our signatures.
    #[test]
    fn psbt_intake_and_merge(bytes in psbt_input()) {
        let parsed = bounded("Psbt::deserialize", || Psbt::deserialize(&bytes))?;
        if let Ok(theirs) = parsed {
            intake(&theirs)?;
        }
    }
}

fn psbt_base64_bases() -> &'static [Vec<u8>] {
    static B: Seeds = Seeds::new();
    B.get(|| {
        let e = escrow();
        vec![
            e.cosigned.to_string().into_bytes(),
            format!("  {}\n", e.ours).into_bytes(),
        ]
    })
}

const BASE64_DICT: &[&[u8]] = &[
    b"=",
    b"==",
    b"+",
    b"/",
    b"-",
    b"_",
    b"A",
    b"\n",
    b" ",
    b"cHNidP8B",
];

proptest! {
    #![proptest_config(config(256))]

    /// The co-signed PSBT as the API (`POST .../cosign`) and the CLI read it: base64.
    #[test]
    fn psbt_base64_intake(bytes in input(psbt_base64_bases(), BASE64_DICT, true)) {
        let text = text(&bytes);
        let parsed = bounded("Psbt::from_str", || Psbt::from_str(text.trim()))?;
        if let Ok(theirs) = parsed {
            let again = Psbt::from_str(&theirs.to_string()).ok();
            prop_assert_eq!(again.as_ref(), Some(&theirs));
            intake(&theirs)?;
        }
    }
}

#[test]
fn psbt_huge_declared_lengths_are_refused_without_allocating() {
    // A global key of 2^32 bytes.
    let key_len = [&b"psbt\xff"[..], &DECLARED_2_POW_32, &[0; 64]].concat();
    refused_quickly("PSBT key of 2^32 bytes", || Psbt::deserialize(&key_len));

    // The unsigned transaction (key 0x00) with a value of 2^32 bytes.
    let value_len = [&b"psbt\xff\x01\x00"[..], &DECLARED_2_POW_32, &[2, 0, 0, 0]].concat();
    refused_quickly("PSBT value of 2^32 bytes", || Psbt::deserialize(&value_len));

    // An unsigned transaction that declares 2^32 inputs, inside a plausible value.
    let tx = [&[2, 0, 0, 0][..], &DECLARED_2_POW_32].concat();
    let mut inputs = b"psbt\xff\x01\x00".to_vec();
    inputs.push(tx.len() as u8);
    inputs.extend_from_slice(&tx);
    inputs.push(0);
    refused_quickly("PSBT transaction of 2^32 inputs", || {
        Psbt::deserialize(&inputs)
    });

    // The same as base64, padded to a megabyte.
    let mut text = bitcoin::base64::Engine::encode(
        &bitcoin::base64::engine::general_purpose::STANDARD,
        &key_len,
    );
    text.push_str(&"A".repeat(MAX_INPUT));
    refused_quickly("base64 PSBT", || Psbt::from_str(&text));
}

/// The co-signed PSBT merges; the base64 seeds parse.
pub(crate) fn seeds_are_accepted() {
    let e = escrow();
    let theirs = Psbt::deserialize(&e.cosigned.serialize()).expect("the co-signed PSBT");
    tx::merge(&e.ours, &theirs, &e.secp).expect("merges");
    for b in psbt_base64_bases() {
        Psbt::from_str(text(b).trim()).expect("base64 PSBT");
    }
}
