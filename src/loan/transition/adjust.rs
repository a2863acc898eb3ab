//! The transition function's adjustments: confirming a decision's transaction (which
//! settles a partial liquidation or a withdrawal and leaves the loan open) and the
//! margin-call levels of a price tick.

use super::super::calc::CalcError;
use super::super::state::{AdjustmentKind, Event, Loan, LoanState, TransitionError, TxKind};

/// Our transaction `txid` (of `kind`) confirmed: the decision is carried out. A full
/// decision ends in its done state; an adjustment is settled and the loan is open
/// again on the change (the debt reduced by a partial sale as of when it was decided:
/// nothing moves the accrual while it is pending).
pub(super) fn confirm(
    loan: &Loan,
    next: &mut Loan,
    events: &mut Vec<Event>,
    kind: TxKind,
    txid: bitcoin::Txid,
    height: Option<u32>,
) -> Result<(), TransitionError> {
    events.push(Event::TxConfirmed { kind, txid, height });
    if !matches!(kind, TxKind::PartialLiquidation | TxKind::Withdrawal) {
        next.state = kind.done_state();
        next.confirmed_tx = Some((kind, txid));
        return Ok(());
    }
    let calc_err = |e: CalcError| TransitionError::Calc(e, loan.id.clone());
    let mut adjustment = loan.adjustment.clone().ok_or(TransitionError::Illegal {
        id: loan.id.clone(),
        state: loan.state,
        input: "tx_confirmed",
    })?;
    let at = adjustment.decided_at;
    match adjustment.kind {
        AdjustmentKind::PartialLiquidation => {
            let accrual = loan
                .accrual_at(at)
                .repay(adjustment.repay.minor, at)
                .map_err(calc_err)?;
            next.accrual = Some(accrual);
            next.repaid = loan.repaid.saturating_add(adjustment.repay.minor);
            events.push(Event::PartialLiquidationSettled {
                repaid: adjustment.repay,
                owed: accrual.owed(at).map_err(calc_err)?,
                collateral: adjustment.change,
            });
        }
        AdjustmentKind::Withdrawal => events.push(Event::WithdrawalSettled {
            amount: adjustment.paid,
            collateral: adjustment.change,
        }),
    }
    adjustment.txid = Some(txid);
    adjustment.height = height;
    adjustment.attempts = loan.broadcasts.iter().map(|(_, t)| *t).collect();
    next.collateral = adjustment.change;
    next.adjustments.push(adjustment);
    next.adjustment = None;
    next.state = LoanState::Active;
    next.broadcasts.clear();
    next.confirmed_tx = None;
    next.liquidation_reason = None;
    next.breach_ticks = 0;
    next.levels_crossed = 0;
    Ok(())
}

/// The terms' margin-call levels at `ltv` (when the terms list them): a level is
/// crossed at or above it and stays crossed until the LTV falls below it less the
/// hysteresis; each crossing raises its event once, in order, and each clearing its
/// own.
pub(super) fn levels(
    loan: &Loan,
    next: &mut Loan,
    events: &mut Vec<Event>,
    ltv: crate::loan::money::Bps,
    price: crate::loan::money::Price,
    owed: crate::loan::money::Fiat,
) {
    let t = loan.terms.get();
    if t.margin_call_levels.is_empty() {
        return;
    }
    let crossed = loan.levels_crossed as usize;
    let mut now_crossed = 0;
    for (i, level) in t.margin_call_levels.iter().enumerate() {
        let held = i < crossed && ltv.0 >= level.0.saturating_sub(t.hysteresis.0);
        if ltv >= *level || held {
            now_crossed = i + 1;
        } else {
            break;
        }
    }
    for i in crossed..now_crossed {
        events.push(Event::MarginCallLevel {
            level: i as u32 + 1,
            threshold: t.margin_call_levels[i],
            ltv,
            price,
            owed,
        });
    }
    for i in (now_crossed..crossed).rev() {
        events.push(Event::MarginCallLevelCleared {
            level: i as u32 + 1,
            ltv,
        });
    }
    next.levels_crossed = now_crossed as u32;
}
