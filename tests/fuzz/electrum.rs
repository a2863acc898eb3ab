//! Electrum-shaped data: transactions and headers as the server sends them, the
//! watcher's classification of an escrow spend, the server's fee estimate and its
//! broadcast refusals (see the note in `main.rs` for why not the raw answers).

use bitcoin::block::Header;
use bitcoin::consensus::encode::{deserialize, deserialize_hex, serialize};
use bitcoin::hex::DisplayHex;
use bitcoin::Transaction;
use btc_escrow::chain::broadcast::{classify_rejection, BroadcastError};
use btc_escrow::chain::{btc_per_kvb_to_sat, FeePolicy, FeeSource};
use btc_escrow::policy::PathName;
use proptest::prelude::*;

use super::escrow::escrow;
use super::{
    bounded, config, input, refused_quickly, text, Seeds, BYTES_DICT, DECLARED_2_POW_32, NETWORK,
};

fn chain_bases() -> &'static [Vec<u8>] {
    static B: Seeds = Seeds::new();
    B.get(|| {
        let e = escrow();
        let genesis = bitcoin::constants::genesis_block(NETWORK);
        vec![
            serialize(&e.tx),
            serialize(&e.tx),
            serialize(
                &e.ours.inputs[0]
                    .non_witness_utxo
                    .clone()
                    .expect("set by build"),
            ),
            serialize(&e.ours.unsigned_tx),
            serialize(&genesis.header),
        ]
    })
}

proptest! {
    #![proptest_config(config(1000))]

    /// Transactions and headers as an Electrum server sends them (consensus bytes, and
    /// hex), and the watcher's classification of an escrow spend: what decodes encodes
    /// back to the same bytes; classifying never panics, and the real release is
    /// recognised.
    #[test]
    fn electrum_transactions_and_headers(bytes in input(chain_bases(), BYTES_DICT, false)) {
        let e = escrow();
        if let Ok(tx) = bounded("Transaction", || deserialize::<Transaction>(&bytes))? {
            prop_assert_eq!(&serialize(&tx), &bytes);
            for index in 0..tx.input.len().min(4) {
                let seen = bounded("classify_spend", || {
                    e.escrow.classify_spend(&e.secp, &tx, index, &e.spent)
                })?;
                if tx == e.tx {
                    prop_assert_eq!(seen.map(|s| s.path).ok(), Some(PathName::ArbitratedRelease));
                }
            }
            let _ = (tx.compute_txid(), tx.compute_wtxid(), tx.weight());
        }
        if let Ok(header) = bounded("Header", || deserialize::<Header>(&bytes))? {
            prop_assert_eq!(&serialize(&header), &bytes);
            let _ = header.validate_pow(header.target());
            let _ = (header.block_hash(), header.work(), header.difficulty_float());
        }
        // The same bytes as hex (the CLI's `broadcast` reads a transaction's hex).
        let short = &bytes[..bytes.len().min(4096)];
        let hex = short.to_lower_hex_string();
        prop_assert_eq!(
            deserialize_hex::<Transaction>(&hex).ok(),
            deserialize::<Transaction>(short).ok()
        );
        let as_text = text(&bytes);
        let _ = bounded("deserialize_hex (text)", || deserialize_hex::<Transaction>(as_text.trim()))?;
    }

    /// The server's fee estimate (a float of BTC/kvB) and its broadcast refusals.
    #[test]
    fn electrum_scalars(
        fee in prop_oneof![any::<f64>(), 0.0..1.0f64, Just(1e-9), Just(0.999_999_999_9)],
        estimate in prop_oneof![any::<u64>(), 0..1_000_000u64],
        message in prop_oneof![
            "[ -~]{0,120}",
            ".{0,60}",
            Just("non-BIP68-final".to_owned()),
            Just("txn-mempool-conflict (code 18)".to_owned()),
            Just("min relay fee not met, 100 < 141".to_owned()),
        ],
    ) {
        if let Some(sats) = btc_per_kvb_to_sat(fee) {
            prop_assert!(sats <= 100_000_000, "{} -> {}", fee, sats);
            // Rounded up: a positive estimate is never 0 (it once was below 5e-12).
            prop_assert!(sats >= 1, "{} -> {}", fee, sats);
        }
        let policy = FeePolicy::default();
        let applied = policy.apply(Ok(estimate));
        prop_assert!(applied.sat_per_kvb >= policy.min_sat_per_kvb());
        prop_assert!(applied.sat_per_kvb <= policy.max_sat_per_kvb());
        let from_server = matches!(applied.source, FeeSource::Server | FeeSource::Clamped { .. });
        prop_assert!(from_server, "{:?}", applied.source);
        let _ = applied.fee_rate();
        let fallback = policy.apply(Err(message.clone()));
        prop_assert_eq!(fallback.sat_per_kvb, policy.fallback_sat_per_kvb());
        let txid = escrow().tx.compute_txid();
        match classify_rejection(txid, &message) {
            BroadcastError::AlreadyKnown { txid: t } => prop_assert_eq!(t, txid),
            BroadcastError::Conflict { message: m, .. }
            | BroadcastError::FeeTooLow { message: m, .. }
            | BroadcastError::NonFinal { message: m, .. }
            | BroadcastError::Rejected { message: m, .. }
            | BroadcastError::Connection { message: m, .. } => prop_assert_eq!(m, message),
        }
    }
}

#[test]
fn transactions_declaring_2_pow_32_items_are_refused_without_allocating() {
    let huge = |prefix: &[u8]| [prefix, &DECLARED_2_POW_32, &[0; 64]].concat();
    // 2^32 inputs.
    let inputs = huge(&[2, 0, 0, 0]);
    refused_quickly("2^32 inputs", || deserialize::<Transaction>(&inputs));
    // Segwit: one input whose scriptSig declares 2^32 bytes.
    let mut script = vec![2, 0, 0, 0, 0, 1, 1];
    script.extend_from_slice(&[0; 36]);
    let script = huge(&script);
    refused_quickly("a scriptSig of 2^32 bytes", || {
        deserialize::<Transaction>(&script)
    });
    // One input, one output, then 2^32 witness items.
    let mut witness = vec![2, 0, 0, 0, 0, 1, 1];
    witness.extend_from_slice(&[0; 36]);
    witness.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff, 1]);
    witness.extend_from_slice(&[0; 8]);
    witness.push(0);
    let witness = huge(&witness);
    refused_quickly("2^32 witness items", || {
        deserialize::<Transaction>(&witness)
    });
    let hex = inputs.to_lower_hex_string();
    refused_quickly("2^32 inputs as hex", || {
        deserialize_hex::<Transaction>(&hex)
    });
}

/// The transactions and the header decode.
pub(crate) fn seeds_are_accepted() {
    let chain = chain_bases();
    for b in &chain[..4] {
        deserialize::<Transaction>(b).expect("a transaction");
    }
    deserialize::<Header>(&chain[4]).expect("a header");
}
