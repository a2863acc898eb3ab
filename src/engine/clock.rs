//! The engine's clock: maturity plus grace (a default liquidation) and funding
//! deadlines (expiry, with any deposit refunded to the borrower). Each decision needs
//! what a price decision needs: a chain view of the escrow, and for a liquidation a
//! fresh aggregated price; without them the loan waits and the outcome says why.

use crate::loan::{apply, Input, Loan, LoanState, PriceEvidence};
use crate::store::Durability;

use super::core::{Engine, EngineError};
use super::decision::Decision;

/// What a clock tick did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClockOutcome {
    /// Loans liquidated for default (maturity plus grace passed with money owed).
    pub defaulted: Vec<String>,
    /// Loans expired at their funding deadline (with a refund decision if funded in
    /// part).
    pub expired: Vec<String>,
    /// Loans that are due but wait for a price (a default is priced by the oracle).
    pub waiting_for_price: Vec<String>,
    /// Loans that are due but wait for a chain view of their escrow.
    pub waiting_for_chain: Vec<String>,
    /// Loans the clock could not move, left as they were, with why.
    pub failed: Vec<(String, String)>,
}

impl Engine {
    /// Run the clock at `now` with the chain at `tip`; `evidence` is the latest fresh
    /// aggregate, if the oracle has one.
    pub fn clock(
        &mut self,
        now: u64,
        tip: u32,
        fee_sat_per_kvb: u64,
        evidence: Option<&PriceEvidence>,
    ) -> Result<ClockOutcome, EngineError> {
        let mut out = ClockOutcome::default();
        for loan in self.store.loans()? {
            // One loan that cannot be moved never holds the others back.
            if let Err(e) = self.clock_loan(&loan, now, tip, fee_sat_per_kvb, evidence, &mut out) {
                tracing::error!(loan = %loan.id, error = %e, "clock not applied");
                out.failed.push((loan.id.clone(), e.to_string()));
            }
        }
        Ok(out)
    }

    fn clock_loan(
        &mut self,
        loan: &Loan,
        now: u64,
        tip: u32,
        fee_sat_per_kvb: u64,
        evidence: Option<&PriceEvidence>,
        out: &mut ClockOutcome,
    ) -> Result<(), EngineError> {
        match loan.state {
            LoanState::Active | LoanState::MarginCall if loan.default_due(now, tip) => {
                let Some(evidence) = evidence else {
                    out.waiting_for_price.push(loan.id.clone());
                    return Ok(());
                };
                let Ok(inputs) = self.inputs_of(&loan.id) else {
                    out.waiting_for_chain.push(loan.id.clone());
                    return Ok(());
                };
                let (next, events) = apply(
                    loan,
                    &Input::DefaultDue {
                        now,
                        tip_height: tip,
                    },
                )?;
                if next.state != LoanState::Liquidating {
                    // Nothing owed: nothing to liquidate.
                    return Ok(());
                }
                let decision = Decision::liquidation(
                    loan,
                    self.escrow_of(&loan.id)?,
                    inputs,
                    evidence,
                    now,
                    fee_sat_per_kvb,
                    tip,
                )?;
                let next = self.decide(loan, &next, &events, decision, Durability::Durable)?;
                self.book.update(&next, now);
                out.defaulted.push(loan.id.clone());
            }
            LoanState::AwaitingCollateral
                if loan.activated_at.is_none() && now >= loan.terms.get().funding_deadline =>
            {
                // A funding may have confirmed at the last moment: not without a view.
                let Ok(inputs) = self.inputs_of(&loan.id) else {
                    out.waiting_for_chain.push(loan.id.clone());
                    return Ok(());
                };
                let (next, events) = apply(loan, &Input::DeadlinePassed { now })?;
                if next.state != LoanState::Expired {
                    return Ok(());
                }
                if inputs.is_empty() {
                    self.store
                        .apply(loan.version, &next, &events, Durability::Durable)?;
                } else {
                    let decision = Decision::release(
                        loan,
                        self.escrow_of(&loan.id)?,
                        inputs,
                        fee_sat_per_kvb,
                        tip,
                        true,
                    )?;
                    let _ = self.decide(loan, &next, &events, decision, Durability::Durable)?;
                }
                out.expired.push(loan.id.clone());
            }
            _ => {}
        }
        Ok(())
    }
}
