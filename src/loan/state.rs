//! The loan lifecycle (DESIGN.md §5) as a pure function: `apply(loan, input)` returns
//! the next loan and the events that describe the change, or an error that changes
//! nothing.

use bitcoin::{Amount, Txid};
use serde::{Deserialize, Serialize};

use super::calc::{self, CalcError};
use super::money::{Bps, Fiat, Price};
use super::terms::LoanTerms;

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

/// Which transaction the service built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    Liquidation,
    Release,
}

/// A loan record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loan {
    pub id: String,
    pub terms: LoanTerms,
    pub state: LoanState,
    /// Bumped by every transition (optimistic concurrency in the store).
    pub version: u64,
    /// Events written so far (the next event's per-loan sequence number).
    pub event_count: u64,
    pub escrow_index: Option<u32>,
    pub descriptor: Option<String>,
    /// Collateral the loan needs to activate (fixed at acceptance).
    pub required_collateral: Amount,
    /// Confirmed, unspent collateral.
    pub collateral: Amount,
    pub activated_at: Option<u64>,
    /// Repaid, in minor units.
    pub repaid: u64,
    /// Consecutive price ticks at or above the liquidation LTV.
    pub breach_ticks: u32,
    pub liquidation_reason: Option<LiquidationReason>,
    pub broadcast: Option<(TxKind, Txid)>,
    pub spent_by: Option<Txid>,
}

impl Loan {
    pub fn offered(id: &str, terms: LoanTerms) -> Self {
        Self {
            id: id.to_owned(),
            terms,
            state: LoanState::Offered,
            version: 0,
            event_count: 0,
            escrow_index: None,
            descriptor: None,
            required_collateral: Amount::ZERO,
            collateral: Amount::ZERO,
            activated_at: None,
            repaid: 0,
            breach_ticks: 0,
            liquidation_reason: None,
            broadcast: None,
            spent_by: None,
        }
    }

    /// What is owed at `now` (zero before activation accrues nothing).
    pub fn owed(&self, now: u64) -> Result<Fiat, CalcError> {
        let t = self.terms.get();
        let start = self.activated_at.unwrap_or(now);
        calc::owed(t.principal, t.apr, start, now.max(start), self.repaid)
    }

    pub fn ltv(&self, now: u64, price: Price) -> Result<Bps, CalcError> {
        calc::ltv(self.owed(now)?, self.collateral, price)
    }

    fn is_funded(&self) -> bool {
        matches!(
            self.state,
            LoanState::Active
                | LoanState::MarginCall
                | LoanState::Liquidating
                | LoanState::Liquidated
                | LoanState::Releasing
                | LoanState::Closed
        )
    }
}

/// What can happen to a loan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    Accepted {
        now: u64,
        escrow_index: u32,
        descriptor: String,
        required_collateral: Amount,
    },
    /// Confirmed, unspent collateral as the chain watcher sees it now.
    CollateralObserved {
        now: u64,
        confirmed: Amount,
    },
    /// An oracle tick: `None` when the oracle has no price (nothing moves).
    PriceTick {
        now: u64,
        price: Option<Price>,
    },
    /// Maturity plus grace reached.
    MaturityReached {
        now: u64,
    },
    RepaymentRecorded {
        now: u64,
        amount: Fiat,
    },
    TxBroadcast {
        kind: TxKind,
        txid: Txid,
    },
    TxConfirmed {
        kind: TxKind,
        txid: Txid,
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
    DeadlinePassed {
        now: u64,
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
    FundingReorgedOut,
    MarginCall {
        ltv: Bps,
        price: Price,
        owed: Fiat,
    },
    MarginCallCleared {
        ltv: Bps,
        price: Price,
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
    LiquidationDecided {
        reason: LiquidationReason,
        ltv: Option<Bps>,
        price: Option<Price>,
        owed: Fiat,
    },
    RepaymentRecorded {
        amount: Fiat,
        owed: Fiat,
    },
    Repaid,
    TxBroadcast {
        kind: TxKind,
        txid: Txid,
    },
    TxConfirmed {
        kind: TxKind,
        txid: Txid,
    },
    TxReorgedOut {
        kind: TxKind,
        txid: Txid,
    },
    ClosedOnChain {
        txid: Txid,
        path: String,
    },
    Expired,
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
    #[error("loan {id}: {kind:?} transaction {txid} is not the one recorded")]
    UnknownTx {
        id: String,
        kind: TxKind,
        txid: Txid,
    },
    #[error("loan {id}: the deadline has not passed")]
    DeadlineNotPassed { id: String },
}

fn input_name(input: &Input) -> &'static str {
    match input {
        Input::Accepted { .. } => "accepted",
        Input::CollateralObserved { .. } => "collateral_observed",
        Input::PriceTick { .. } => "price_tick",
        Input::MaturityReached { .. } => "maturity_reached",
        Input::RepaymentRecorded { .. } => "repayment_recorded",
        Input::TxBroadcast { .. } => "tx_broadcast",
        Input::TxConfirmed { .. } => "tx_confirmed",
        Input::TxReorgedOut { .. } => "tx_reorged_out",
        Input::SpentByUnknownTx { .. } => "spent_by_unknown_tx",
        Input::DeadlinePassed { .. } => "deadline_passed",
    }
}

impl TxKind {
    /// The state that waits for this transaction to confirm.
    fn pending_state(self) -> LoanState {
        match self {
            TxKind::Liquidation => LoanState::Liquidating,
            TxKind::Release => LoanState::Releasing,
        }
    }

    /// The state its confirmation leads to.
    fn done_state(self) -> LoanState {
        match self {
            TxKind::Liquidation => LoanState::Liquidated,
            TxKind::Release => LoanState::Closed,
        }
    }
}

/// A confirmation or reorg must be about the transaction the service broadcast.
fn check_recorded(loan: &Loan, kind: TxKind, txid: Txid) -> Result<(), TransitionError> {
    if loan.broadcast.is_some_and(|(_, t)| t != txid) {
        return Err(TransitionError::UnknownTx {
            id: loan.id.clone(),
            kind,
            txid,
        });
    }
    Ok(())
}

/// Apply `input` to `loan`. On success the returned loan has `version` bumped by one
/// when anything changed; on error nothing changed.
pub fn apply(loan: &Loan, input: &Input) -> Result<(Loan, Vec<Event>), TransitionError> {
    use LoanState as S;
    let illegal = || TransitionError::Illegal {
        id: loan.id.clone(),
        state: loan.state,
        input: input_name(input),
    };
    let calc_err = |e: CalcError| TransitionError::Calc(e, loan.id.clone());
    let mut next = loan.clone();
    let mut events = Vec::new();
    let t = loan.terms.get();
    match (loan.state, input) {
        (
            S::Offered,
            Input::Accepted {
                now: _,
                escrow_index,
                descriptor,
                required_collateral,
            },
        ) => {
            next.state = S::AwaitingCollateral;
            next.escrow_index = Some(*escrow_index);
            next.descriptor = Some(descriptor.clone());
            next.required_collateral = *required_collateral;
            events.push(Event::Accepted {
                escrow_index: *escrow_index,
                required_collateral: *required_collateral,
            });
        }
        (S::AwaitingCollateral, Input::CollateralObserved { now, confirmed }) => {
            if *confirmed != loan.collateral {
                events.push(Event::CollateralChanged {
                    from: loan.collateral,
                    to: *confirmed,
                });
                next.collateral = *confirmed;
            }
            if *confirmed >= loan.required_collateral && *confirmed > Amount::ZERO {
                next.state = S::Active;
                next.activated_at.get_or_insert(*now);
                events.push(Event::Activated {
                    collateral: *confirmed,
                });
            }
        }
        (S::Active | S::MarginCall, Input::CollateralObserved { confirmed, .. }) => {
            if *confirmed == Amount::ZERO {
                // The funding left the best chain: wait for it again.
                next.state = S::AwaitingCollateral;
                next.breach_ticks = 0;
                events.push(Event::FundingReorgedOut);
            }
            if *confirmed != loan.collateral {
                events.push(Event::CollateralChanged {
                    from: loan.collateral,
                    to: *confirmed,
                });
                next.collateral = *confirmed;
            }
        }
        (S::Active | S::MarginCall, Input::PriceTick { now, price }) => {
            let Some(price) = price else {
                return Ok((loan.clone(), Vec::new()));
            };
            let owed = loan.owed(*now).map_err(calc_err)?;
            let ltv = calc::ltv(owed, loan.collateral, *price).map_err(calc_err)?;
            let hard = t.hard_liquidation_ltv.is_some_and(|h| ltv >= h);
            if ltv >= t.liquidation_ltv {
                next.breach_ticks = loan.breach_ticks.saturating_add(1);
                events.push(Event::BreachTick {
                    ltv,
                    price: *price,
                    owed,
                    consecutive: next.breach_ticks,
                });
                if hard || next.breach_ticks >= t.confirm_ticks {
                    let reason = if hard {
                        LiquidationReason::HardBreach
                    } else {
                        LiquidationReason::LtvBreach
                    };
                    next.state = S::Liquidating;
                    next.liquidation_reason = Some(reason);
                    events.push(Event::LiquidationDecided {
                        reason,
                        ltv: Some(ltv),
                        price: Some(*price),
                        owed,
                    });
                }
            } else {
                if loan.breach_ticks > 0 {
                    next.breach_ticks = 0;
                    events.push(Event::BreachCleared { ltv, price: *price });
                }
                if loan.state == S::Active && ltv >= t.margin_call_ltv {
                    next.state = S::MarginCall;
                    events.push(Event::MarginCall {
                        ltv,
                        price: *price,
                        owed,
                    });
                } else if loan.state == S::MarginCall
                    && ltv.0 < t.margin_call_ltv.0.saturating_sub(t.hysteresis.0)
                {
                    next.state = S::Active;
                    events.push(Event::MarginCallCleared { ltv, price: *price });
                }
            }
        }
        (S::Active | S::MarginCall, Input::MaturityReached { now }) => {
            let owed = loan.owed(*now).map_err(calc_err)?;
            if owed.minor > 0 {
                next.state = S::Liquidating;
                next.liquidation_reason = Some(LiquidationReason::Default);
                events.push(Event::LiquidationDecided {
                    reason: LiquidationReason::Default,
                    ltv: None,
                    price: None,
                    owed,
                });
            }
        }
        (S::Active | S::MarginCall, Input::RepaymentRecorded { now, amount }) => {
            let owed = loan.owed(*now).map_err(calc_err)?;
            if amount.currency != owed.currency {
                return Err(calc_err(CalcError::Money(
                    super::money::MoneyError::CurrencyMismatch(amount.currency, owed.currency),
                )));
            }
            if amount.minor > owed.minor {
                return Err(TransitionError::Overpayment {
                    id: loan.id.clone(),
                    amount: *amount,
                    owed,
                });
            }
            next.repaid = loan.repaid + amount.minor;
            let left = Fiat::new(owed.minor - amount.minor, owed.currency);
            events.push(Event::RepaymentRecorded {
                amount: *amount,
                owed: left,
            });
            if left.minor == 0 {
                next.state = S::Releasing;
                events.push(Event::Repaid);
            }
        }
        (state, Input::TxBroadcast { kind, txid }) if state == kind.pending_state() => {
            next.broadcast = Some((*kind, *txid));
            events.push(Event::TxBroadcast {
                kind: *kind,
                txid: *txid,
            });
        }
        (state, Input::TxConfirmed { kind, txid }) if state == kind.pending_state() => {
            check_recorded(loan, *kind, *txid)?;
            next.state = kind.done_state();
            next.broadcast = Some((*kind, *txid));
            events.push(Event::TxConfirmed {
                kind: *kind,
                txid: *txid,
            });
        }
        (state, Input::TxReorgedOut { kind, txid }) if state == kind.done_state() => {
            check_recorded(loan, *kind, *txid)?;
            next.state = kind.pending_state();
            events.push(Event::TxReorgedOut {
                kind: *kind,
                txid: *txid,
            });
        }
        (_, Input::SpentByUnknownTx { txid, path })
            if loan.is_funded() && loan.state != S::ClosedOnChain =>
        {
            next.state = S::ClosedOnChain;
            next.spent_by = Some(*txid);
            events.push(Event::ClosedOnChain {
                txid: *txid,
                path: path.clone(),
            });
        }
        (S::AwaitingCollateral, Input::DeadlinePassed { now }) => {
            if *now < t.funding_deadline {
                return Err(TransitionError::DeadlineNotPassed {
                    id: loan.id.clone(),
                });
            }
            next.state = S::Expired;
            events.push(Event::Expired);
        }
        _ => return Err(illegal()),
    }
    if next != *loan {
        next.version = loan.version + 1;
        next.event_count = loan.event_count + events.len() as u64;
    }
    Ok((next, events))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
