//! The ticker: a supervised tokio task that polls every source concurrently on an
//! interval (each bounded by its own timeout, so one hanging source delays nothing
//! beyond it), aggregates, and keeps the last N results with their evidence. (The
//! `confirm_ticks` rule is a loan term, counted by each loan from the prices it is fed.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    aggregate, unix_now, AggregationRules, OracleResult, RulesError, Source, SourceError,
    SourceResult,
};

/// Poll every source once, concurrently, and aggregate at `now`.
pub async fn poll_once(
    client: &reqwest::Client,
    sources: &[Source],
    currency: &str,
    rules: &AggregationRules,
) -> OracleResult {
    let now = unix_now();
    let fetches = sources.iter().map(|s| async move {
        // Belt and braces: the source bounds its own request; this bounds the rest.
        let limit = s
            .timeout
            .saturating_add(std::time::Duration::from_millis(100));
        let outcome = match tokio::time::timeout(limit, s.fetch(client, now)).await {
            Ok(r) => r,
            Err(_) => Err(SourceError::Timeout {
                after_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            }),
        };
        SourceResult {
            source: s.name.clone(),
            outcome,
        }
    });
    let results = futures_join_all(fetches).await;
    aggregate(results, currency, unix_now(), rules)
}

/// `join_all` without the futures crate: spawn nothing, poll all in one task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// The longest history a ticker keeps (results, one per tick).
pub const MAX_HISTORY: usize = 10_000;
/// The longest polling interval: a day.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
/// The longest timeout a source may have.
pub const MAX_SOURCE_TIMEOUT: Duration = Duration::from_secs(60);

/// A ticker setting refused at construction, named by its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TickerError {
    #[error("sources: at least one source is needed")]
    NoSources,
    #[error("sources[{index}].name: {name:?} is used twice")]
    DuplicateSource { index: usize, name: String },
    #[error("sources[{index}].timeout: {timeout_ms} ms is not within 1..={max_ms} ms")]
    SourceTimeout {
        index: usize,
        timeout_ms: u64,
        max_ms: u64,
    },
    #[error("sources[{index}].currency: {found}, not the ticker's {expected}")]
    SourceCurrency {
        index: usize,
        expected: String,
        found: String,
    },
    #[error("interval: must be more than zero")]
    IntervalZero,
    #[error("interval: {secs} s is more than the maximum of {max_secs} s")]
    IntervalTooLong { secs: u64, max_secs: u64 },
    #[error("history: must be at least 1")]
    HistoryZero,
    #[error("history: {history} is more than the maximum of {max}")]
    HistoryTooLong { history: usize, max: usize },
    #[error(transparent)]
    Rules(#[from] RulesError),
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Ticker settings, validated by [`Ticker::new`].
#[derive(Debug, Clone)]
pub struct Ticker {
    sources: Vec<Source>,
    currency: String,
    rules: AggregationRules,
    interval: Duration,
    history: usize,
}

/// The running ticker: read its history, wait for ticks, shut it down.
pub struct TickerHandle {
    poke: Arc<tokio::sync::Notify>,
    history: Arc<Mutex<VecDeque<OracleResult>>>,
    ticks: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Ticker {
    /// Check every setting: at least one source, unique names, each source's timeout
    /// within 1 ms..=[`MAX_SOURCE_TIMEOUT`] and its currency the ticker's; an interval
    /// within 1 ms..=[`MAX_INTERVAL`]; a history within 1..=[`MAX_HISTORY`]; and the
    /// aggregation rules (see [`AggregationRules::validate`]).
    pub fn new(
        sources: Vec<Source>,
        currency: impl Into<String>,
        rules: AggregationRules,
        interval: Duration,
        history: usize,
    ) -> Result<Self, TickerError> {
        let currency = currency.into();
        if sources.is_empty() {
            return Err(TickerError::NoSources);
        }
        for (index, s) in sources.iter().enumerate() {
            if sources[..index].iter().any(|o| o.name == s.name) {
                return Err(TickerError::DuplicateSource {
                    index,
                    name: s.name.clone(),
                });
            }
            if s.timeout.is_zero() || s.timeout > MAX_SOURCE_TIMEOUT {
                return Err(TickerError::SourceTimeout {
                    index,
                    timeout_ms: millis(s.timeout),
                    max_ms: millis(MAX_SOURCE_TIMEOUT),
                });
            }
            if s.currency != currency {
                return Err(TickerError::SourceCurrency {
                    index,
                    expected: currency,
                    found: s.currency.clone(),
                });
            }
        }
        if interval.is_zero() {
            return Err(TickerError::IntervalZero);
        }
        if interval > MAX_INTERVAL {
            return Err(TickerError::IntervalTooLong {
                secs: interval.as_secs(),
                max_secs: MAX_INTERVAL.as_secs(),
            });
        }
        if history == 0 {
            return Err(TickerError::HistoryZero);
        }
        if history > MAX_HISTORY {
            return Err(TickerError::HistoryTooLong {
                history,
                max: MAX_HISTORY,
            });
        }
        rules.validate(sources.len())?;
        Ok(Self {
            sources,
            currency,
            rules,
            interval,
            history,
        })
    }

    /// Start polling on the current tokio runtime.
    pub fn spawn(self, client: reqwest::Client) -> TickerHandle {
        let history = Arc::new(Mutex::new(VecDeque::with_capacity(self.history)));
        let (tick_tx, ticks) = watch::channel(0u64);
        let (shutdown, mut stop) = watch::channel(false);
        let shared = history.clone();
        let poke = Arc::new(tokio::sync::Notify::new());
        let poked = poke.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(self.interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut count = 0u64;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = interval.tick() => {}
                    _ = poked.notified() => interval.reset(),
                }
                let result = tokio::select! {
                    _ = stop.changed() => break,
                    r = poll_once(&client, &self.sources, &self.currency, &self.rules) => r,
                };
                match &result {
                    Ok(p) => tracing::debug!(
                        price_minor = p.price_minor,
                        used = p.used.len(),
                        "oracle tick"
                    ),
                    Err(n) => tracing::warn!(reason = %n.reason, "oracle tick without a price"),
                }
                if let Ok(mut h) = shared.lock() {
                    while h.len() >= self.history {
                        h.pop_front();
                    }
                    h.push_back(result);
                }
                count += 1;
                let _ = tick_tx.send(count);
            }
        });
        TickerHandle {
            poke,
            history,
            ticks,
            shutdown,
            task,
        }
    }
}

/// A reader of the ticker's results, one per tick as they come.
pub struct TickReader {
    history: Arc<Mutex<VecDeque<OracleResult>>>,
    ticks: watch::Receiver<u64>,
}

impl TickReader {
    /// The next tick's result; `None` once the ticker has stopped. Ticks that come
    /// faster than they are read are skipped (the latest counts).
    pub async fn next(&mut self) -> Option<OracleResult> {
        self.ticks.changed().await.ok()?;
        self.history.lock().ok().and_then(|h| h.back().cloned())
    }
}

/// Asks the ticker for a tick now (e.g. after the operator set the manual price).
#[derive(Debug, Clone)]
pub struct TickNow(Arc<tokio::sync::Notify>);

impl TickNow {
    /// The next tick starts at once (or right after the one in progress).
    pub fn tick(&self) {
        self.0.notify_one();
    }
}

impl TickerHandle {
    /// A handle that starts a tick at once.
    pub fn tick_now(&self) -> TickNow {
        TickNow(self.poke.clone())
    }

    /// A reader of the results to come.
    pub fn reader(&self) -> TickReader {
        TickReader {
            history: self.history.clone(),
            ticks: self.ticks.clone(),
        }
    }

    /// The last results, oldest first.
    pub fn history(&self) -> Vec<OracleResult> {
        self.history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The most recent result, if any tick happened.
    pub fn latest(&self) -> Option<OracleResult> {
        self.history.lock().ok().and_then(|h| h.back().cloned())
    }

    /// How many ticks have completed.
    pub fn tick_count(&self) -> u64 {
        *self.ticks.borrow()
    }

    /// Wait until at least `n` ticks have completed.
    pub async fn wait_for_ticks(&mut self, n: u64) {
        while *self.ticks.borrow() < n {
            if self.ticks.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stop the task and wait for it to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::sources::{ManualPrice, SourceKind};

    fn manual(name: &str) -> Source {
        let manual = ManualPrice::default();
        manual.set(6_400_000);
        Source {
            name: name.into(),
            kind: SourceKind::Manual(manual),
            url: String::new(),
            timeout: Duration::from_secs(1),
            currency: "USD".into(),
        }
    }

    #[test]
    fn each_senseless_setting_is_refused_by_name() {
        let rules = AggregationRules::default();
        let two = || vec![manual("a"), manual("b")];
        let second = Duration::from_secs(1);
        let new =
            |sources, interval, history| Ticker::new(sources, "USD", rules, interval, history);
        assert!(new(two(), second, 16).is_ok());
        let mut slow = two();
        slow[1].timeout = Duration::MAX;
        let mut instant = two();
        instant[0].timeout = Duration::ZERO;
        let mut euro = two();
        euro[1].currency = "EUR".into();
        let cases: Vec<(Result<Ticker, TickerError>, &str)> = vec![
            (new(vec![], second, 16), "sources: "),
            (
                new(vec![manual("a"), manual("a")], second, 16),
                "sources[1].name: ",
            ),
            (new(slow, second, 16), "sources[1].timeout: "),
            (new(instant, second, 16), "sources[0].timeout: "),
            (new(euro, second, 16), "sources[1].currency: "),
            (new(two(), Duration::ZERO, 16), "interval: "),
            (new(two(), Duration::MAX, 16), "interval: "),
            (new(two(), second, 0), "history: "),
            (new(two(), second, usize::MAX), "history: "),
            (new(two(), second, MAX_HISTORY + 1), "history: "),
            (
                Ticker::new(
                    two(),
                    "USD",
                    AggregationRules { quorum: 3, ..rules },
                    second,
                    16,
                ),
                "quorum: ",
            ),
            (
                Ticker::new(
                    two(),
                    "USD",
                    AggregationRules {
                        staleness_secs: 0,
                        ..rules
                    },
                    second,
                    16,
                ),
                "staleness_secs: ",
            ),
        ];
        for (result, field) in cases {
            let err = result.expect_err(field).to_string();
            assert!(err.starts_with(field), "{field}: {err}");
        }
        assert!(new(two(), MAX_INTERVAL, MAX_HISTORY).is_ok());
    }

    /// The smallest history keeps exactly the last result.
    #[tokio::test]
    async fn a_history_of_one_keeps_the_last_result() {
        let rules = AggregationRules {
            quorum: 1,
            ..AggregationRules::default()
        };
        let ticker = Ticker::new(
            vec![manual("a")],
            "USD",
            rules,
            Duration::from_millis(10),
            1,
        )
        .expect("valid settings");
        let mut handle = ticker.spawn(reqwest::Client::new());
        handle.wait_for_ticks(3).await;
        assert_eq!(handle.history().len(), 1);
        handle.shutdown().await;
    }

    /// A source whose timeout is the largest Duration: the margin added to it
    /// saturates instead of panicking.
    #[tokio::test]
    async fn a_huge_source_timeout_does_not_overflow() {
        let mut source = manual("operator");
        source.timeout = Duration::MAX;
        let rules = AggregationRules {
            quorum: 1,
            ..AggregationRules::default()
        };
        let r = poll_once(&reqwest::Client::new(), &[source], "USD", &rules).await;
        assert_eq!(r.map(|p| p.price_minor), Ok(6_400_000));
    }
}
