//! Loan transitions: the loan, its new events and the record that goes with it (a
//! decision, an escrow) in one sled transaction, checked inside it (one version
//! further, exactly the new events appended); several transitions in one transaction
//! when a tick decides many loans at once, encoded beforehand on any thread.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::codec::{check_id, decode, encode, event_key, read_u64};
use super::{db_err, Durability, Store, StoreError, StoredEvent, META_EVENT_SEQ};
use crate::loan::{Event, Loan};

/// A record written in the same transaction as a loan transition.
enum Extra<'a> {
    Decision(&'a str, &'a [u8]),
    Escrow(&'a [u8]),
}

/// One transition to write (see `Store::write_all`).
struct Write<'a> {
    before: Option<u64>,
    loan: &'a Loan,
    /// `loan`, encoded.
    value: &'a [u8],
    events: &'a [Event],
    extra: Option<Extra<'a>>,
}

/// What a write checks of the stored loan (read without decoding all of it).
#[derive(Deserialize)]
struct Versions {
    version: u64,
    event_count: u64,
}

/// A transition that takes a decision, encoded ahead of its transaction: made on any
/// thread (it does no I/O), written by [`Store::apply_prepared`].
#[derive(Debug, Clone)]
pub struct PreparedDecision {
    before_version: u64,
    after: Loan,
    events: Vec<Event>,
    key: String,
    record: Vec<u8>,
    value: Vec<u8>,
}

impl PreparedDecision {
    /// What [`Store::apply_with_decision`] would write.
    pub fn new<T: Serialize>(
        before_version: u64,
        after: Loan,
        events: Vec<Event>,
        decision_key: String,
        record: &T,
    ) -> Self {
        Self {
            before_version,
            value: encode(&after),
            after,
            events,
            key: decision_key,
            record: encode(record),
        }
    }

    /// The loan as it will be stored.
    pub fn loan(&self) -> &Loan {
        &self.after
    }

    pub fn into_loan(self) -> Loan {
        self.after
    }
}

impl Store {
    /// Record a new loan with its first events.
    pub fn insert_loan(
        &self,
        loan: &Loan,
        events: &[Event],
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.write(None, loan, events, None, durability)
    }

    /// Record a transition: `after` replaces the stored loan only if the stored one is
    /// still at `before_version`; its events are appended; all in one transaction.
    pub fn apply(
        &self,
        before_version: u64,
        after: &Loan,
        events: &[Event],
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.write(Some(before_version), after, events, None, durability)
    }

    /// A transition that takes or advances a decision: the loan, its events and the
    /// decision's record (what the engine carries out, and how far it got) in one
    /// transaction, so a restart finds either both or neither.
    pub fn apply_with_decision<T: Serialize>(
        &self,
        before_version: u64,
        after: &Loan,
        events: &[Event],
        decision_key: &str,
        record: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let record = encode(record);
        let extra = Extra::Decision(decision_key, &record);
        self.write(Some(before_version), after, events, Some(extra), durability)
    }

    /// Many transitions that take a decision ([`Store::apply_with_decision`] each,
    /// encoded beforehand), in one transaction: all of them or none. A tick breaching
    /// thousands of loans writes them in a few transactions instead of one each.
    pub fn apply_prepared(
        &self,
        writes: &[PreparedDecision],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let writes = writes
            .iter()
            .map(|w| Write {
                before: Some(w.before_version),
                loan: &w.after,
                value: &w.value,
                events: &w.events,
                extra: Some(Extra::Decision(&w.key, &w.record)),
            })
            .collect();
        self.write_all(writes, durability)
    }

    /// The acceptance of an offer: the loan, its events and its escrow's record (the
    /// keys, index and heights it is rebuilt from) in one transaction.
    pub fn apply_with_escrow<T: Serialize>(
        &self,
        before_version: u64,
        after: &Loan,
        events: &[Event],
        escrow: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let escrow = encode(escrow);
        let extra = Extra::Escrow(&escrow);
        self.write(Some(before_version), after, events, Some(extra), durability)
    }
    fn write(
        &self,
        before: Option<u64>,
        loan: &Loan,
        events: &[Event],
        extra: Option<Extra<'_>>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let value = encode(loan);
        self.write_all(
            vec![Write {
                before,
                loan,
                value: &value,
                events,
                extra,
            }],
            durability,
        )
    }

    /// Several transitions in one transaction: all of them or none (each is checked as
    /// [`Store::apply`] checks one).
    fn write_all(&self, writes: Vec<Write<'_>>, durability: Durability) -> Result<(), StoreError> {
        let mut prepared = Vec::with_capacity(writes.len());
        for w in &writes {
            check_id(&w.loan.id)?;
            let first_seq = w
                .loan
                .event_count
                .checked_sub(w.events.len() as u64)
                .ok_or_else(|| StoreError::Corrupt {
                    kind: "loan",
                    key: w.loan.id.clone(),
                    reason: "event_count is below the number of new events".into(),
                })?;
            prepared.push(first_seq);
        }
        self.begin();
        let result = (
            &self.loans,
            &self.events,
            &self.meta,
            &self.decisions,
            &self.escrows,
        )
            .transaction(|(loans, evs, meta, decisions, escrows)| {
                let abort = |e: StoreError| ConflictableTransactionError::Abort(e);
                let mut global = read_u64("event_seq", meta.get(META_EVENT_SEQ)?).map_err(abort)?;
                for (w, first_seq) in writes.iter().zip(&prepared) {
                    let (loan, events, before) = (w.loan, w.events, w.before);
                    match (loans.get(loan.id.as_bytes())?, before) {
                        (Some(_), None) => {
                            return Err(abort(StoreError::Exists {
                                id: loan.id.clone(),
                            }))
                        }
                        (None, Some(_)) => {
                            return Err(abort(StoreError::NotFound {
                                id: loan.id.clone(),
                            }))
                        }
                        (Some(bytes), Some(expected)) => {
                            let stored: Versions =
                                decode("loan", &loan.id, &bytes).map_err(abort)?;
                            if stored.version != expected {
                                return Err(abort(StoreError::VersionConflict {
                                    id: loan.id.clone(),
                                    expected,
                                    found: stored.version,
                                }));
                            }
                            // Every write is a transition: one version further, and
                            // exactly the new events appended (nothing overwritten,
                            // nothing skipped).
                            if loan.version != stored.version + 1 {
                                return Err(abort(StoreError::VersionNotBumped {
                                    id: loan.id.clone(),
                                    stored: stored.version,
                                    expected: stored.version + 1,
                                    found: loan.version,
                                }));
                            }
                            if loan.event_count != stored.event_count + events.len() as u64 {
                                return Err(abort(StoreError::EventCountMismatch {
                                    id: loan.id.clone(),
                                    stored: stored.event_count,
                                    appended: events.len() as u64,
                                    found: loan.event_count,
                                }));
                            }
                        }
                        (None, None) => {
                            if loan.event_count != events.len() as u64 {
                                return Err(abort(StoreError::EventCountMismatch {
                                    id: loan.id.clone(),
                                    stored: 0,
                                    appended: events.len() as u64,
                                    found: loan.event_count,
                                }));
                            }
                        }
                    }
                    for (i, event) in events.iter().enumerate() {
                        global += 1;
                        let loan_seq = first_seq + i as u64;
                        let stored = StoredEvent {
                            loan_id: loan.id.clone(),
                            loan_seq,
                            global_seq: global,
                            event: event.clone(),
                        };
                        let key = event_key(&loan.id, loan_seq);
                        if evs.get(&key)?.is_some() {
                            return Err(abort(StoreError::EventExists {
                                id: loan.id.clone(),
                                seq: loan_seq,
                            }));
                        }
                        evs.insert(key, encode(&stored))?;
                    }
                    loans.insert(loan.id.as_bytes(), w.value)?;
                    match &w.extra {
                        Some(Extra::Decision(key, bytes)) => {
                            decisions.insert(key.as_bytes(), *bytes)?;
                        }
                        Some(Extra::Escrow(bytes)) => {
                            escrows.insert(loan.id.as_bytes(), *bytes)?;
                        }
                        None => {}
                    }
                }
                meta.insert(META_EVENT_SEQ, &global.to_be_bytes())?;
                Ok(())
            });
        match result {
            Ok(()) => self.finish(durability),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(db_err(e)),
        }
    }
}
