//! One sync's requests to the Electrum server, every kind batched: the server's tip and
//! its latest blocks, the histories of the scripts that changed, the transactions the
//! graph lacks, the headers of the blocks they confirm in and one merkle proof per
//! transaction not yet anchored in that block.
//!
//! bdk_electrum's `sync` did the same one request at a time where it mattered: a
//! transaction per round trip, and a merkle proof per history entry (a transaction
//! paying 1,000 escrows was proved 1,000 times, each making electrs load the block).
//! Here every request of a kind goes out in batches of `batch` (one write, then the
//! answers read in order), each transaction is fetched and proved once, and nothing
//! is asked twice across syncs or restarts:
//! - a transaction in the graph is not downloaded again;
//! - an anchor (transaction, block hash) in the graph was verified by a merkle proof
//!   and stays true whatever the chain does; only which block is at a height can
//!   change, and that is read from the server's latest blocks, our own chain or a
//!   fetched header;
//! - headers are cached by hash (a header is its own proof of its hash).
//!
//! Only the watcher calls this; it applies the result to its chain and graph.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bdk_chain::bitcoin::block::Header;
use bdk_chain::bitcoin::{BlockHash, ScriptBuf, Txid};
use bdk_chain::{BlockId, CheckPoint, ConfirmationBlockTime, TxUpdate};
use electrum_client::{ElectrumApi, Error, GetHistoryRes};

use super::graph::Graph;
use crate::chain::transport::ElectrumClient;

/// How many of the server's latest blocks are read each sync to find where its chain
/// meets ours (as bdk_electrum does).
const CHAIN_SUFFIX: u32 = 10;

/// A script to sync.
pub(super) struct ScriptToSync {
    pub spk: ScriptBuf,
    /// Its subscription said it has no history at all: nothing to ask.
    pub empty: bool,
    /// The transactions our graph holds as canonical for it: any the server no longer
    /// lists is evicted.
    pub expected: HashSet<Txid>,
}

/// What one fetch brought.
pub(super) struct Fetched {
    pub tx_update: TxUpdate<ConfirmationBlockTime>,
    pub chain_update: CheckPoint,
    /// Headers fetched now (to cache).
    pub headers: Vec<Header>,
    /// Requests sent, by kind (for the debug log and the bench).
    pub counts: SyncRequests,
}

/// Requests one sync sent, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncRequests {
    pub histories: usize,
    pub transactions: usize,
    pub headers: usize,
    pub proofs: usize,
}

/// Fetch what `scripts` need, as of the server's tip (see the module doc).
pub(super) fn fetch(
    client: &ElectrumClient,
    our_tip: CheckPoint,
    scripts: &[ScriptToSync],
    graph: &Graph,
    headers: &HashMap<BlockHash, Header>,
    batch: usize,
    start_time: u64,
) -> Result<Fetched, Error> {
    let batch = batch.max(1);
    let mut counts = SyncRequests::default();
    let mut new_headers: HashMap<BlockHash, Header> = HashMap::new();
    let (tip, latest) = tip_and_latest(client, our_tip, &mut new_headers)?;

    // Histories, in batches; a script with no history is not asked.
    let asked: Vec<&ScriptBuf> = scripts
        .iter()
        .filter(|s| !s.empty)
        .map(|s| &s.spk)
        .collect();
    let mut answers: Vec<Vec<GetHistoryRes>> = Vec::with_capacity(asked.len());
    for chunk in asked.chunks(batch) {
        answers.extend(client.batch_script_get_history(chunk.iter().map(|s| s.as_script()))?);
        counts.histories += chunk.len();
    }
    let mut answers = answers.into_iter();
    let mut tx_update = TxUpdate::<ConfirmationBlockTime>::default();
    let mut confirmed: BTreeMap<Txid, u32> = BTreeMap::new();
    let mut unconfirmed: HashSet<Txid> = HashSet::new();
    for script in scripts {
        let history = if script.empty {
            Vec::new()
        } else {
            answers.next().ok_or_else(|| {
                Error::Message("the server answered fewer histories than asked".into())
            })?
        };
        let listed: HashSet<Txid> = history.iter().map(|h| h.tx_hash).collect();
        tx_update.evicted_ats.extend(
            script
                .expected
                .difference(&listed)
                .map(|txid| (*txid, start_time)),
        );
        for entry in history {
            // Heights 0 and -1 are the mempool's.
            match u32::try_from(entry.height) {
                Ok(height) if height > 0 => {
                    confirmed.insert(entry.tx_hash, height);
                }
                _ => {
                    unconfirmed.insert(entry.tx_hash);
                }
            }
        }
    }
    for txid in &unconfirmed {
        tx_update.seen_ats.insert((*txid, start_time));
    }

    // Transactions the graph lacks, each once.
    let missing: Vec<Txid> = confirmed
        .keys()
        .chain(unconfirmed.iter())
        .filter(|txid| graph.graph().get_tx(**txid).is_none())
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    for chunk in missing.chunks(batch) {
        let txs = client.batch_transaction_get(chunk)?;
        counts.transactions += chunk.len();
        for (txid, tx) in chunk.iter().zip(txs) {
            let got = tx.compute_txid();
            if got != *txid {
                return Err(Error::Message(format!(
                    "asked for transaction {txid}, the server sent {got}"
                )));
            }
            tx_update.txs.push(Arc::new(tx));
        }
    }

    // Which block is at each height a transaction confirms at: the server's latest
    // blocks, else our chain below where it meets the server's, else a header asked now.
    let mut at_height: BTreeMap<u32, BlockHash> = BTreeMap::new();
    let mut need_header: Vec<u32> = Vec::new();
    for height in confirmed.values().copied().collect::<HashSet<_>>() {
        let known = latest
            .get(&height)
            .copied()
            .or_else(|| tip.get(height).map(|cp| cp.hash()));
        match known {
            Some(hash) if headers.contains_key(&hash) || new_headers.contains_key(&hash) => {
                at_height.insert(height, hash);
            }
            _ => need_header.push(height),
        }
    }
    need_header.sort_unstable();
    for chunk in need_header.chunks(batch) {
        let got = client.batch_block_header(chunk.iter().copied())?;
        counts.headers += chunk.len();
        for (height, header) in chunk.iter().zip(got) {
            let hash = header.block_hash();
            at_height.insert(*height, hash);
            new_headers.insert(hash, header);
        }
    }
    let header_of = |hash: &BlockHash| headers.get(hash).or_else(|| new_headers.get(hash));

    // Anchors: one already verified in that block is reused; the rest are proved.
    let mut to_prove: Vec<(Txid, usize)> = Vec::new();
    for (txid, height) in &confirmed {
        let hash = at_height[height];
        let verified = graph.graph().get_tx_node(*txid).and_then(|node| {
            node.anchors
                .iter()
                .find(|a| a.block_id.hash == hash)
                .copied()
        });
        match verified {
            Some(anchor) => {
                tx_update.anchors.insert((anchor, *txid));
            }
            None => to_prove.push((*txid, *height as usize)),
        }
    }
    for chunk in to_prove.chunks(batch) {
        let proofs = client.batch_transaction_get_merkle(chunk.iter())?;
        counts.proofs += chunk.len();
        for ((txid, height), proof) in chunk.iter().zip(proofs) {
            let height = *height as u32;
            let hash = at_height[&height];
            let Some(header) = header_of(&hash) else {
                continue;
            };
            if !electrum_client::utils::validate_merkle_proof(txid, &header.merkle_root, &proof) {
                // Not anchored: the transaction does not count as confirmed, and the
                // next sync asks again (the block may have changed meanwhile).
                tracing::warn!(%txid, height, block = %hash, "merkle proof does not verify");
                continue;
            }
            let anchor = ConfirmationBlockTime {
                block_id: BlockId { height, hash },
                confirmation_time: u64::from(header.time),
            };
            tx_update.anchors.insert((anchor, *txid));
        }
    }

    // Every anchor's block goes into the chain update (canonical only if in our chain).
    let mut chain_update = tip;
    for (anchor, _) in &tx_update.anchors {
        let height = anchor.block_id.height;
        if height <= chain_update.height() && chain_update.get(height).is_none() {
            chain_update = chain_update.insert(anchor.block_id);
        }
    }
    Ok(Fetched {
        tx_update,
        chain_update,
        headers: new_headers.into_values().collect(),
        counts,
    })
}

/// The server's tip as a checkpoint that connects to `ours`, and its latest blocks by
/// height (as bdk_electrum's `fetch_tip_and_latest_blocks`): the last
/// [`CHAIN_SUFFIX`] blocks in one request, then our checkpoints from the top until
/// one is also the server's.
fn tip_and_latest(
    client: &ElectrumClient,
    ours: CheckPoint,
    headers: &mut HashMap<BlockHash, Header>,
) -> Result<(CheckPoint, BTreeMap<u32, BlockHash>), Error> {
    let tip_height = u32::try_from(client.block_headers_subscribe()?.height).unwrap_or(u32::MAX);
    // A server below our tip: keep ours (the caller tells a lagging server from a
    // shorter fork before asking).
    if tip_height < ours.height() {
        return Ok((ours, BTreeMap::new()));
    }
    let start = tip_height.saturating_sub(CHAIN_SUFFIX - 1);
    let mut latest: BTreeMap<u32, BlockHash> = BTreeMap::new();
    for (height, header) in (start..).zip(
        client
            .block_headers(start as usize, CHAIN_SUFFIX as usize)?
            .headers,
    ) {
        let hash = header.block_hash();
        latest.insert(height, hash);
        headers.insert(hash, header);
    }
    let mut agreement = None;
    for cp in ours.iter() {
        let height = cp.height();
        let hash = match latest.get(&height) {
            Some(hash) => *hash,
            None => {
                let header = client.block_header(height as usize)?;
                let hash = header.block_hash();
                headers.insert(hash, header);
                latest.insert(height, hash);
                hash
            }
        };
        if hash == cp.hash() {
            agreement = Some(cp);
            break;
        }
    }
    let agreement =
        agreement.ok_or_else(|| Error::Message("no block in common with the server".into()))?;
    let above = agreement.height();
    let tip = agreement
        .extend(
            latest
                .iter()
                .filter(|(height, _)| **height > above)
                .map(|(&height, &hash)| BlockId { height, hash }),
        )
        .map_err(|_| Error::Message("the server's blocks are not in height order".into()))?;
    Ok((tip, latest))
}
