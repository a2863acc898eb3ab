//! The loan lifecycle's transition function: [`apply`] takes a loan and an input to
//! the next loan and its events, keeping the rules listed in `state.rs`.

use bitcoin::Amount;

use super::calc::{self, Accrual, CalcError};
use super::state::{
    AdjustmentKind, Event, Input, LiquidationReason, Loan, LoanState, TransitionError, TxKind,
};

mod adjust;
use adjust::{confirm, levels};

fn input_name(input: &Input) -> &'static str {
    match input {
        Input::Accepted { .. } => "accepted",
        Input::CollateralObserved { .. } => "collateral_observed",
        Input::PriceTick { .. } => "price_tick",
        Input::PriceUnavailable { .. } => "price_unavailable",
        Input::DefaultDue { .. } => "default_due",
        Input::RepaymentRecorded { .. } => "repayment_recorded",
        Input::TxBroadcast { .. } => "tx_broadcast",
        Input::TxConfirmed { .. } => "tx_confirmed",
        Input::TxReorgedOut { .. } => "tx_reorged_out",
        Input::SpentByUnknownTx { .. } => "spent_by_unknown_tx",
        Input::UnknownSpendReorgedOut { .. } => "unknown_spend_reorged_out",
        Input::DeadlinePassed { .. } => "deadline_passed",
        Input::PartialLiquidationDecided { .. } => "partial_liquidation_decided",
        Input::FullLiquidationInstead { .. } => "full_liquidation_instead",
        Input::WithdrawalRequested { .. } => "withdrawal_requested",
        Input::WithdrawalSigned => "withdrawal_signed",
        Input::WithdrawalRefused { .. } => "withdrawal_refused",
    }
}

impl TxKind {
    /// The state that waits for this transaction to confirm.
    fn pending_state(self) -> LoanState {
        match self {
            TxKind::Liquidation => LoanState::Liquidating,
            TxKind::Release => LoanState::Releasing,
            TxKind::Refund => LoanState::Expired,
            TxKind::PartialLiquidation => LoanState::Liquidating,
            TxKind::Withdrawal => LoanState::Withdrawing,
        }
    }

    /// The state its confirmation leads to.
    fn done_state(self) -> LoanState {
        match self {
            TxKind::Liquidation => LoanState::Liquidated,
            TxKind::Release => LoanState::Closed,
            // A refund leaves the loan Expired; its confirmation is recorded.
            TxKind::Refund => LoanState::Expired,
            // An adjustment leaves the loan open.
            TxKind::PartialLiquidation | TxKind::Withdrawal => LoanState::Active,
        }
    }
}

/// Apply `input` to `loan`. On success the returned loan has `version` bumped by one
/// and `event_count` by the number of events when anything changed, and is the loan
/// itself with no events when nothing did; on error nothing changed.
pub fn apply(loan: &Loan, input: &Input) -> Result<(Loan, Vec<Event>), TransitionError> {
    use LoanState as S;
    let illegal = || TransitionError::Illegal {
        id: loan.id.clone(),
        state: loan.state,
        input: input_name(input),
    };
    let calc_err = |e: CalcError| TransitionError::Calc(e, loan.id.clone());
    let unchanged = || Ok((loan.clone(), Vec::new()));
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
                schedule,
            },
        ) => {
            next.state = S::AwaitingCollateral;
            next.escrow_index = Some(*escrow_index);
            next.descriptor = Some(descriptor.clone());
            next.required_collateral = *required_collateral;
            next.schedule = Some(*schedule);
            events.push(Event::Accepted {
                escrow_index: *escrow_index,
                required_collateral: *required_collateral,
            });
        }
        (
            _,
            Input::Accepted {
                escrow_index,
                descriptor,
                ..
            },
        ) if loan.state != S::Offered
            && loan.escrow_index == Some(*escrow_index)
            && loan.descriptor.as_ref() == Some(descriptor) =>
        {
            return unchanged();
        }
        (S::AwaitingCollateral, Input::CollateralObserved { now, confirmed, .. }) => {
            if *confirmed != loan.collateral {
                events.push(Event::CollateralChanged {
                    from: loan.collateral,
                    to: *confirmed,
                });
                next.collateral = *confirmed;
            }
            let needed = if loan.activated_at.is_some() {
                loan.collateral_to_reactivate()
            } else {
                loan.required_collateral
            };
            if *confirmed >= needed && *confirmed > Amount::ZERO {
                next.state = S::Active;
                if loan.activated_at.is_some() {
                    events.push(Event::Reactivated {
                        collateral: *confirmed,
                    });
                } else {
                    next.activated_at = Some(*now);
                    next.accrual = Some(Accrual::new(t.principal, t.apr, *now));
                    events.push(Event::Activated {
                        collateral: *confirmed,
                    });
                }
            }
        }
        (
            S::Active | S::MarginCall,
            Input::CollateralObserved {
                confirmed,
                escrow_spent,
                ..
            },
        ) => {
            if *escrow_spent {
                // The spend decides (its confirmation, or ClosedOnChain); a collateral
                // of zero here is not a reorg of the funding.
                return unchanged();
            }
            if *confirmed == Amount::ZERO {
                // The funding left the best chain: wait for it again (never expires).
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
        (S::Active | S::MarginCall, Input::PriceUnavailable { reason }) => {
            if loan.breach_ticks == 0 {
                return unchanged();
            }
            next.breach_ticks = 0;
            events.push(Event::BreachHeld {
                reason: reason.clone(),
                after_ticks: loan.breach_ticks,
            });
        }
        (_, Input::PriceUnavailable { .. }) => return unchanged(),
        (S::Active | S::MarginCall, Input::PriceTick { now, seq, price }) => {
            let Some(evidence) = price else {
                return unchanged();
            };
            if loan.last_price_seq.is_some_and(|last| *seq <= last) {
                return unchanged();
            }
            let price = evidence.price;
            let owed = loan.owed(*now).map_err(calc_err)?;
            let ltv = calc::ltv(owed, loan.collateral, price).map_err(calc_err)?;
            let hard = t.hard_liquidation_ltv.is_some_and(|h| ltv >= h);
            let margin_call = Event::MarginCall {
                ltv,
                price,
                owed,
                oracle_seq: *seq,
                evidence: evidence.clone(),
            };
            if ltv >= t.liquidation_ltv {
                if loan.state == S::Active {
                    // Gapped straight into the liquidation band: warn first.
                    next.state = S::MarginCall;
                    events.push(margin_call);
                }
                next.breach_ticks = loan.breach_ticks.saturating_add(1);
                events.push(Event::BreachTick {
                    ltv,
                    price,
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
                        price: Some(price),
                        owed,
                        oracle_seq: Some(*seq),
                        evidence: Some(evidence.clone()),
                    });
                }
            } else {
                if loan.breach_ticks > 0 {
                    next.breach_ticks = 0;
                    events.push(Event::BreachCleared { ltv, price });
                }
                if loan.state == S::Active && ltv >= t.margin_call_ltv {
                    next.state = S::MarginCall;
                    events.push(margin_call);
                } else if loan.state == S::MarginCall
                    && ltv.0 < t.margin_call_ltv.0.saturating_sub(t.hysteresis.0)
                {
                    next.state = S::Active;
                    events.push(Event::MarginCallCleared { ltv, price });
                }
            }
            levels(loan, &mut next, &mut events, ltv, price, owed);
            // Remembered even when nothing else moved, so that a replay of this tick
            // (or an older one) is ignored whatever happened in between.
            next.last_price_seq = Some(*seq);
        }
        (S::Active | S::MarginCall, Input::DefaultDue { now, tip_height }) => {
            if !loan.default_due(*now, *tip_height) {
                return Err(TransitionError::NotDue {
                    id: loan.id.clone(),
                    now: *now,
                    tip_height: *tip_height,
                });
            }
            let owed = loan.owed(*now).map_err(calc_err)?;
            if owed.minor > 0 {
                next.state = S::Liquidating;
                next.liquidation_reason = Some(LiquidationReason::Default);
                events.push(Event::LiquidationDecided {
                    reason: LiquidationReason::Default,
                    ltv: None,
                    price: None,
                    owed,
                    oracle_seq: None,
                    evidence: None,
                });
            }
        }
        (S::Liquidating, Input::DefaultDue { .. }) => return unchanged(),
        (_, Input::RepaymentRecorded { amount, key, .. }) if loan.repayments.contains_key(key) => {
            let first = loan.repayments[key];
            if first != amount.minor {
                return Err(TransitionError::RepaymentKeyReused {
                    id: loan.id.clone(),
                    key: key.clone(),
                    first,
                    now: amount.minor,
                });
            }
            return unchanged();
        }
        (S::Active | S::MarginCall, Input::RepaymentRecorded { now, amount, key }) => {
            if amount.minor == 0 {
                return Err(TransitionError::ZeroRepayment {
                    id: loan.id.clone(),
                });
            }
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
            let accrual = loan
                .accrual_at(*now)
                .repay(amount.minor, *now)
                .map_err(calc_err)?;
            next.accrual = Some(accrual);
            next.repaid = loan.repaid.saturating_add(amount.minor);
            next.repayments.insert(key.clone(), amount.minor);
            let left = accrual.owed(*now).map_err(calc_err)?;
            events.push(Event::RepaymentRecorded {
                amount: *amount,
                owed: left,
                key: key.clone(),
            });
            if accrual.is_repaid() {
                next.state = S::Releasing;
                events.push(Event::Repaid);
            }
        }
        (state, Input::TxBroadcast { kind, txid }) if state == kind.pending_state() => {
            if loan.is_ours(*txid) {
                return unchanged();
            }
            next.broadcasts.push((*kind, *txid));
            events.push(Event::TxBroadcast {
                kind: *kind,
                txid: *txid,
            });
        }
        (state, Input::TxConfirmed { kind, txid, height }) if state == kind.pending_state() => {
            if loan.confirmed_tx == Some((*kind, *txid)) {
                return unchanged();
            }
            if loan.is_ours(*txid) {
                confirm(loan, &mut next, &mut events, *kind, *txid, Some(*height))?;
            } else {
                // Nothing we broadcast: someone else spent the escrow.
                next.state = S::ClosedOnChain;
                next.spent_by = Some(*txid);
                next.closed_from = Some(state);
                events.push(Event::ClosedOnChain {
                    txid: *txid,
                    path: "not built by the service".into(),
                });
            }
        }
        (state, Input::TxConfirmed { txid, .. })
            if loan
                .confirmed_tx
                .is_some_and(|(k, t)| t == *txid && k.done_state() == state) =>
        {
            return unchanged();
        }
        (state, Input::TxReorgedOut { kind, txid }) if state == kind.done_state() => {
            if loan.confirmed_tx != Some((*kind, *txid)) {
                if state == kind.pending_state() && loan.is_ours(*txid) {
                    return unchanged();
                }
                return Err(TransitionError::UnknownTx {
                    id: loan.id.clone(),
                    kind: *kind,
                    txid: *txid,
                });
            }
            next.state = kind.pending_state();
            next.confirmed_tx = None;
            events.push(Event::TxReorgedOut {
                kind: *kind,
                txid: *txid,
            });
        }
        (state, Input::TxReorgedOut { kind, txid })
            if state == kind.pending_state() && loan.is_ours(*txid) =>
        {
            return unchanged();
        }
        (S::ClosedOnChain, Input::SpentByUnknownTx { txid, .. })
            if loan.spent_by == Some(*txid) =>
        {
            return unchanged();
        }
        (_, Input::SpentByUnknownTx { txid, .. } | Input::TxConfirmed { txid, .. })
            if loan.settled(*txid) =>
        {
            // A settled adjustment's transaction: it spent an earlier escrow output
            // and paid the change back; the loan goes on from the change.
            return unchanged();
        }
        (state, Input::SpentByUnknownTx { txid, .. }) if loan.is_ours(*txid) => {
            // A transaction we broadcast (an RBF replacement the reporter did not
            // know): it is a confirmation of ours, never a stranger's spend.
            let kind = loan
                .broadcasts
                .iter()
                .find(|(_, t)| t == txid)
                .map(|(k, _)| *k)
                .expect("is_ours: recorded");
            if loan.confirmed_tx == Some((kind, *txid)) {
                return unchanged();
            }
            if state != kind.pending_state() {
                return Err(illegal());
            }
            confirm(loan, &mut next, &mut events, kind, *txid, None)?;
        }
        (S::Liquidated | S::Closed, Input::SpentByUnknownTx { .. }) => {
            // The decision's transaction already took the escrow; a later spend of a
            // reused address is not this loan's.
            return unchanged();
        }
        (state, Input::SpentByUnknownTx { txid, path })
            if loan.ever_funded() && state != S::ClosedOnChain =>
        {
            next.state = S::ClosedOnChain;
            next.spent_by = Some(*txid);
            next.closed_from = Some(state);
            events.push(Event::ClosedOnChain {
                txid: *txid,
                path: path.clone(),
            });
        }
        (S::ClosedOnChain, Input::UnknownSpendReorgedOut { txid })
            if loan.spent_by == Some(*txid) =>
        {
            let back = loan.closed_from.unwrap_or(S::AwaitingCollateral);
            next.state = back;
            next.spent_by = None;
            next.closed_from = None;
            events.push(Event::ClosedOnChainReorgedOut {
                txid: *txid,
                state: back,
            });
        }
        (_, Input::UnknownSpendReorgedOut { txid }) if loan.spent_by != Some(*txid) => {
            return unchanged();
        }
        (S::AwaitingCollateral, Input::DeadlinePassed { now }) => {
            if loan.activated_at.is_some() {
                // Once activated, never expired: the funding may come back, and the
                // escrow's own paths settle it either way.
                return unchanged();
            }
            if *now < t.funding_deadline {
                return Err(TransitionError::DeadlineNotPassed {
                    id: loan.id.clone(),
                });
            }
            next.state = S::Expired;
            events.push(Event::Expired);
        }
        (S::Expired, Input::DeadlinePassed { .. }) => return unchanged(),
        (S::Liquidating, Input::PartialLiquidationDecided { adjustment })
            if loan.adjustment.is_none() && loan.broadcasts.is_empty() =>
        {
            let Some(target) = t.partial_target() else {
                return Err(illegal());
            };
            events.push(Event::PartialLiquidationDecided {
                repay: adjustment.repay,
                to_lender: adjustment.paid,
                change: adjustment.change,
                fee: adjustment.fee,
                ltv_before: adjustment.ltv_before,
                target_ltv: target,
                ltv_after: adjustment.ltv_after,
                price: adjustment.price,
            });
            next.adjustment = Some(adjustment.clone());
        }
        (S::Liquidating, Input::FullLiquidationInstead { why }) if loan.adjustment.is_none() => {
            events.push(Event::FullLiquidationInstead { why: why.clone() });
        }
        (S::Active, Input::WithdrawalRequested { adjustment })
            if adjustment.kind == AdjustmentKind::Withdrawal =>
        {
            if loan.adjustment.as_ref() == Some(adjustment) {
                return unchanged();
            }
            if loan.adjustment.is_some() {
                events.push(Event::WithdrawalCancelled {
                    reason: "replaced by a new request".into(),
                });
            }
            events.push(Event::WithdrawalRequested {
                amount: adjustment.paid,
                change: adjustment.change,
                fee: adjustment.fee,
                ltv_after: adjustment.ltv_after,
                price: adjustment.price,
            });
            next.adjustment = Some(adjustment.clone());
        }
        (S::Withdrawing, Input::WithdrawalRefused { reason }) if loan.broadcasts.is_empty() => {
            next.state = S::Active;
            next.adjustment = None;
            events.push(Event::WithdrawalCancelled {
                reason: reason.clone(),
            });
        }
        (S::Active | S::MarginCall, Input::WithdrawalSigned)
            if loan
                .adjustment
                .as_ref()
                .is_some_and(|a| a.kind == AdjustmentKind::Withdrawal) =>
        {
            next.state = S::Withdrawing;
            events.push(Event::WithdrawalSigned {
                amount: loan.adjustment.as_ref().map_or(Amount::ZERO, |a| a.paid),
            });
        }
        (S::Expired, Input::CollateralObserved { confirmed, .. }) => {
            // Deposits of an expired loan (partial, or confirmed too late) are tracked
            // so they can be refunded; they never activate it.
            if *confirmed != loan.collateral {
                events.push(Event::CollateralChanged {
                    from: loan.collateral,
                    to: *confirmed,
                });
                next.collateral = *confirmed;
            }
        }
        _ => return Err(illegal()),
    }
    // A withdrawal not yet signed gives way to a liquidation or a release.
    if matches!(next.state, S::Liquidating | S::Releasing)
        && matches!(loan.state, S::Active | S::MarginCall)
        && next
            .adjustment
            .as_ref()
            .is_some_and(|a| a.kind == AdjustmentKind::Withdrawal)
    {
        next.adjustment = None;
        events.push(Event::WithdrawalCancelled {
            reason: format!("the loan is {:?}", next.state).to_lowercase(),
        });
    }
    // Why a liquidation is full is recorded although it changes no field.
    if next == *loan && !matches!(input, Input::FullLiquidationInstead { .. }) {
        debug_assert!(events.is_empty(), "events without a change: {events:?}");
        return unchanged();
    }
    next.version = loan.version + 1;
    next.event_count = loan.event_count + events.len() as u64;
    Ok((next, events))
}
