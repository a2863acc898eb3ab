//! The watcher's connection bookkeeping: the status reported on the API and the
//! reconnection backoff.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bdk_chain::bitcoin::BlockHash;
use serde::Serialize;

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

    pub(super) fn failed(&mut self) {
        self.not_before = Some(Instant::now() + self.next);
        self.next = (self.next * 2).min(self.max);
    }

    pub(super) fn succeeded(&mut self) {
        self.next = self.min;
        self.not_before = None;
    }

    pub(super) fn ready(&self) -> bool {
        self.not_before.is_none_or(|t| Instant::now() >= t)
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
