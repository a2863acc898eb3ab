//! The watcher's connection: connecting (to a server on our network only), dropping
//! it with a reason, the backoff between attempts, the status reported on the API,
//! and what goes through the connection besides syncing (new blocks, broadcast, fee
//! estimates).

use std::time::{Duration, Instant};

use bdk_chain::bitcoin::{BlockHash, Transaction, Txid};
use electrum_client::ElectrumApi;
use serde::Serialize;

use super::{WatchError, Watcher};
use crate::chain::broadcast::{self, BroadcastError};
use crate::chain::fees::{self, FeeEstimate};
use crate::chain::transport::{ConnectError, Connector, ElectrumClient};

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

pub(super) use crate::util::unix_now;

/// electrs notifies a `null` status when a script's history is momentarily empty (a
/// block being indexed, a replaced mempool transaction), and electrum-client 0.25
/// cannot parse it: the call that reads the notification fails with serde's "invalid
/// type: null". Not a broken server: the watcher renews the connection at once (no
/// backoff, no disconnected status) and syncs every escrow again.
pub(super) fn is_null_status(reason: &str) -> bool {
    reason.contains("invalid type: null")
}

impl Watcher {
    /// Drop the connection (the server forgets our subscriptions with it), start the
    /// backoff and report `reason`; returns since when we are disconnected.
    pub(super) fn drop_connection(&mut self, reason: String) -> u64 {
        self.client = None;
        self.subscribed.clear();
        self.config.backoff.failed();
        let since_unix = self.disconnected_since();
        self.status = ConnectionStatus::Disconnected { since_unix, reason };
        since_unix
    }

    pub(super) fn disconnected_since(&self) -> u64 {
        match &self.status {
            ConnectionStatus::Disconnected { since_unix, .. } => *since_unix,
            ConnectionStatus::Connected { .. } => unix_now(),
        }
    }

    /// Renew the connection at once (no backoff, status unchanged) and sync every
    /// escrow again: for the answers that say a script changed in a way the client
    /// cannot parse (see [`is_null_status`]).
    pub(super) fn renew_connection(&mut self) {
        self.client = None;
        self.subscribed.clear();
        self.dirty.extend(self.escrows.keys().cloned());
    }

    pub(super) fn disconnected(&mut self, reason: String) -> WatchError {
        if is_null_status(&reason) {
            self.renew_connection();
            return WatchError::Disconnected {
                url: self.config.url.clone(),
                since_unix: self.disconnected_since(),
                reason,
            };
        }
        let since_unix = self.drop_connection(reason.clone());
        WatchError::Disconnected {
            url: self.config.url.clone(),
            since_unix,
            reason,
        }
    }

    /// The current connection, or a new one to a server on our network.
    pub(super) fn connected(&mut self) -> Result<&ElectrumClient, WatchError> {
        if self.client.is_none() {
            if !self.config.backoff.ready() {
                return Err(WatchError::Disconnected {
                    url: self.config.url.clone(),
                    since_unix: self.disconnected_since(),
                    reason: "waiting to reconnect (backoff)".to_owned(),
                });
            }
            // No reconnect inside the client (electrum-client's `Client` with retries
            // would silently drop our script subscriptions): a broken connection is
            // dropped, and the next one here starts with no subscriptions, so
            // everything is subscribed and synced again.
            let timeout = self.config.timeout;
            let connected = self.connector().and_then(|c| c.connect(timeout));
            let client = match connected {
                Ok(c) => c,
                Err(e) if e.is_transient() => return Err(self.disconnected(e.to_string())),
                Err(error) => {
                    let since_unix = self.drop_connection(error.to_string());
                    return Err(WatchError::Connect {
                        url: self.config.url.clone(),
                        since_unix,
                        error: Box::new(error),
                    });
                }
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
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("set just above"))
    }

    /// The connector, built once from the configuration.
    fn connector(&mut self) -> Result<&Connector, ConnectError> {
        if self.connector.is_none() {
            self.connector = Some(self.config.connector()?);
        }
        Ok(self.connector.as_ref().expect("set just above"))
    }

    /// Wait up to `timeout` for a new block announced by the header subscription;
    /// true if one arrived. A broken connection returns an error (and is dropped).
    pub fn wait_for_block(&mut self, timeout: Duration) -> Result<bool, WatchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let popped = self.connected()?.block_headers_pop();
            match popped {
                Ok(Some(_)) => {
                    // Drain the rest: one sync covers them all.
                    while let Ok(Some(_)) = self.connected()?.block_headers_pop() {}
                    return Ok(true);
                }
                Ok(None) => {}
                Err(e) if is_null_status(&e.to_string()) => {
                    self.renew_connection();
                    return Ok(true);
                }
                Err(e) => return Err(self.disconnected(e.to_string())),
            }
            // The subscription is only read when the socket is read; a ping does that.
            if let Err(e) = self.connected()?.ping() {
                if is_null_status(&e.to_string()) {
                    // A script's status changed (see `is_null_status`): sync now.
                    self.renew_connection();
                    return Ok(true);
                }
                return Err(self.disconnected(e.to_string()));
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Broadcast through the current connection (see [`broadcast::broadcast`]).
    pub fn broadcast(&mut self, tx: &Transaction) -> Result<Txid, BroadcastError> {
        let txid = tx.compute_txid();
        let client = self.connected().map_err(|e| BroadcastError::Connection {
            txid,
            message: e.to_string(),
        })?;
        let result = broadcast::broadcast(client, tx);
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
            Ok(client) => fees::estimate(client, target, &policy),
            Err(e) => policy.apply(Err(e.to_string())),
        }
    }
}
