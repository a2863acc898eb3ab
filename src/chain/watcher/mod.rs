//! The escrow watcher: every registered escrow script is synced through Electrum in
//! batched requests, with bdk_chain keeping the canonical view (reorgs and conflicts
//! resolved by bdk's `LocalChain` and `TxGraph`), and each sync produces a snapshot of
//! every escrow plus the events since the previous one. The watcher only *produces*
//! updates; the engine applies them.

mod connection;
mod diff;
mod graph;
mod state;

pub use connection::{Backoff, ConnectionStatus};
pub use diff::ChainEvent;
pub use state::{Deposit, EscrowState, Spend, TxStatus};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use bdk_chain::bitcoin::{BlockHash, Network, ScriptBuf, Transaction, Txid};
use bdk_chain::local_chain::LocalChain;
use bdk_chain::spk_client::SyncRequest;
use bdk_chain::spk_txout::SpkTxOutIndex;
use bdk_chain::BlockId;
use bdk_electrum::BdkElectrumClient;
use bitcoin::secp256k1::{Secp256k1, VerifyOnly};
use electrum_client::{Client, ConfigBuilder, ElectrumApi, ScriptStatus};
use serde::Serialize;

use super::broadcast::{self, BroadcastError};
use super::fees::{self, FeeEstimate, FeePolicy};
use crate::policy::EscrowDescriptor;
use connection::unix_now;
use graph::Graph;
use state::View;

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

/// How the server's chain fails to connect to ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Divergence {
    /// The server's tip is below ours and its block at `height` is not ours: it serves
    /// a shorter fork (bdk would keep our longer chain as if the server were lagging).
    #[error(
        "its tip {server_tip} is below ours {our_tip} and its block at height {height} is \
         {theirs}, ours is {ours}"
    )]
    ShorterFork {
        server_tip: u32,
        our_tip: u32,
        height: u32,
        ours: BlockHash,
        theirs: BlockHash,
    },
    /// bdk could not apply the server's blocks to our chain.
    #[error("the update needs our block at height {try_include_height}")]
    Update { try_include_height: u32 },
}

/// One sync's result.
#[derive(Debug, Clone, Serialize)]
pub struct ChainUpdate {
    pub tip: BlockId,
    pub escrows: Vec<EscrowState>,
    pub events: Vec<ChainEvent>,
}

pub struct WatcherConfig {
    pub url: String,
    pub network: Network,
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
            batch_size: 100,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            fees: FeePolicy::default(),
            full_resync_every: Duration::from_secs(600),
            prune_after_unregistered: 64,
        }
    }
}

pub struct Watcher {
    config: WatcherConfig,
    client: Option<BdkElectrumClient<Client>>,
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
}

impl Watcher {
    /// A watcher that connects lazily (on the first sync).
    pub fn new(config: WatcherConfig) -> Self {
        let genesis = bitcoin::constants::genesis_block(config.network).block_hash();
        let (chain, _) = LocalChain::from_genesis_hash(genesis);
        Self {
            config,
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
            // Scan what the graph already holds for the new script.
            let txs: Vec<_> = self.graph.graph().full_txs().map(|n| n.tx).collect();
            for tx in txs {
                self.graph.index.scan(&tx);
            }
        }
        self.escrows.insert(id.clone(), descriptor);
        self.dirty.insert(id);
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
            match client.inner.script_unsubscribe(&spk) {
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
        self.renew_client_caches(true);
        tracing::debug!(before, after = self.graph_tx_count(), "pruned the graph");
    }

    /// Transactions in the graph (for tests and metrics: it stays proportional to the
    /// watched escrows).
    pub fn graph_tx_count(&self) -> usize {
        self.graph.graph().full_txs().count()
    }

    pub fn status(&self) -> &ConnectionStatus {
        &self.status
    }

    pub fn tip(&self) -> BlockId {
        self.chain.tip().block_id()
    }

    /// Drop the connection (the server forgets our subscriptions with it), start the
    /// backoff and report `reason`; returns since when we are disconnected.
    fn drop_connection(&mut self, reason: String) -> u64 {
        self.client = None;
        self.subscribed.clear();
        self.config.backoff.failed();
        let since_unix = self.disconnected_since();
        self.status = ConnectionStatus::Disconnected { since_unix, reason };
        since_unix
    }

    fn disconnected_since(&self) -> u64 {
        match &self.status {
            ConnectionStatus::Disconnected { since_unix, .. } => *since_unix,
            ConnectionStatus::Connected { .. } => unix_now(),
        }
    }

    fn disconnected(&mut self, reason: String) -> WatchError {
        let since_unix = self.drop_connection(reason.clone());
        WatchError::Disconnected {
            url: self.config.url.clone(),
            since_unix,
            reason,
        }
    }

    /// The current connection, or a new one to a server on our network.
    fn connected(&mut self) -> Result<&BdkElectrumClient<Client>, WatchError> {
        if self.client.is_none() {
            if !self.config.backoff.ready() {
                return Err(WatchError::Disconnected {
                    url: self.config.url.clone(),
                    since_unix: self.disconnected_since(),
                    reason: "waiting to reconnect (backoff)".to_owned(),
                });
            }
            // retry(0): a reconnect inside electrum-client would silently drop our script
            // subscriptions; reconnecting here clears them and syncs everything again.
            let config = ConfigBuilder::new()
                .timeout(Some(Duration::from_secs(60)))
                .retry(0)
                .build();
            let client = match Client::from_config(&self.config.url, config) {
                Ok(c) => c,
                Err(e) => return Err(self.disconnected(e.to_string())),
            };
            // Block 0 hashed here, not the genesis the server claims in its features.
            let found = match client.block_header(0) {
                Ok(header) => header.block_hash(),
                Err(e) => return Err(self.disconnected(format!("reading block 0: {e}"))),
            };
            let expected = self.chain.genesis_hash();
            if found != expected {
                let err = WatchError::WrongNetwork {
                    url: self.config.url.clone(),
                    network: self.config.network,
                    expected,
                    found,
                };
                self.drop_connection(err.to_string());
                return Err(err);
            }
            if let Err(e) = client.block_headers_subscribe() {
                return Err(self.disconnected(e.to_string()));
            }
            let bdk = BdkElectrumClient::new(client);
            bdk.populate_tx_cache(self.graph.graph().full_txs().map(|n| n.tx));
            self.client = Some(bdk);
        }
        Ok(self.client.as_ref().expect("set just above"))
    }

    /// Wait up to `timeout` for a new block announced by the header subscription;
    /// true if one arrived. A broken connection returns an error (and is dropped).
    pub fn wait_for_block(&mut self, timeout: Duration) -> Result<bool, WatchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let popped = self.connected()?.inner.block_headers_pop();
            match popped {
                Ok(Some(_)) => {
                    // Drain the rest: one sync covers them all.
                    while let Ok(Some(_)) = self.connected()?.inner.block_headers_pop() {}
                    return Ok(true);
                }
                Ok(None) => {}
                Err(e) => return Err(self.disconnected(e.to_string())),
            }
            // The subscription is only read when the socket is read; a ping does that.
            if let Err(e) = self.connected()?.inner.ping() {
                return Err(self.disconnected(e.to_string()));
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Subscribe new scripts and collect the escrows whose Electrum status changed
    /// (the status hash covers confirmed and mempool history, reorgs included).
    fn refresh_dirty(&mut self) -> Result<(), WatchError> {
        let batch = self.config.batch_size.max(1);
        let unsubscribed: Vec<(LoanId, ScriptBuf)> = self
            .escrows
            .iter()
            .map(|(id, d)| (id.clone(), d.script_pubkey()))
            .filter(|(_, spk)| !self.subscribed.contains_key(spk))
            .collect();
        for chunk in unsubscribed.chunks(batch) {
            let answer = self
                .connected()?
                .inner
                .batch_script_subscribe(chunk.iter().map(|(_, spk)| spk.as_script()));
            let statuses = match answer {
                Ok(s) => s,
                Err(e) => return Err(self.disconnected(format!("subscribing: {e}"))),
            };
            for ((id, spk), status) in chunk.iter().zip(statuses) {
                self.subscribed.insert(spk.clone(), status);
                self.dirty.insert(id.clone());
            }
        }
        if self.last_full_resync.elapsed() >= self.config.full_resync_every {
            self.dirty.extend(self.escrows.keys().cloned());
            self.last_full_resync = Instant::now();
        }
        // A round trip makes the client read every notification sent before it.
        if let Err(e) = self.connected()?.inner.ping() {
            return Err(self.disconnected(e.to_string()));
        }
        let client = self.client.as_ref().expect("connected above");
        for (id, d) in &self.escrows {
            let spk = d.script_pubkey();
            while let Ok(Some(status)) = client.inner.script_pop(&spk) {
                if self.subscribed.get(&spk) != Some(&Some(status)) {
                    self.subscribed.insert(spk.clone(), Some(status));
                    self.dirty.insert(id.clone());
                }
            }
        }
        Ok(())
    }

    /// Sync the watched scripts that changed (all of them after a connect) and return
    /// the snapshot of every escrow and the events since the previous successful sync.
    /// While disconnected it returns an error and reports nothing (nothing is guessed).
    ///
    /// If the server's chain does not connect to ours, our chain is dropped, every
    /// escrow marked for a full rescan, the status set to disconnected with the reason
    /// and [`WatchError::CannotConnect`] returned; the next sync rebuilds the view from
    /// genesis and reports only what differs from the last snapshot.
    pub fn sync(&mut self) -> Result<ChainUpdate, WatchError> {
        let started = Instant::now();
        self.refresh_dirty()?;
        if let Some(divergence) = self.shorter_fork()? {
            return Err(self.resync_from_genesis(divergence));
        }
        // bdk only counts seen/evicted times that increase.
        let now = unix_now().max(self.last_sync_time + 1);
        let tip_cp = self.chain.tip();
        let dirty_spks: HashSet<ScriptBuf> = self
            .dirty
            .iter()
            .filter_map(|id| self.escrows.get(id))
            .map(|d| d.script_pubkey())
            .collect();
        let request = SyncRequest::builder_at(now)
            .chain_tip(tip_cp.clone())
            .spks_with_indexes(self.dirty.iter().filter_map(|id| {
                self.escrows
                    .get(id)
                    .map(|d| (id.clone(), d.script_pubkey()))
            }))
            .expected_spk_txids(
                self.graph
                    .list_expected_spk_txids(&self.chain, tip_cp.block_id(), ..)
                    .filter(|(spk, _)| dirty_spks.contains(spk)),
            )
            .build();
        let batch = self.config.batch_size;
        // Previous outputs of foreign inputs are not needed: an escrow spend's own
        // inputs are escrow outputs already in the graph.
        let response = match self.connected()?.sync(request, batch, false) {
            Ok(r) => r,
            Err(e) => return Err(self.disconnected(format!("{e:?}"))),
        };
        if let Some(update) = response.chain_update {
            if let Err(e) = self.chain.apply_update(update) {
                return Err(self.resync_from_genesis(Divergence::Update {
                    try_include_height: e.try_include_height,
                }));
            }
        }
        let _ = self.graph.apply_update(response.tx_update);
        self.last_sync_time = now;
        let synced = self.dirty.len();
        self.dirty.clear();
        self.config.backoff.succeeded();
        let tip = self.chain.tip().block_id();
        self.status = ConnectionStatus::Connected {
            tip_height: tip.height,
            tip_hash: tip.hash,
        };

        let network_time = started.elapsed();
        let escrows = View {
            graph: &self.graph,
            chain: &self.chain,
            escrows: &self.escrows,
            secp: &self.secp,
        }
        .states(tip);
        tracing::debug!(?network_time, total = ?started.elapsed(), synced, watched = self.escrows.len(), "synced");
        let mut events = Vec::new();
        for state in &escrows {
            diff::diff(self.last.get(&state.loan_id), state, &mut events);
        }
        self.last = escrows
            .iter()
            .map(|s| (s.loan_id.clone(), s.clone()))
            .collect();
        Ok(ChainUpdate {
            tip,
            escrows,
            events,
        })
    }

    /// A server whose tip is below ours is lagging or on a shorter fork; bdk assumes
    /// the former. Tell them apart by the server's block at our highest checkpoint at
    /// or below its tip.
    fn shorter_fork(&mut self) -> Result<Option<Divergence>, WatchError> {
        let ours = self.chain.tip();
        let answer = self.connected()?.inner.block_headers_subscribe();
        let server_tip = match answer {
            Ok(tip) => u32::try_from(tip.height).unwrap_or(u32::MAX),
            Err(e) => return Err(self.disconnected(format!("reading the tip: {e}"))),
        };
        if server_tip >= ours.height() {
            return Ok(None);
        }
        let common = ours
            .iter()
            .find(|cp| cp.height() <= server_tip)
            .expect("every chain holds block 0, and no tip is below it");
        let answer = self
            .connected()?
            .inner
            .block_header(common.height() as usize);
        let theirs = match answer {
            Ok(header) => header.block_hash(),
            Err(e) => return Err(self.disconnected(format!("reading a block header: {e}"))),
        };
        Ok((theirs != common.hash()).then(|| Divergence::ShorterFork {
            server_tip,
            our_tip: ours.height(),
            height: common.height(),
            ours: common.hash(),
            theirs,
        }))
    }

    /// Forget our chain and the client's caches of it (block headers and anchors of
    /// the old chain would be trusted again otherwise), mark every escrow for a full
    /// rescan and report the divergence. The graph, the subscriptions and the last
    /// snapshot stay: the rescan re-anchors every transaction still in the server's
    /// chain, so only real changes become events.
    fn resync_from_genesis(&mut self, divergence: Divergence) -> WatchError {
        self.chain = LocalChain::from_genesis_hash(self.chain.genesis_hash()).0;
        self.dirty.extend(self.escrows.keys().cloned());
        self.renew_client_caches(false);
        let err = WatchError::CannotConnect {
            url: self.config.url.clone(),
            divergence,
        };
        tracing::warn!(%err, "resyncing every escrow from genesis");
        self.status = ConnectionStatus::Disconnected {
            since_unix: self.disconnected_since(),
            reason: format!("{err}; resyncing every escrow from genesis"),
        };
        err
    }

    /// Replace the bdk client around the same connection (so the subscriptions stay),
    /// emptying its caches; refill the transaction cache (and, if `anchors`, the anchor
    /// cache) from the graph.
    fn renew_client_caches(&mut self, anchors: bool) {
        let Some(old) = self.client.take() else {
            return;
        };
        let fresh = BdkElectrumClient::new(old.inner);
        let graph = self.graph.graph();
        fresh.populate_tx_cache(graph.full_txs().map(|n| n.tx));
        if anchors {
            fresh.populate_anchor_cache(
                graph
                    .full_txs()
                    .map(|n| (n.txid, n.anchors.iter().copied().collect::<Vec<_>>())),
            );
        }
        self.client = Some(fresh);
    }

    /// Broadcast through the current connection (see [`broadcast::broadcast`]).
    pub fn broadcast(&mut self, tx: &Transaction) -> Result<Txid, BroadcastError> {
        let txid = tx.compute_txid();
        let client = self.connected().map_err(|e| BroadcastError::Connection {
            txid,
            message: e.to_string(),
        })?;
        let result = broadcast::broadcast(&client.inner, tx);
        if let Err(BroadcastError::Connection { message, .. }) = &result {
            let _ = self.disconnected(message.clone());
        }
        result
    }

    /// The server's fee estimate for `target` blocks, clamped (falls back when
    /// disconnected, and says so).
    pub fn fee_estimate(&mut self, target: usize) -> FeeEstimate {
        let policy = self.config.fees;
        match self.connected() {
            Ok(client) => fees::estimate(&client.inner, target, &policy),
            Err(e) => policy.apply(Err(e.to_string())),
        }
    }
}
