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
/// witness script's most expensive satisfaction.
fn max_signed_vsize(psbt: &Psbt) -> Option<u64> {
    use miniscript::{Miniscript, Segwitv0};
    let mut weight = psbt.unsigned_tx.weight().to_wu() + 2;
    for input in &psbt.inputs {
        let script = input.witness_script.as_ref()?;
        let ms = Miniscript::<bitcoin::PublicKey, Segwitv0>::parse(script).ok()?;
        let sat = ms.max_satisfaction_size().ok()? as u64;
        // Witness items (with their count) plus the script pushed last.
        weight += sat + 1 + script.len() as u64 + 3;
    }
    Some(weight.div_ceil(4))
}
