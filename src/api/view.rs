//! The loan as the API shows it: integers only (`_sat`, `_minor`, `_bps`), heights,
//! unix seconds; `state` is the snake_case of DESIGN.md §5's states.

use bitcoin::{Address, Network, ScriptBuf};
use serde::Serialize;

use super::Problem;
use crate::engine::{DecisionKind, DecisionRecord, Progress};
use crate::loan::PriceEvidence;
use crate::loan::{calc, Loan, LoanState, TermsInput};
use crate::policy::EscrowDescriptor;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoanView {
    pub id: String,
    /// The snake_case of DESIGN.md §5's states.
    #[schema(value_type = String, example = "active")]
    pub state: LoanState,
    pub lender_id: String,
    pub borrower_id: Option<String>,
    pub terms: TermsView,
    pub escrow: Option<EscrowView>,
    pub required_collateral_sat: u64,
    pub collateral_sat: u64,
    pub owed_minor: u64,
    pub repaid_minor: u64,
    /// At the latest fresh aggregate; null without one or without collateral.
    pub ltv_bps: Option<u32>,
    /// The highest price at which the loan is in margin call / breaches its
    /// liquidation LTV (null when nothing is owed or nothing is locked).
    pub margin_call_price_minor: Option<u64>,
    pub liquidation_price_minor: Option<u64>,
    /// `ltv_breach`, `hard_breach` or `default`, once liquidating.
    #[schema(value_type = Option<String>)]
    pub liquidation_reason: Option<crate::loan::LiquidationReason>,
    /// Consecutive aggregated prices at or above the liquidation LTV so far (the
    /// liquidation is decided at the terms' `confirm_ticks`).
    pub breach_ticks: u32,
    pub pending_psbt: Option<PendingPsbt>,
    /// Every transaction broadcast for the loan's decision (RBF replacements too).
    pub txids: Vec<String>,
    pub confirmed_txid: Option<String>,
    pub created_at: u64,
    pub activated_at: Option<u64>,
    /// The partial liquidation or withdrawal under way, if any.
    pub adjustment: Option<AdjustmentView>,
    /// Settled partial liquidations and withdrawals, oldest first.
    pub adjustments: Vec<AdjustmentView>,
    /// How many margin-call levels the LTV has crossed (in order).
    pub margin_call_levels_crossed: u32,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TermsView {
    pub principal_minor: u64,
    pub currency: String,
    pub apr_bps: u32,
    pub term_secs: u64,
    pub initial_ltv_bps: u32,
    pub margin_call_ltv_bps: u32,
    pub liquidation_ltv_bps: u32,
    pub hard_liquidation_ltv_bps: Option<u32>,
    pub liquidation_penalty_bps: u32,
    pub hysteresis_bps: u32,
    pub confirm_ticks: u32,
    pub grace_blocks: u32,
    pub recovery_delay_blocks: u32,
    pub funding_deadline: u64,
    pub lender_payout_address: String,
    pub borrower_return_address: Option<String>,
    pub min_confirmations: u32,
    /// A confirmed breach sells only what brings the loan back to `target_ltv_bps`.
    pub partial_liquidation: bool,
    pub target_ltv_bps: Option<u32>,
    /// The margin-call levels in force (the first is `margin_call_ltv_bps`).
    pub margin_call_levels_bps: Vec<u32>,
}

impl From<&TermsInput> for TermsView {
    fn from(t: &TermsInput) -> Self {
        Self {
            principal_minor: t.principal.minor,
            currency: t.principal.currency.to_string(),
            apr_bps: t.apr.0,
            term_secs: t.term_secs,
            initial_ltv_bps: t.initial_ltv.0,
            margin_call_ltv_bps: t.margin_call_ltv.0,
            liquidation_ltv_bps: t.liquidation_ltv.0,
            hard_liquidation_ltv_bps: t.hard_liquidation_ltv.map(|b| b.0),
            liquidation_penalty_bps: t.liquidation_penalty.0,
            hysteresis_bps: t.hysteresis.0,
            confirm_ticks: t.confirm_ticks,
            grace_blocks: t.grace_blocks,
            recovery_delay_blocks: t.recovery_delay_blocks,
            funding_deadline: t.funding_deadline,
            lender_payout_address: t.lender_payout_address.clone(),
            borrower_return_address: (!t.borrower_return_address.is_empty())
                .then(|| t.borrower_return_address.clone()),
            min_confirmations: t.min_confirmations,
            partial_liquidation: t.partial_liquidation,
            target_ltv_bps: t.target_ltv.map(|b| b.0),
            margin_call_levels_bps: t.levels().iter().map(|b| b.0).collect(),
        }
    }
}

/// A partial liquidation or a withdrawal, pending or settled.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdjustmentView {
    /// `partial_liquidation` or `withdrawal`.
    #[schema(value_type = String)]
    pub kind: crate::loan::AdjustmentKind,
    pub decided_at: u64,
    /// The debt a partial sale repays (0 for a withdrawal).
    pub repay_minor: u64,
    /// To the lender (partial liquidation) or the borrower (withdrawal).
    pub paid_sat: u64,
    /// Back into the escrow.
    pub change_sat: u64,
    pub fee_sat: u64,
    pub price_minor: u64,
    pub ltv_before_bps: u32,
    pub ltv_after_bps: u32,
    pub oracle_seq: Option<u64>,
    /// Once confirmed.
    pub txid: Option<String>,
    pub height: Option<u32>,
}

impl From<&crate::loan::Adjustment> for AdjustmentView {
    fn from(a: &crate::loan::Adjustment) -> Self {
        Self {
            kind: a.kind,
            decided_at: a.decided_at,
            repay_minor: a.repay.minor,
            paid_sat: a.paid.to_sat(),
            change_sat: a.change.to_sat(),
            fee_sat: a.fee.to_sat(),
            price_minor: a.price.minor_per_btc,
            ltv_before_bps: a.ltv_before.0,
            ltv_after_bps: a.ltv_after.0,
            oracle_seq: a.oracle_seq,
            txid: a.txid.map(|t| t.to_string()),
            height: a.height,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EscrowView {
    /// The escrow's descriptor at its index (what the address is derived from).
    pub descriptor: String,
    /// The same, as a BIP-389 multipath descriptor of the three account keys.
    pub multipath_descriptor: String,
    pub address: String,
    pub index: u32,
    pub default_height: u32,
    pub recovery_height: u32,
    pub wallet_policy: WalletPolicyView,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WalletPolicyView {
    pub template: String,
    pub keys: Vec<String>,
}

impl From<&EscrowDescriptor> for EscrowView {
    fn from(e: &EscrowDescriptor) -> Self {
        let policy = e.wallet_policy();
        let heights = e.heights();
        Self {
            descriptor: e.to_string(),
            multipath_descriptor: e.multipath_descriptor(),
            address: e.address().to_string(),
            index: e.index(),
            default_height: heights.default_height,
            recovery_height: heights.recovery_height,
            wallet_policy: WalletPolicyView {
                template: policy.template,
                keys: policy.keys,
            },
        }
    }
}

/// A decision waiting for its second signature.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PendingPsbt {
    /// `liquidation`, `partial_liquidation`, `release`, `refund` or `withdrawal`.
    pub kind: &'static str,
    /// Base64, signed by the arbiter (a withdrawal's is not: the arbiter signs it
    /// last, once the borrower has, after checking the limit again).
    pub psbt: String,
    /// Which of the loan's decisions it is (0 for the first).
    pub decision: u32,
    pub fee_sat: u64,
    pub outputs: Vec<OutputView>,
    /// 0 for the first transaction of the decision, +1 per fee bump.
    pub attempt: u32,
    /// When the arbiter signed it (unix seconds).
    pub signed_at: u64,
    /// A liquidation's decision price (the aggregate it was decided at) and what was
    /// owed then: what a co-signer checks the lender's output against.
    pub price_minor: Option<u64>,
    pub owed_minor: Option<u64>,
    /// A partial liquidation's sale: the debt it repays, and the target LTV.
    pub repay_minor: Option<u64>,
    pub target_ltv_bps: Option<u32>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutputView {
    pub address: Option<String>,
    pub amount_sat: u64,
    /// `lender` (its payout address), `borrower` (its return address), `escrow`
    /// (change back into the escrow) or `other`.
    pub role: &'static str,
}

pub fn kind_name(kind: &DecisionKind) -> &'static str {
    match kind {
        DecisionKind::Liquidation { .. } => "liquidation",
        DecisionKind::Release => "release",
        DecisionKind::Refund => "refund",
        DecisionKind::PartialLiquidation { .. } => "partial_liquidation",
        DecisionKind::Withdrawal { .. } => "withdrawal",
    }
}

/// The pending PSBT of `record`, if it awaits a co-signature.
pub fn pending(
    record: &DecisionRecord,
    loan: &Loan,
    network: Network,
) -> Result<Option<PendingPsbt>, Problem> {
    if record.progress != Progress::AwaitingCosignature {
        return Ok(None);
    }
    let psbt = record
        .psbt()
        .map_err(|e| Problem::internal(e.to_string()))?;
    let lender = loan.terms.lender_payout_address().script_pubkey();
    let borrower: Option<ScriptBuf> = loan
        .terms
        .has_borrower_return_address()
        .then(|| loan.terms.borrower_return_address().script_pubkey());
    let escrow = record
        .decision
        .inputs
        .first()
        .and_then(|i| i.txout())
        .map(|o| o.script_pubkey.clone());
    let outputs = psbt
        .unsigned_tx
        .output
        .iter()
        .map(|o| OutputView {
            address: Address::from_script(&o.script_pubkey, network)
                .ok()
                .map(|a| a.to_string()),
            amount_sat: o.value.to_sat(),
            role: if o.script_pubkey == lender {
                "lender"
            } else if Some(&o.script_pubkey) == borrower.as_ref() {
                "borrower"
            } else if Some(&o.script_pubkey) == escrow.as_ref() {
                "escrow"
            } else {
                "other"
            },
        })
        .collect();
    Ok(Some(PendingPsbt {
        kind: kind_name(&record.decision.kind),
        psbt: record.psbt.clone(),
        fee_sat: record.decision.fee.to_sat(),
        outputs,
        attempt: record.decision.attempt,
        decision: record.decision.number,
        signed_at: record.signed_at,
        price_minor: match &record.decision.kind {
            DecisionKind::Liquidation { evidence, .. }
            | DecisionKind::PartialLiquidation { evidence, .. }
            | DecisionKind::Withdrawal { evidence, .. } => Some(evidence.price.minor_per_btc),
            _ => None,
        },
        owed_minor: match &record.decision.kind {
            DecisionKind::Liquidation { owed, .. }
            | DecisionKind::PartialLiquidation { owed, .. }
            | DecisionKind::Withdrawal { owed, .. } => Some(owed.minor),
            _ => None,
        },
        repay_minor: match &record.decision.kind {
            DecisionKind::PartialLiquidation { sale, .. } => Some(sale.repay.minor),
            _ => None,
        },
        target_ltv_bps: match &record.decision.kind {
            DecisionKind::PartialLiquidation { .. } => loan.terms.get().target_ltv.map(|b| b.0),
            _ => None,
        },
    }))
}

impl LoanView {
    /// The view of `loan` at `now`, from what the engine thread handed out (its
    /// escrow, the fresh price) and the store (the loan's decision): built on any
    /// thread, so views do not queue behind the engine.
    pub fn build(
        loan: &Loan,
        escrow: Option<&EscrowDescriptor>,
        price: Option<&PriceEvidence>,
        record: Option<&DecisionRecord>,
        now: u64,
        network: Network,
    ) -> Result<Self, Problem> {
        let t = loan.terms.get();
        let owed = loan
            .owed(now)
            .map_err(|e| Problem::internal(e.to_string()))?;
        let locked = loan.collateral > bitcoin::Amount::ZERO;
        let ltv_bps = match (price, locked) {
            (Some(p), true) => loan.ltv(now, p.price).ok().map(|b| b.0),
            _ => None,
        };
        let threshold = |bps| {
            if locked {
                calc::liquidation_price(owed.minor, loan.collateral, bps)
            } else {
                None
            }
        };
        let pending_psbt = match record {
            Some(record) => pending(record, loan, network)?,
            None => None,
        };
        Ok(Self {
            id: loan.id.clone(),
            state: loan.state,
            lender_id: loan.lender_id.clone(),
            borrower_id: loan.borrower_id.clone(),
            terms: t.into(),
            escrow: escrow.map(EscrowView::from),
            required_collateral_sat: loan.required_collateral.to_sat(),
            collateral_sat: loan.collateral.to_sat(),
            owed_minor: owed.minor,
            repaid_minor: loan.repaid,
            ltv_bps,
            margin_call_price_minor: threshold(t.margin_call_ltv),
            liquidation_price_minor: threshold(t.liquidation_ltv),
            liquidation_reason: loan.liquidation_reason,
            breach_ticks: loan.breach_ticks,
            pending_psbt,
            txids: loan.broadcasts.iter().map(|(_, t)| t.to_string()).collect(),
            confirmed_txid: loan.confirmed_tx.map(|(_, t)| t.to_string()),
            created_at: loan.created_at,
            activated_at: loan.activated_at,
            adjustment: loan.adjustment.as_ref().map(AdjustmentView::from),
            adjustments: loan.adjustments.iter().map(AdjustmentView::from).collect(),
            margin_call_levels_crossed: loan.levels_crossed,
        })
    }
}
