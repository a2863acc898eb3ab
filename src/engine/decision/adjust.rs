//! The decisions that leave a loan open: a partial liquidation (the smallest sale that
//! restores the target LTV, `partial::partial_sale`) and a withdrawal (collateral above
//! the limit to the borrower). Both pay one output and send the change back into the
//! escrow's own script; a fee bump takes the extra fee from the change.

use bitcoin::{Amount, ScriptBuf};

use super::{Decision, DecisionError, DecisionKind};
use crate::loan::calc::{self, CalcError};
use crate::loan::partial::{self, Sale};
use crate::loan::{Bps, Loan, PriceEvidence};
use crate::policy::EscrowDescriptor;
use crate::tx::{self, EscrowInput};

/// Why a withdrawal is refused.
#[derive(Debug, thiserror::Error)]
pub enum WithdrawalError {
    #[error("amount_sat: {amount} is above the most that can be withdrawn, {max}, keeping the LTV at or below {limit} at the current price")]
    AboveLimit {
        max: Amount,
        limit: Bps,
        amount: Amount,
    },
    #[error("amount_sat: {amount} is below the dust limit {dust} of the return address")]
    Dust { amount: Amount, dust: Amount },
    #[error(transparent)]
    Decision(#[from] DecisionError),
}

impl Decision {
    /// An adjustment at another fee rate: the same payment, the fee from the change.
    pub(super) fn rest_rebuilt(
        &self,
        escrow: &EscrowDescriptor,
        fee_sat_per_kvb: u64,
    ) -> Result<Self, DecisionError> {
        let mut next = Decision {
            fee_sat_per_kvb,
            ..self.clone()
        };
        let built = tx::build(escrow, &next.request()?).map_err(|e| self.tx_err(e))?;
        next.fee = built.fee;
        match &mut next.kind {
            DecisionKind::PartialLiquidation { sale, .. } => {
                sale.fee = built.fee;
                sale.change = built.rest;
            }
            DecisionKind::Withdrawal { change, .. } => *change = built.rest,
            _ => {}
        }
        Ok(next)
    }

    /// The collateral of `inputs`.
    fn total(loan: &Loan, inputs: &[EscrowInput]) -> Result<Amount, DecisionError> {
        EscrowInput::total(inputs).ok_or_else(|| DecisionError::Calc {
            id: loan.id.clone(),
            source: CalcError::Overflow,
        })
    }

    /// The fee of a two-output adjustment (a payment to `to`, the change back into the
    /// escrow) at `fee_sat_per_kvb`: the outputs' values do not change its size.
    fn adjustment_fee(
        loan: &Loan,
        escrow: &EscrowDescriptor,
        path_of: DecisionKind,
        inputs: &[EscrowInput],
        to: &ScriptBuf,
        fee_sat_per_kvb: u64,
        tip: u32,
    ) -> Result<Amount, DecisionError> {
        let probe = Decision {
            loan_id: loan.id.clone(),
            number: 0,
            kind: path_of,
            attempt: 0,
            inputs: inputs.to_vec(),
            payments: vec![(to.clone(), to.minimal_non_dust())],
            rest_to: escrow.script_pubkey(),
            fee_sat_per_kvb,
            tip,
            fee: Amount::ZERO,
        };
        Ok(tx::build(escrow, &probe.request()?)
            .map_err(|e| probe.tx_err(e))?
            .fee)
    }

    /// A confirmed breach of a loan whose terms ask for partial liquidation: the
    /// smallest sale that restores `target` at `evidence`'s price, paying the lender
    /// and sending the change back into the escrow (same script: the escrow's keys,
    /// heights and exits stay what every party verified, and its exit kits stay
    /// valid; the partial sale links the two outputs on chain whatever the script,
    /// so a fresh one would buy no privacy). `Ok(Err(why))`: a full liquidation
    /// instead (see `partial::partial_sale`).
    #[allow(clippy::too_many_arguments)]
    pub fn partial_liquidation(
        loan: &Loan,
        escrow: &EscrowDescriptor,
        inputs: Vec<EscrowInput>,
        evidence: &PriceEvidence,
        target: Bps,
        now: u64,
        fee_sat_per_kvb: u64,
        tip: u32,
    ) -> Result<Result<Self, &'static str>, DecisionError> {
        let calc_err = |source| DecisionError::Calc {
            id: loan.id.clone(),
            source,
        };
        if inputs.is_empty() {
            return Err(DecisionError::NoInputs {
                id: loan.id.clone(),
            });
        }
        let owed = loan.owed(now).map_err(calc_err)?;
        let collateral = Self::total(loan, &inputs)?;
        let lender_spk = loan.terms.lender_payout_address().script_pubkey();
        let fee = match Self::adjustment_fee(
            loan,
            escrow,
            DecisionKind::Release,
            &inputs,
            &lender_spk,
            fee_sat_per_kvb,
            tip,
        ) {
            Ok(fee) => fee,
            Err(_) => return Ok(Err("the collateral cannot pay for two outputs")),
        };
        let dust = lender_spk
            .minimal_non_dust()
            .max(escrow.script_pubkey().minimal_non_dust());
        let sale = match partial::partial_sale(
            owed,
            collateral,
            evidence.price,
            target,
            loan.terms.get().liquidation_penalty,
            fee,
            dust,
        )
        .map_err(calc_err)?
        {
            Sale::Partial(sale) => sale,
            Sale::Full { why } => return Ok(Err(why)),
        };
        let d = Decision {
            loan_id: loan.id.clone(),
            number: 0,
            kind: DecisionKind::PartialLiquidation {
                owed,
                evidence: evidence.clone(),
                sale,
            },
            attempt: 0,
            inputs,
            payments: vec![(lender_spk, sale.lender)],
            rest_to: escrow.script_pubkey(),
            fee_sat_per_kvb,
            tip,
            fee,
        };
        let built = d.unsigned(escrow)?;
        debug_assert_eq!(built.rest, sale.change);
        Ok(Ok(d))
    }

    /// A borrower's withdrawal of `amount` to the return address, the rest (less the
    /// fee) back into the escrow, refused unless the LTV after it at `evidence`'s
    /// price is at or below `limit`.
    #[allow(clippy::too_many_arguments)]
    pub fn withdrawal(
        loan: &Loan,
        escrow: &EscrowDescriptor,
        inputs: Vec<EscrowInput>,
        amount: Amount,
        evidence: &PriceEvidence,
        limit: Bps,
        now: u64,
        fee_sat_per_kvb: u64,
        tip: u32,
    ) -> Result<Self, WithdrawalError> {
        let calc_err = |source| DecisionError::Calc {
            id: loan.id.clone(),
            source,
        };
        if inputs.is_empty() {
            return Err(DecisionError::NoInputs {
                id: loan.id.clone(),
            }
            .into());
        }
        let owed = loan.owed(now).map_err(calc_err)?;
        let collateral = Self::total(loan, &inputs)?;
        let to = loan.terms.borrower_return_address().script_pubkey();
        let fee = Self::adjustment_fee(
            loan,
            escrow,
            DecisionKind::Release,
            &inputs,
            &to,
            fee_sat_per_kvb,
            tip,
        )?;
        let max = partial::max_withdrawal(owed, collateral, evidence.price, limit, fee)
            .map_err(calc_err)?;
        if amount > max {
            return Err(WithdrawalError::AboveLimit { max, limit, amount });
        }
        let dust = to.minimal_non_dust();
        if amount < dust {
            return Err(WithdrawalError::Dust { amount, dust });
        }
        // Within the limit checked above: collateral − fee − amount ≥ what the limit
        // needs, so no underflow.
        let change = collateral - fee - amount;
        let ltv_after = calc::ltv(owed, change, evidence.price).map_err(calc_err)?;
        let d = Decision {
            loan_id: loan.id.clone(),
            number: 0,
            kind: DecisionKind::Withdrawal {
                owed,
                evidence: evidence.clone(),
                amount,
                change,
                limit,
                ltv_after,
            },
            attempt: 0,
            inputs,
            payments: vec![(to, amount)],
            rest_to: escrow.script_pubkey(),
            fee_sat_per_kvb,
            tip,
            fee,
        };
        let built = d.unsigned(escrow)?;
        debug_assert_eq!(built.rest, change);
        Ok(d)
    }
}
