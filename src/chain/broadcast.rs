//! Broadcast through Electrum with the server's answer classified, so the engine can
//! tell "already there" from "spent elsewhere" from "too early" from "too cheap".

use bitcoin::{Transaction, Txid};

/// Why a broadcast did not add a new transaction. `AlreadyKnown` is not a failure for
/// the caller's purpose (the transaction is out there), but it is reported distinctly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    #[error("{txid} is already known to the server (mempool or chain)")]
    AlreadyKnown { txid: Txid },
    #[error("{txid} conflicts with a transaction already spending its inputs: {message}")]
    Conflict { txid: Txid, message: String },
    #[error("{txid} pays too low a fee: {message}")]
    FeeTooLow { txid: Txid, message: String },
    #[error("{txid} is not final yet (its timelock is not reached): {message}")]
    NonFinal { txid: Txid, message: String },
    #[error("{txid} rejected: {message}")]
    Rejected { txid: Txid, message: String },
    #[error("broadcast of {txid} failed: no answer from the server: {message}")]
    Connection { txid: Txid, message: String },
}

/// Classify the rejection text bitcoind gives through electrs.
pub fn classify_rejection(txid: Txid, message: &str) -> BroadcastError {
    let m = message.to_ascii_lowercase();
    let message = message.to_owned();
    if m.contains("non-final") || m.contains("non-bip68-final") {
        BroadcastError::NonFinal { txid, message }
    } else if m.contains("txn-already-known")
        || m.contains("txn-already-in-mempool")
        || m.contains("already in block chain")
        || m.contains("outputs already in utxo set")
    {
        BroadcastError::AlreadyKnown { txid }
    } else if m.contains("txn-mempool-conflict")
        || m.contains("rejecting replacement")
        || m.contains("bad-txns-inputs-missingorspent")
        || m.contains("missing-inputs")
        || m.contains("missing inputs")
    {
        BroadcastError::Conflict { txid, message }
    } else if m.contains("min relay fee not met")
        || m.contains("mempool min fee not met")
        || m.contains("min-fee-not-met")
        || m.contains("insufficient fee")
    {
        BroadcastError::FeeTooLow { txid, message }
    } else {
        BroadcastError::Rejected { txid, message }
    }
}

/// Send `tx` through `client`: a transaction the server already has is `AlreadyKnown`
/// (checked first, since bitcoind accepts a re-sent mempool transaction silently).
pub fn broadcast(
    client: &impl electrum_client::ElectrumApi,
    tx: &Transaction,
) -> Result<Txid, BroadcastError> {
    let txid = tx.compute_txid();
    if client.transaction_get_raw(&txid).is_ok() {
        return Err(BroadcastError::AlreadyKnown { txid });
    }
    match client.transaction_broadcast(tx) {
        Ok(_) => Ok(txid),
        Err(electrum_client::Error::Protocol(value)) => {
            Err(classify_rejection(txid, &value.to_string()))
        }
        Err(
            other @ (electrum_client::Error::IOError(_)
            | electrum_client::Error::AllAttemptsErrored(_)
            | electrum_client::Error::SharedIOError(_)
            | electrum_client::Error::CouldntLockReader
            | electrum_client::Error::Mpsc),
        ) => Err(BroadcastError::Connection {
            txid,
            message: other.to_string(),
        }),
        Err(other) => Err(classify_rejection(txid, &other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    #[test]
    fn bitcoind_rejections_map_to_their_variants() {
        let t = Txid::all_zeros();
        let cases = [
            (r#"{"code":-26,"message":"non-final"}"#, "NonFinal"),
            (r#"{"code":-26,"message":"non-BIP68-final"}"#, "NonFinal"),
            (
                r#"{"code":-26,"message":"txn-mempool-conflict"}"#,
                "Conflict",
            ),
            (
                r#"{"code":-26,"message":"insufficient fee, rejecting replacement abc"}"#,
                "Conflict",
            ),
            (
                r#"{"code":-25,"message":"bad-txns-inputs-missingorspent"}"#,
                "Conflict",
            ),
            (
                r#"{"code":-26,"message":"min relay fee not met, 100 < 110"}"#,
                "FeeTooLow",
            ),
            (
                r#"{"code":-26,"message":"mempool min fee not met"}"#,
                "FeeTooLow",
            ),
            (
                r#"{"code":-27,"message":"Transaction outputs already in utxo set"}"#,
                "AlreadyKnown",
            ),
            (
                r#"{"code":-26,"message":"txn-already-known"}"#,
                "AlreadyKnown",
            ),
            (r#"{"code":-26,"message":"dust"}"#, "Rejected"),
        ];
        for (text, want) in cases {
            let got = format!("{:?}", classify_rejection(t, text));
            assert!(got.starts_with(want), "{text} -> {got}");
        }
    }
}
