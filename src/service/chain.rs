//! The chain thread: owns the watcher, so every blocking Electrum call runs on this
//! thread and never on the async runtime's workers. It registers the escrows the
//! engine asks for, broadcasts what the engine hands it, and after every sync sends
//! the engine each escrow's view (deposits with their previous transactions, spends),
//! the tip and the fee estimate. It only *produces* reports; the engine applies them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::{Transaction, Txid};

use crate::chain::{BroadcastError, CacheChanges, ChainCache, Watcher, WatcherConfig};
use crate::engine::EscrowView;
use crate::policy::EscrowDescriptor;
use crate::store::Store;

/// What the engine asks of the chain thread.
#[derive(Debug)]
pub enum ChainRequest {
    Register(String, Box<EscrowDescriptor>),
    Broadcast(String, Transaction),
}

/// What the chain thread reports to the engine.
#[derive(Debug)]
pub enum ChainReport {
    Synced {
        tip: u32,
        fee_sat_per_kvb: u64,
        views: BTreeMap<String, EscrowView>,
    },
    Disconnected {
        reason: String,
    },
    Broadcast {
        loan_id: String,
        txid: Txid,
        /// The tip when it was sent.
        tip: u32,
        result: Result<(), Refusal>,
    },
}

/// Why the network refused a broadcast, classified (see `engine_thread` for what each
/// class does).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Refusal {
    /// `conflict` (its inputs are spent or another spend is in the mempool),
    /// `fee_too_low`, `non_final` (a timelock not reached), `rejected` (any other
    /// refusal) or `connection` (the server was not reached).
    pub class: &'static str,
    pub reason: String,
}

impl Refusal {
    fn of(e: &BroadcastError) -> Self {
        let class = match e {
            BroadcastError::Conflict { .. } => "conflict",
            BroadcastError::FeeTooLow { .. } => "fee_too_low",
            BroadcastError::NonFinal { .. } => "non_final",
            BroadcastError::Connection { .. } => "connection",
            BroadcastError::AlreadyKnown { .. } | BroadcastError::Rejected { .. } => "rejected",
        };
        Self {
            class,
            reason: e.to_string(),
        }
    }
}

/// How often requests are taken while waiting for a block.
const REQUEST_POLL: Duration = Duration::from_millis(50);

/// Fee estimates target this many blocks.
const FEE_TARGET_BLOCKS: usize = 6;

/// Run until `stop`: sync, report, wait for a block (or `poll`), handle requests.
pub fn run(
    config: WatcherConfig,
    cache: &Store,
    requests: &Mutex<Receiver<ChainRequest>>,
    reports: Sender<ChainReport>,
    stop: Arc<AtomicBool>,
    poll: Duration,
) {
    let mut watcher = Watcher::with_cache(config, load_cache(cache));
    // Records appended to the stored cache since it was last written whole.
    let mut appended = 0;
    // The fee estimate is asked again only when the tip moves.
    let mut fee: Option<(u32, u64)> = None;
    // Sync at once, then when a block arrives or `poll` has passed; requests (a
    // broadcast waits on them) are taken every REQUEST_POLL in between.
    let mut synced: Option<Instant> = None;
    let mut woke = true;
    while !stop.load(Ordering::SeqCst) {
        loop {
            // A thread that died holding the lock poisons it; the queue is still good.
            let next = match requests.lock() {
                Ok(r) => r.try_recv(),
                Err(poisoned) => poisoned.into_inner().try_recv(),
            };
            let Ok(request) = next else { break };
            match request {
                ChainRequest::Register(id, escrow) => {
                    if let Err(e) = watcher.register(&id, *escrow) {
                        tracing::error!(loan = %id, error = %e, "cannot watch the escrow");
                    }
                }
                ChainRequest::Broadcast(loan_id, tx) => {
                    let txid = tx.compute_txid();
                    let result = match watcher.broadcast(&tx) {
                        Ok(_) | Err(BroadcastError::AlreadyKnown { .. }) => Ok(()),
                        Err(e) => Err(Refusal::of(&e)),
                    };
                    if reports
                        .send(ChainReport::Broadcast {
                            loan_id,
                            txid,
                            tip: watcher.tip().height,
                            result,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        if !woke && synced.is_some_and(|at| at.elapsed() < poll) {
            woke = match watcher.wait_for_block(REQUEST_POLL) {
                Ok(block) => block,
                Err(_) => {
                    std::thread::sleep(REQUEST_POLL);
                    false
                }
            };
            continue;
        }
        synced = Some(Instant::now());
        let report = match watcher.sync() {
            Ok(update) => {
                store_cache(cache, &mut watcher, &mut appended);
                let views = update
                    .escrows
                    .iter()
                    .map(|state| {
                        let view = EscrowView::from_chain(state, |txid| {
                            watcher.transaction(txid).map(|t| (*t).clone())
                        });
                        (state.loan_id.clone(), view)
                    })
                    .collect();
                let tip = update.tip.height;
                let fee_sat_per_kvb = match fee {
                    Some((at, rate)) if at == tip => rate,
                    _ => {
                        let rate = watcher.fee_estimate(FEE_TARGET_BLOCKS).sat_per_kvb;
                        fee = Some((tip, rate));
                        rate
                    }
                };
                ChainReport::Synced {
                    tip,
                    fee_sat_per_kvb,
                    views,
                }
            }
            Err(e) => ChainReport::Disconnected {
                reason: e.to_string(),
            },
        };
        if reports.send(report).is_err() {
            return;
        }
        woke = false;
    }
}

/// Stored cache records past this many are merged into one when the cache is loaded.
const CACHE_RECORDS: usize = 64;

/// The watcher's cache as stored (see `chain::ChainCache`): merged, and compacted if
/// it has grown to many records. One that cannot be read is dropped (the watcher then
/// syncs everything).
fn load_cache(store: &Store) -> ChainCache {
    let records = match store.chain_cache::<ChainCache>() {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(error = %e, "the chain cache cannot be read: starting without it");
            if let Err(e) = store.replace_chain_cache(&ChainCache::default()) {
                tracing::warn!(error = %e, "the chain cache cannot be cleared");
            }
            return ChainCache::default();
        }
    };
    let count = records.len();
    let mut cache = ChainCache::default();
    for record in records {
        cache.merge(record);
    }
    let cache = cache.compacted();
    if count > CACHE_RECORDS {
        if let Err(e) = store.replace_chain_cache(&cache) {
            tracing::warn!(error = %e, "the chain cache cannot be compacted");
        }
    }
    cache
}

/// Store what the last sync added to the watcher's cache. A failure costs only a
/// fetch after the next restart: logged, not reported.
/// Past [`CACHE_RECORDS`] appended, the whole cache replaces them.
fn store_cache(store: &Store, watcher: &mut Watcher, appended: &mut usize) {
    let written = match watcher.take_cache_changes() {
        None => return,
        Some(CacheChanges::Delta(_)) if *appended >= CACHE_RECORDS => {
            *appended = 0;
            store.replace_chain_cache(&watcher.cache())
        }
        Some(CacheChanges::Delta(change)) => {
            *appended += 1;
            store.append_chain_cache(&change)
        }
        Some(CacheChanges::Snapshot(cache)) => {
            *appended = 0;
            store.replace_chain_cache(&cache)
        }
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, "the chain cache cannot be stored");
    }
}
