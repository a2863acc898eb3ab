//! The ticker: a supervised tokio task that polls every source concurrently on an
//! interval (each bounded by its own timeout, so one hanging source delays nothing
//! beyond it), aggregates, and keeps the last N results for the `confirm_ticks` rule.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    aggregate, unix_now, AggregationRules, OracleResult, Source, SourceError, SourceResult,
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

/// Ticker settings.
#[derive(Debug, Clone)]
pub struct Ticker {
    pub sources: Vec<Source>,
    pub currency: String,
    pub rules: AggregationRules,
    pub interval: std::time::Duration,
    pub history: usize,
}

/// The running ticker: read its history, wait for ticks, shut it down.
pub struct TickerHandle {
    history: Arc<Mutex<VecDeque<OracleResult>>>,
    ticks: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Ticker {
    /// Start polling on the current tokio runtime.
    pub fn spawn(self, client: reqwest::Client) -> TickerHandle {
        let history = Arc::new(Mutex::new(VecDeque::with_capacity(self.history)));
        let (tick_tx, ticks) = watch::channel(0u64);
        let (shutdown, mut stop) = watch::channel(false);
        let shared = history.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(self.interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut count = 0u64;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = interval.tick() => {}
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
                    if h.len() == self.history {
                        h.pop_front();
                    }
                    h.push_back(result);
                }
                count += 1;
                let _ = tick_tx.send(count);
            }
        });
        TickerHandle {
            history,
            ticks,
            shutdown,
            task,
        }
    }
}

impl TickerHandle {
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

    /// A source whose timeout is the largest Duration: the margin added to it
    /// saturates instead of panicking.
    #[tokio::test]
    async fn a_huge_source_timeout_does_not_overflow() {
        let manual = ManualPrice::default();
        manual.set(6_400_000);
        let source = Source {
            name: "operator".into(),
            kind: SourceKind::Manual(manual),
            url: String::new(),
            timeout: std::time::Duration::MAX,
            currency: "USD".into(),
        };
        let rules = AggregationRules {
            quorum: 1,
            ..AggregationRules::default()
        };
        let r = poll_once(&reqwest::Client::new(), &[source], "USD", &rules).await;
        assert_eq!(r.map(|p| p.price_minor), Ok(6_400_000));
    }
}
