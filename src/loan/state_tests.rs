//! Lifecycle tests of the loan state machine: offer to close, price decisions, chain
//! observations, and every illegal input refused.

use super::*;
use crate::loan::money::Currency;
use crate::loan::terms::tests::{terms, NOW};
use bitcoin::hashes::Hash;

pub(super) fn usd(m: u64) -> Price {
    Price::new(m, Currency::new("USD").unwrap())
}

pub(super) fn txid(n: u8) -> Txid {
    Txid::from_byte_array([n; 32])
}

/// Principal $100,000 (10^7 cents); 2 BTC collateral.
pub(super) fn active() -> Loan {
    active_with(|_| {})
}

/// [`active`] under edited terms.
pub(super) fn active_with(edit: impl FnOnce(&mut crate::loan::TermsInput)) -> Loan {
    let mut i = crate::loan::terms::tests::input();
    edit(&mut i);
    let terms = LoanTerms::new(i, bitcoin::Network::Regtest, NOW).unwrap();
    let loan = Loan::offered("l1", terms);
    let (loan, _) = apply(
        &loan,
        &Input::Accepted {
            now: NOW,
            escrow_index: 7,
            descriptor: "wsh(...)".into(),
            required_collateral: Amount::from_int_btc(2),
            schedule: schedule(),
        },
    )
    .unwrap();
    let (loan, events) = apply(
        &loan,
        &Input::CollateralObserved {
            now: NOW,
            confirmed: Amount::from_int_btc(2),
            escrow_spent: false,
        },
    )
    .unwrap();
    assert_eq!(loan.state, LoanState::Active);
    assert!(events.contains(&Event::Activated {
        collateral: Amount::from_int_btc(2)
    }));
    loan
}

pub(super) fn schedule() -> EscrowSchedule {
    terms().escrow_heights(100, NOW).unwrap()
}

pub(super) fn tick(loan: &Loan, price: u64) -> (Loan, Vec<Event>) {
    apply(
        loan,
        &Input::PriceTick {
            now: NOW,
            seq: loan.last_price_seq.map_or(1, |s| s + 1),
            price: Some(PriceEvidence::bare(usd(price))),
        },
    )
    .unwrap()
}

#[test]
fn offer_accept_fund_activate() {
    let loan = Loan::offered("l1", terms());
    let (awaiting, ev) = apply(
        &loan,
        &Input::Accepted {
            now: NOW,
            escrow_index: 3,
            descriptor: "d".into(),
            required_collateral: Amount::ONE_BTC,
            schedule: schedule(),
        },
    )
    .unwrap();
    assert_eq!(awaiting.state, LoanState::AwaitingCollateral);
    assert_eq!((awaiting.version, awaiting.event_count), (1, 1));
    assert_eq!(ev.len(), 1);
    // Partial funding: collateral changes, no activation.
    let (partial, ev) = apply(
        &awaiting,
        &Input::CollateralObserved {
            now: NOW,
            confirmed: Amount::from_sat(50_000_000),
            escrow_spent: false,
        },
    )
    .unwrap();
    assert_eq!(partial.state, LoanState::AwaitingCollateral);
    assert!(matches!(ev.as_slice(), [Event::CollateralChanged { .. }]));
    let (active, _) = apply(
        &partial,
        &Input::CollateralObserved {
            now: NOW + 5,
            confirmed: Amount::ONE_BTC,
            escrow_spent: false,
        },
    )
    .unwrap();
    assert_eq!(active.state, LoanState::Active);
    assert_eq!(active.activated_at, Some(NOW + 5));
}

#[test]
fn margin_call_enters_and_leaves_with_hysteresis() {
    let loan = active();
    // 2 BTC, owed $100,000: LTV 70 % at $71,428.57/BTC. Margin call at 7000 bps.
    let (mc, ev) = tick(&loan, 7_100_000);
    assert_eq!(mc.state, LoanState::MarginCall, "{ev:?}");
    // 69.9 %: still within the hysteresis band (below 70 % - 2 % = 68 % to leave).
    let (still, ev) = tick(&mc, 7_160_000);
    assert_eq!(still.state, LoanState::MarginCall);
    assert!(ev.is_empty());
    assert_eq!(
        still.version,
        mc.version + 1,
        "the tick's sequence is remembered"
    );
    // 67.5 %: leaves.
    let (back, ev) = tick(&still, 7_410_000);
    assert_eq!(back.state, LoanState::Active);
    assert!(matches!(ev.as_slice(), [Event::MarginCallCleared { .. }]));
}

#[test]
fn liquidation_needs_confirm_ticks_unless_hard() {
    let loan = active();
    // LTV 80.6 % at $62,000: a breach (liquidation at 8000 bps, hard at 9000).
    let (one, _) = tick(&loan, 6_200_000);
    assert_eq!((one.state, one.breach_ticks), (LoanState::MarginCall, 1));
    let (two, _) = tick(&one, 6_200_000);
    assert_eq!(two.breach_ticks, 2);
    // A recovery tick resets the count (a wick liquidates nobody).
    let (reset, ev) = tick(&two, 6_500_000);
    assert_eq!(reset.breach_ticks, 0);
    assert!(ev.iter().any(|e| matches!(e, Event::BreachCleared { .. })));
    // So does a tick without a price: the ticks that liquidate are consecutive
    // ticks with a confirmed aggregate.
    let held = Input::PriceUnavailable {
        reason: "1 usable quote(s), the quorum is 2".into(),
    };
    let (kept, ev) = apply(&two, &held).unwrap();
    assert_eq!((kept.state, kept.breach_ticks), (LoanState::MarginCall, 0));
    assert!(matches!(
        ev.as_slice(),
        [Event::BreachHeld { after_ticks: 2, reason }] if reason.contains("quorum")
    ));
    let (same, ev) = apply(&kept, &held).unwrap();
    assert!(same == kept && ev.is_empty(), "held once, not every tick");
    let (after, _) = tick(&kept, 6_200_000);
    assert_eq!(
        after.state,
        LoanState::MarginCall,
        "one breach tick after an outage liquidates nobody"
    );
    let (a, _) = tick(&reset, 6_200_000);
    let (b, _) = tick(&a, 6_200_000);
    let (c, ev) = tick(&b, 6_200_000);
    assert_eq!(c.state, LoanState::Liquidating);
    assert_eq!(c.liquidation_reason, Some(LiquidationReason::LtvBreach));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::LiquidationDecided {
            reason: LiquidationReason::LtvBreach,
            ..
        }
    )));
    // Hard threshold (90 %): at once.
    let (hard, _) = tick(&loan, 5_500_000);
    assert_eq!(hard.state, LoanState::Liquidating);
    assert_eq!(hard.liquidation_reason, Some(LiquidationReason::HardBreach));
}

#[test]
fn no_oracle_price_moves_nothing() {
    let loan = active();
    let (same, ev) = apply(
        &loan,
        &Input::PriceTick {
            now: NOW,
            seq: 1,
            price: None,
        },
    )
    .unwrap();
    assert_eq!(same, loan);
    assert!(ev.is_empty());
}

#[test]
fn a_price_in_another_currency_is_refused() {
    let loan = active();
    let eur = Price::new(1, Currency::new("EUR").unwrap());
    assert!(matches!(
        apply(
            &loan,
            &Input::PriceTick {
                now: NOW,
                seq: 1,
                price: Some(PriceEvidence::bare(eur))
            }
        ),
        Err(TransitionError::Calc(..))
    ));
}

#[test]
fn repayment_releases_and_overpayment_is_refused() {
    let loan = active();
    let usd_c = Currency::new("USD").unwrap();
    let (part, ev) = apply(
        &loan,
        &Input::RepaymentRecorded {
            now: NOW,
            amount: Fiat::new(4_000_000, usd_c),
            key: "r1".into(),
        },
    )
    .unwrap();
    assert_eq!(part.state, LoanState::Active);
    assert!(
        matches!(ev.as_slice(), [Event::RepaymentRecorded { owed, .. }] if owed.minor == 6_000_000)
    );
    let err = apply(
        &part,
        &Input::RepaymentRecorded {
            now: NOW,
            amount: Fiat::new(6_000_001, usd_c),
            key: "r2".into(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, TransitionError::Overpayment { .. }));
    let (releasing, _) = apply(
        &part,
        &Input::RepaymentRecorded {
            now: NOW,
            amount: Fiat::new(6_000_000, usd_c),
            key: "r3".into(),
        },
    )
    .unwrap();
    assert_eq!(releasing.state, LoanState::Releasing);
    let (b, _) = apply(
        &releasing,
        &Input::TxBroadcast {
            kind: TxKind::Release,
            txid: txid(1),
        },
    )
    .unwrap();
    // A confirmation of a transaction we never broadcast is someone else's spend.
    let (other, ev) = apply(
        &b,
        &Input::TxConfirmed {
            kind: TxKind::Release,
            txid: txid(2),
            height: 200,
        },
    )
    .unwrap();
    assert_eq!(other.state, LoanState::ClosedOnChain);
    assert!(matches!(ev.as_slice(), [Event::ClosedOnChain { .. }]));
    let (closed, _) = apply(
        &b,
        &Input::TxConfirmed {
            kind: TxKind::Release,
            txid: txid(1),
            height: 200,
        },
    )
    .unwrap();
    assert_eq!(closed.state, LoanState::Closed);
    let (back, _) = apply(
        &closed,
        &Input::TxReorgedOut {
            kind: TxKind::Release,
            txid: txid(1),
        },
    )
    .unwrap();
    assert_eq!(back.state, LoanState::Releasing);
}

#[test]
fn liquidation_confirms_and_reorgs_back() {
    let (liq, _) = tick(&active(), 5_000_000);
    let (b, _) = apply(
        &liq,
        &Input::TxBroadcast {
            kind: TxKind::Liquidation,
            txid: txid(3),
        },
    )
    .unwrap();
    let (done, _) = apply(
        &b,
        &Input::TxConfirmed {
            kind: TxKind::Liquidation,
            txid: txid(3),
            height: 200,
        },
    )
    .unwrap();
    assert_eq!(done.state, LoanState::Liquidated);
    let (again, _) = apply(
        &done,
        &Input::TxReorgedOut {
            kind: TxKind::Liquidation,
            txid: txid(3),
        },
    )
    .unwrap();
    assert_eq!(again.state, LoanState::Liquidating);
}

#[test]
fn maturity_with_money_owed_liquidates() {
    let (liq, ev) = apply(
        &active(),
        &Input::DefaultDue {
            now: NOW + 31 * 86_400,
            tip_height: 0,
        },
    )
    .unwrap();
    assert_eq!(liq.state, LoanState::Liquidating);
    assert!(matches!(
        ev.as_slice(),
        [Event::LiquidationDecided {
            reason: LiquidationReason::Default,
            ..
        }]
    ));
}

#[test]
fn funding_reorged_out_goes_back_to_awaiting() {
    let (back, ev) = apply(
        &active(),
        &Input::CollateralObserved {
            now: NOW,
            confirmed: Amount::ZERO,
            escrow_spent: false,
        },
    )
    .unwrap();
    assert_eq!(back.state, LoanState::AwaitingCollateral);
    assert!(ev.contains(&Event::FundingReorgedOut));
}

#[test]
fn unknown_spend_closes_on_chain() {
    let (c, _) = apply(
        &active(),
        &Input::SpentByUnknownTx {
            txid: txid(9),
            path: "cooperative".into(),
        },
    )
    .unwrap();
    assert_eq!(c.state, LoanState::ClosedOnChain);
    // Not for an unfunded loan.
    let offered = Loan::offered("x", terms());
    assert!(apply(
        &offered,
        &Input::SpentByUnknownTx {
            txid: txid(9),
            path: "p".into()
        }
    )
    .is_err());
}

#[test]
fn deadline_expires_only_unfunded_loans_after_it() {
    let loan = Loan::offered("l1", terms());
    let (awaiting, _) = apply(
        &loan,
        &Input::Accepted {
            now: NOW,
            escrow_index: 1,
            descriptor: "d".into(),
            required_collateral: Amount::ONE_BTC,
            schedule: schedule(),
        },
    )
    .unwrap();
    let deadline = terms().get().funding_deadline;
    assert!(matches!(
        apply(&awaiting, &Input::DeadlinePassed { now: deadline - 1 }),
        Err(TransitionError::DeadlineNotPassed { .. })
    ));
    let (expired, _) = apply(&awaiting, &Input::DeadlinePassed { now: deadline }).unwrap();
    assert_eq!(expired.state, LoanState::Expired);
    assert!(apply(&active(), &Input::DeadlinePassed { now: deadline }).is_err());
}

#[test]
fn every_illegal_input_is_refused_without_change() {
    let offered = Loan::offered("l1", terms());
    let active = active();
    let (liquidating, _) = tick(&active, 5_000_000);
    let (expired, _) = {
        let (a, _) = apply(
            &offered,
            &Input::Accepted {
                now: NOW,
                escrow_index: 1,
                descriptor: "d".into(),
                required_collateral: Amount::ONE_BTC,
                schedule: schedule(),
            },
        )
        .unwrap();
        apply(
            &a,
            &Input::DeadlinePassed {
                now: NOW + 10_000_000,
            },
        )
        .unwrap()
    };
    let usd_c = Currency::new("USD").unwrap();
    let cases: Vec<(&Loan, Input)> = vec![
        (
            &offered,
            Input::PriceTick {
                now: NOW,
                seq: 1,
                price: Some(PriceEvidence::bare(usd(1))),
            },
        ),
        (
            &offered,
            Input::CollateralObserved {
                now: NOW,
                confirmed: Amount::ONE_BTC,
                escrow_spent: false,
            },
        ),
        (
            &offered,
            Input::RepaymentRecorded {
                now: NOW,
                amount: Fiat::new(1, usd_c),
                key: "r4".into(),
            },
        ),
        (&offered, Input::DeadlinePassed { now: NOW }),
        (
            &active,
            Input::Accepted {
                now: NOW,
                escrow_index: 1,
                descriptor: "d".into(),
                required_collateral: Amount::ONE_BTC,
                schedule: schedule(),
            },
        ),
        (
            &active,
            Input::TxConfirmed {
                kind: TxKind::Liquidation,
                txid: txid(1),
                height: 200,
            },
        ),
        (
            &active,
            Input::TxBroadcast {
                kind: TxKind::Release,
                txid: txid(1),
            },
        ),
        (
            &liquidating,
            Input::TxBroadcast {
                kind: TxKind::Release,
                txid: txid(1),
            },
        ),
        (
            &liquidating,
            Input::RepaymentRecorded {
                now: NOW,
                amount: Fiat::new(1, usd_c),
                key: "r5".into(),
            },
        ),
        (
            &liquidating,
            Input::PriceTick {
                now: NOW,
                seq: 1,
                price: Some(PriceEvidence::bare(usd(1))),
            },
        ),
        (
            &expired,
            Input::PriceTick {
                now: NOW,
                seq: 1,
                price: None,
            },
        ),
        (
            &expired,
            Input::DefaultDue {
                now: NOW,
                tip_height: 0,
            },
        ),
    ];
    for (loan, input) in cases {
        let err = apply(loan, &input).unwrap_err();
        assert!(
            matches!(err, TransitionError::Illegal { .. }),
            "{input:?} in {:?}: {err}",
            loan.state
        );
    }
}
