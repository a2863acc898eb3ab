//! What the watcher keeps across restarts, so a restart does not fetch and verify
//! again what it already did: our chain's blocks, the graph's transactions with their
//! verified anchors and seen times, the block headers fetched, and the Electrum status
//! at which each script's history was last synced (a script whose status is the same
//! after the restart is not asked for its history again).
//!
//! The watcher hands out the changes since it last did ([`Watcher::take_cache_changes`]),
//! the service appends them to its store, and a restart merges them back
//! ([`Watcher::with_cache`]). After the graph is pruned the whole cache is handed out
//! instead, to replace what was stored. Everything in it is a cache: losing it costs
//! a full sync, never a wrong view (anchors are keyed by block hash and verified by a
//! merkle proof; which block is at a height is always asked of the server again).

use std::collections::{BTreeMap, HashMap};

use bdk_chain::bitcoin::block::Header;
use bdk_chain::bitcoin::{BlockHash, ScriptBuf};
use bdk_chain::local_chain::{self, LocalChain};
use bdk_chain::spk_txout::SpkTxOutIndex;
use bdk_chain::{indexed_tx_graph, tx_graph, ConfirmationBlockTime, Merge};
use electrum_client::ScriptStatus;
use serde::{Deserialize, Serialize};

use super::graph::Graph;
use super::{Watcher, WatcherConfig};

/// The watcher's cache, or a change to it (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainCache {
    pub chain: local_chain::ChangeSet,
    pub graph: tx_graph::ChangeSet<ConfirmationBlockTime>,
    pub headers: Vec<Header>,
    /// Each script's status when its history was last synced, in order: `None` says
    /// it has none any more (a later entry for a script replaces an earlier one).
    pub synced: Vec<(ScriptBuf, Option<ScriptStatus>)>,
}

impl ChainCache {
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
            && self.graph.is_empty()
            && self.headers.is_empty()
            && self.synced.is_empty()
    }

    /// Add `later` (a change made after this one).
    pub fn merge(&mut self, later: ChainCache) {
        self.chain.merge(later.chain);
        self.graph.merge(later.graph);
        self.headers.extend(later.headers);
        self.synced.extend(later.synced);
    }

    /// The same cache with each header and each script's status once (the latest).
    pub fn compacted(self) -> Self {
        let headers: BTreeMap<BlockHash, Header> = self
            .headers
            .into_iter()
            .map(|h| (h.block_hash(), h))
            .collect();
        let mut synced: BTreeMap<ScriptBuf, Option<ScriptStatus>> = BTreeMap::new();
        synced.extend(self.synced);
        Self {
            chain: self.chain,
            graph: self.graph,
            headers: headers.into_values().collect(),
            synced: synced.into_iter().filter(|(_, s)| s.is_some()).collect(),
        }
    }
}

/// What to store after a sync.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheChanges {
    /// Append it to what is stored.
    Delta(ChainCache),
    /// Replace what is stored with it (the graph was pruned).
    Snapshot(ChainCache),
}

impl Watcher {
    /// A watcher starting from `cache` (merged from what the service stored). A cache
    /// of another network, or whose chain does not start at genesis, is ignored with a
    /// warning: the watcher then syncs everything.
    pub fn with_cache(config: WatcherConfig, cache: ChainCache) -> Self {
        let mut watcher = Self::new(config);
        let genesis = watcher.chain.genesis_hash();
        if cache.chain.blocks.get(&0) != Some(&Some(genesis)) {
            if !cache.is_empty() {
                tracing::warn!("the stored chain cache is not of this network: ignored");
            }
            return watcher;
        }
        let chain = match LocalChain::from_changeset(cache.chain) {
            Ok(chain) => chain,
            Err(e) => {
                tracing::warn!(error = %e, "the stored chain cache is unusable: ignored");
                return watcher;
            }
        };
        watcher.chain = chain;
        let mut graph = Graph::new(SpkTxOutIndex::default());
        graph.apply_changeset(indexed_tx_graph::ChangeSet {
            tx_graph: cache.graph,
            indexer: (),
        });
        watcher.graph = graph;
        watcher.headers = cache
            .headers
            .into_iter()
            .map(|h| (h.block_hash(), h))
            .collect();
        for (spk, status) in cache.synced {
            match status {
                Some(status) => watcher.synced.insert(spk, status),
                None => watcher.synced.remove(&spk),
            };
        }
        watcher
    }

    /// The whole cache as it stands.
    pub fn cache(&self) -> ChainCache {
        ChainCache {
            chain: self.chain.initial_changeset(),
            graph: self.graph.graph().initial_changeset(),
            headers: self.headers.values().copied().collect(),
            synced: self
                .synced
                .iter()
                .map(|(spk, status)| (spk.clone(), Some(*status)))
                .collect(),
        }
    }

    /// What changed since the last call (`None`: nothing).
    pub fn take_cache_changes(&mut self) -> Option<CacheChanges> {
        if std::mem::take(&mut self.cache_replaced) {
            self.cache_changes = ChainCache::default();
            return Some(CacheChanges::Snapshot(self.cache()));
        }
        let changes = std::mem::take(&mut self.cache_changes);
        (!changes.is_empty()).then_some(CacheChanges::Delta(changes))
    }

    /// Record headers fetched by a sync.
    pub(super) fn keep_headers(&mut self, headers: Vec<Header>) {
        for header in headers {
            if self.headers.insert(header.block_hash(), header).is_none() {
                self.cache_changes.headers.push(header);
            }
        }
    }
}

/// The headers a watcher holds, by hash.
pub(super) type Headers = HashMap<BlockHash, Header>;

/// Each script's status at its last sync.
pub(super) type Synced = BTreeMap<ScriptBuf, ScriptStatus>;
