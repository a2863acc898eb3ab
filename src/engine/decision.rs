//! Decisions: what a liquidation, release or refund pays whom, with the numbers and
//! evidence behind it. A decision is computed once, stored with the transition that
//! took it, and its unsigned transaction is derived from it deterministically
//! ([`Decision::unsigned`]): same inputs in the same order, same outputs, same fee,
//! same nLockTime, on every rebuild and after every restart. Pure: no I/O.
//!
//! Liquidation (DESIGN.md §6): the lender gets owed × (1 + penalty) in sats at the
//! decision's oracle price, rounded up to the next sat (the lender is made whole),
//! capped at what the collateral holds after the fee; the borrower gets the rest if it
//! is above dust (else it goes to the lender, never to the miners); the fee is taken
//! from the borrower's share first. Release and refund: every escrow UTXO to the
//! borrower's return address, minus the fee.

use bitcoin::{Amount, FeeRate, ScriptBuf, Transaction};
use serde::{Deserialize, Serialize};

use crate::loan::calc::{self, CalcError, Split};
use crate::loan::partial::PartialSale;
use crate::loan::{Bps, Fiat, Loan, PriceEvidence, TxKind};
use crate::policy::{EscrowDescriptor, PathName};
use crate::tx::{self, BuiltSpend, EscrowInput, SpendRequest, TxError};

/// Why no decision could be computed; nothing is stored.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("loan {id}: no escrow UTXO to spend")]
    NoInputs { id: String },
    #[error("loan {id}: {source}")]
    Calc { id: String, source: CalcError },
    #[error("loan {id}: {source}")]
    Tx { id: String, source: Box<TxError> },
    #[error("fee rate: {sat_per_kvb} sat/kvB is not a fee rate")]
    FeeRate { sat_per_kvb: u64 },
}

/// What the decision does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DecisionKind {
    /// Pay the lender what is owed plus the penalty at `evidence`'s price.
    Liquidation {
        owed: Fiat,
        evidence: PriceEvidence,
        split: Split,
    },
    /// Repaid: everything back to the borrower.
    Release,
    /// Expired: the deposits back to the borrower.
    Refund,
    /// Pay the lender `sale.repay` of the debt plus its penalty at `evidence`'s price;
    /// the change goes back into the escrow (`partial::partial_sale`).
    PartialLiquidation {
        owed: Fiat,
        evidence: PriceEvidence,
        sale: PartialSale,
    },
    /// Pay the borrower `amount` of collateral above the limit; the rest goes back
    /// into the escrow. Signed by the arbiter last (see `Engine::cosign_withdrawal`).
    Withdrawal {
        owed: Fiat,
        evidence: PriceEvidence,
        amount: Amount,
        /// What stays in the escrow: the collateral less the amount and the fee.
        change: Amount,
        limit: Bps,
        ltv_after: Bps,
    },
}

/// A decision as stored: everything its transaction is derived from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub loan_id: String,
    /// Which of the loan's decisions it is (0 for the first; partial liquidations and
    /// withdrawals leave the loan open for more).
    #[serde(default)]
    pub number: u32,
    pub kind: DecisionKind,
    /// 0 for the first transaction, +1 for each fee bump (RBF) of it.
    pub attempt: u32,
    pub inputs: Vec<EscrowInput>,
    pub payments: Vec<(ScriptBuf, Amount)>,
    pub rest_to: ScriptBuf,
    pub fee_sat_per_kvb: u64,
    /// The chain tip when decided: nLockTime (anti fee sniping).
    pub tip: u32,
    /// The fee the transaction pays.
    pub fee: Amount,
}

fn fee_rate(sat_per_kvb: u64) -> Result<FeeRate, DecisionError> {
    // sat/kvB → sat/kwu, rounded up: never below the rate decided.
    let per_kwu = sat_per_kvb.div_ceil(4);
    if per_kwu == 0 {
        return Err(DecisionError::FeeRate { sat_per_kvb });
    }
    Ok(FeeRate::from_sat_per_kwu(per_kwu))
}

impl Decision {
    /// The spending path the decision's transaction uses.
    pub fn path(&self) -> PathName {
        match self.kind {
            DecisionKind::Liquidation { .. } | DecisionKind::PartialLiquidation { .. } => {
                PathName::Liquidation
            }
            DecisionKind::Release | DecisionKind::Refund | DecisionKind::Withdrawal { .. } => {
                PathName::ArbitratedRelease
            }
        }
    }

    pub fn tx_kind(&self) -> TxKind {
        match self.kind {
            DecisionKind::Liquidation { .. } => TxKind::Liquidation,
            DecisionKind::Release => TxKind::Release,
            DecisionKind::Refund => TxKind::Refund,
            DecisionKind::PartialLiquidation { .. } => TxKind::PartialLiquidation,
            DecisionKind::Withdrawal { .. } => TxKind::Withdrawal,
        }
    }

    fn tx_err(&self, source: TxError) -> DecisionError {
        DecisionError::Tx {
            id: self.loan_id.clone(),
            source: Box::new(source),
        }
    }

    fn request(&self) -> Result<SpendRequest, DecisionError> {
        Ok(SpendRequest {
            path: self.path(),
            inputs: self.inputs.clone(),
            payments: self.payments.clone(),
            rest_to: self.rest_to.clone(),
            fee_rate: fee_rate(self.fee_sat_per_kvb)?,
            tip: self.tip,
        })
    }

    /// The PSBT of the decision, derived from it alone; its fee is checked against the
    /// decided one.
    pub fn unsigned(&self, escrow: &EscrowDescriptor) -> Result<BuiltSpend, DecisionError> {
        let built = tx::build(escrow, &self.request()?).map_err(|source| DecisionError::Tx {
            id: self.loan_id.clone(),
            source: Box::new(source),
        })?;
        debug_assert_eq!(built.fee, self.fee, "a decision rebuilds to its own fee");
        Ok(built)
    }

    /// Everything to `to` (release, refund, or a liquidation with no borrower share).
    fn sweep(
        loan: &Loan,
        kind: DecisionKind,
        inputs: Vec<EscrowInput>,
        to: ScriptBuf,
        fee_sat_per_kvb: u64,
        tip: u32,
        escrow: &EscrowDescriptor,
    ) -> Result<Self, DecisionError> {
        let mut d = Decision {
            loan_id: loan.id.clone(),
            number: 0,
            kind,
            attempt: 0,
            inputs,
            payments: Vec::new(),
            rest_to: to,
            fee_sat_per_kvb,
            tip,
            fee: Amount::ZERO,
        };
        d.fee = tx::build(escrow, &d.request()?)
            .map_err(|source| DecisionError::Tx {
                id: loan.id.clone(),
                source: Box::new(source),
            })?
            .fee;
        Ok(d)
    }

    /// Release the collateral of a repaid loan (or refund an expired one's deposits) to
    /// the borrower's return address.
    pub fn release(
        loan: &Loan,
        escrow: &EscrowDescriptor,
        inputs: Vec<EscrowInput>,
        fee_sat_per_kvb: u64,
        tip: u32,
        refund: bool,
    ) -> Result<Self, DecisionError> {
        if inputs.is_empty() {
            return Err(DecisionError::NoInputs {
                id: loan.id.clone(),
            });
        }
        let kind = if refund {
            DecisionKind::Refund
        } else {
            DecisionKind::Release
        };
        let to = loan.terms.borrower_return_address().script_pubkey();
        Self::sweep(loan, kind, inputs, to, fee_sat_per_kvb, tip, escrow)
    }

    /// Liquidate what is owed at `now` at the price of `evidence` (an LTV breach, or a
    /// default at maturity plus grace: either way priced by a fresh aggregate).
    pub fn liquidation(
        loan: &Loan,
        escrow: &EscrowDescriptor,
        inputs: Vec<EscrowInput>,
        evidence: &PriceEvidence,
        now: u64,
        fee_sat_per_kvb: u64,
        tip: u32,
    ) -> Result<Self, DecisionError> {
        let owed = loan.owed(now).map_err(|source| DecisionError::Calc {
            id: loan.id.clone(),
            source,
        })?;
        Self::liquidation_of(loan, escrow, inputs, owed, evidence, fee_sat_per_kvb, tip)
    }

    fn liquidation_of(
        loan: &Loan,
        escrow: &EscrowDescriptor,
        inputs: Vec<EscrowInput>,
        owed: Fiat,
        evidence: &PriceEvidence,
        fee_sat_per_kvb: u64,
        tip: u32,
    ) -> Result<Self, DecisionError> {
        let id = || loan.id.clone();
        if inputs.is_empty() {
            return Err(DecisionError::NoInputs { id: id() });
        }
        let calc_err = |source| DecisionError::Calc { id: id(), source };
        let t = loan.terms.get();
        let lender_spk = loan.terms.lender_payout_address().script_pubkey();
        let borrower_spk = loan.terms.borrower_return_address().script_pubkey();
        let collateral =
            EscrowInput::total(&inputs).ok_or_else(|| calc_err(CalcError::Overflow))?;
        // The fee of the two-output shape (outputs' values do not change its size).
        let mut d = Decision {
            loan_id: id(),
            number: 0,
            kind: DecisionKind::Release,
            attempt: 0,
            inputs,
            payments: vec![(lender_spk.clone(), lender_spk.minimal_non_dust())],
            rest_to: borrower_spk.clone(),
            fee_sat_per_kvb,
            tip,
            fee: Amount::ZERO,
        };
        let two_outputs_fee = match tx::build(escrow, &d.request()?) {
            Ok(b) => b.fee,
            // Too little for two outputs: the one-output sweep below decides.
            Err(_) => collateral,
        };
        let split = calc::liquidation_split(
            owed,
            t.liquidation_penalty,
            evidence.price,
            collateral,
            two_outputs_fee.min(collateral),
            borrower_spk.minimal_non_dust(),
        )
        .map_err(calc_err)?;
        if split.borrower > Amount::ZERO {
            d.payments = vec![(lender_spk, split.lender)];
            d.fee = two_outputs_fee;
            d.kind = DecisionKind::Liquidation {
                owed,
                evidence: evidence.clone(),
                split,
            };
            let built = d.unsigned(escrow)?;
            debug_assert_eq!(built.rest, split.borrower);
            return Ok(d);
        }
        // Nothing (above dust) left for the borrower: one output, all to the lender.
        let mut sweep = Self::sweep(
            loan,
            DecisionKind::Release,
            d.inputs,
            lender_spk,
            fee_sat_per_kvb,
            tip,
            escrow,
        )?;
        let lender = collateral.checked_sub(sweep.fee).ok_or_else(|| {
            calc_err(CalcError::FeeExceedsCollateral {
                fee: sweep.fee,
                collateral,
            })
        })?;
        sweep.kind = DecisionKind::Liquidation {
            owed,
            evidence: evidence.clone(),
            split: Split {
                lender,
                borrower: Amount::ZERO,
                fee: sweep.fee,
            },
        };
        Ok(sweep)
    }

    /// The same decision with its fee raised to `fee_sat_per_kvb` (an RBF bump): same
    /// inputs, same amount owed and price, the fee taken from the borrower's share
    /// first; the lender's payment moves only if the borrower's share runs out.
    pub fn bumped(
        &self,
        loan: &Loan,
        escrow: &EscrowDescriptor,
        fee_sat_per_kvb: u64,
    ) -> Result<Self, DecisionError> {
        let mut next = match &self.kind {
            DecisionKind::PartialLiquidation { .. } | DecisionKind::Withdrawal { .. } => {
                self.rest_rebuilt(escrow, fee_sat_per_kvb)?
            }
            DecisionKind::Liquidation { owed, evidence, .. } => Self::liquidation_of(
                loan,
                escrow,
                self.inputs.clone(),
                *owed,
                evidence,
                fee_sat_per_kvb,
                self.tip,
            )?,
            DecisionKind::Release | DecisionKind::Refund => Self::release(
                loan,
                escrow,
                self.inputs.clone(),
                fee_sat_per_kvb,
                self.tip,
                self.kind == DecisionKind::Refund,
            )?,
        };
        next.attempt = self.attempt + 1;
        next.number = self.number;
        Ok(next)
    }

    /// The unsigned transaction: what the arbiter may sign for this decision
    /// (`tx::SpendDecision`), and what a co-signer re-derives to check a PSBT.
    pub fn transaction(&self, escrow: &EscrowDescriptor) -> Result<Transaction, DecisionError> {
        Ok(self.unsigned(escrow)?.psbt.unsigned_tx)
    }
}

mod adjust;
pub use adjust::WithdrawalError;

#[cfg(test)]
pub(crate) mod tests;
