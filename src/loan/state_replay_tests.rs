//! Replay and idempotency tests of the loan state machine (the review items), and the
//! property tests that replaying any input changes nothing.

use super::tests::{active, schedule, tick, txid, usd};
use super::*;
use crate::loan::money::Currency;
use crate::loan::terms::tests::{terms, NOW};

fn repay(loan: &Loan, minor: u64, key: &str) -> Result<(Loan, Vec<Event>), TransitionError> {
    apply(
        loan,
        &Input::RepaymentRecorded {
            now: NOW,
            amount: Fiat::new(minor, Currency::new("USD").unwrap()),
            key: key.into(),
        },
    )
}

fn observe(loan: &Loan, btc: u64, escrow_spent: bool) -> (Loan, Vec<Event>) {
    apply(
        loan,
        &Input::CollateralObserved {
            now: NOW + 1,
            confirmed: Amount::from_int_btc(btc),
            escrow_spent,
        },
    )
    .unwrap()
}

/// Item 2: a transition that changes nothing emits nothing and bumps nothing.
#[test]
fn a_repeated_broadcast_changes_nothing() {
    let (liq, _) = tick(&active(), 5_000_000);
    let broadcast = Input::TxBroadcast {
        kind: TxKind::Liquidation,
        txid: txid(3),
    };
    let (once, ev) = apply(&liq, &broadcast).unwrap();
    assert_eq!(ev.len(), 1);
    let (twice, ev) = apply(&once, &broadcast).unwrap();
    assert_eq!(twice, once);
    assert!(ev.is_empty(), "{ev:?}");
    // An RBF replacement is recorded too; a confirmation of either completes.
    let (both, _) = apply(
        &once,
        &Input::TxBroadcast {
            kind: TxKind::Liquidation,
            txid: txid(4),
        },
    )
    .unwrap();
    assert_eq!(both.broadcasts.len(), 2);
    let (done, _) = apply(
        &both,
        &Input::TxConfirmed {
            kind: TxKind::Liquidation,
            txid: txid(3),
            height: 300,
        },
    )
    .unwrap();
    assert_eq!(done.state, LoanState::Liquidated);
    assert_eq!(done.confirmed_tx, Some((TxKind::Liquidation, txid(3))));
}

/// Item 2: zero repayments are refused; a replayed repayment counts once; a key reused
/// for another amount is refused.
#[test]
fn repayments_are_idempotent_by_key() {
    let loan = active();
    let err = repay(&loan, 0, "k0").unwrap_err();
    assert!(
        matches!(err, TransitionError::ZeroRepayment { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("amount"), "{err}");
    let (once, _) = repay(&loan, 1_000_000, "k1").unwrap();
    let (again, ev) = repay(&once, 1_000_000, "k1").unwrap();
    assert_eq!(again, once);
    assert!(ev.is_empty());
    assert_eq!(once.owed(NOW).unwrap().minor, 9_000_000);
    assert!(matches!(
        repay(&once, 5, "k1"),
        Err(TransitionError::RepaymentKeyReused {
            first: 1_000_000,
            now: 5,
            ..
        })
    ));
    // The final repayment replayed after the loan moved on is still a no-op.
    let (releasing, _) = repay(&once, 9_000_000, "k2").unwrap();
    assert_eq!(releasing.state, LoanState::Releasing);
    let (same, ev) = repay(&releasing, 9_000_000, "k2").unwrap();
    assert_eq!((same, ev.len()), (releasing, 0));
}

/// Item 2: a replayed price tick does not count twice toward confirm_ticks; an older
/// tick arriving late moves nothing.
#[test]
fn a_replayed_price_tick_counts_once() {
    let loan = active();
    let at = |seq, m| Input::PriceTick {
        now: NOW,
        seq,
        price: Some(PriceEvidence::bare(usd(m))),
    };
    let (one, _) = apply(&loan, &at(10, 6_200_000)).unwrap();
    assert_eq!(one.breach_ticks, 1);
    let (replayed, ev) = apply(&one, &at(10, 6_200_000)).unwrap();
    assert_eq!((replayed.breach_ticks, ev.len()), (1, 0));
    let (older, ev) = apply(&one, &at(9, 9_000_000)).unwrap();
    assert_eq!((older, ev.len()), (one.clone(), 0));
    let (two, _) = apply(&one, &at(11, 6_200_000)).unwrap();
    assert_eq!(two.breach_ticks, 2);
}

/// Item 3: a spend of the escrow is not a reorg of the funding, and a loan that was
/// ever active never expires.
#[test]
fn a_funded_loan_never_expires() {
    let loan = active();
    let deadline = terms().get().funding_deadline;
    // The escrow is spent (by anyone): the collateral snapshot moves nothing.
    let (spent, ev) = observe(&loan, 0, true);
    assert_eq!((spent.state, ev.len()), (LoanState::Active, 0));
    // A routine reorg takes the funding out: back to awaiting, but never expired.
    let (back, ev) = observe(&loan, 0, false);
    assert_eq!(back.state, LoanState::AwaitingCollateral);
    assert!(ev.contains(&Event::FundingReorgedOut));
    let (still, ev) = apply(&back, &Input::DeadlinePassed { now: deadline + 1 }).unwrap();
    assert_eq!((still.state, ev.len()), (LoanState::AwaitingCollateral, 0));
    // The funding comes back: active again, interest still from the first activation.
    let (again, ev) = observe(&still, 2, false);
    assert_eq!(again.state, LoanState::Active);
    assert!(
        matches!(ev.last(), Some(Event::Reactivated { .. })),
        "{ev:?}"
    );
    assert_eq!(again.activated_at, loan.activated_at);
    assert_eq!(again.accrual, loan.accrual);
    // Spent by someone else while waiting for the funding to come back: closed on
    // chain, and back again if that spend leaves the chain.
    let (closed, _) = apply(
        &back,
        &Input::SpentByUnknownTx {
            txid: txid(8),
            path: "recovery".into(),
        },
    )
    .unwrap();
    assert_eq!(closed.state, LoanState::ClosedOnChain);
    let (reopened, ev) = apply(&closed, &Input::UnknownSpendReorgedOut { txid: txid(8) }).unwrap();
    assert_eq!(reopened.state, LoanState::AwaitingCollateral);
    assert!(matches!(
        ev.as_slice(),
        [Event::ClosedOnChainReorgedOut {
            state: LoanState::AwaitingCollateral,
            ..
        }]
    ));
}

/// Item 4: a price gapping from safe straight into the liquidation band raises the
/// margin call in the same transition, before the breach tick.
#[test]
fn a_gap_into_the_liquidation_band_still_raises_the_margin_call() {
    let loan = active();
    let (one, ev) = tick(&loan, 6_200_000);
    assert!(
        matches!(
            ev.as_slice(),
            [
                Event::MarginCall { .. },
                Event::BreachTick { consecutive: 1, .. }
            ]
        ),
        "{ev:?}"
    );
    assert_eq!(one.state, LoanState::MarginCall);
    // Even a hard breach, liquidated at once, warns first.
    let (hard, ev) = tick(&loan, 5_000_000);
    assert!(
        matches!(
            ev.as_slice(),
            [
                Event::MarginCall { .. },
                Event::BreachTick { .. },
                Event::LiquidationDecided { .. }
            ]
        ),
        "{ev:?}"
    );
    assert_eq!(hard.state, LoanState::Liquidating);
}

/// Item 5: with nothing recorded, a confirmation is not accepted as ours.
#[test]
fn an_unrecorded_confirmation_is_closed_on_chain() {
    let (liq, _) = tick(&active(), 5_000_000);
    let (c, ev) = apply(
        &liq,
        &Input::TxConfirmed {
            kind: TxKind::Liquidation,
            txid: txid(5),
            height: 300,
        },
    )
    .unwrap();
    assert_eq!(c.state, LoanState::ClosedOnChain);
    assert_eq!(
        (c.spent_by, c.closed_from),
        (Some(txid(5)), Some(LoanState::Liquidating))
    );
    assert!(matches!(ev.as_slice(), [Event::ClosedOnChain { .. }]));
}

/// Item 6: the default comes grace after maturity, by the clock or by the height,
/// whichever first; never before both.
#[test]
fn default_comes_grace_after_maturity_by_clock_or_height() {
    let loan = active();
    let s = loan.schedule.unwrap();
    let t = terms();
    let (term, grace) = (t.get().term_secs, u64::from(t.get().grace_blocks));
    let start = loan.activated_at.unwrap();
    let due = start + term + grace * 600;
    let input = |now, tip_height| Input::DefaultDue { now, tip_height };
    assert!(matches!(
        apply(&loan, &input(due - 1, s.default_height - 1)),
        Err(TransitionError::NotDue { .. })
    ));
    // At maturity itself, before the grace: not yet (the old rule liquidated here).
    assert!(apply(&loan, &input(start + term, 0)).is_err());
    for i in [input(due, 0), input(start, s.default_height)] {
        let (m, ev) = apply(&loan, &i).unwrap();
        assert_eq!(m.state, LoanState::Liquidating, "{i:?}");
        assert!(matches!(
            ev.as_slice(),
            [Event::LiquidationDecided {
                reason: LiquidationReason::Default,
                ..
            }]
        ));
    }
}

/// Item 6: for activation anywhere up to the funding deadline and blocks from 10 %
/// fast to 20 % slow, the lender's solo path (open at `default_height`) never opens
/// before the clock's maturity plus the grace blocks at that speed.
#[test]
fn the_solo_path_never_opens_before_maturity_plus_grace() {
    let t = terms();
    let (accept_tip, accept_at) = (1_000u32, NOW);
    let s = t.escrow_heights(accept_tip, accept_at).unwrap();
    let deadline = t.get().funding_deadline;
    let grace = u64::from(t.get().grace_blocks);
    for block_secs in [540u64, 570, 600, 660, 720] {
        for activated in [accept_at, (accept_at + deadline) / 2, deadline] {
            let solo_opens = accept_at + u64::from(s.default_height - accept_tip) * block_secs;
            let matured = activated + t.get().term_secs;
            assert!(
                solo_opens >= matured + grace * block_secs,
                "blocks of {block_secs} s, activated {}: solo at {solo_opens}, maturity {matured}",
                activated - accept_at
            );
        }
    }
}

/// Item 3 (review): an expired loan's deposits are tracked and refunded there; a late
/// funding never activates it.
#[test]
fn an_expired_loans_deposit_is_tracked_and_refunded() {
    let (awaiting, _) = apply(
        &Loan::offered("l1", terms()),
        &Input::Accepted {
            now: NOW,
            escrow_index: 1,
            descriptor: "d".into(),
            required_collateral: Amount::from_int_btc(2),
            schedule: schedule(),
        },
    )
    .unwrap();
    let (partial, _) = observe(&awaiting, 1, false);
    let deadline = terms().get().funding_deadline;
    let (expired, _) = apply(&partial, &Input::DeadlinePassed { now: deadline }).unwrap();
    assert_eq!(expired.state, LoanState::Expired);
    // The rest arrives too late: tracked, not activated.
    let (late, ev) = observe(&expired, 2, false);
    assert_eq!(
        (late.state, late.collateral),
        (LoanState::Expired, Amount::from_int_btc(2))
    );
    assert!(matches!(ev.as_slice(), [Event::CollateralChanged { .. }]));
    let refund = |kind, n| Input::TxBroadcast {
        kind,
        txid: txid(n),
    };
    let (sent, _) = apply(&late, &refund(TxKind::Refund, 30)).unwrap();
    let confirm = Input::TxConfirmed {
        kind: TxKind::Refund,
        txid: txid(30),
        height: 400,
    };
    let (done, _) = apply(&sent, &confirm).unwrap();
    assert_eq!(done.confirmed_tx, Some((TxKind::Refund, txid(30))));
    assert_eq!(done.state, LoanState::Expired);
    assert_eq!(apply(&done, &confirm).unwrap().1.len(), 0, "replay");
    let reorg = Input::TxReorgedOut {
        kind: TxKind::Refund,
        txid: txid(30),
    };
    let (back, _) = apply(&done, &reorg).unwrap();
    assert_eq!(back.confirmed_tx, None);
    assert_eq!(
        apply(&back, &reorg).unwrap(),
        (back.clone(), vec![]),
        "replay"
    );
}

/// Item 5 (review): a spend report naming a transaction we broadcast is our
/// confirmation; a spend after the decision's own transaction confirmed is ignored.
#[test]
fn a_spend_report_of_our_own_transaction_is_our_confirmation() {
    let (liq, _) = tick(&active(), 5_000_000);
    let (a, _) = apply(
        &liq,
        &Input::TxBroadcast {
            kind: TxKind::Liquidation,
            txid: txid(3),
        },
    )
    .unwrap();
    let (ab, _) = apply(
        &a,
        &Input::TxBroadcast {
            kind: TxKind::Liquidation,
            txid: txid(4),
        },
    )
    .unwrap();
    let report = |n| Input::SpentByUnknownTx {
        txid: txid(n),
        path: "liquidation".into(),
    };
    let (done, ev) = apply(&ab, &report(4)).unwrap();
    assert_eq!(done.state, LoanState::Liquidated);
    assert_eq!(done.confirmed_tx, Some((TxKind::Liquidation, txid(4))));
    assert!(matches!(
        ev.as_slice(),
        [Event::TxConfirmed { height: None, .. }]
    ));
    assert_eq!(apply(&done, &report(4)).unwrap().1.len(), 0, "replay");
    // Someone pays the reused address later and spends it: not this loan's business.
    let (same, ev) = apply(&done, &report(9)).unwrap();
    assert_eq!((same, ev.len()), (done, 0));
}

/// Item 8: the margin call and the liquidation decision carry the oracle evidence.
#[test]
fn decisions_store_the_oracle_evidence() {
    let evidence = PriceEvidence {
        price: usd(5_000_000),
        quotes: vec![
            QuoteEvidence {
                source: "kraken".into(),
                minor_per_btc: Some(5_000_000),
                at: Some(NOW),
                dropped: None,
            },
            QuoteEvidence {
                source: "bitstamp".into(),
                minor_per_btc: Some(3_000_000),
                at: Some(NOW),
                dropped: Some("outlier".into()),
            },
        ],
    };
    let (_, ev) = apply(
        &active(),
        &Input::PriceTick {
            now: NOW,
            seq: 42,
            price: Some(evidence.clone()),
        },
    )
    .unwrap();
    let mut seen = 0;
    for e in &ev {
        match e {
            Event::MarginCall {
                oracle_seq,
                evidence: e,
                ..
            } => {
                assert_eq!((*oracle_seq, e), (42, &evidence));
                seen += 1;
            }
            Event::LiquidationDecided {
                oracle_seq,
                evidence: e,
                ..
            } => {
                assert_eq!((*oracle_seq, e.as_ref()), (Some(42), Some(&evidence)));
                seen += 1;
            }
            _ => {}
        }
    }
    assert_eq!(seen, 2, "{ev:?}");
}

mod replays {
    use super::*;
    use proptest::prelude::*;

    fn input_strategy() -> impl Strategy<Value = Input> {
        let usd_c = Currency::new("USD").unwrap();
        prop_oneof![
            (0u64..4).prop_map(|btc| Input::CollateralObserved {
                now: NOW + 10,
                confirmed: Amount::from_int_btc(btc),
                escrow_spent: false,
            }),
            Just(Input::CollateralObserved {
                now: NOW + 10,
                confirmed: Amount::ZERO,
                escrow_spent: true,
            }),
            (
                0u64..30,
                prop_oneof![Just(None), (4_000_000u64..9_000_000).prop_map(Some)]
            )
                .prop_map(|(seq, p)| Input::PriceTick {
                    now: NOW + 20,
                    seq,
                    price: p.map(|m| PriceEvidence::bare(usd(m))),
                }),
            (0u64..4, 1u64..6_000_000).prop_map(move |(k, m)| Input::RepaymentRecorded {
                now: NOW + 30,
                amount: Fiat::new(m, usd_c),
                key: format!("k{k}"),
            }),
            (0u8..3).prop_map(|n| Input::TxBroadcast {
                kind: TxKind::Liquidation,
                txid: txid(n),
            }),
            (0u8..3).prop_map(|n| Input::TxBroadcast {
                kind: TxKind::Release,
                txid: txid(n),
            }),
            (0u8..3).prop_map(|n| Input::TxBroadcast {
                kind: TxKind::Refund,
                txid: txid(n),
            }),
            (0u8..4).prop_map(|n| Input::TxConfirmed {
                kind: if n % 2 == 0 {
                    TxKind::Liquidation
                } else {
                    TxKind::Release
                },
                txid: txid(n),
                height: 300,
            }),
            (0u8..4).prop_map(|n| Input::TxReorgedOut {
                kind: if n % 2 == 0 {
                    TxKind::Liquidation
                } else {
                    TxKind::Release
                },
                txid: txid(n),
            }),
            (5u8..7).prop_map(|n| Input::SpentByUnknownTx {
                txid: txid(n),
                path: "recovery".into(),
            }),
            (5u8..7).prop_map(|n| Input::UnknownSpendReorgedOut { txid: txid(n) }),
            Just(Input::DeadlinePassed {
                now: NOW + 10_000_000
            }),
            Just(Input::DefaultDue {
                now: NOW + 100_000_000,
                tip_height: 0,
            }),
        ]
    }

    /// Inputs whose identity makes any later replay a no-op (not only an immediate one).
    fn replayable_any_time(input: &Input) -> bool {
        matches!(
            input,
            Input::PriceTick { .. } | Input::RepaymentRecorded { .. } | Input::Accepted { .. }
        )
    }

    proptest! {
        /// Random input sequences with random replays: a replay never changes the loan
        /// nor emits an event; every real change bumps the version by one and the event
        /// count by exactly the events emitted; no change comes with events.
        #[test]
        fn replays_change_nothing(
            inputs in proptest::collection::vec(input_strategy(), 1..40),
            replays in proptest::collection::vec((any::<bool>(), any::<proptest::sample::Index>()), 40),
            start_funded in any::<bool>(),
        ) {
            // From an active loan, or one awaiting its collateral (which can expire).
            let mut loan = if start_funded {
                active()
            } else {
                apply(
                    &Loan::offered("l1", terms()),
                    &Input::Accepted {
                        now: NOW,
                        escrow_index: 7,
                        descriptor: "wsh(...)".into(),
                        required_collateral: Amount::from_int_btc(2),
                        schedule: schedule(),
                    },
                )
                .unwrap()
                .0
            };
            let mut applied: Vec<Input> = Vec::new();
            for (input, (immediate, pick)) in inputs.iter().zip(&replays) {
                if let Ok((next, events)) = apply(&loan, input) {
                    if next == loan {
                        prop_assert!(events.is_empty(), "{:?}", events);
                    } else {
                        prop_assert_eq!(next.version, loan.version + 1);
                        prop_assert_eq!(next.event_count, loan.event_count + events.len() as u64);
                    }
                    loan = next;
                    applied.push(input.clone());
                    // Replay it at once (every input), or an earlier identified one.
                    let replay = if *immediate {
                        Some(input.clone())
                    } else {
                        let candidates: Vec<&Input> =
                            applied.iter().filter(|i| replayable_any_time(i)).collect();
                        (!candidates.is_empty()).then(|| pick.get(&candidates).to_owned().clone())
                    };
                    if let Some(replay) = replay {
                        if let Ok((again, events)) = apply(&loan, &replay) {
                            prop_assert_eq!(&again, &loan, "replay of {:?} changed the loan", replay);
                            prop_assert!(events.is_empty(), "replay of {:?}: {:?}", replay, events);
                        }
                    }
                }
            }
        }
    }
}
