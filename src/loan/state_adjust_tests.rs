//! The state machine's adjustments: margin-call levels, partial liquidations and
//! withdrawals, each leaving the loan open.

use super::tests::{active_with, tick, txid, usd};
use super::*;
use crate::loan::terms::tests::NOW;
use crate::loan::Bps;

/// The price (cents per BTC) at which the loan's LTV is `bps` (2 BTC, $100,000 owed).
fn price_at(bps: u64) -> u64 {
    10_000_000 * 10_000 / (2 * bps)
}

fn levels_of(events: &[Event]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::MarginCallLevel { level, .. } => Some(i64::from(*level)),
            Event::MarginCallLevelCleared { level, .. } => Some(-i64::from(*level)),
            _ => None,
        })
        .collect()
}

#[test]
fn margin_call_levels_fire_in_order_once_per_crossing() {
    let loan = active_with(|t| t.margin_call_levels = vec![Bps(7_000), Bps(7_500), Bps(7_900)]);
    let (loan, ev) = tick(&loan, price_at(7_200));
    assert_eq!(loan.state, LoanState::MarginCall);
    assert_eq!(levels_of(&ev), vec![1]);
    // Level 1 does not fire again while it stays crossed.
    let (loan, ev) = tick(&loan, price_at(7_300));
    assert_eq!(levels_of(&ev), Vec::<i64>::new());
    let (loan, ev) = tick(&loan, price_at(7_950));
    assert_eq!(levels_of(&ev), vec![2, 3]);
    assert_eq!(loan.levels_crossed, 3);
    // Hysteresis 2 %: 7,750 keeps level 3 (7,900 − 200 = 7,700) …
    let (loan, ev) = tick(&loan, price_at(7_750));
    assert_eq!(levels_of(&ev), Vec::<i64>::new());
    // … 7,600 clears it, and crossing 7,900 again fires it again.
    let (loan, ev) = tick(&loan, price_at(7_600));
    assert_eq!(levels_of(&ev), vec![-3]);
    let (loan, ev) = tick(&loan, price_at(7_950));
    assert_eq!(levels_of(&ev), vec![3]);
    // Below every level less the hysteresis: all cleared, highest first.
    let (loan, ev) = tick(&loan, price_at(6_000));
    assert_eq!(levels_of(&ev), vec![-3, -2, -1]);
    assert_eq!(loan.state, LoanState::Active);
    // A gap straight into the liquidation band raises every level, in order.
    let (loan, ev) = tick(&loan, price_at(8_500));
    assert_eq!(levels_of(&ev), vec![1, 2, 3]);
    assert!(matches!(ev[0], Event::MarginCall { .. }));
    assert_eq!(loan.breach_ticks, 1);
}

fn partial_adjustment(loan: &Loan, price: u64) -> Adjustment {
    let owed = loan.owed(NOW).unwrap();
    let sale = match crate::loan::partial::partial_sale(
        owed,
        loan.collateral,
        usd(price),
        Bps(5_000),
        Bps(500),
        Amount::from_sat(1_000),
        Amount::from_sat(330),
    )
    .unwrap()
    {
        crate::loan::partial::Sale::Partial(s) => s,
        other => panic!("{other:?}"),
    };
    Adjustment {
        kind: AdjustmentKind::PartialLiquidation,
        decided_at: NOW,
        repay: sale.repay,
        paid: sale.lender,
        change: sale.change,
        fee: sale.fee,
        price: usd(price),
        ltv_before: sale.ltv_before,
        ltv_after: sale.ltv_after,
        oracle_seq: loan.last_price_seq,
        txid: None,
        height: None,
        attempts: Vec::new(),
    }
}

#[test]
fn a_partial_liquidation_settles_and_the_loan_stays_open() {
    let loan = active_with(|t| {
        t.partial_liquidation = true;
        t.target_ltv = Some(Bps(5_000));
    });
    let p = price_at(8_100);
    let (loan, _) = tick(&loan, p);
    let (loan, _) = tick(&loan, p);
    let (loan, _) = tick(&loan, p);
    assert_eq!(loan.state, LoanState::Liquidating);
    let adj = partial_adjustment(&loan, p);
    let (loan, ev) = apply(
        &loan,
        &Input::PartialLiquidationDecided {
            adjustment: adj.clone(),
        },
    )
    .unwrap();
    assert!(matches!(
        ev[..],
        [Event::PartialLiquidationDecided {
            target_ltv: Bps(5_000),
            ..
        }]
    ));
    // Decided once: a second decision for the same liquidation is refused.
    assert!(apply(
        &loan,
        &Input::PartialLiquidationDecided {
            adjustment: adj.clone()
        }
    )
    .is_err());
    let sent = Input::TxBroadcast {
        kind: TxKind::PartialLiquidation,
        txid: txid(5),
    };
    let (loan, _) = apply(&loan, &sent).unwrap();
    let (loan, ev) = apply(
        &loan,
        &Input::TxConfirmed {
            kind: TxKind::PartialLiquidation,
            txid: txid(5),
            height: 300,
        },
    )
    .unwrap();
    assert_eq!(loan.state, LoanState::Active);
    assert_eq!(loan.collateral, adj.change);
    // The debt fell by exactly what the sale repaid (no time passed).
    assert_eq!(loan.owed(NOW).unwrap().minor, 10_000_000 - adj.repay.minor);
    assert!(loan.ltv(NOW, usd(p)).unwrap() <= Bps(5_000));
    assert!(matches!(ev[1], Event::PartialLiquidationSettled { .. }));
    assert_eq!(loan.adjustments.len(), 1);
    assert_eq!(loan.adjustments[0].txid, Some(txid(5)));
    assert!(loan.broadcasts.is_empty() && loan.adjustment.is_none());
    assert_eq!((loan.breach_ticks, loan.liquidation_reason), (0, None));
    // Its spend, seen again, is neither a stranger's nor a new confirmation.
    for input in [
        Input::SpentByUnknownTx {
            txid: txid(5),
            path: "liquidation".into(),
        },
        Input::TxConfirmed {
            kind: TxKind::PartialLiquidation,
            txid: txid(5),
            height: 300,
        },
        Input::CollateralObserved {
            now: NOW,
            confirmed: adj.change,
            escrow_spent: false,
        },
    ] {
        assert_eq!(apply(&loan, &input).unwrap(), (loan.clone(), vec![]));
    }
    // The next breach counts from zero on the reduced loan.
    let (again, _) = tick(&loan, usd_price_for(&loan, 8_100));
    assert_eq!(
        (again.state, again.breach_ticks),
        (LoanState::MarginCall, 1)
    );
}

/// The price at which `loan`'s LTV is `bps`.
fn usd_price_for(loan: &Loan, bps: u64) -> u64 {
    let owed = u128::from(loan.owed(NOW).unwrap().minor);
    let sats = u128::from(loan.collateral.to_sat());
    u64::try_from(owed * 100_000_000 * 10_000 / (sats * u128::from(bps))).unwrap()
}

fn withdrawal(amount: u64) -> Adjustment {
    Adjustment {
        kind: AdjustmentKind::Withdrawal,
        decided_at: NOW,
        repay: crate::loan::Fiat::new(0, crate::loan::Currency::new("USD").unwrap()),
        paid: Amount::from_sat(amount),
        change: Amount::from_sat(200_000_000 - amount - 1_000),
        fee: Amount::from_sat(1_000),
        price: usd(20_000_000),
        ltv_before: Bps(2_500),
        ltv_after: Bps(4_000),
        oracle_seq: None,
        txid: None,
        height: None,
        attempts: Vec::new(),
    }
}

#[test]
fn a_withdrawal_is_requested_signed_and_settled() {
    let loan = active_with(|_| {});
    let (loan, ev) = apply(
        &loan,
        &Input::WithdrawalRequested {
            adjustment: withdrawal(50_000_000),
        },
    )
    .unwrap();
    assert_eq!(loan.state, LoanState::Active);
    assert!(matches!(ev[..], [Event::WithdrawalRequested { .. }]));
    // A new request replaces it.
    let (loan, ev) = apply(
        &loan,
        &Input::WithdrawalRequested {
            adjustment: withdrawal(40_000_000),
        },
    )
    .unwrap();
    assert!(matches!(
        ev[..],
        [
            Event::WithdrawalCancelled { .. },
            Event::WithdrawalRequested { .. }
        ]
    ));
    let (loan, _) = apply(&loan, &Input::WithdrawalSigned).unwrap();
    assert_eq!(loan.state, LoanState::Withdrawing);
    // Nothing else while its transaction is out.
    let repay = Input::RepaymentRecorded {
        now: NOW,
        amount: crate::loan::Fiat::new(1, crate::loan::Currency::new("USD").unwrap()),
        key: "k".into(),
    };
    assert!(apply(&loan, &repay).is_err());
    let (loan, _) = apply(
        &loan,
        &Input::TxBroadcast {
            kind: TxKind::Withdrawal,
            txid: txid(9),
        },
    )
    .unwrap();
    let (loan, ev) = apply(
        &loan,
        &Input::TxConfirmed {
            kind: TxKind::Withdrawal,
            txid: txid(9),
            height: 400,
        },
    )
    .unwrap();
    assert_eq!(loan.state, LoanState::Active);
    assert_eq!(
        loan.collateral,
        Amount::from_sat(200_000_000 - 40_000_000 - 1_000)
    );
    assert_eq!(loan.owed(NOW).unwrap().minor, 10_000_000);
    assert!(matches!(ev[1], Event::WithdrawalSettled { .. }));
}

#[test]
fn a_liquidation_cancels_an_unsigned_withdrawal() {
    let loan = active_with(|_| {});
    let (loan, _) = apply(
        &loan,
        &Input::WithdrawalRequested {
            adjustment: withdrawal(50_000_000),
        },
    )
    .unwrap();
    // A hard breach (90 %) liquidates at once.
    let (loan, ev) = tick(&loan, price_at(9_500));
    assert_eq!(loan.state, LoanState::Liquidating);
    assert!(loan.adjustment.is_none());
    assert!(matches!(ev.last(), Some(Event::WithdrawalCancelled { .. })));
    // A withdrawal is only asked of an active loan.
    assert!(apply(
        &loan,
        &Input::WithdrawalRequested {
            adjustment: withdrawal(1)
        }
    )
    .is_err());
}

/// A loan whose partial sale (attempts 5 and 6, 5 confirmed) settled.
fn settled_partial() -> (Loan, Adjustment) {
    let loan = active_with(|t| {
        t.partial_liquidation = true;
        t.target_ltv = Some(Bps(5_000));
    });
    let p = price_at(8_100);
    let (loan, _) = tick(&loan, p);
    let (loan, _) = tick(&loan, p);
    let (loan, _) = tick(&loan, p);
    let adj = partial_adjustment(&loan, p);
    let (mut loan, _) = apply(
        &loan,
        &Input::PartialLiquidationDecided {
            adjustment: adj.clone(),
        },
    )
    .unwrap();
    for n in [5, 6] {
        loan = apply(
            &loan,
            &Input::TxBroadcast {
                kind: TxKind::PartialLiquidation,
                txid: txid(n),
            },
        )
        .unwrap()
        .0;
    }
    let (loan, _) = apply(
        &loan,
        &Input::TxConfirmed {
            kind: TxKind::PartialLiquidation,
            txid: txid(5),
            height: 300,
        },
    )
    .unwrap();
    (loan, adj)
}

#[test]
fn a_reorg_confirming_the_other_attempt_settles_the_same_sale() {
    let (loan, adj) = settled_partial();
    assert_eq!(loan.adjustments[0].attempts, vec![txid(5), txid(6)]);
    // The fee bump confirmed instead after a reorg: still this sale, not a stranger's.
    for input in [
        Input::SpentByUnknownTx {
            txid: txid(6),
            path: "liquidation".into(),
        },
        Input::TxConfirmed {
            kind: TxKind::PartialLiquidation,
            txid: txid(6),
            height: 301,
        },
    ] {
        assert_eq!(apply(&loan, &input).unwrap(), (loan.clone(), vec![]));
    }
    // Its change left the chain and came back: active again at the change, although
    // it is below what acceptance required.
    let (gone, ev) = apply(
        &loan,
        &Input::CollateralObserved {
            now: NOW,
            confirmed: Amount::ZERO,
            escrow_spent: false,
        },
    )
    .unwrap();
    assert_eq!(gone.state, LoanState::AwaitingCollateral);
    assert!(ev.contains(&Event::FundingReorgedOut));
    let (back, _) = apply(
        &gone,
        &Input::CollateralObserved {
            now: NOW,
            confirmed: adj.change,
            escrow_spent: false,
        },
    )
    .unwrap();
    assert_eq!(back.state, LoanState::Active);
}

#[test]
fn a_withdrawal_refused_by_the_network_leaves_the_loan_active() {
    let loan = active_with(|_| {});
    let (loan, _) = apply(
        &loan,
        &Input::WithdrawalRequested {
            adjustment: withdrawal(50_000_000),
        },
    )
    .unwrap();
    let (loan, _) = apply(&loan, &Input::WithdrawalSigned).unwrap();
    let (loan, ev) = apply(
        &loan,
        &Input::WithdrawalRefused {
            reason: "fee".into(),
        },
    )
    .unwrap();
    assert_eq!(
        (loan.state, loan.adjustment.clone()),
        (LoanState::Active, None)
    );
    assert!(matches!(ev[..], [Event::WithdrawalCancelled { .. }]));
    assert_eq!(loan.collateral, Amount::from_int_btc(2));
}
