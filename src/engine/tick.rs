//! Price ticks: each aggregated price, numbered from the store's durable sequence, is
//! applied to the loans the book says it can move; a confirmed breach becomes a
//! liquidation decision, arbiter-signed and stored with the transition. One loan that
//! cannot be decided (no chain view yet, or an error) never holds the others back:
//! it is left as it was and reported. The tick's writes are flushed once, together,
//! before it returns.
//!
//! A crash breaching thousands of loans at once: the tick first applies the price to
//! every candidate (read and priced on every core, then stored), then builds and arbiter-signs the liquidations on every core
//! (pure work on the engine's read-only state), then stores each decision with its
//! transition, in order, from this thread (the store's single writer), and flushes
//! once.

use crate::loan::{apply, Event, Input, Loan, LoanState, PriceEvidence};
use crate::store::{Durability, PreparedDecision};
use crate::tx::EscrowInput;

use super::core::{numbered, Engine, EngineError};

/// Below this many breaches in one tick the decisions are made on this thread alone
/// (starting threads would cost more than it saves).
pub(super) const PARALLEL_FROM: usize = 32;

/// Decisions stored per transaction.
const STORE_BATCH: usize = 64;

/// What a price tick did.
#[derive(Debug, Default)]
pub struct TickOutcome {
    /// The tick's sequence number.
    pub seq: u64,
    /// The loans that moved (stored).
    pub moved: Vec<Loan>,
    /// Loans a decision waits for: no chain view of their escrow yet.
    pub waiting_for_chain: Vec<String>,
    /// Loans the tick could not move, left as they were, with why.
    pub failed: Vec<(String, String)>,
}

/// What one loan did on a tick.
enum Step {
    Unchanged,
    /// Moved without a decision (a margin call, a breach counted), not stored yet.
    Moved {
        before_version: u64,
        next: Box<Loan>,
        events: Vec<Event>,
    },
    Breached(Box<Breach>),
    WaitingForChain,
}

/// A loan the tick moved into `Liquidating`, before its decision.
struct Breach {
    before: Loan,
    next: (Loan, Vec<Event>),
    inputs: Vec<EscrowInput>,
}

impl Engine {
    /// Apply an aggregated price (see the module doc). A loan whose escrow the engine
    /// has no chain view of (just restarted, chain not synced) is left untouched by
    /// this tick: nothing is decided on a missing view.
    pub fn price_tick(
        &mut self,
        evidence: PriceEvidence,
        now: u64,
        tip: u32,
        fee_sat_per_kvb: u64,
    ) -> Result<TickOutcome, EngineError> {
        let seq = self.store.allocate_price_seq()?;
        let tick = Input::PriceTick {
            now,
            seq,
            price: Some(evidence.clone()),
        };
        let mut outcome = TickOutcome {
            seq,
            ..TickOutcome::default()
        };
        let mut breached = Vec::new();
        let priced = std::time::Instant::now();
        let candidates = self.book.candidates(evidence.price, now);
        for (id, step) in self.tick_loans(candidates, &tick) {
            match step {
                Ok(Step::Unchanged) => {}
                Ok(Step::Moved {
                    before_version,
                    next,
                    events,
                }) => {
                    if let Err(e) =
                        self.store
                            .apply(before_version, &next, &events, Durability::Buffered)
                    {
                        tracing::error!(loan = %id, error = %e, "price tick not applied");
                        outcome.failed.push((id, e.to_string()));
                        continue;
                    }
                    self.book.update(&next, now);
                    outcome.moved.push(*next);
                }
                Ok(Step::Breached(breach)) => breached.push(*breach),
                Ok(Step::WaitingForChain) => {
                    tracing::warn!(loan = %id, "breach not decided: no chain view yet");
                    outcome.waiting_for_chain.push(id);
                }
                Err(e) => {
                    tracing::error!(loan = %id, error = %e, "price tick not applied");
                    outcome.failed.push((id, e.to_string()));
                }
            }
        }
        let priced_in = priced.elapsed();
        let started = std::time::Instant::now();
        let count = breached.len();
        let (stored, failed) =
            self.decide_and_store(breached, &evidence, now, tip, fee_sat_per_kvb);
        let stored_in = started.elapsed();
        for loan in stored {
            self.book.update(&loan, now);
            outcome.moved.push(loan);
        }
        outcome.failed.extend(failed);
        // One flush for the whole tick: each loan's transition is atomic, sled
        // recovers a prefix of the writes, and the tick returns only once all of it is
        // durable.
        if !outcome.moved.is_empty() {
            self.store.flush()?;
        }
        if count > 0 {
            tracing::debug!(
                breached = count,
                ?priced_in,
                ?stored_in,
                flushed_in = ?(started.elapsed() - stored_in),
                "liquidations decided"
            );
        }
        Ok(outcome)
    }

    /// The oracle has no confirmed aggregate (`reason`): every breach being confirmed
    /// is held and starts over (each such loan gets a `breach_held` event saying
    /// why). Only the watched loans can have a breach counted, so this is cheap; the
    /// loans it moved are returned.
    pub fn price_unavailable(&mut self, reason: &str, now: u64) -> Result<Vec<Loan>, EngineError> {
        let input = Input::PriceUnavailable {
            reason: reason.to_owned(),
        };
        let mut moved = Vec::new();
        for id in self.book.watched() {
            let loan = self.loan(&id)?;
            let (next, events) = apply(&loan, &input)?;
            if next == loan {
                continue;
            }
            self.store
                .apply(loan.version, &next, &events, Durability::Buffered)?;
            self.book.update(&next, now);
            moved.push(next);
        }
        if !moved.is_empty() {
            self.store.flush()?;
        }
        Ok(moved)
    }

    /// Every candidate read and priced (nothing written), on every core when there are
    /// many; in the candidates' order.
    fn tick_loans(
        &self,
        candidates: Vec<String>,
        tick: &Input,
    ) -> Vec<(String, Result<Step, EngineError>)> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let run = |ids: &[String]| -> Vec<(String, Result<Step, EngineError>)> {
            ids.iter()
                .map(|id| (id.clone(), self.tick_loan(id, tick)))
                .collect()
        };
        if candidates.len() < PARALLEL_FROM || threads < 2 {
            return run(&candidates);
        }
        let mut chunks = candidates.chunks(candidates.len().div_ceil(threads));
        let first = chunks.next().unwrap_or_default();
        std::thread::scope(|scope| {
            let others: Vec<_> = chunks.map(|c| scope.spawn(move || run(c))).collect();
            let mut steps = run(first);
            for other in others {
                match other.join() {
                    Ok(more) => steps.extend(more),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            steps
        })
    }

    fn tick_loan(&self, id: &str, tick: &Input) -> Result<Step, EngineError> {
        let loan = self.loan(id)?;
        if !matches!(loan.state, LoanState::Active | LoanState::MarginCall) {
            return Ok(Step::Unchanged);
        }
        let (next, events) = apply(&loan, tick)?;
        if next == loan {
            return Ok(Step::Unchanged);
        }
        if next.state == LoanState::Liquidating {
            let Ok(inputs) = self.inputs_of(id) else {
                return Ok(Step::WaitingForChain);
            };
            return Ok(Step::Breached(Box::new(Breach {
                before: loan,
                next: (next, events),
                inputs,
            })));
        }
        Ok(Step::Moved {
            before_version: loan.version,
            next: Box::new(next),
            events,
        })
    }

    /// Decide every breach and store each decision with its transition: the decisions
    /// are built and arbiter-signed on every core while this thread stores those
    /// already made, [`STORE_BATCH`] per transaction (see the module doc). Returns the
    /// loans stored and those that failed, with why.
    fn decide_and_store(
        &self,
        breached: Vec<Breach>,
        evidence: &PriceEvidence,
        now: u64,
        tip: u32,
        fee_sat_per_kvb: u64,
    ) -> (Vec<Loan>, Vec<(String, String)>) {
        let decide = |b: Breach| -> Result<PreparedDecision, (String, String)> {
            let id = b.before.id.clone();
            self.liquidation_decision(
                &b.before,
                b.next,
                b.inputs,
                evidence,
                now,
                fee_sat_per_kvb,
                tip,
            )
            .and_then(|(after, events, mut decision)| {
                decision.number = b.before.decisions;
                let record = self.sign_record(decision)?;
                let (after, record) = numbered(&b.before, after, record);
                Ok(PreparedDecision::new(
                    b.before.version,
                    after,
                    events,
                    record.store_key(),
                    &record,
                ))
            })
            .map_err(|e| {
                tracing::error!(loan = %id, error = %e, "liquidation not decided");
                (id, e.to_string())
            })
        };
        let mut stored = Vec::with_capacity(breached.len());
        let mut failed = Vec::new();
        let mut store = |results: Vec<Result<PreparedDecision, (String, String)>>| {
            let mut batch = Vec::with_capacity(results.len());
            for r in results {
                match r {
                    Ok(prepared) => batch.push(prepared),
                    Err(f) => failed.push(f),
                }
            }
            self.store_batch(batch, &mut stored, &mut failed);
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if breached.len() < PARALLEL_FROM || threads < 2 {
            let mut rest = breached.into_iter();
            loop {
                let batch: Vec<_> = rest.by_ref().take(STORE_BATCH).map(decide).collect();
                if batch.is_empty() {
                    break;
                }
                store(batch);
            }
            return (stored, failed);
        }
        // This thread stores (about as dear as deciding): the other cores decide. Every
        // `workers`-th breach to each, so all of them finish together.
        let workers = threads - 1;
        let mut shares: Vec<Vec<Breach>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, b) in breached.into_iter().enumerate() {
            shares[i % workers].push(b);
        }
        let (sender, batches) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            for share in shares {
                let (sender, decide) = (sender.clone(), &decide);
                scope.spawn(move || {
                    let mut rest = share.into_iter();
                    loop {
                        let batch: Vec<_> = rest.by_ref().take(STORE_BATCH).map(decide).collect();
                        if batch.is_empty() || sender.send(batch).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(sender);
            for batch in batches {
                store(batch);
            }
        });
        (stored, failed)
    }

    /// Store prepared decisions in one transaction; if that fails, one at a time, so
    /// one loan's failure holds no other back.
    fn store_batch(
        &self,
        batch: Vec<PreparedDecision>,
        stored: &mut Vec<Loan>,
        failed: &mut Vec<(String, String)>,
    ) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.apply_prepared(&batch, Durability::Buffered) {
            tracing::warn!(error = %e, "a batch of decisions refused: storing them one by one");
            for write in batch {
                match self
                    .store
                    .apply_prepared(std::slice::from_ref(&write), Durability::Buffered)
                {
                    Ok(()) => stored.push(write.into_loan()),
                    Err(e) => {
                        let id = write.loan().id.clone();
                        tracing::error!(loan = %id, error = %e, "liquidation not stored");
                        failed.push((id, e.to_string()));
                    }
                }
            }
            return;
        }
        stored.extend(batch.into_iter().map(PreparedDecision::into_loan));
    }
}
