//! Price ticks: each aggregated price, numbered from the store's durable sequence, is
//! applied to the loans the book says it can move; a confirmed breach becomes a
//! liquidation decision, arbiter-signed and stored with the transition. One loan that
//! cannot be decided (no chain view yet, or an error) never holds the others back:
//! it is left as it was and reported. The tick's writes are flushed once, together,
//! before it returns.

use crate::loan::{apply, Input, Loan, LoanState, PriceEvidence};
use crate::store::Durability;

use super::core::{Engine, EngineError};

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
    Moved(Box<Loan>),
    WaitingForChain,
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
        for id in self.book.candidates(evidence.price, now) {
            match self.tick_loan(&id, &tick, &evidence, now, tip, fee_sat_per_kvb) {
                Ok(Step::Unchanged) => {}
                Ok(Step::Moved(loan)) => outcome.moved.push(*loan),
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
        // One flush for the whole tick: each loan's transition is atomic, sled
        // recovers a prefix of the writes, and the tick returns only once all of it is
        // durable.
        if !outcome.moved.is_empty() {
            self.store.flush()?;
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

    fn tick_loan(
        &mut self,
        id: &str,
        tick: &Input,
        evidence: &PriceEvidence,
        now: u64,
        tip: u32,
        fee_sat_per_kvb: u64,
    ) -> Result<Step, EngineError> {
        let loan = self.loan(id)?;
        if !matches!(loan.state, LoanState::Active | LoanState::MarginCall) {
            return Ok(Step::Unchanged);
        }
        let (next, events) = apply(&loan, tick)?;
        if next == loan {
            return Ok(Step::Unchanged);
        }
        let next = if next.state == LoanState::Liquidating {
            let Ok(inputs) = self.inputs_of(id) else {
                return Ok(Step::WaitingForChain);
            };
            let (next, events, decision) = self.liquidation_decision(
                &loan,
                (next, events),
                inputs,
                evidence,
                now,
                fee_sat_per_kvb,
                tip,
            )?;
            self.decide(&loan, &next, &events, decision, Durability::Buffered)?
        } else {
            self.store
                .apply(loan.version, &next, &events, Durability::Buffered)?;
            next
        };
        self.book.update(&next, now);
        Ok(Step::Moved(Box::new(next)))
    }
}
