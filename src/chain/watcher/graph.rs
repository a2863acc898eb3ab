//! The transaction graph the watcher keeps: bdk_chain's `IndexedTxGraph`, indexed by
//! the escrow scripts of the loans it watches, and its pruning. bdk's `TxGraph` never
//! forgets a transaction, so the graph is rebuilt from what still matters once enough
//! escrows have been unregistered.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bdk_chain::bitcoin::{OutPoint, ScriptBuf, Transaction, Txid};
use bdk_chain::spk_txout::SpkTxOutIndex;
use bdk_chain::{indexed_tx_graph, tx_graph, ConfirmationBlockTime, IndexedTxGraph};

use super::LoanId;

pub(super) type Graph = IndexedTxGraph<ConfirmationBlockTime, SpkTxOutIndex<LoanId>>;

/// A graph indexing only `watched`, holding only the transactions of `old` that pay or
/// spend a watched script, plus every transaction conflicting with one of those (and
/// theirs, transitively): conflicts decide which side is canonical, so dropping one
/// could resurrect a replaced deposit. Anchors, seen and evicted times of the kept
/// transactions are carried over; the rest is forgotten.
pub(super) fn rebuild(
    old: &Graph,
    watched: impl IntoIterator<Item = (LoanId, ScriptBuf)>,
) -> Graph {
    let mut index = SpkTxOutIndex::default();
    for (loan_id, spk) in watched {
        index.insert_spk(loan_id, spk);
    }
    let txs: Vec<(Txid, Arc<Transaction>)> = old
        .graph()
        .full_txs()
        .map(|node| (node.txid, node.tx))
        .collect();
    // Outputs first: an escrow spend is relevant through the output it spends.
    for (_, tx) in &txs {
        index.scan(tx);
    }
    let mut keep: HashSet<Txid> = HashSet::new();
    let mut spent: HashSet<OutPoint> = HashSet::new();
    for (txid, tx) in &txs {
        if index.is_relevant(tx) {
            keep.insert(*txid);
            spent.extend(tx.input.iter().map(|i| i.previous_output));
        }
    }
    loop {
        let mut grew = false;
        for (txid, tx) in &txs {
            if !keep.contains(txid) && tx.input.iter().any(|i| spent.contains(&i.previous_output)) {
                keep.insert(*txid);
                spent.extend(tx.input.iter().map(|i| i.previous_output));
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }

    let all = old.graph().initial_changeset();
    let kept = |txid: &Txid| keep.contains(txid);
    let first_seen: BTreeMap<Txid, u64> = all
        .first_seen
        .into_iter()
        .filter(|(t, _)| kept(t))
        .collect();
    let changeset = tx_graph::ChangeSet {
        txs: all
            .txs
            .into_iter()
            .filter(|tx| kept(&tx.compute_txid()))
            .collect(),
        // Floating txouts are never inserted by the watcher.
        txouts: BTreeMap::new(),
        anchors: all.anchors.into_iter().filter(|(_, t)| kept(t)).collect(),
        last_seen: all.last_seen.into_iter().filter(|(t, _)| kept(t)).collect(),
        last_evicted: all
            .last_evicted
            .into_iter()
            .filter(|(t, _)| kept(t))
            .collect(),
        first_seen: BTreeMap::new(),
    };
    let mut graph = Graph::new(index);
    graph.apply_changeset(indexed_tx_graph::ChangeSet {
        tx_graph: changeset,
        indexer: (),
    });
    // Applying a changeset records only last-seen times; an earlier seen time sets the
    // first-seen one.
    for (txid, seen) in first_seen {
        let _ = graph.insert_seen_at(txid, seen);
    }
    graph
}

#[cfg(test)]
mod tests {
    use super::*;
    use bdk_chain::bitcoin::hashes::Hash;
    use bdk_chain::bitcoin::{
        absolute, transaction, Amount, BlockHash, Sequence, TxIn, TxOut, Witness,
    };
    use bdk_chain::BlockId;

    fn spk(n: u8) -> ScriptBuf {
        ScriptBuf::from_bytes(vec![0x00, 0x20].into_iter().chain([n; 32]).collect())
    }

    fn tx(inputs: &[OutPoint], outputs: &[&ScriptBuf]) -> Transaction {
        Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: inputs
                .iter()
                .map(|op| TxIn {
                    previous_output: *op,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output: outputs
                .iter()
                .map(|s| TxOut {
                    value: Amount::from_sat(10_000),
                    script_pubkey: (*s).clone(),
                })
                .collect(),
        }
    }

    fn wallet_coin(n: u8) -> OutPoint {
        OutPoint::new(Txid::from_byte_array([n; 32]), 0)
    }

    #[test]
    fn rebuilding_keeps_only_what_watched_escrows_need() {
        let (a, b, elsewhere) = (spk(1), spk(2), spk(9));
        let mut graph = Graph::new(SpkTxOutIndex::default());
        graph.index.insert_spk("a".to_owned(), a.clone());
        graph.index.insert_spk("b".to_owned(), b.clone());
        // a's deposit, replaced in the mempool by a payment elsewhere (same coin).
        let deposit_a = tx(&[wallet_coin(1)], &[&a]);
        let replacement = tx(&[wallet_coin(1)], &[&elsewhere]);
        // b's deposit and its spend.
        let deposit_b = tx(&[wallet_coin(2)], &[&b]);
        let spend_b = tx(&[OutPoint::new(deposit_b.compute_txid(), 0)], &[&elsewhere]);
        for t in [&deposit_a, &replacement, &deposit_b, &spend_b] {
            let _ = graph.insert_tx(t.clone());
        }
        let anchor = ConfirmationBlockTime {
            block_id: BlockId {
                height: 5,
                hash: BlockHash::from_byte_array([5; 32]),
            },
            confirmation_time: 0,
        };
        let _ = graph.insert_anchor(deposit_a.compute_txid(), anchor);
        let _ = graph.insert_seen_at(replacement.compute_txid(), 10);
        let _ = graph.insert_seen_at(replacement.compute_txid(), 20);
        let _ = graph.insert_evicted_at(deposit_b.compute_txid(), 30);
        assert_eq!(graph.graph().full_txs().count(), 4);

        // b is unregistered.
        let pruned = rebuild(&graph, [("a".to_owned(), a.clone())]);
        let txids: HashSet<Txid> = pruned.graph().full_txs().map(|n| n.txid).collect();
        assert_eq!(
            txids,
            HashSet::from([deposit_a.compute_txid(), replacement.compute_txid()]),
            "a's deposit and its conflict stay, b's transactions go"
        );
        assert_eq!(pruned.index.all_spks().len(), 1);
        assert_eq!(
            pruned.index.outpoints().iter().collect::<Vec<_>>(),
            [&("a".to_owned(), OutPoint::new(deposit_a.compute_txid(), 0))]
        );
        let kept = pruned.initial_changeset().tx_graph;
        assert!(kept.anchors.contains(&(anchor, deposit_a.compute_txid())));
        assert_eq!(kept.first_seen[&replacement.compute_txid()], 10);
        assert_eq!(kept.last_seen[&replacement.compute_txid()], 20);
        assert!(kept.last_evicted.is_empty(), "b's eviction went with it");

        // Nothing watched: nothing kept.
        let empty = rebuild(&pruned, []);
        assert_eq!(empty.graph().full_txs().count(), 0);
    }
}
