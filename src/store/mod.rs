//! Persistence in one sled database: one tree per record kind (loans, events, parties,
//! tokens, psbts, decisions, escrows, meta), every value wrapped with a version, a schema version checked
//! at open. A loan's transition and its events are written in one transaction; writes
//! marked [`Durability::Durable`] are flushed before the call returns — use it before a
//! signature leaves the process or a transaction is broadcast. A buffered write (a
//! price tick's) is visible to readers before it is on disk, so whatever a reader
//! shows a party goes through [`Store::settle`] first: what was shown is never lost
//! in a crash. This is the only module that knows sled (its README calls it beta;
//! keep it replaceable).

mod chain_cache;
mod codec;
mod lock;
mod records;
mod write;

pub use write::PreparedDecision;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::loan::{Event, Loan};
use codec::{decode, encode, read_u64};
pub use lock::LOCK_WAIT;
use lock::{is_lock_error, lock_holder};

/// The database layout version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;
/// The value envelope version this build writes and understands.
pub const VALUE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[source] sled::Error),
    #[error("the database has schema version {found}; this build understands up to {SCHEMA_VERSION}: upgrade btc-escrow")]
    FutureSchema { found: u32 },
    #[error("{kind} {key}: written by a newer version (value version {found} > {VALUE_VERSION})")]
    FutureValue {
        kind: &'static str,
        key: String,
        found: u32,
    },
    #[error("{kind} {key}: unreadable: {reason}")]
    Corrupt {
        kind: &'static str,
        key: String,
        reason: String,
    },
    #[error("loan {id}: stored version {found}, expected {expected} (a concurrent change)")]
    VersionConflict {
        id: String,
        expected: u64,
        found: u64,
    },
    #[error("loan {id}: already exists")]
    Exists { id: String },
    #[error("loan {id}: not found")]
    NotFound { id: String },
    #[error("id {0:?}: 1-64 characters of A-Z a-z 0-9 - _")]
    BadId(String),
    #[error("the escrow index space is exhausted")]
    IndexExhausted,
    #[error(
        "loan {id}: a transition must bump the version from {stored} to {expected}, not to {found}"
    )]
    VersionNotBumped {
        id: String,
        stored: u64,
        expected: u64,
        found: u64,
    },
    #[error("loan {id}: event_count {found} after appending {appended} events to {stored}; the event log is append-only")]
    EventCountMismatch {
        id: String,
        stored: u64,
        appended: u64,
        found: u64,
    },
    #[error("loan {id}: event {seq} is already stored; the event log is append-only")]
    EventExists { id: String, seq: u64 },
    #[error("database {path}: still locked after {waited_ms} ms by {holder}; is another btc-escrow running on it?")]
    Locked {
        path: PathBuf,
        waited_ms: u128,
        holder: String,
    },
}

fn db_err(e: sled::Error) -> StoreError {
    StoreError::Db(e)
}

/// Whether a write must be on disk before the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed before returning: required before signing or broadcasting.
    Durable,
    /// Written, flushed by sled's background flusher soon after.
    Buffered,
}

/// An event as stored: its place in the loan's log and in the global log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub loan_id: String,
    pub loan_seq: u64,
    pub global_seq: u64,
    pub event: Event,
}

const META_SCHEMA: &[u8] = b"schema";
const META_EVENT_SEQ: &[u8] = b"event_seq";
const META_NEXT_INDEX: &str = "next_escrow_index";
const META_PRICE_SEQ: &str = "price_seq";

/// The store. A clone shares the database: the engine thread is the single writer of
/// loan state, the API reads through its own clone (and writes only parties, tokens
/// and its idempotency records).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    loans: sled::Tree,
    events: sled::Tree,
    parties: sled::Tree,
    tokens: sled::Tree,
    idempotency: sled::Tree,
    webhooks: sled::Tree,
    deliveries: sled::Tree,
    psbts: sled::Tree,
    decisions: sled::Tree,
    escrows: sled::Tree,
    meta: sled::Tree,
    /// The chain watcher's cache (see `chain_cache`).
    chain_cache: sled::Tree,
    durable: Arc<Generations>,
}

/// How far the writes are on disk: a write takes a number before it touches the
/// database (so a reader who sees it also sees the number), and a flush records the
/// last number it covers. A reader about to show what it read to a party calls
/// [`Store::settle`]: nothing shown can then be lost in a crash (an arbiter-signed
/// PSBT, an event a webhook delivers, a state a client acts on).
#[derive(Default)]
struct Generations {
    begun: AtomicU64,
    flushed: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Open (or create) the database in `dir`, refusing one written by a newer schema.
    /// Waits up to [`LOCK_WAIT`] for the database's lock (see [`Store::open_waiting`]).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_waiting(dir, LOCK_WAIT)
    }

    /// [`Store::open`], waiting up to `wait` for the lock, then failing with
    /// [`StoreError::Locked`] naming the holder.
    pub fn open_waiting(dir: &Path, wait: Duration) -> Result<Self, StoreError> {
        let started = Instant::now();
        let mut cleaned = false;
        let db = loop {
            match sled::open(dir) {
                Ok(db) => break db,
                Err(sled::Error::Corruption { at: None, .. })
                    if !cleaned && lock::remove_partial_snapshots(dir) =>
                {
                    cleaned = true;
                }
                Err(e) if is_lock_error(&e) => {
                    if started.elapsed() >= wait {
                        return Err(StoreError::Locked {
                            path: dir.to_owned(),
                            waited_ms: started.elapsed().as_millis(),
                            holder: lock_holder(&dir.join("db")),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(db_err(e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(db_err);
        let store = Self {
            loans: tree("loans")?,
            events: tree("events")?,
            parties: tree("parties")?,
            tokens: tree("tokens")?,
            idempotency: tree("idempotency")?,
            webhooks: tree("webhooks")?,
            deliveries: tree("deliveries")?,
            psbts: tree("psbts")?,
            decisions: tree("decisions")?,
            escrows: tree("escrows")?,
            meta: tree("meta")?,
            chain_cache: tree("chain_cache")?,
            db,
            durable: Arc::default(),
        };
        match store.meta.get(META_SCHEMA).map_err(db_err)? {
            None => {
                store
                    .meta
                    .insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(db_err)?;
                store.db.flush().map_err(db_err)?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        kind: "meta",
                        key: "schema".into(),
                        reason: "not a u32".into(),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::FutureSchema { found });
                }
            }
        }
        Ok(store)
    }

    /// Number the write about to be made (see [`Generations`]).
    fn begin(&self) {
        self.durable.begun.fetch_add(1, Ordering::SeqCst);
    }

    fn finish(&self, durability: Durability) -> Result<(), StoreError> {
        if durability == Durability::Durable {
            self.flush()?;
        }
        Ok(())
    }

    /// Flush everything written so far.
    pub fn flush(&self) -> Result<(), StoreError> {
        let covered = self.durable.begun.load(Ordering::SeqCst);
        self.db.flush().map_err(db_err)?;
        self.durable.flushed.fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }

    /// Whether every write begun so far is on disk.
    pub fn is_settled(&self) -> bool {
        self.durable.flushed.load(Ordering::SeqCst) >= self.durable.begun.load(Ordering::SeqCst)
    }

    /// Make everything read so far durable before it is shown: a flush, unless every
    /// write begun is already on disk. Call it after reading, before answering.
    pub fn settle(&self) -> Result<(), StoreError> {
        if self.is_settled() {
            return Ok(());
        }
        self.flush()
    }

    /// Flush and close. sled lets go of its file lock a little later (when its flusher
    /// thread ends); [`Store::open`] waits for that.
    pub fn close(self) -> Result<(), StoreError> {
        self.flush()
    }

    /// A loan's escrow record.
    pub fn escrow<T: DeserializeOwned>(&self, loan_id: &str) -> Result<Option<T>, StoreError> {
        self.get(&self.escrows, "escrow", loan_id)
    }

    /// Advance a decision's record on its own (a co-signature taken, no loan change).
    pub fn put_decision<T: Serialize>(
        &self,
        key: &str,
        record: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.put(&self.decisions, key, record, durability)
    }

    /// A decision's record as stored (`None`: no such decision).
    pub fn decision<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.get(&self.decisions, "decision", key)
    }

    /// Every decision record whose key starts with `prefix` (e.g. a loan id and `/`),
    /// in key order.
    pub fn decisions<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.decisions
            .scan_prefix(prefix.as_bytes())
            .map(|r| {
                let (k, v) = r.map_err(db_err)?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let value = decode("decision", &key, &v)?;
                Ok((key, value))
            })
            .collect()
    }

    pub fn loan(&self, id: &str) -> Result<Option<Loan>, StoreError> {
        self.loans
            .get(id.as_bytes())
            .map_err(db_err)?
            .map(|b| decode("loan", id, &b))
            .transpose()
    }

    pub fn loans(&self) -> Result<Vec<Loan>, StoreError> {
        self.loans
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(db_err)?;
                decode("loan", &String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    /// A loan's events in order.
    pub fn events(&self, loan_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let mut prefix = loan_id.as_bytes().to_vec();
        prefix.push(0);
        self.events
            .scan_prefix(prefix)
            .map(|r| {
                let (_, v) = r.map_err(db_err)?;
                decode("event", loan_id, &v)
            })
            .collect()
    }

    /// Take the next value of a durable counter in `meta` below `limit`.
    fn allocate(
        &self,
        key: &'static str,
        limit: u64,
        durability: Durability,
    ) -> Result<u64, StoreError> {
        self.begin();
        let result = self.meta.transaction(|meta| {
            let next = read_u64(key, meta.get(key.as_bytes())?)
                .map_err(ConflictableTransactionError::Abort)?;
            if next >= limit {
                return Err(ConflictableTransactionError::Abort(
                    StoreError::IndexExhausted,
                ));
            }
            meta.insert(key.as_bytes(), &(next + 1).to_be_bytes())?;
            Ok(next)
        });
        let value = match result {
            Ok(v) => v,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(db_err(e)),
        };
        self.finish(durability)?;
        Ok(value)
    }

    /// The next escrow index. Always durable: an index handed out is on disk first, so
    /// it is never handed out again, crash or not.
    pub fn allocate_escrow_index(&self) -> Result<u32, StoreError> {
        let index = self.allocate(META_NEXT_INDEX, 1 << 31, Durability::Durable)?;
        Ok(u32::try_from(index).expect("below 2^31 (checked)"))
    }

    /// The sequence number of the next aggregated price tick, starting at 1. Durable,
    /// so it only grows across restarts: a loan ignores ticks at or below the last one
    /// it applied, and an in-memory counter restarting at 0 would blind it.
    pub fn allocate_price_seq(&self) -> Result<u64, StoreError> {
        // Not flushed: sled recovers a prefix of the writes, so a number lost in a
        // crash was never durably used by a loan (a loan's tick is written after it).
        Ok(self.allocate(META_PRICE_SEQ, u64::MAX, Durability::Buffered)? + 1)
    }

    fn put<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.begin();
        tree.insert(key.as_bytes(), encode(value)).map_err(db_err)?;
        self.finish(durability)
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        kind: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        tree.get(key.as_bytes())
            .map_err(db_err)?
            .map(|b| decode(kind, key, &b))
            .transpose()
    }

    /// The last global event sequence number handed out.
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        read_u64("event_seq", self.meta.get(META_EVENT_SEQ).map_err(db_err)?)
    }

    fn all<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        kind: &'static str,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        tree.scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv.map_err(db_err)?;
                decode(kind, &String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    #[doc(hidden)]
    /// Test support: write raw bytes under a loan id (to simulate a future version).
    pub fn put_raw_loan(&self, id: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.loans.insert(id.as_bytes(), bytes).map_err(db_err)?;
        self.flush()
    }

    #[doc(hidden)]
    /// Test support: set the stored schema version.
    pub fn put_raw_schema(&self, version: u32) -> Result<(), StoreError> {
        self.meta
            .insert(META_SCHEMA, &version.to_be_bytes())
            .map_err(db_err)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests;
