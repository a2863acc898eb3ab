//! `serve`: the running service. Three parts, each owning what it touches:
//! - the **engine thread**, the single writer of loan state: it owns the [`Engine`]
//!   (store and arbiter key) and takes, in order, commands from a [`ServiceHandle`],
//!   chain reports, price ticks and its own clock;
//! - the **chain thread** ([`chain`]), which owns the watcher: blocking Electrum calls
//!   never run on the async runtime. A supervisor restarts it with backoff if it dies,
//!   and the engine re-registers every escrow;
//! - the **oracle ticker**, a tokio task polling the price sources; each aggregate is
//!   forwarded to the engine.
//!
//! Nothing is decided on a stale view: price ticks are applied only while the chain
//! view is connected (a loan the engine has not seen since it started waits, see
//! `Engine::price_tick`), and the clock's default decisions need a fresh aggregate.
//! [`Service::shutdown`] stops taking work, lets the engine finish the message in
//! hand, flushes the store and joins every thread.

mod chain;
pub use chain::Refusal;
mod engine_thread;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bitcoin::Txid;

pub use chain::{ChainReport, ChainRequest};

use crate::chain::WatcherConfig;
use crate::config::Settings;
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::init::STORE_DIR;
use crate::keys::{ArbiterKey, KeyError};
use crate::loan::PriceEvidence;
use crate::oracle::{ManualPrice, OracleResult, TickNow, Ticker, TickerError};
use crate::policy::PolicyTemplate;
use crate::store::{Store, StoreError};
use crate::util::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("oracle: {0}")]
    Ticker(#[from] TickerError),
    #[error("starting a thread or the runtime: {0}")]
    Start(#[source] std::io::Error),
    #[error("the engine is not running (shut down or stopped)")]
    Stopped,
    #[error("the store could not be flushed; the command is not acknowledged: {0}")]
    NotDurable(String),
}

/// The chain as the engine last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainState {
    NotSynced,
    Connected { tip: u32 },
    Disconnected { reason: String },
}

/// A loan's transaction the network refused, and when it is tried again.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RefusedBroadcast {
    #[schema(value_type = String)]
    pub txid: Txid,
    #[serde(flatten)]
    pub refusal: chain::Refusal,
    /// Refusals in a row.
    pub attempts: u32,
    /// When it was first refused (unix seconds).
    pub since: u64,
    /// Not sent again before the tip reaches this height (a refusal other than a
    /// lost connection waits for a block: a new block is what can change the answer).
    pub retry_at_height: u32,
}

/// What a command sees: the engine and what it knows of the world.
pub struct Ctx {
    pub engine: Engine,
    pub chain: ChainState,
    /// When the chain view last became connected or disconnected (unix seconds).
    pub chain_since: u64,
    /// The fee rate decisions use, sat/kvB (the server's estimate within the bounds).
    pub fee_sat_per_kvb: u64,
    /// The latest aggregated price and when it was aggregated (unix seconds).
    pub price: Option<(u64, PriceEvidence)>,
    /// Why the oracle has no price, if it has none.
    pub no_price: Option<String>,
    /// Whether the breaches being confirmed were held for the current outage (false
    /// at start: a restart holds what the last run counted, if its first tick has no
    /// price).
    pub breaches_held: bool,
    /// The operator-set sources, by name.
    pub manual: Vec<(String, ManualPrice)>,
    /// Starts an oracle tick at once (after a manual price is set).
    pub tick_now: Option<TickNow>,
    /// Oracle results received (with or without a price).
    pub ticks_seen: u64,
    /// The latest oracle result, with every quote used and dropped.
    pub last_oracle: Option<OracleResult>,
    staleness_secs: u64,
    rebroadcast_after_blocks: u32,
    /// The oldest the chain view may be for a decision (seconds since its sync).
    max_view_age_secs: u64,
    /// When the last sync completed (unix seconds).
    pub synced_at: u64,
    /// The tip at which broadcast transactions were last sent again.
    followed_at: Option<u32>,
    registered: BTreeSet<String>,
    /// Broadcasts sent to the chain thread and not yet answered: loan → txid.
    in_flight: BTreeMap<String, Txid>,
    /// Broadcasts the network refused, by loan, until one is accepted (health shows
    /// them).
    pub refused: BTreeMap<String, RefusedBroadcast>,
    /// Answers waiting for the batch's flush (see [`ServiceHandle::ask_durable`]).
    after_flush: Vec<AfterFlush>,
    /// The latest aggregated prices, `(unix secs, minor units per BTC)`, oldest first
    /// (the web page's chart).
    pub price_history: std::collections::VecDeque<(u64, u64)>,
}

/// How many aggregated prices the chart keeps.
pub const PRICE_HISTORY: usize = 720;

/// An answer sent once the store was flushed (`Err`: the flush failed).
type AfterFlush = Box<dyn FnOnce(Result<(), String>) + Send>;

impl Ctx {
    /// The latest aggregate if it is fresh (within the oracle's staleness limit).
    pub fn fresh_price(&self, now: u64) -> Option<&PriceEvidence> {
        self.price
            .as_ref()
            .filter(|(at, _)| now.saturating_sub(*at) <= self.staleness_secs)
            .map(|(_, p)| p)
    }

    /// The tip of a chain view fit to decide on: connected, and synced at most
    /// `engine.max_chain_view_age_secs` ago (a slow server's old view decides nothing).
    pub fn tip(&self) -> Option<u32> {
        match self.chain {
            ChainState::Connected { tip }
                if self.view_age(unix_now()) <= self.max_view_age_secs =>
            {
                Some(tip)
            }
            _ => None,
        }
    }

    /// Seconds since the last sync completed.
    pub fn view_age(&self, now: u64) -> u64 {
        now.saturating_sub(self.synced_at)
    }

    /// Why the chain view is too old to decide on, if it is.
    pub fn stale_view(&self, now: u64) -> Option<String> {
        let age = self.view_age(now);
        (matches!(self.chain, ChainState::Connected { .. }) && age > self.max_view_age_secs).then(
            || {
                format!(
                "the chain view is {age} s old (over {} s): the Electrum server answers too slowly",
                self.max_view_age_secs
            )
            },
        )
    }
}

type Job = Box<dyn FnOnce(&mut Ctx) + Send>;

enum Msg {
    Job(Job),
    Chain(ChainReport),
    Price(OracleResult),
    ChainRestarted,
    Shutdown,
}

/// Sends commands to the engine thread (clone it freely).
#[derive(Clone)]
pub struct ServiceHandle {
    tx: Sender<Msg>,
}

impl ServiceHandle {
    /// Run `f` on the engine thread, in order with everything else it does, and wait
    /// for its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx) -> R + Send + 'static,
    ) -> Result<R, ServiceError> {
        let (reply, answer) = mpsc::channel();
        let job: Job = Box::new(move |ctx| {
            let _ = reply.send(f(ctx));
        });
        self.tx
            .send(Msg::Job(job))
            .map_err(|_| ServiceError::Stopped)?;
        answer.recv().map_err(|_| ServiceError::Stopped)
    }

    /// [`ServiceHandle::call`] for async callers: awaits the answer without holding a
    /// thread.
    pub async fn ask<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx) -> R + Send + 'static,
    ) -> Result<R, ServiceError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            let _ = reply.send(f(ctx));
        });
        self.tx
            .send(Msg::Job(job))
            .map_err(|_| ServiceError::Stopped)?;
        answer.await.map_err(|_| ServiceError::Stopped)
    }

    /// [`ServiceHandle::ask`] answered only once what `f` wrote (buffered) is durable:
    /// after the engine thread's next flush, which every such command of the same batch
    /// shares (group commit). Writes made before the call by any thread are durable
    /// too, so an `ask_durable(|_| ())` is a durability barrier.
    pub async fn ask_durable<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx) -> R + Send + 'static,
    ) -> Result<R, ServiceError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            let result = f(ctx);
            ctx.after_flush.push(Box::new(move |flushed| {
                let _ = reply.send(flushed.map(|()| result));
            }));
        });
        self.tx
            .send(Msg::Job(job))
            .map_err(|_| ServiceError::Stopped)?;
        answer
            .await
            .map_err(|_| ServiceError::Stopped)?
            .map_err(ServiceError::NotDurable)
    }
}

/// The running service.
pub struct Service {
    handle: ServiceHandle,
    store: Store,
    stop: Arc<AtomicBool>,
    engine_thread: Option<JoinHandle<()>>,
    chain_supervisor: Option<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    ticker: Option<crate::oracle::TickerHandle>,
}

impl Service {
    /// Open the store and key of `settings.data_dir`, start the threads and the
    /// ticker. Returns once everything runs.
    pub fn start(settings: &Settings) -> Result<Self, ServiceError> {
        let store = Store::open(&settings.data_dir.join(STORE_DIR))?;
        let arbiter = ArbiterKey::load(&settings.data_dir, settings.network)?;
        let engine = Engine::open(
            store,
            arbiter,
            EngineConfig {
                network: settings.network,
                min_confirmations: settings.min_confirmations,
                min_confirm_ticks: settings.confirm_ticks,
                fee_cap: settings.fee_cap,
                template: PolicyTemplate::default(),
            },
        )?;
        let store = engine.store().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Msg>();
        let (chain_tx, chain_rx) = mpsc::channel::<ChainRequest>();

        // The oracle.
        let (sources, manual) = settings.oracle.build(unix_now());
        let ticker = Ticker::new(
            sources,
            settings.oracle.currency.clone(),
            settings.oracle.rules(),
            settings.oracle.interval(),
            settings.oracle.history,
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("btc-escrow-oracle")
            .build()
            .map_err(ServiceError::Start)?;
        let ticker = {
            let _guard = runtime.enter();
            let handle = ticker.spawn(reqwest::Client::new());
            let mut reader = handle.reader();
            let tx = tx.clone();
            runtime.spawn(async move {
                while let Some(result) = reader.next().await {
                    if tx.send(Msg::Price(result)).is_err() {
                        break;
                    }
                }
            });
            handle
        };

        // The chain thread, supervised.
        let chain_supervisor = {
            let mut watcher = WatcherConfig::new(&settings.electrum_url, settings.network);
            watcher.tls = settings.electrum_tls.clone();
            watcher.fees = settings.fees;
            let requests = Arc::new(Mutex::new(chain_rx));
            let (report_tx, engine_tx, stop) = (tx.clone(), tx.clone(), stop.clone());
            let cache = store.clone();
            std::thread::Builder::new()
                .name("btc-escrow-chain-supervisor".into())
                .spawn(move || {
                    supervise_chain(watcher, cache, requests, report_tx, engine_tx, stop)
                })
                .map_err(ServiceError::Start)?
        };

        // The engine thread.
        let engine_thread = {
            let mut ctx = Ctx {
                engine,
                chain: ChainState::NotSynced,
                chain_since: unix_now(),
                fee_sat_per_kvb: settings.fees.fallback_sat_per_kvb(),
                price: None,
                no_price: Some("no oracle tick yet".into()),
                breaches_held: false,
                manual,
                tick_now: Some(ticker.tick_now()),
                ticks_seen: 0,
                last_oracle: None,
                staleness_secs: settings.oracle.staleness_secs,
                rebroadcast_after_blocks: settings.rebroadcast_after_blocks,
                max_view_age_secs: settings.max_chain_view_age.as_secs(),
                synced_at: 0,
                followed_at: None,
                registered: BTreeSet::new(),
                in_flight: BTreeMap::new(),
                refused: BTreeMap::new(),
                after_flush: Vec::new(),
                price_history: Default::default(),
            };
            let tick = settings.tick_interval;
            std::thread::Builder::new()
                .name("btc-escrow-engine".into())
                .spawn(move || engine_thread::run(&mut ctx, &rx, &chain_tx, tick))
                .map_err(ServiceError::Start)?
        };

        Ok(Self {
            handle: ServiceHandle { tx },
            store,
            stop,
            engine_thread: Some(engine_thread),
            chain_supervisor: Some(chain_supervisor),
            runtime: Some(runtime),
            ticker: Some(ticker),
        })
    }

    pub fn handle(&self) -> ServiceHandle {
        self.handle.clone()
    }

    /// The store, for reading (the engine thread is the single writer of loan state).
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Stop: no new work, the message in hand finished, the store flushed, every
    /// thread joined.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.tx.send(Msg::Shutdown);
        if let Some(t) = self.engine_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.chain_supervisor.take() {
            let _ = t.join();
        }
        if let (Some(rt), Some(ticker)) = (self.runtime.take(), self.ticker.take()) {
            rt.block_on(ticker.shutdown());
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn supervise_chain(
    config: WatcherConfig,
    cache: Store,
    requests: Arc<Mutex<Receiver<ChainRequest>>>,
    reports: Sender<Msg>,
    engine: Sender<Msg>,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(200);
    while !stop.load(Ordering::SeqCst) {
        let (report_tx, report_rx) = mpsc::channel::<ChainReport>();
        let forward = {
            let reports = reports.clone();
            std::thread::spawn(move || {
                for r in report_rx {
                    if reports.send(Msg::Chain(r)).is_err() {
                        break;
                    }
                }
            })
        };
        let (config, requests, thread_stop) = (config.clone(), requests.clone(), stop.clone());
        let cache = cache.clone();
        let worker = std::thread::Builder::new()
            .name("btc-escrow-chain".into())
            .spawn(move || {
                chain::run(
                    config,
                    &cache,
                    &requests,
                    report_tx,
                    thread_stop,
                    Duration::from_millis(500),
                )
            });
        let died = match worker {
            Ok(handle) => handle.join().is_err(),
            Err(_) => true,
        };
        let _ = forward.join();
        if stop.load(Ordering::SeqCst) {
            break;
        }
        tracing::error!(died, ?backoff, "the chain thread stopped; restarting it");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(30));
        let _ = engine.send(Msg::ChainRestarted);
    }
}
