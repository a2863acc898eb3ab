//! A human description of what a PSBT spends and pays, shown before signing.

use std::fmt::Write as _;

use bitcoin::psbt::Psbt;
use bitcoin::{Address, Amount, Network};

/// Inputs, outputs with addresses and amounts, fee and fee rate (from the PSBT's own
/// UTXO data; a missing amount is said, not guessed).
pub fn describe(psbt: &Psbt, network: Network) -> String {
    let tx = &psbt.unsigned_tx;
    let mut out = String::new();
    let mut total_in = Some(Amount::ZERO);
    let _ = writeln!(
        out,
        "transaction {} (nLockTime {})",
        tx.compute_txid(),
        tx.lock_time
    );
    for (i, (txin, input)) in tx.input.iter().zip(&psbt.inputs).enumerate() {
        let value = input.witness_utxo.as_ref().map(|u| u.value);
        total_in = match (total_in, value) {
            (Some(t), Some(v)) => t.checked_add(v),
            _ => None,
        };
        let _ = writeln!(
            out,
            "  input {i}: {} {}",
            txin.previous_output,
            value.map_or("amount unknown".to_owned(), |v| v.to_string())
        );
    }
    let mut total_out = Amount::ZERO;
    for (i, o) in tx.output.iter().enumerate() {
        total_out = total_out.checked_add(o.value).unwrap_or(Amount::MAX);
        let to = Address::from_script(&o.script_pubkey, network)
            .map(|a| a.to_string())
            .unwrap_or_else(|_| format!("script {}", o.script_pubkey));
        let _ = writeln!(out, "  output {i}: {} to {to}", o.value);
    }
    match total_in.and_then(|t| t.checked_sub(total_out)) {
        Some(fee) => match max_signed_vsize(psbt) {
            // Rounded down: the fee rate is at least this at the largest signed size.
            Some(vsize) => {
                let _ = writeln!(
                    out,
                    "  fee: {fee}, fee rate at least {} sat/vB (signed size at most {vsize} vB)",
                    fee.to_sat() / vsize.max(1)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  fee: {fee} (signed size unknown: an input lacks its witness script)"
                );
            }
        },
        None => {
            let _ = writeln!(
                out,
                "  fee: unknown (input amounts missing or outputs exceed inputs)"
            );
        }
    }
    out
}

/// The largest vsize the signed transaction can have: every input satisfied by its
/// witness script's most expensive satisfaction (miniscript's `max_weight_to_satisfy`,
/// which counts the witness items, the script and their lengths).
fn max_signed_vsize(psbt: &Psbt) -> Option<u64> {
    use miniscript::{Descriptor, ExtParams, Miniscript, Segwitv0};
    // The segwit marker and flag.
    let mut weight = psbt.unsigned_tx.weight().to_wu() + 2;
    for input in &psbt.inputs {
        let script = input.witness_script.as_ref()?;
        // A script's pkh() shows only the key's hash (a "raw pkh"); its satisfaction
        // size is known all the same.
        let ms = Miniscript::<bitcoin::PublicKey, Segwitv0>::parse_with_ext(
            script,
            &ExtParams::sane().raw_pkh(),
        )
        .ok()?;
        let descriptor = Descriptor::new_wsh(ms).ok()?;
        // An empty witness's stack count (one byte) plus what satisfying it adds.
        weight += 1 + descriptor.max_weight_to_satisfy().ok()?.to_wu();
    }
    Some(weight.div_ceil(4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PathName;
    use crate::tx::tests::{fixture, request, sign_party};
    use crate::tx::{build, finalize};

    #[test]
    fn the_described_size_bounds_the_signed_transaction() {
        let f = fixture();
        for path in [PathName::Liquidation, PathName::DefaultClaim] {
            let built = build(&f.escrow, &request(&f, path, &[60_000_000, 50_000_000])).unwrap();
            let mut psbt = built.psbt.clone();
            let signers = match path {
                PathName::Liquidation => vec![&f.lender, &f.arbiter],
                _ => vec![&f.lender],
            };
            for key in signers {
                sign_party(&mut psbt, key, &f).unwrap();
            }
            let tx = finalize(&psbt, &f.secp).unwrap();
            let bound = max_signed_vsize(&built.psbt).unwrap();
            // The most expensive satisfaction of any path bounds every path's.
            assert!(
                bound >= tx.vsize() as u64,
                "{path}: {bound} < {}",
                tx.vsize()
            );
            assert!(bound >= built.max_weight.to_vbytes_ceil(), "{path}");
            assert!(bound <= tx.vsize() as u64 + 80, "{path}: {bound} is loose");
        }
    }
}
