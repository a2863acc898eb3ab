//! What can happen to a loan ([`Input`]) and what happened, with the numbers behind it
//! ([`Event`]): the state machine's vocabulary (`state::apply` turns one into the
//! other).

use bitcoin::{Amount, Txid};
use serde::{Deserialize, Serialize};

use super::money::{Bps, Fiat, Price};
use super::state::{Adjustment, LiquidationReason, LoanState, PriceEvidence, TxKind};
use super::terms::EscrowSchedule;

/// What can happen to a loan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    Accepted {
        now: u64,
        escrow_index: u32,
        descriptor: String,
        required_collateral: Amount,
        schedule: EscrowSchedule,
    },
    /// Confirmed, unspent collateral as the chain watcher sees it now (a snapshot).
    /// `escrow_spent`: a transaction spending the escrow is in the chain view, so a
    /// fall of the collateral is that spend's business, not a reorg of the funding.
    CollateralObserved {
        now: u64,
        confirmed: Amount,
        escrow_spent: bool,
    },
    /// An oracle tick, identified by the oracle's sequence number: `None` when the
    /// oracle has no price (nothing moves).
    PriceTick {
        now: u64,
        seq: u64,
        price: Option<PriceEvidence>,
    },
    /// The oracle has no confirmed aggregate (sources down, quorum lost, sources
    /// disagreeing, stale quotes): a breach being confirmed starts over, so the
    /// `confirm_ticks` that liquidate are consecutive ticks with a price.
    PriceUnavailable {
        reason: String,
    },
    /// The clock or the chain says maturity plus grace may have passed; refused if it
    /// has not (see [`Loan::default_due`]).
    DefaultDue {
        now: u64,
        tip_height: u32,
    },
    /// A repayment, identified by its idempotency key.
    RepaymentRecorded {
        now: u64,
        amount: Fiat,
        key: String,
    },
    TxBroadcast {
        kind: TxKind,
        txid: Txid,
    },
    /// A transaction spending the escrow confirmed (`kind`: what the service expected).
    TxConfirmed {
        kind: TxKind,
        txid: Txid,
        height: u32,
    },
    TxReorgedOut {
        kind: TxKind,
        txid: Txid,
    },
    /// The escrow was spent by a transaction the service did not build.
    SpentByUnknownTx {
        txid: Txid,
        path: String,
    },
    /// That transaction left the chain.
    UnknownSpendReorgedOut {
        txid: Txid,
    },
    DeadlinePassed {
        now: u64,
    },
    /// The liquidation just decided sells only part of the collateral (the engine
    /// computed `adjustment` with `partial::partial_sale`).
    PartialLiquidationDecided {
        adjustment: Adjustment,
    },
    /// The liquidation just decided sells everything although the terms ask for a
    /// partial one, because `why`.
    FullLiquidationInstead {
        why: String,
    },
    /// The borrower asks to withdraw collateral (checked by the engine against the
    /// limit at the current price); replaces an unsigned request.
    WithdrawalRequested {
        adjustment: Adjustment,
    },
    /// The withdrawal is co-signed and signed by the arbiter: its transaction goes out.
    WithdrawalSigned,
    /// The network refused the signed withdrawal's transaction before anyone saw it:
    /// the loan is active again without it.
    WithdrawalRefused {
        reason: String,
    },
}

/// What happened, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Accepted {
        escrow_index: u32,
        required_collateral: Amount,
    },
    CollateralChanged {
        from: Amount,
        to: Amount,
    },
    Activated {
        collateral: Amount,
    },
    /// Active again after its funding left the chain and came back.
    Reactivated {
        collateral: Amount,
    },
    FundingReorgedOut,
    MarginCall {
        ltv: Bps,
        price: Price,
        owed: Fiat,
        oracle_seq: u64,
        evidence: PriceEvidence,
    },
    MarginCallCleared {
        ltv: Bps,
        price: Price,
    },
    /// The LTV crossed margin-call level `level` (1-based) of the terms, at `threshold`.
    MarginCallLevel {
        level: u32,
        threshold: Bps,
        ltv: Bps,
        price: Price,
        owed: Fiat,
    },
    /// The LTV fell below level `level` less the hysteresis: it can fire again.
    MarginCallLevelCleared {
        level: u32,
        ltv: Bps,
    },
    /// The liquidation sells part of the collateral: every number of the sale.
    PartialLiquidationDecided {
        repay: Fiat,
        to_lender: Amount,
        change: Amount,
        fee: Amount,
        ltv_before: Bps,
        target_ltv: Bps,
        ltv_after: Bps,
        price: Price,
    },
    /// The terms ask for partial liquidation but this one sells everything, because
    /// `why`.
    FullLiquidationInstead {
        why: String,
    },
    /// The partial liquidation confirmed: the loan is open again with these numbers.
    PartialLiquidationSettled {
        repaid: Fiat,
        owed: Fiat,
        collateral: Amount,
    },
    WithdrawalRequested {
        amount: Amount,
        change: Amount,
        fee: Amount,
        ltv_after: Bps,
        price: Price,
    },
    WithdrawalSigned {
        amount: Amount,
    },
    /// A withdrawal not yet signed was dropped (a liquidation or a release came
    /// first, or a new request replaced it).
    WithdrawalCancelled {
        reason: String,
    },
    WithdrawalSettled {
        amount: Amount,
        collateral: Amount,
    },
    BreachTick {
        ltv: Bps,
        price: Price,
        owed: Fiat,
        consecutive: u32,
    },
    BreachCleared {
        ltv: Bps,
        price: Price,
    },
    /// A breach being confirmed was held: the oracle had no price (`reason`), and the
    /// `after_ticks` breach ticks counted so far no longer count.
    BreachHeld {
        reason: String,
        after_ticks: u32,
    },
    LiquidationDecided {
        reason: LiquidationReason,
        ltv: Option<Bps>,
        price: Option<Price>,
        owed: Fiat,
        oracle_seq: Option<u64>,
        evidence: Option<PriceEvidence>,
    },
    RepaymentRecorded {
        amount: Fiat,
        owed: Fiat,
        key: String,
    },
    Repaid,
    TxBroadcast {
        kind: TxKind,
        txid: Txid,
    },
    TxConfirmed {
        kind: TxKind,
        txid: Txid,
        /// Unknown when the confirmation came as a spend report.
        height: Option<u32>,
    },
    TxReorgedOut {
        kind: TxKind,
        txid: Txid,
    },
    ClosedOnChain {
        txid: Txid,
        path: String,
    },
    /// The spend that closed the loan on chain left the chain: back to `state`.
    ClosedOnChainReorgedOut {
        txid: Txid,
        state: LoanState,
    },
    Expired,
}
