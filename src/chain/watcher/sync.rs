//! One sync: which escrows changed, their batched requests (see [`super::fetch`]), the
//! update applied to our chain and graph, the snapshot and its events; and what
//! happens when the server's chain does not connect to ours.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use bdk_chain::bitcoin::{BlockHash, ScriptBuf, Txid};
use bdk_chain::local_chain::LocalChain;
use bdk_chain::Merge;
use electrum_client::ElectrumApi;

use super::connection::unix_now;
use super::fetch::{self, ScriptToSync};
use super::state::View;
use super::{diff, ChainUpdate, ConnectionStatus, LoanId, WatchError, Watcher};

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

impl Watcher {
    /// Subscribe new scripts and collect the escrows whose Electrum status changed
    /// (the status hash covers confirmed and mempool history, reorgs included).
    pub(super) fn refresh_dirty(&mut self) -> Result<(), WatchError> {
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
                .batch_script_subscribe(chunk.iter().map(|(_, spk)| spk.as_script()));
            let statuses = match answer {
                Ok(s) => s,
                Err(e) => return Err(self.disconnected(format!("subscribing: {e}"))),
            };
            for ((id, spk), status) in chunk.iter().zip(statuses) {
                // The same status as at its last sync: the same history, already ours
                // (unless something else asks for a sync).
                let unchanged = status.is_some() && self.synced.get(spk) == status.as_ref();
                if !unchanged {
                    self.dirty.insert(id.clone());
                }
                self.subscribed.insert(spk.clone(), status);
            }
        }
        if self.last_full_resync.elapsed() >= self.config.full_resync_every {
            self.dirty.extend(self.escrows.keys().cloned());
            self.last_full_resync = Instant::now();
        }
        // A round trip makes the client read every notification sent before it.
        if let Err(e) = self.connected()?.ping() {
            return Err(self.disconnected(e.to_string()));
        }
        let client = self.client.as_ref().expect("connected above");
        for (id, d) in &self.escrows {
            let spk = d.script_pubkey();
            while let Ok(Some(status)) = client.script_pop(&spk) {
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
        match self.sync_once(false) {
            // A status the client could not parse renewed the connection: once more.
            Err(WatchError::Disconnected { reason, .. })
                if super::connection::is_null_status(&reason) =>
            {
                self.sync_once(false)
            }
            other => other,
        }
    }

    fn sync_once(&mut self, after_reorg: bool) -> Result<ChainUpdate, WatchError> {
        let started = Instant::now();
        self.refresh_dirty()?;
        let subscribed = started.elapsed();
        if let Some(divergence) = self.shorter_fork()? {
            return Err(self.resync_from_genesis(divergence));
        }
        if self.needs_rescan {
            self.rescan();
        }
        // bdk only counts seen/evicted times that increase.
        let now = unix_now().max(self.last_sync_time + 1);
        let tip_cp = self.chain.tip();
        let mut expected: HashMap<ScriptBuf, HashSet<Txid>> = self
            .dirty
            .iter()
            .filter_map(|id| self.escrows.get(id))
            .map(|d| (d.script_pubkey(), HashSet::new()))
            .collect();
        for (spk, txid) in self
            .graph
            .list_expected_spk_txids(&self.chain, tip_cp.block_id(), ..)
        {
            if let Some(set) = expected.get_mut(&spk) {
                set.insert(txid);
            }
        }
        let scripts: Vec<ScriptToSync> = expected
            .into_iter()
            .map(|(spk, expected)| ScriptToSync {
                empty: self.subscribed.get(&spk) == Some(&None),
                spk,
                expected,
            })
            .collect();
        self.connected()?;
        let client = self.client.as_ref().expect("connected just above");
        let fetched = fetch::fetch(
            client,
            tip_cp,
            &scripts,
            &self.graph,
            &self.headers,
            self.config.batch_size,
            now,
        );
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => return Err(self.disconnected(format!("{e:?}"))),
        };
        let before = self.chain.tip();
        let reorged_from = match self.chain.apply_update(fetched.chain_update) {
            Ok(changes) => {
                let reorged_from = changes
                    .blocks
                    .iter()
                    .find(|(height, hash)| {
                        before
                            .get(**height)
                            .is_some_and(|cp| Some(cp.hash()) != **hash)
                    })
                    .map(|(height, _)| *height);
                self.cache_changes.chain.merge(changes);
                reorged_from
            }
            Err(e) => {
                return Err(self.resync_from_genesis(Divergence::Update {
                    try_include_height: e.try_include_height,
                }));
            }
        };
        let changes = self.graph.apply_update(fetched.tx_update);
        self.cache_changes.graph.merge(changes.tx_graph);
        self.keep_headers(fetched.headers);
        for script in &scripts {
            match self.subscribed.get(&script.spk) {
                Some(Some(status)) => {
                    if self.synced.insert(script.spk.clone(), *status) != Some(*status) {
                        self.cache_changes
                            .synced
                            .push((script.spk.clone(), Some(*status)));
                    }
                }
                _ => {
                    if self.synced.remove(&script.spk).is_some() {
                        self.cache_changes.synced.push((script.spk.clone(), None));
                    }
                }
            }
        }
        self.last_sync_time = now;
        let synced = self.dirty.len();
        self.dirty.clear();
        // Blocks replaced under transactions we hold: an escrow whose history kept
        // its heights has the same status, so no notification says it changed; its
        // transactions are asked again now (they sit in other blocks).
        if let Some(height) = reorged_from.filter(|_| !after_reorg) {
            self.dirty_above(height);
            if !self.dirty.is_empty() {
                tracing::info!(
                    height,
                    escrows = self.dirty.len(),
                    "blocks replaced: syncing their escrows again"
                );
                return self.sync_once(true);
            }
        }
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
        let requests = fetched.counts;
        tracing::debug!(?subscribed, ?network_time, total = ?started.elapsed(), synced, watched = self.escrows.len(), ?requests, "synced");
        self.last_requests = requests;
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

    /// Mark for a sync every escrow with a transaction anchored at `height` or above.
    fn dirty_above(&mut self, height: u32) {
        let mut dirty = Vec::new();
        for node in self.graph.graph().full_txs() {
            if node.anchors.iter().any(|a| a.block_id.height >= height) {
                for (id, _) in self.graph.index.relevant_spks_of_tx(&node.tx) {
                    if self.escrows.contains_key(&id) {
                        dirty.push(id);
                    }
                }
            }
        }
        self.dirty.extend(dirty);
    }

    /// A server whose tip is below ours is lagging or on a shorter fork; bdk assumes
    /// the former. Tell them apart by the server's block at our highest checkpoint at
    /// or below its tip.
    pub(super) fn shorter_fork(&mut self) -> Result<Option<Divergence>, WatchError> {
        let ours = self.chain.tip();
        let answer = self.connected()?.block_headers_subscribe();
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
        let answer = self.connected()?.block_header(common.height() as usize);
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
    pub(super) fn resync_from_genesis(&mut self, divergence: Divergence) -> WatchError {
        self.chain = LocalChain::from_genesis_hash(self.chain.genesis_hash()).0;
        // The stored chain is the one dropped: the next cache handed out replaces it.
        self.cache_replaced = true;
        self.dirty.extend(self.escrows.keys().cloned());
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
}
