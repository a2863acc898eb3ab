//! The escrow watcher: every registered escrow script is synced through Electrum in
//! batched requests, with bdk_chain keeping the canonical view (reorgs and conflicts
//! resolved by bdk's `LocalChain` and `TxGraph`), and each sync produces a snapshot of
//! every escrow plus the events since the previous one. The watcher only *produces*
//! updates; the engine applies them.

mod cache;
mod connection;
mod diff;
mod fetch;
mod graph;
mod state;
mod sync;

pub use cache::{CacheChanges, ChainCache};
pub use connection::{Backoff, ConnectionStatus};
pub use diff::ChainEvent;
pub use fetch::SyncRequests;
pub use state::{Deposit, EscrowState, Spend, TxStatus};
pub use sync::Divergence;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bdk_chain::bitcoin::{BlockHash, Network, ScriptBuf};
use bdk_chain::local_chain::LocalChain;
use bdk_chain::spk_txout::SpkTxOutIndex;
use bdk_chain::BlockId;
use bitcoin::secp256k1::{Secp256k1, VerifyOnly};
use electrum_client::{ElectrumApi, ScriptStatus};
use serde::Serialize;

use super::fees::FeePolicy;
use super::transport::{ConnectError, Connector, ElectrumClient, TlsConfig};
use crate::policy::EscrowDescriptor;
use connection::unix_now;
use graph::Graph;

/// Identifies an escrow: the id of the loan it secures.
pub type LoanId = String;

/// Errors of the watcher.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("disconnected from {url} since {since_unix}: {reason}")]
    Disconnected {
        url: String,
        since_unix: u64,
        reason: String,
    },
    /// The connection could not be set up for a reason that needs an operator: the
    /// URL, the TLS settings (CA file) or a refused server certificate. Retried after
    /// the backoff like any failed connection; the status says disconnected.
    #[error("{error}")]
    Connect {
        url: String,
        since_unix: u64,
        error: Box<ConnectError>,
    },
    #[error("loan {loan_id} is already watched with a different escrow script")]
    ScriptChanged { loan_id: LoanId },
    #[error("the escrow script of loan {loan_id} is already watched for loan {other}")]
    ScriptShared { loan_id: LoanId, other: LoanId },
    /// The server's block 0 is not the configured network's genesis block.
    #[error(
        "electrum server {url} is not on {network}: its genesis block is {found}, \
         {network}'s is {expected}"
    )]
    WrongNetwork {
        url: String,
        network: Network,
        expected: BlockHash,
        found: BlockHash,
    },
    /// Every escrow is then synced again from genesis (see [`Watcher::sync`]).
    #[error("the chain of electrum server {url} does not connect to ours: {divergence}")]
    CannotConnect {
        url: String,
        #[source]
        divergence: Divergence,
    },
}

/// One sync's result.
#[derive(Debug, Clone, Serialize)]
pub struct ChainUpdate {
    pub tip: BlockId,
    pub escrows: Vec<EscrowState>,
    pub events: Vec<ChainEvent>,
}

#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// `tcp://host:port` or `ssl://host:port`.
    pub url: String,
    pub network: Network,
    /// How the server's certificate is checked on an `ssl://` URL.
    pub tls: TlsConfig,
    /// Bounds the TCP connect and every socket read and write.
    pub timeout: Duration,
    /// Scripts per batched Electrum request.
    pub batch_size: usize,
    pub backoff: Backoff,
    pub fees: FeePolicy,
    /// Re-sync every script this often even without a status notification (a safety
    /// net under the subscriptions).
    pub full_resync_every: Duration,
    /// The transaction graph is rebuilt from the watched escrows once this many
    /// escrows (or as many as are watched, if more) have been unregistered since the
    /// last rebuild: memory stays proportional to the watched escrows, and rebuilding
    /// costs O(1) amortized per unregister.
    pub prune_after_unregistered: usize,
}

impl WatcherConfig {
    pub fn new(url: &str, network: Network) -> Self {
        Self {
            url: url.to_owned(),
            network,
            tls: TlsConfig::default(),
            timeout: Duration::from_secs(60),
            batch_size: 500,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            fees: FeePolicy::default(),
            full_resync_every: Duration::from_secs(600),
            prune_after_unregistered: 64,
        }
    }

    /// Parse the URL and load the TLS settings (the CA file): for checking the
    /// configuration at start; the watcher does the same on its first connect.
    pub fn connector(&self) -> Result<Connector, ConnectError> {
        Connector::new(&self.url, &self.tls)
    }
}

pub struct Watcher {
    config: WatcherConfig,
    /// Built on the first connect (see [`WatcherConfig::connector`]).
    connector: Option<Connector>,
    client: Option<ElectrumClient>,
    chain: LocalChain,
    graph: Graph,
    escrows: BTreeMap<LoanId, EscrowDescriptor>,
    last: BTreeMap<LoanId, EscrowState>,
    status: ConnectionStatus,
    secp: Secp256k1<VerifyOnly>,
    last_sync_time: u64,
    /// Electrum status hash of every subscribed script on the current connection
    /// (empty after a reconnect, so everything is synced again).
    subscribed: HashMap<ScriptBuf, Option<ScriptStatus>>,
    /// Escrows whose script changed since their last successful sync.
    dirty: BTreeSet<LoanId>,
    last_full_resync: Instant,
    /// Escrows unregistered since the graph was last rebuilt.
    unregistered_since_prune: usize,
    /// Block headers fetched, by hash (see [`fetch`]).
    headers: cache::Headers,
    /// Each script's Electrum status when its history was last synced: a script
    /// subscribed again (after a reconnect or a restart) with the same status is not
    /// synced again.
    synced: cache::Synced,
    /// Changes to hand out for storing (see [`Watcher::take_cache_changes`]).
    cache_changes: ChainCache,
    /// The graph was rebuilt: the whole cache is handed out next.
    cache_replaced: bool,
    /// Scripts were registered since the graph was last scanned for them.
    needs_rescan: bool,
    last_requests: SyncRequests,
}

impl Watcher {
    /// A watcher that connects lazily (on the first sync).
    pub fn new(config: WatcherConfig) -> Self {
        let genesis = bitcoin::constants::genesis_block(config.network).block_hash();
        let (chain, genesis_block) = LocalChain::from_genesis_hash(genesis);
        Self {
            config,
            connector: None,
            client: None,
            chain,
            graph: Graph::new(SpkTxOutIndex::default()),
            escrows: BTreeMap::new(),
            last: BTreeMap::new(),
            status: ConnectionStatus::Disconnected {
                since_unix: unix_now(),
                reason: "not connected yet".into(),
            },
            secp: Secp256k1::verification_only(),
            last_sync_time: 0,
            subscribed: HashMap::new(),
            dirty: BTreeSet::new(),
            last_full_resync: Instant::now(),
            unregistered_since_prune: 0,
            headers: Default::default(),
            synced: Default::default(),
            cache_changes: ChainCache {
                chain: genesis_block,
                ..ChainCache::default()
            },
            cache_replaced: false,
            needs_rescan: false,
            last_requests: SyncRequests::default(),
        }
    }

    /// Watch `descriptor`'s script for `loan_id`.
    pub fn register(
        &mut self,
        loan_id: &str,
        descriptor: EscrowDescriptor,
    ) -> Result<(), WatchError> {
        let id = loan_id.to_owned();
        let spk = descriptor.script_pubkey();
        if let Some(existing) = self.escrows.get(loan_id) {
            if existing.script_pubkey() != spk {
                return Err(WatchError::ScriptChanged { loan_id: id });
            }
        }
        if let Some(other) = self.graph.index.index_of_spk(spk.clone()) {
            if *other != id && self.escrows.contains_key(other) {
                return Err(WatchError::ScriptShared {
                    loan_id: id,
                    other: other.clone(),
                });
            }
        }
        // The index keeps unregistered escrows until the next prune: one left behind
        // under this id or this script would hide the new script's outputs.
        let stale_id = self
            .graph
            .index
            .spk_at_index(&id)
            .is_some_and(|old| old != spk);
        let stale_spk = self
            .graph
            .index
            .index_of_spk(spk.clone())
            .is_some_and(|other| *other != id);
        if stale_id || stale_spk {
            self.prune();
        }
        if self.graph.index.insert_spk(id.clone(), spk) {
            // What the graph already holds for the new script is scanned before the
            // next sync, once for every script registered meanwhile.
            self.needs_rescan = true;
        }
        // Synced once subscribed, unless its status is the one it was last synced at
        // (a restart from the cache); a script already subscribed is synced now.
        if self.subscribed.contains_key(&descriptor.script_pubkey()) {
            self.dirty.insert(id.clone());
        }
        self.escrows.insert(id, descriptor);
        Ok(())
    }

    /// Stop watching `loan_id`. Its script is unsubscribed on the server, so that
    /// registering it again subscribes it anew (and reports its history again). If the
    /// server cannot be told, the connection is dropped: a new one starts with no
    /// subscriptions.
    pub fn unregister(&mut self, loan_id: &str) {
        self.last.remove(loan_id);
        self.dirty.remove(loan_id);
        let Some(descriptor) = self.escrows.remove(loan_id) else {
            return;
        };
        self.unregistered_since_prune += 1;
        let threshold = self.config.prune_after_unregistered.max(self.escrows.len());
        if self.unregistered_since_prune >= threshold {
            self.prune();
        }
        let spk = descriptor.script_pubkey();
        if self.subscribed.remove(&spk).is_none() {
            return;
        }
        if let Some(client) = &self.client {
            match client.script_unsubscribe(&spk) {
                // `false`: the server no longer had it; either way it is gone.
                Ok(_) | Err(electrum_client::Error::NotSubscribed(_)) => {}
                Err(e) => {
                    let _ = self.disconnected(format!("unsubscribing loan {loan_id}: {e}"));
                }
            }
        }
    }

    /// Rebuild the graph from the transactions the watched escrows need (and the
    /// client's caches from the graph), forgetting the unregistered ones.
    fn prune(&mut self) {
        let before = self.graph_tx_count();
        let watched = self
            .escrows
            .iter()
            .map(|(id, d)| (id.clone(), d.script_pubkey()));
        self.graph = graph::rebuild(&self.graph, watched);
        self.unregistered_since_prune = 0;
        self.needs_rescan = false;
        let watched: std::collections::HashSet<ScriptBuf> =
            self.escrows.values().map(|d| d.script_pubkey()).collect();
        self.synced.retain(|spk, _| watched.contains(spk));
        self.cache_replaced = true;
        tracing::debug!(before, after = self.graph_tx_count(), "pruned the graph");
    }

    /// A transaction the watcher holds (a deposit's or a spend's): what a decision needs
    /// to put each input's previous transaction in its PSBT.
    pub fn transaction(
        &self,
        txid: bdk_chain::bitcoin::Txid,
    ) -> Option<std::sync::Arc<bdk_chain::bitcoin::Transaction>> {
        self.graph.graph().get_tx(txid)
    }

    /// Scan every transaction of the graph for the scripts registered since the last
    /// scan.
    fn rescan(&mut self) {
        let txs: Vec<_> = self.graph.graph().full_txs().map(|n| n.tx).collect();
        for tx in txs {
            self.graph.index.scan(&tx);
        }
        self.needs_rescan = false;
    }

    /// Transactions in the graph (for tests and metrics: it stays proportional to the
    /// watched escrows).
    pub fn graph_tx_count(&self) -> usize {
        self.graph.graph().full_txs().count()
    }

    /// What the last successful sync asked the server.
    pub fn last_sync_requests(&self) -> SyncRequests {
        self.last_requests
    }

    /// Whether batches of subscriptions go to the server as one JSON-RPC array (see
    /// `chain::transport`); `None` before the first connection.
    pub fn uses_batch_arrays(&self) -> Option<bool> {
        self.connector.as_ref().and_then(Connector::uses_arrays)
    }

    pub fn status(&self) -> &ConnectionStatus {
        &self.status
    }

    pub fn tip(&self) -> BlockId {
        self.chain.tip().block_id()
    }
}
