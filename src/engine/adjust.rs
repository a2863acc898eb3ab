//! Decisions that leave a loan open: a **partial liquidation** on a confirmed breach
//! (terms `partial_liquidation`), and a borrower's **withdrawal** of collateral above
//! the initial LTV. Both pay one output and send the change back into the escrow's
//! own script (see `Decision::partial_liquidation` for why the same script).
//!
//! A withdrawal is the one decision the arbiter signs **last**: the borrower (or the
//! lender) signs the unsigned PSBT first, and the arbiter signs only then, after
//! checking the limit again at the current aggregate and that the escrow still holds
//! exactly the inputs, and the transaction goes out at once. An arbiter-signed
//! withdrawal never waits in a party's hands, where it could be completed later, after
//! a price fall made it unsafe for the lender. Until it is signed the loan is priced
//! as usual, and a liquidation or a release cancels it.

use bitcoin::psbt::Psbt;
use bitcoin::{Amount, Transaction};

use super::core::{Engine, EngineError};
use super::decision::{Decision, DecisionKind};
use super::record::{DecisionRecord, Progress};
use crate::loan::calc;
use crate::loan::{
    apply, Adjustment, AdjustmentKind, Bps, Event, Input, LiquidationReason, Loan, LoanState,
    PriceEvidence,
};
use crate::store::Durability;
use crate::tx::{self, EscrowInput};

/// How far below the initial LTV a withdrawal must leave the loan: 1 percentage
/// point, so a withdrawal never puts a loan straight back at its initial LTV.
pub const WITHDRAWAL_MARGIN: Bps = Bps(100);

impl Engine {
    /// The decision for a liquidation the state machine just decided (`decided`, in
    /// `Liquidating`): partial when the terms ask for it and the breach is a price's
    /// (a default is settled in full), and a partial sale restores the target; a full
    /// liquidation otherwise, with why. Returns the transition (one version step) and
    /// the decision.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn liquidation_decision(
        &self,
        loan: &Loan,
        decided: (Loan, Vec<Event>),
        inputs: Vec<EscrowInput>,
        evidence: &PriceEvidence,
        now: u64,
        fee_sat_per_kvb: u64,
        tip: u32,
    ) -> Result<(Loan, Vec<Event>, Decision), EngineError> {
        let (next, mut events) = decided;
        let escrow = self.escrow_of(&loan.id)?;
        let target = loan.terms.get().partial_target();
        let by_price = next.liquidation_reason != Some(LiquidationReason::Default);
        let (Some(target), true) = (target, by_price) else {
            let decision =
                Decision::liquidation(loan, escrow, inputs, evidence, now, fee_sat_per_kvb, tip)?;
            return Ok((next, events, decision));
        };
        let partial = Decision::partial_liquidation(
            loan,
            escrow,
            inputs.clone(),
            evidence,
            target,
            now,
            fee_sat_per_kvb,
            tip,
        )?;
        let (input, decision) = match partial {
            Ok(decision) => {
                let DecisionKind::PartialLiquidation { sale, .. } = &decision.kind else {
                    unreachable!("a partial liquidation's kind");
                };
                let adjustment = Adjustment {
                    kind: AdjustmentKind::PartialLiquidation,
                    decided_at: now,
                    repay: sale.repay,
                    paid: sale.lender,
                    change: sale.change,
                    fee: sale.fee,
                    price: evidence.price,
                    ltv_before: sale.ltv_before,
                    ltv_after: sale.ltv_after,
                    oracle_seq: next.last_price_seq,
                    txid: None,
                    height: None,
                    attempts: Vec::new(),
                };
                (Input::PartialLiquidationDecided { adjustment }, decision)
            }
            Err(why) => (
                Input::FullLiquidationInstead { why: why.into() },
                Decision::liquidation(loan, escrow, inputs, evidence, now, fee_sat_per_kvb, tip)?,
            ),
        };
        let (mut after, more) = apply(&next, &input)?;
        events.extend(more);
        // One transition from `loan`: the store takes one version step.
        after.version = loan.version + 1;
        Ok((after, events, decision))
    }

    /// The borrower asks to withdraw `amount` (see the module doc): refused unless the
    /// loan is active and the LTV after it at `evidence`'s price is at or below the
    /// initial LTV less [`WITHDRAWAL_MARGIN`]. The unsigned PSBT is stored as the
    /// loan's pending decision (replacing an earlier request not yet signed).
    pub fn request_withdrawal(
        &mut self,
        id: &str,
        amount: Amount,
        evidence: &PriceEvidence,
        now: u64,
        tip: u32,
        fee_sat_per_kvb: u64,
    ) -> Result<Loan, EngineError> {
        let loan = self.loan(id)?;
        if loan.state != LoanState::Active {
            return Err(crate::loan::TransitionError::Illegal {
                id: id.to_owned(),
                state: loan.state,
                input: "withdrawal_requested",
            }
            .into());
        }
        let inputs = self.inputs_of(id)?;
        let limit = withdrawal_limit(&loan);
        let escrow = self.escrow_of(id)?;
        let decision = Decision::withdrawal(
            &loan,
            escrow,
            inputs,
            amount,
            evidence,
            limit,
            now,
            fee_sat_per_kvb,
            tip,
        )
        .map_err(|source| EngineError::Withdrawal {
            id: id.to_owned(),
            source,
        })?;
        let DecisionKind::Withdrawal {
            owed,
            ltv_after,
            change,
            ..
        } = &decision.kind
        else {
            unreachable!("a withdrawal's kind");
        };
        let calc_err = |source| EngineError::Calc {
            id: id.to_owned(),
            source,
        };
        let collateral = EscrowInput::total(&decision.inputs)
            .ok_or(crate::loan::calc::CalcError::Overflow)
            .map_err(calc_err)?;
        let adjustment = Adjustment {
            kind: AdjustmentKind::Withdrawal,
            decided_at: now,
            repay: crate::loan::Fiat::new(0, owed.currency),
            paid: amount,
            change: *change,
            fee: decision.fee,
            price: evidence.price,
            ltv_before: calc::ltv(*owed, collateral, evidence.price).map_err(calc_err)?,
            ltv_after: *ltv_after,
            oracle_seq: None,
            txid: None,
            height: None,
            attempts: Vec::new(),
        };
        let (next, events) = apply(&loan, &Input::WithdrawalRequested { adjustment })?;
        if next == loan {
            return Ok(loan);
        }
        let record = DecisionRecord::unsigned(decision, escrow)?;
        let next = self.store_decision(&loan, &next, &events, record, Durability::Durable)?;
        self.book.update(&next, now);
        Ok(next)
    }

    /// A party's signature of the pending withdrawal: checked (merged under DESIGN.md
    /// §6), the limit checked again at `evidence`'s price and the inputs against the
    /// chain view, then signed by the arbiter, finalized and stored durably with the
    /// loan moving to `Withdrawing`. Returns the transaction to broadcast.
    pub fn cosign_withdrawal(
        &mut self,
        id: &str,
        theirs: &Psbt,
        evidence: &PriceEvidence,
        now: u64,
    ) -> Result<Transaction, EngineError> {
        let refused = |reason: String| EngineError::WithdrawalRefused {
            id: id.to_owned(),
            reason,
        };
        let loan = self.loan(id)?;
        let record = self
            .decision(id)?
            .filter(|r| r.progress == Progress::AwaitingCosignature)
            .filter(|r| matches!(r.decision.kind, DecisionKind::Withdrawal { .. }))
            .ok_or_else(|| EngineError::NothingToCosign { id: id.to_owned() })?;
        let DecisionKind::Withdrawal { limit, change, .. } = record.decision.kind else {
            unreachable!("filtered above");
        };
        // The escrow must still hold exactly what the withdrawal spends.
        let held: Vec<_> = self.inputs_of(id)?.iter().map(|i| i.outpoint).collect();
        let spends: Vec<_> = record.decision.inputs.iter().map(|i| i.outpoint).collect();
        if held != spends {
            return Err(refused(format!(
                "the escrow's outputs changed since the request ({spends:?} requested, {held:?} held): request it again"
            )));
        }
        let owed = loan.owed(now).map_err(|source| EngineError::Calc {
            id: id.to_owned(),
            source,
        })?;
        let ltv = calc::ltv(owed, change, evidence.price).map_err(|source| EngineError::Calc {
            id: id.to_owned(),
            source,
        })?;
        if ltv > limit {
            return Err(refused(format!(
                "amount_sat: the LTV after the withdrawal would be {ltv} at the current price {}, above the limit {limit}: request a smaller one",
                evidence.price.minor_per_btc
            )));
        }
        let escrow = self.escrow_of(id)?.clone();
        let mut merged = tx::merge(&record.psbt()?, theirs, &self.secp)
            .map_err(super::record::RecordError::from)?;
        let expected = tx::SpendDecision {
            tx: record.decision.transaction(&escrow)?,
        };
        tx::sign_decision(
            &mut merged,
            self.arbiter_signing_key(),
            &escrow,
            &expected,
            self.fee_cap(),
            &self.secp,
        )
        .map_err(|e| super::record::RecordError::Sign(Box::new(e)))?;
        let tx = tx::finalize(&merged, &self.secp)
            .map_err(|e| super::record::RecordError::Finalize(Box::new(e)))?;
        let next_record = DecisionRecord {
            decision: record.decision.clone(),
            psbt: merged.to_string(),
            progress: Progress::Finalized {
                txid: tx.compute_txid(),
                tx_hex: bitcoin::consensus::encode::serialize_hex(&tx),
            },
            signed_at: now,
        };
        let (next, events) = apply(&loan, &Input::WithdrawalSigned)?;
        self.store.apply_with_decision(
            loan.version,
            &next,
            &events,
            &next_record.store_key(),
            &next_record,
            Durability::Durable,
        )?;
        self.finalized.insert(id.to_owned());
        self.book.update(&next, now);
        Ok(tx)
    }
}

/// The highest LTV a withdrawal may leave: the initial LTV less the margin.
pub fn withdrawal_limit(loan: &Loan) -> Bps {
    Bps(loan
        .terms
        .get()
        .initial_ltv
        .0
        .saturating_sub(WITHDRAWAL_MARGIN.0)
        .max(1))
}
