//! The escrow watcher: every registered escrow script is synced through Electrum in
//! batched requests, with bdk_chain keeping the canonical view (reorgs and conflicts
//! resolved by bdk's `LocalChain` and `TxGraph`), and each sync produces a snapshot of
//! every escrow plus the events since the previous one. The watcher only *produces*
//! updates; the engine applies them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bdk_chain::bitcoin::{Amount, BlockHash, Network, OutPoint, ScriptBuf, Transaction, Txid};
use bdk_chain::local_chain::LocalChain;
use bdk_chain::spk_client::SyncRequest;
use bdk_chain::spk_txout::SpkTxOutIndex;
use bdk_chain::{
    BlockId, CanonicalizationParams, ChainPosition, ConfirmationBlockTime, IndexedTxGraph,
};
use bdk_electrum::BdkElectrumClient;
use bitcoin::secp256k1::{Secp256k1, VerifyOnly};
use electrum_client::{Client, ConfigBuilder, ElectrumApi, ScriptStatus};
use serde::Serialize;

use super::broadcast::{self, BroadcastError};
use super::fees::{self, FeeEstimate, FeePolicy};
use crate::policy::{EscrowDescriptor, ObservedSpend};

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
    #[error("the server's chain does not connect to ours: {0}")]
    CannotConnect(String),
}

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TxStatus {
    Unconfirmed,
    Confirmed {
        height: u32,
        block_hash: BlockHash,
        confirmations: u32,
    },
}

impl TxStatus {
    pub fn is_confirmed(&self) -> bool {
        matches!(self, TxStatus::Confirmed { .. })
    }

    pub fn confirmations(&self) -> u32 {
        match self {
            TxStatus::Confirmed { confirmations, .. } => *confirmations,
            TxStatus::Unconfirmed => 0,
        }
    }

    /// Same place in the chain (confirmation counts aside).
    fn same_place(&self, other: &TxStatus) -> bool {
        match (self, other) {
            (TxStatus::Unconfirmed, TxStatus::Unconfirmed) => true,
            (
                TxStatus::Confirmed { block_hash: a, .. },
                TxStatus::Confirmed { block_hash: b, .. },
            ) => a == b,
            _ => false,
        }
    }
}

/// A deposit to the escrow (the funding or a top-up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deposit {
    pub outpoint: OutPoint,
    pub amount: Amount,
    pub status: TxStatus,
    /// The canonical transaction spending it, if any.
    pub spent_by: Option<Txid>,
}

/// A transaction spending the escrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spend {
    pub txid: Txid,
    pub status: TxStatus,
    /// The escrow outputs it spends.
    pub spends: Vec<OutPoint>,
    /// Which path it used (witness run through the interpreter); `Err` says why it
    /// could not be classified.
    pub path: Result<ObservedSpend, String>,
}

/// What the chain says about one escrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EscrowState {
    pub loan_id: LoanId,
    pub deposits: Vec<Deposit>,
    pub spends: Vec<Spend>,
}

impl EscrowState {
    /// Unspent deposits with at least `min_conf` confirmations.
    pub fn confirmed_collateral(&self, min_conf: u32) -> Amount {
        self.deposits
            .iter()
            .filter(|d| d.spent_by.is_none() && d.status.confirmations() >= min_conf.max(1))
            .map(|d| d.amount)
            .sum()
    }

    /// Unspent deposits not yet confirmed.
    pub fn unconfirmed_collateral(&self) -> Amount {
        self.deposits
            .iter()
            .filter(|d| d.spent_by.is_none() && !d.status.is_confirmed())
            .map(|d| d.amount)
            .sum()
    }
}

/// A change since the previous sync. Confirmation counts growing by one block are not
/// events (they are in the snapshot); moving between blocks, leaving or entering the
/// chain is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChainEvent {
    DepositSeen {
        loan_id: LoanId,
        outpoint: OutPoint,
        amount: Amount,
        status: TxStatus,
    },
    DepositConfirmed {
        loan_id: LoanId,
        outpoint: OutPoint,
        height: u32,
    },
    /// Its block left the best chain; it waits in the mempool again.
    DepositReorgedOut {
        loan_id: LoanId,
        outpoint: OutPoint,
    },
    /// No longer in the best chain nor the mempool (replaced, double-spent, evicted).
    DepositGone {
        loan_id: LoanId,
        outpoint: OutPoint,
    },
    SpendSeen {
        loan_id: LoanId,
        txid: Txid,
        status: TxStatus,
        path: Result<ObservedSpend, String>,
    },
    SpendConfirmed {
        loan_id: LoanId,
        txid: Txid,
        height: u32,
    },
    SpendReorgedOut {
        loan_id: LoanId,
        txid: Txid,
    },
    SpendGone {
        loan_id: LoanId,
        txid: Txid,
    },
}

/// One sync's result.
#[derive(Debug, Clone, Serialize)]
pub struct ChainUpdate {
    pub tip: BlockId,
    pub escrows: Vec<EscrowState>,
    pub events: Vec<ChainEvent>,
}

/// Connection status, for the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "chain", rename_all = "snake_case")]
pub enum ConnectionStatus {
    Connected {
        tip_height: u32,
        tip_hash: BlockHash,
    },
    Disconnected {
        since_unix: u64,
        reason: String,
    },
}

/// Reconnection backoff: doubling from `min` to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    next: Duration,
    not_before: Option<Instant>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
            not_before: None,
        }
    }

    fn failed(&mut self) {
        self.not_before = Some(Instant::now() + self.next);
        self.next = (self.next * 2).min(self.max);
    }

    fn succeeded(&mut self) {
        self.next = self.min;
        self.not_before = None;
    }

    fn ready(&self) -> bool {
        self.not_before.is_none_or(|t| Instant::now() >= t)
    }
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
        }
    }
}

type Graph = IndexedTxGraph<ConfirmationBlockTime, SpkTxOutIndex<LoanId>>;

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
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
        }
    }

    /// Watch `descriptor`'s script for `loan_id`.
    pub fn register(
        &mut self,
        loan_id: &str,
        descriptor: EscrowDescriptor,
    ) -> Result<(), WatchError> {
        let spk = descriptor.script_pubkey();
        if let Some(existing) = self.graph.index.spk_at_index(&loan_id.to_owned()) {
            if existing != spk {
                return Err(WatchError::ScriptChanged {
                    loan_id: loan_id.to_owned(),
                });
            }
        } else {
            self.graph.index.insert_spk(loan_id.to_owned(), spk);
            // Scan what the graph already holds for the new script.
            let txs: Vec<_> = self
                .graph
                .graph()
                .full_txs()
                .map(|n| n.tx.clone())
                .collect();
            for tx in txs {
                self.graph.index.scan(&tx);
            }
        }
        self.escrows.insert(loan_id.to_owned(), descriptor);
        self.dirty.insert(loan_id.to_owned());
        Ok(())
    }

    /// Stop watching `loan_id` (its history stays in the graph, unused).
    pub fn unregister(&mut self, loan_id: &str) {
        if let Some(d) = self.escrows.remove(loan_id) {
            self.subscribed.remove(&d.script_pubkey());
        }
        self.last.remove(loan_id);
        self.dirty.remove(loan_id);
    }

    pub fn status(&self) -> &ConnectionStatus {
        &self.status
    }

    pub fn tip(&self) -> BlockId {
        self.chain.tip().block_id()
    }

    fn disconnected(&mut self, reason: String) -> WatchError {
        self.client = None;
        self.subscribed.clear();
        self.config.backoff.failed();
        let since_unix = match &self.status {
            ConnectionStatus::Disconnected { since_unix, .. } => *since_unix,
            ConnectionStatus::Connected { .. } => unix_now(),
        };
        self.status = ConnectionStatus::Disconnected {
            since_unix,
            reason: reason.clone(),
        };
        WatchError::Disconnected {
            url: self.config.url.clone(),
            since_unix,
            reason,
        }
    }

    fn connected(&mut self) -> Result<&BdkElectrumClient<Client>, WatchError> {
        if self.client.is_none() {
            if !self.config.backoff.ready() {
                let reason = "waiting to reconnect (backoff)".to_owned();
                let since_unix = match &self.status {
                    ConnectionStatus::Disconnected { since_unix, .. } => *since_unix,
                    ConnectionStatus::Connected { .. } => unix_now(),
                };
                return Err(WatchError::Disconnected {
                    url: self.config.url.clone(),
                    since_unix,
                    reason,
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
    pub fn sync(&mut self) -> Result<ChainUpdate, WatchError> {
        let started = Instant::now();
        self.refresh_dirty()?;
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
                // The server's chain does not connect to ours: start over from genesis.
                let genesis = self.chain.genesis_hash();
                self.chain = LocalChain::from_genesis_hash(genesis).0;
                return Err(WatchError::CannotConnect(e.to_string()));
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
        let escrows = self.states(tip);
        tracing::debug!(?network_time, total = ?started.elapsed(), synced, watched = self.escrows.len(), "synced");
        let mut events = Vec::new();
        for state in &escrows {
            diff(self.last.get(&state.loan_id), state, &mut events);
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

    fn status_of(&self, position: &ChainPosition<ConfirmationBlockTime>, tip: BlockId) -> TxStatus {
        match position {
            ChainPosition::Confirmed { anchor, .. } => TxStatus::Confirmed {
                height: anchor.block_id.height,
                block_hash: anchor.block_id.hash,
                confirmations: tip.height.saturating_sub(anchor.block_id.height) + 1,
            },
            ChainPosition::Unconfirmed { .. } => TxStatus::Unconfirmed,
        }
    }

    /// Every watched escrow's state, from one canonicalization of the graph.
    fn states(&self, tip: BlockId) -> Vec<EscrowState> {
        let outpoints: Vec<(LoanId, OutPoint)> = self
            .graph
            .index
            .outpoints()
            .iter()
            .filter(|(id, _)| self.escrows.contains_key(id))
            .cloned()
            .collect();
        let mut states: BTreeMap<LoanId, EscrowState> = self
            .escrows
            .keys()
            .map(|id| {
                (
                    id.clone(),
                    EscrowState {
                        loan_id: id.clone(),
                        deposits: Vec::new(),
                        spends: Vec::new(),
                    },
                )
            })
            .collect();
        let mut spends: BTreeMap<(LoanId, Txid), Spend> = BTreeMap::new();
        let txouts = self.graph.graph().filter_chain_txouts(
            &self.chain,
            tip,
            CanonicalizationParams::default(),
            outpoints,
        );
        for (loan_id, full) in txouts {
            let spent_by = full.spent_by.as_ref().map(|(_, txid)| *txid);
            if let Some((position, txid)) = &full.spent_by {
                let status = self.status_of(position, tip);
                let descriptor = &self.escrows[&loan_id];
                let entry = spends
                    .entry((loan_id.clone(), *txid))
                    .or_insert_with(|| Spend {
                        txid: *txid,
                        status,
                        spends: Vec::new(),
                        path: self.classify(descriptor, *txid, full.outpoint),
                    });
                entry.spends.push(full.outpoint);
            }
            if let Some(state) = states.get_mut(&loan_id) {
                state.deposits.push(Deposit {
                    outpoint: full.outpoint,
                    amount: full.txout.value,
                    status: self.status_of(&full.chain_position, tip),
                    spent_by,
                });
            }
        }
        for ((loan_id, _), spend) in spends {
            if let Some(state) = states.get_mut(&loan_id) {
                state.spends.push(spend);
            }
        }
        states
            .into_values()
            .map(|mut s| {
                s.deposits.sort_by_key(|d| d.outpoint);
                s
            })
            .collect()
    }

    fn classify(
        &self,
        descriptor: &EscrowDescriptor,
        txid: Txid,
        spent: OutPoint,
    ) -> Result<ObservedSpend, String> {
        let tx: std::sync::Arc<Transaction> = self
            .graph
            .graph()
            .get_tx(txid)
            .ok_or_else(|| format!("spending tx {txid} not downloaded"))?;
        let index = tx
            .input
            .iter()
            .position(|i| i.previous_output == spent)
            .ok_or_else(|| format!("{txid} does not spend {spent}"))?;
        let txout = self
            .graph
            .graph()
            .get_txout(spent)
            .ok_or_else(|| format!("output {spent} unknown"))?;
        descriptor
            .classify_spend(&self.secp, &tx, index, txout)
            .map_err(|e| e.to_string())
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

/// How one transaction's place changed between two snapshots.
enum Change {
    Seen,
    Confirmed(u32),
    ReorgedOut,
    Gone,
}

fn changes(old: Option<&TxStatus>, new: Option<&TxStatus>) -> Vec<Change> {
    let confirmed = |s: &TxStatus| match s {
        TxStatus::Confirmed { height, .. } => Some(Change::Confirmed(*height)),
        TxStatus::Unconfirmed => None,
    };
    match (old, new) {
        (None, Some(n)) => std::iter::once(Change::Seen).chain(confirmed(n)).collect(),
        (Some(_), None) => vec![Change::Gone],
        (Some(o), Some(n)) if !o.same_place(n) => {
            // Leaving a block is a reorg, whether or not another block has it now.
            let left = o.is_confirmed().then_some(Change::ReorgedOut);
            left.into_iter().chain(confirmed(n)).collect()
        }
        _ => Vec::new(),
    }
}

/// Events turning `before` into `after` (one escrow).
fn diff(before: Option<&EscrowState>, after: &EscrowState, events: &mut Vec<ChainEvent>) {
    let loan_id = || after.loan_id.clone();
    let deposits = |s: Option<&EscrowState>| -> BTreeMap<OutPoint, Deposit> {
        s.map(|s| s.deposits.iter().map(|d| (d.outpoint, d.clone())).collect())
            .unwrap_or_default()
    };
    let (old, new) = (deposits(before), deposits(Some(after)));
    for outpoint in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let (o, n) = (old.get(outpoint), new.get(outpoint));
        for change in changes(o.map(|d| &d.status), n.map(|d| &d.status)) {
            let outpoint = *outpoint;
            events.push(match change {
                Change::Seen => {
                    let d = n.expect("seen means present now");
                    ChainEvent::DepositSeen {
                        loan_id: loan_id(),
                        outpoint,
                        amount: d.amount,
                        status: d.status,
                    }
                }
                Change::Confirmed(height) => ChainEvent::DepositConfirmed {
                    loan_id: loan_id(),
                    outpoint,
                    height,
                },
                Change::ReorgedOut => ChainEvent::DepositReorgedOut {
                    loan_id: loan_id(),
                    outpoint,
                },
                Change::Gone => ChainEvent::DepositGone {
                    loan_id: loan_id(),
                    outpoint,
                },
            });
        }
    }
    let spends = |s: Option<&EscrowState>| -> BTreeMap<Txid, Spend> {
        s.map(|s| s.spends.iter().map(|x| (x.txid, x.clone())).collect())
            .unwrap_or_default()
    };
    let (old, new) = (spends(before), spends(Some(after)));
    for txid in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let (o, n) = (old.get(txid), new.get(txid));
        for change in changes(o.map(|x| &x.status), n.map(|x| &x.status)) {
            let txid = *txid;
            events.push(match change {
                Change::Seen => {
                    let x = n.expect("seen means present now");
                    ChainEvent::SpendSeen {
                        loan_id: loan_id(),
                        txid,
                        status: x.status,
                        path: x.path.clone(),
                    }
                }
                Change::Confirmed(height) => ChainEvent::SpendConfirmed {
                    loan_id: loan_id(),
                    txid,
                    height,
                },
                Change::ReorgedOut => ChainEvent::SpendReorgedOut {
                    loan_id: loan_id(),
                    txid,
                },
                Change::Gone => ChainEvent::SpendGone {
                    loan_id: loan_id(),
                    txid,
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    fn confirmed(height: u32, hash: u8) -> TxStatus {
        TxStatus::Confirmed {
            height,
            block_hash: BlockHash::from_byte_array([hash; 32]),
            confirmations: 1,
        }
    }

    fn kinds(c: Vec<Change>) -> Vec<String> {
        c.into_iter()
            .map(|c| match c {
                Change::Seen => "seen".to_owned(),
                Change::Confirmed(h) => format!("confirmed@{h}"),
                Change::ReorgedOut => "reorged".to_owned(),
                Change::Gone => "gone".to_owned(),
            })
            .collect()
    }

    #[test]
    fn status_changes_become_events() {
        let u = TxStatus::Unconfirmed;
        assert_eq!(kinds(changes(None, Some(&u))), ["seen"]);
        assert_eq!(
            kinds(changes(None, Some(&confirmed(5, 1)))),
            ["seen", "confirmed@5"]
        );
        assert_eq!(
            kinds(changes(Some(&u), Some(&confirmed(5, 1)))),
            ["confirmed@5"]
        );
        assert_eq!(
            kinds(changes(Some(&confirmed(5, 1)), Some(&u))),
            ["reorged"]
        );
        // Same height, another block: out of one block, into another.
        assert_eq!(
            kinds(changes(Some(&confirmed(5, 1)), Some(&confirmed(5, 2)))),
            ["reorged", "confirmed@5"]
        );
        assert!(changes(Some(&confirmed(5, 1)), Some(&confirmed(5, 1))).is_empty());
        assert_eq!(kinds(changes(Some(&u), None)), ["gone"]);
    }
}
