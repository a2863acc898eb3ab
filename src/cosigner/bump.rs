//! A decision's later attempt (an RBF fee bump) is signed only as a bump of the one the
//! co-signer signed before.

use std::str::FromStr;

/// Whether `next` (base64) is a fee bump of `prev`: the same inputs, the same output
/// scripts in the same order, and no output to the lender's script lower (the fee comes
/// from the borrower's share).
pub(super) fn is_bump_of(prev: &str, next: &str) -> Result<(), String> {
    let parse = |t: &str| {
        bitcoin::psbt::Psbt::from_str(t).map_err(|e| format!("a PSBT that does not parse: {e}"))
    };
    let (prev, next) = (parse(prev)?.unsigned_tx, parse(next)?.unsigned_tx);
    let inputs = |t: &bitcoin::Transaction| {
        let mut v: Vec<_> = t.input.iter().map(|i| i.previous_output).collect();
        v.sort();
        v
    };
    if inputs(&prev) != inputs(&next) {
        return Err("a later attempt spends other inputs than the one signed before".into());
    }
    let scripts = |t: &bitcoin::Transaction| -> Vec<_> {
        t.output.iter().map(|o| o.script_pubkey.clone()).collect()
    };
    if scripts(&prev) != scripts(&next) {
        return Err("a later attempt pays other scripts than the one signed before".into());
    }
    // The first output of a liquidation is the lender's; a release pays one output.
    if prev.output.len() > 1 && next.output[0].value < prev.output[0].value {
        return Err(format!(
            "a later attempt pays the lender {} instead of {}",
            next.output[0].value, prev.output[0].value
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_bump_of;
    use bitcoin::{absolute::LockTime, transaction::Version, Amount, OutPoint, ScriptBuf};
    use bitcoin::{Transaction, TxIn, TxOut, Txid};

    fn psbt(inputs: &[u8], outputs: &[(u8, u64)]) -> String {
        use bitcoin::hashes::Hash;
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: inputs
                .iter()
                .map(|i| TxIn {
                    previous_output: OutPoint::new(Txid::from_byte_array([*i; 32]), 0),
                    ..TxIn::default()
                })
                .collect(),
            output: outputs
                .iter()
                .map(|(s, v)| TxOut {
                    value: Amount::from_sat(*v),
                    script_pubkey: ScriptBuf::from_bytes(vec![0x51, *s]),
                })
                .collect(),
        };
        bitcoin::psbt::Psbt::from_unsigned_tx(tx)
            .expect("unsigned")
            .to_string()
    }

    #[test]
    fn a_later_attempt_must_be_a_fee_bump_of_the_one_signed() {
        let first = psbt(&[1, 2], &[(7, 1_000), (8, 5_000)]);
        // The fee from the borrower's share, inputs in another order: a bump.
        assert!(is_bump_of(&first, &psbt(&[2, 1], &[(7, 1_000), (8, 4_000)])).is_ok());
        // Less for the lender, another input, another script: not a bump.
        for (next, why) in [
            (psbt(&[1, 2], &[(7, 900), (8, 5_000)]), "pays the lender"),
            (psbt(&[1, 3], &[(7, 1_000), (8, 4_000)]), "other inputs"),
            (psbt(&[1, 2], &[(7, 1_000), (9, 4_000)]), "other scripts"),
        ] {
            let e = is_bump_of(&first, &next).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
