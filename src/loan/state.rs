//! The loan lifecycle (DESIGN.md §5) as a pure function: `apply(loan, input)` returns
//! the next loan and the events that describe the change, or an error that changes
//! nothing.
//!
//! Rules this module keeps (each tested in `state_tests.rs` or `state_replay_tests.rs`):
//! - **Append-only, idempotent.** An input that changes nothing returns the loan as it
//!   was and no events. Inputs carry an identity so that a replay is such an input: a
//!   price tick its oracle sequence number (ticks at or below the last one applied are
//!   ignored), a repayment its idempotency key, a broadcast its txid, a
//!   confirmation its txid; chain observations are snapshots (the same snapshot twice
//!   is the same state).
//! - **A loan that was ever activated never expires.** "The funding left the chain"
//!   (collateral back to zero with the escrow unspent) deactivates it; "the escrow was
//!   spent" is decided by the spend itself (ours: its confirmation; anyone else's:
//!   `ClosedOnChain`), never by the collateral falling to zero.
//! - **The margin call is never skipped**: a price that gaps into the liquidation band
//!   raises it in the same transition, before counting breach ticks.
//! - **Our transactions are the ones we recorded**: every txid broadcast for the
//!   current decision (RBF replacements included) is kept; a confirmation of any of
//!   them completes the decision; any other spend closes the loan on chain. `Liquidated`,
//!   `Closed` and `ClosedOnChain` move back when the transaction that led there leaves
//!   the chain. `Expired` is reached by the clock alone, from loans never activated.
//! - **Maturity and default**: the loan matures at activation + term or when the chain
//!   reaches the escrow's `maturity_height`, whichever comes first; it is in default
//!   (liquidated with the penalty, if money is owed) `grace_blocks` after maturity: at
//!   activation + term + grace × 600 s or at `default_height = maturity_height +
//!   grace`, whichever first. The lender's solo path opens at `default_height`, so it
//!   never opens before maturity plus grace (see `LoanTerms::escrow_heights`).
//! - **Expired** is reached by the clock alone (the engine sends the deadline only with a
//!   fresh chain view), from loans never activated; a partial deposit, or a funding
//!   that confirms too late, stays tracked in `Expired` and is refunded there
//!   (`TxKind::Refund`).
//! - **Evidence**: price decisions (margin calls, liquidations) carry the oracle's
//!   aggregate with every quote, used and dropped.
//! - **Adjustments leave the loan open.** A partial liquidation (decided with the
//!   liquidation, `PartialLiquidationDecided`) or a withdrawal (requested while
//!   `Active`, signed into `Withdrawing`) is settled when its transaction confirms:
//!   the loan is `Active` again on the change paid back into the escrow, a partial
//!   sale's repayment applied as of its decision (nothing moves the accrual while it is
//!   pending), its breach count and margin-call levels reset. The settled transaction
//!   is remembered (`Loan::settled`): seen again it is neither a stranger's spend nor a
//!   new confirmation. A withdrawal not yet signed gives way to a liquidation or a
//!   release. Decisions are numbered per loan (`Loan::decisions`).
//! - **Margin-call levels** (terms `margin_call_levels`) are crossed in order at or
//!   above each level and cleared below it less the hysteresis; each crossing and
//!   clearing is one event.

use std::collections::BTreeMap;

use bitcoin::{Amount, Txid};
use serde::{Deserialize, Serialize};

use super::calc::{self, Accrual, CalcError};
pub use super::inputs::{Event, Input};
use super::money::{Bps, Fiat, Price};
use super::terms::{EscrowSchedule, LoanTerms};
pub use super::transition::apply;

/// Where a loan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoanState {
    Offered,
    AwaitingCollateral,
    Active,
    MarginCall,
    Liquidating,
    Liquidated,
    Releasing,
    Closed,
    Expired,
    ClosedOnChain,
    /// A withdrawal of excess collateral is signed and waits for its transaction to
    /// confirm (then `Active` again).
    Withdrawing,
}

/// Why a loan is being liquidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiquidationReason {
    /// LTV at or above the liquidation threshold on `confirm_ticks` consecutive prices.
    LtvBreach,
    /// LTV at or above the hard threshold: no confirmation needed.
    HardBreach,
    /// Maturity plus grace reached with money still owed.
    Default,
}

/// One exchange quote behind an aggregated price, used or dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteEvidence {
    pub source: String,
    /// The quoted price (none when the source failed to answer).
    pub minor_per_btc: Option<u64>,
    /// Unix seconds the source dated it.
    pub at: Option<u64>,
    /// Why the aggregation dropped it (failed, stale, outlier, other currency), if it
    /// did.
    pub dropped: Option<String>,
}

/// The oracle's aggregate behind a price tick: what every decision taken on it stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceEvidence {
    /// The aggregated (median) price.
    pub price: Price,
    /// Every quote of the tick, used and dropped.
    pub quotes: Vec<QuoteEvidence>,
}

impl PriceEvidence {
    /// A price with no quote detail (tests, the manual source).
    pub fn bare(price: Price) -> Self {
        Self {
            price,
            quotes: Vec::new(),
        }
    }
}

/// Which transaction the service built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    Liquidation,
    Release,
    /// An expired loan's deposits back to the borrower.
    Refund,
    /// Part of the collateral to the lender, the rest back into the escrow.
    PartialLiquidation,
    /// Collateral above the initial LTV to the borrower, the rest back into the escrow.
    Withdrawal,
}

/// What an adjustment (a transaction that leaves the loan open) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentKind {
    PartialLiquidation,
    Withdrawal,
}

/// A partial liquidation or a withdrawal: the loan stays open on the change its
/// transaction pays back into the escrow (same script: see `engine::decision`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub kind: AdjustmentKind,
    /// When it was decided (unix seconds): a partial sale repays the debt as of then.
    pub decided_at: u64,
    /// The debt the sale repays (zero for a withdrawal).
    pub repay: Fiat,
    /// To the lender (partial liquidation) or to the borrower (withdrawal).
    pub paid: Amount,
    /// Back into the escrow.
    pub change: Amount,
    pub fee: Amount,
    /// The price it was decided at, and the LTV before and after at that price.
    pub price: Price,
    pub ltv_before: Bps,
    pub ltv_after: Bps,
    /// The oracle tick it was decided on (partial liquidations).
    pub oracle_seq: Option<u64>,
    /// The transaction that carried it out, once confirmed.
    pub txid: Option<Txid>,
    pub height: Option<u32>,
    /// Every transaction of its decision (fee bumps too): a reorg may confirm another
    /// of them instead, which settles the same adjustment.
    #[serde(default)]
    pub attempts: Vec<Txid>,
}

/// A loan record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loan {
    pub id: String,
    /// The lender's party id (empty for a loan offered outside the API).
    #[serde(default)]
    pub lender_id: String,
    /// The borrower's party id, once one accepted.
    #[serde(default)]
    pub borrower_id: Option<String>,
    /// When it was offered (unix seconds).
    #[serde(default)]
    pub created_at: u64,
    pub terms: LoanTerms,
    pub state: LoanState,
    /// Bumped by every transition (optimistic concurrency in the store).
    pub version: u64,
    /// Events written so far (the next event's per-loan sequence number).
    pub event_count: u64,
    pub escrow_index: Option<u32>,
    pub descriptor: Option<String>,
    /// The escrow's heights, fixed at acceptance.
    pub schedule: Option<EscrowSchedule>,
    /// Collateral the loan needs to activate (fixed at acceptance).
    pub required_collateral: Amount,
    /// Confirmed, unspent collateral.
    pub collateral: Amount,
    /// The first activation (kept through deactivations: interest and maturity run
    /// from it, and a loan once activated never expires).
    pub activated_at: Option<u64>,
    /// What is owed and how it grows; set at activation.
    pub accrual: Option<Accrual>,
    /// Repaid so far, in minor units (for display; `accrual` is what counts).
    pub repaid: u64,
    /// Applied repayments by idempotency key, with their amounts in minor units.
    pub repayments: BTreeMap<String, u64>,
    /// Consecutive price ticks at or above the liquidation LTV.
    pub breach_ticks: u32,
    /// The oracle sequence number of the last tick applied to this loan.
    pub last_price_seq: Option<u64>,
    pub liquidation_reason: Option<LiquidationReason>,
    /// Every transaction broadcast for the current decision (RBF replacements too).
    pub broadcasts: Vec<(TxKind, Txid)>,
    /// The one of them that confirmed.
    pub confirmed_tx: Option<(TxKind, Txid)>,
    /// A transaction the service did not build that spent the escrow.
    pub spent_by: Option<Txid>,
    /// The state the loan was in when `spent_by` closed it (restored on a reorg).
    pub closed_from: Option<LoanState>,
    /// Decisions taken so far: the next decision's number (its store key).
    #[serde(default)]
    pub decisions: u32,
    /// The partial liquidation or withdrawal the pending decision carries out.
    #[serde(default)]
    pub adjustment: Option<Adjustment>,
    /// Settled partial liquidations and withdrawals, oldest first.
    #[serde(default)]
    pub adjustments: Vec<Adjustment>,
    /// How many of the terms' margin-call levels are crossed (they are crossed in
    /// order, so these are the first ones).
    #[serde(default)]
    pub levels_crossed: u32,
}

impl Loan {
    pub fn offered(id: &str, terms: LoanTerms) -> Self {
        Self {
            id: id.to_owned(),
            lender_id: String::new(),
            borrower_id: None,
            created_at: 0,
            terms,
            state: LoanState::Offered,
            version: 0,
            event_count: 0,
            escrow_index: None,
            descriptor: None,
            schedule: None,
            required_collateral: Amount::ZERO,
            collateral: Amount::ZERO,
            activated_at: None,
            accrual: None,
            repaid: 0,
            repayments: BTreeMap::new(),
            breach_ticks: 0,
            last_price_seq: None,
            liquidation_reason: None,
            broadcasts: Vec::new(),
            confirmed_tx: None,
            spent_by: None,
            closed_from: None,
            decisions: 0,
            adjustment: None,
            adjustments: Vec::new(),
            levels_crossed: 0,
        }
    }

    /// Is `txid` the confirmed transaction of a settled adjustment (a spend of the
    /// escrow that left the loan open)?
    pub fn settled(&self, txid: Txid) -> bool {
        self.adjustments
            .iter()
            .any(|a| a.txid == Some(txid) || a.attempts.contains(&txid))
    }

    /// The collateral that activates the loan again after its funding left the
    /// chain: what acceptance required, or less once an adjustment left it less.
    pub(super) fn collateral_to_reactivate(&self) -> Amount {
        match self.adjustments.last() {
            Some(a) => a.change.min(self.required_collateral),
            None => self.required_collateral,
        }
    }

    /// The accrual: the loan's own once activated; before, the principal alone.
    pub fn accrual_at(&self, now: u64) -> Accrual {
        let t = self.terms.get();
        self.accrual
            .unwrap_or_else(|| Accrual::new(t.principal, t.apr, now))
    }

    /// What is owed at `now` (nothing accrues before activation).
    pub fn owed(&self, now: u64) -> Result<Fiat, CalcError> {
        self.accrual_at(now).owed(now)
    }

    pub fn ltv(&self, now: u64, price: Price) -> Result<Bps, CalcError> {
        calc::ltv(self.owed(now)?, self.collateral, price)
    }

    /// Is the loan past maturity plus grace at `now` with the chain at `tip_height`? At
    /// activation + term + grace × 600 s, or at the escrow's `default_height` (=
    /// `maturity_height + grace`), whichever comes first.
    pub fn default_due(&self, now: u64, tip_height: u32) -> bool {
        let t = self.terms.get();
        let grace_secs = u64::from(t.grace_blocks).saturating_mul(super::terms::SECS_PER_BLOCK);
        let by_time = self
            .activated_at
            .is_some_and(|a| now >= a.saturating_add(t.term_secs).saturating_add(grace_secs));
        let by_height = self
            .schedule
            .is_some_and(|s| tip_height >= s.default_height);
        by_time || by_height
    }

    /// Has collateral ever been locked for this loan (so the escrow holds or held
    /// coins that only its spending paths can move)?
    pub(super) fn ever_funded(&self) -> bool {
        self.activated_at.is_some()
            || self.collateral > Amount::ZERO
            || matches!(
                self.state,
                LoanState::Active
                    | LoanState::MarginCall
                    | LoanState::Liquidating
                    | LoanState::Liquidated
                    | LoanState::Releasing
                    | LoanState::Closed
                    | LoanState::Withdrawing
            )
    }

    pub(super) fn is_ours(&self, txid: Txid) -> bool {
        self.broadcasts.iter().any(|(_, t)| *t == txid)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("loan {id}: {input} is not possible in state {state:?}")]
    Illegal {
        id: String,
        state: LoanState,
        input: &'static str,
    },
    #[error("loan {id}: {0}", id = .1)]
    Calc(CalcError, String),
    #[error("loan {id}: repayment of {amount} exceeds what is owed ({owed})")]
    Overpayment {
        id: String,
        amount: Fiat,
        owed: Fiat,
    },
    #[error("loan {id}: amount: a repayment must be above zero")]
    ZeroRepayment { id: String },
    #[error("loan {id}: idempotency key {key:?} was used for a repayment of {first} minor units, not {now}")]
    RepaymentKeyReused {
        id: String,
        key: String,
        first: u64,
        now: u64,
    },
    #[error("loan {id}: {kind:?} transaction {txid} is not the one recorded")]
    UnknownTx {
        id: String,
        kind: TxKind,
        txid: Txid,
    },
    #[error("loan {id}: the deadline has not passed")]
    DeadlineNotPassed { id: String },
    #[error("loan {id}: maturity plus grace has not passed at {now} with the chain at height {tip_height}")]
    NotDue {
        id: String,
        now: u64,
        tip_height: u32,
    },
}

#[cfg(test)]
#[path = "state_adjust_tests.rs"]
mod adjust_tests;
#[cfg(test)]
#[path = "state_replay_tests.rs"]
mod replay_tests;
#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
