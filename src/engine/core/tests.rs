//! The engine's core on a real store, with escrow deposits made as transactions paying
//! the escrow's script (the chain's part is the watcher's, tested against regtest).

use super::*;
use crate::engine::Progress;
use crate::loan::money::Currency;
use crate::loan::terms::tests::{input as terms_input, NOW};
use crate::loan::{PriceEvidence, TxKind};
use crate::tx::tests::funding;
use bitcoin::Amount;

const RATE: u64 = 2_000;

struct World {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    borrower: crate::keys::SigningKey,
    lender: crate::keys::SigningKey,
    secp: Secp256k1<All>,
}

fn key(seed: u8) -> crate::keys::SigningKey {
    let master = bitcoin::bip32::Xpriv::new_master(Network::Regtest, &[seed; 32]).unwrap();
    crate::keys::SigningKey::parse(&master.to_string(), Network::Regtest).unwrap()
}

fn account(k: &crate::keys::SigningKey, secp: &Secp256k1<All>) -> AccountKey {
    let path = crate::keys::account_path(Network::Regtest, 0).unwrap();
    AccountKey::from_master(k.master(), &path, secp).unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        network: Network::Regtest,
        min_confirmations: 1,
        min_confirm_ticks: 3,
        fee_cap: FeeCap::default(),
        template: PolicyTemplate::default(),
    }
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        ArbiterKey::create(&path, Network::Regtest).unwrap();
        Self {
            _dir: dir,
            path,
            borrower: key(21),
            lender: key(22),
            secp: Secp256k1::new(),
        }
    }

    fn engine(&self) -> Engine {
        let store = Store::open(&self.path.join("db")).unwrap();
        let arbiter = ArbiterKey::load(&self.path, Network::Regtest).unwrap();
        Engine::open(store, arbiter, config()).unwrap()
    }
}

fn usd(minor: u64) -> Price {
    Price::new(minor, Currency::new("USD").unwrap())
}

/// Accept offer `id` at $100,000/BTC with the world's borrower and lender.
fn accept(w: &World, e: &mut Engine, id: &str) -> Result<Loan, EngineError> {
    e.accept(
        id,
        Acceptance {
            borrower_id: "b",
            borrower: &account(&w.borrower, &w.secp),
            lender: &account(&w.lender, &w.secp),
            price: usd(10_000_000),
            return_address: None,
        },
        100,
        NOW,
    )
}

/// Offer `id` and accept it: $100,000 at 50 % initial LTV, 2 BTC required.
fn offered_and_accepted(w: &World, e: &mut Engine, id: &str) -> Loan {
    e.offer(id, "l", terms_input(), NOW).unwrap();
    accept(w, e, id).unwrap()
}

/// Offer $100,000 at 50 % initial LTV with the price at $100,000: 2 BTC required.
fn funded(w: &World, e: &mut Engine) -> Vec<EscrowInput> {
    let loan = offered_and_accepted(w, e, "l1");
    assert_eq!(loan.state, LoanState::AwaitingCollateral);
    assert_eq!(loan.required_collateral, Amount::from_int_btc(2));
    let escrow = e.escrows()["l1"].clone();
    let deposits = funding(&escrow, &[150_000_000, 50_000_000]);
    let view = EscrowView {
        depth: Default::default(),
        confirmed: deposits.clone(),
        ..EscrowView::default()
    };
    assert_eq!(e.observe("l1", view, NOW).unwrap().state, LoanState::Active);
    deposits
}

#[test]
fn a_breach_is_decided_signed_cosigned_broadcast_and_confirmed() {
    let w = World::new();
    let mut e = w.engine();
    let deposits = funded(&w, &mut e);
    // $62,000: LTV 80.6 % — margin call and the first breach tick; two more confirm.
    for _ in 0..2 {
        let tick = e
            .price_tick(PriceEvidence::bare(usd(6_200_000)), NOW, 300, RATE)
            .unwrap();
        assert_eq!(tick.moved.len(), 1);
        assert!(e.decision("l1").unwrap().is_none());
    }
    e.price_tick(PriceEvidence::bare(usd(6_200_000)), NOW, 300, RATE)
        .unwrap();
    let loan = e.loan("l1").unwrap();
    assert_eq!(loan.state, LoanState::Liquidating);
    let record = e
        .decision("l1")
        .unwrap()
        .expect("decided with the transition");
    assert_eq!(record.progress, Progress::AwaitingCosignature);
    let tx = record.psbt().unwrap().unsigned_tx;
    let claim = (10_500_000u128 * 100_000_000).div_ceil(6_200_000) as u64;
    assert_eq!(tx.output[0].value, Amount::from_sat(claim));
    assert_eq!(
        tx.input
            .iter()
            .map(|i| i.previous_output)
            .collect::<Vec<_>>(),
        deposits.iter().map(|d| d.outpoint).collect::<Vec<_>>()
    );

    // The lender co-signs; the engine finalizes and stores before anything leaves.
    let escrow = e.escrows()["l1"].clone();
    let mut theirs = record.psbt().unwrap();
    crate::tx::sign(&mut theirs, &w.lender, &escrow, &FeeCap::default(), &w.secp).unwrap();
    let final_tx = e.cosign("l1", &theirs).unwrap();
    let txid = final_tx.compute_txid();
    // A crash here: after a restart the same bytes are still to be broadcast.
    drop(e);
    let mut e = w.engine();
    assert_eq!(e.to_broadcast().unwrap(), vec![("l1".to_owned(), final_tx)]);
    let loan = e.broadcasted("l1", txid, 300).unwrap();
    assert_eq!(loan.broadcasts, vec![(TxKind::Liquidation, txid)]);
    assert!(e.to_broadcast().unwrap().is_empty());
    // Confirmed: liquidated. Reorged out: liquidating again, still ours.
    let spent = |confirmed: bool| EscrowView {
        depth: Default::default(),
        confirmed: vec![],
        spending: vec![txid],
        confirmed_spends: if confirmed {
            vec![ConfirmedSpend {
                txid,
                height: 301,
                path: "liquidation".into(),
            }]
        } else {
            vec![]
        },
    };
    assert_eq!(
        e.observe("l1", spent(true), NOW).unwrap().state,
        LoanState::Liquidated
    );
    assert_eq!(
        e.observe("l1", spent(false), NOW).unwrap().state,
        LoanState::Liquidating
    );
    assert_eq!(
        e.observe("l1", spent(true), NOW).unwrap().state,
        LoanState::Liquidated
    );
}

#[test]
fn a_full_repayment_is_released_to_the_borrower() {
    let w = World::new();
    let mut e = w.engine();
    funded(&w, &mut e);
    let usd_c = Currency::new("USD").unwrap();
    let loan = e
        .repay("l1", Fiat::new(10_000_000, usd_c), "r1", NOW, 300, RATE)
        .unwrap();
    assert_eq!(loan.state, LoanState::Releasing);
    let record = e.decision("l1").unwrap().unwrap();
    let tx = record.psbt().unwrap().unsigned_tx;
    assert_eq!(tx.output.len(), 1);
    assert_eq!(
        tx.output[0].script_pubkey,
        loan.terms.borrower_return_address().script_pubkey()
    );
    // The borrower co-signs (either party may).
    let escrow = e.escrows()["l1"].clone();
    let mut theirs = record.psbt().unwrap();
    crate::tx::sign(
        &mut theirs,
        &w.borrower,
        &escrow,
        &FeeCap::default(),
        &w.secp,
    )
    .unwrap();
    let tx = e.cosign("l1", &theirs).unwrap();
    assert_eq!(
        tx.output[0].value,
        Amount::from_int_btc(2) - record.decision.fee
    );
    // A second co-signature is refused: the decision is finalized.
    assert!(matches!(
        e.cosign("l1", &theirs),
        Err(EngineError::NothingToCosign { .. })
    ));
}

#[test]
fn a_cosignature_merged_off_the_engine_is_stored_only_over_the_record_it_was_made_from() {
    let w = World::new();
    let mut e = w.engine();
    funded(&w, &mut e);
    let usd_c = Currency::new("USD").unwrap();
    e.repay("l1", Fiat::new(10_000_000, usd_c), "r1", NOW, 300, RATE)
        .unwrap();
    let record = e.decision("l1").unwrap().unwrap();
    let escrow = e.escrows()["l1"].clone();
    let mut theirs = record.psbt().unwrap();
    crate::tx::sign(
        &mut theirs,
        &w.borrower,
        &escrow,
        &FeeCap::default(),
        &w.secp,
    )
    .unwrap();
    let (next, tx) = record.cosign(&theirs, &w.secp).unwrap();
    // Merged from a record that is no longer the pending one (e.g. bumped meanwhile):
    // refused, the store unchanged.
    let mut stale = record.clone();
    stale.signed_at += 1;
    assert!(matches!(
        e.store_cosigned("l1", &stale, &next, Durability::Buffered),
        Err(EngineError::NothingToCosign { .. })
    ));
    assert_eq!(e.decision("l1").unwrap().unwrap(), record);
    assert!(e.to_broadcast().unwrap().is_empty());
    // From the pending record: stored, and to be broadcast.
    e.store_cosigned("l1", &record, &next, Durability::Buffered)
        .unwrap();
    assert_eq!(e.decision("l1").unwrap().unwrap(), next);
    assert_eq!(e.to_broadcast().unwrap(), vec![("l1".to_owned(), tx)]);
    // The same co-signature again (a concurrent repeat): not an error, nothing changes.
    e.store_cosigned("l1", &record, &next, Durability::Buffered)
        .unwrap();
    assert_eq!(e.decision("l1").unwrap().unwrap(), next);
}

#[test]
fn the_escrows_are_rebuilt_after_a_restart_and_a_stranger_spend_closes_on_chain() {
    let w = World::new();
    let mut e = w.engine();
    funded(&w, &mut e);
    let address = e.escrows()["l1"].address();
    drop(e);
    let mut e = w.engine();
    assert_eq!(e.escrows()["l1"].address(), address);
    let other = Txid::from_raw_hash(bitcoin::hashes::Hash::all_zeros());
    let view = EscrowView {
        depth: Default::default(),
        confirmed: vec![],
        spending: vec![other],
        confirmed_spends: vec![ConfirmedSpend {
            txid: other,
            height: 500,
            path: "recovery".into(),
        }],
    };
    let loan = e.observe("l1", view, NOW).unwrap();
    assert_eq!(loan.state, LoanState::ClosedOnChain);
    assert_eq!(loan.spent_by, Some(other));
}

#[test]
fn after_a_restart_no_breach_is_decided_before_the_chain_is_seen() {
    let w = World::new();
    let mut e = w.engine();
    let deposits = funded(&w, &mut e);
    drop(e);
    let mut e = w.engine();
    // A hard breach ($50,000: LTV 100 %) would liquidate at once, but the engine has
    // not seen the escrow since it started.
    let tick = e
        .price_tick(PriceEvidence::bare(usd(5_000_000)), NOW, 300, RATE)
        .unwrap();
    assert_eq!(tick.waiting_for_chain, vec!["l1".to_owned()]);
    assert_eq!(e.loan("l1").unwrap().state, LoanState::Active);
    assert!(e.decision("l1").unwrap().is_none());
    // Seen again: the next tick decides.
    let view = EscrowView {
        depth: Default::default(),
        confirmed: deposits,
        ..EscrowView::default()
    };
    e.observe("l1", view, NOW).unwrap();
    let tick = e
        .price_tick(PriceEvidence::bare(usd(5_000_000)), NOW, 300, RATE)
        .unwrap();
    assert!(tick.seq > 1, "the sequence survived the restart");
    assert_eq!(e.loan("l1").unwrap().state, LoanState::Liquidating);
    assert!(e.decision("l1").unwrap().is_some());
}

#[test]
fn maturity_plus_grace_with_money_owed_is_a_default_liquidation_once_priced() {
    let w = World::new();
    let mut e = w.engine();
    funded(&w, &mut e);
    let t = terms_input();
    let due = NOW + t.term_secs + u64::from(t.grace_blocks) * 600;
    let out = e.clock(due - 1, 300, RATE, None).unwrap();
    assert_eq!(out, crate::engine::ClockOutcome::default(), "not yet due");
    let out = e.clock(due, 300, RATE, None).unwrap();
    assert_eq!(out.waiting_for_price, vec!["l1".to_owned()]);
    assert_eq!(e.loan("l1").unwrap().state, LoanState::Active);
    let price = PriceEvidence::bare(usd(10_000_000));
    let out = e.clock(due, 300, RATE, Some(&price)).unwrap();
    assert_eq!(out.defaulted, vec!["l1".to_owned()]);
    let loan = e.loan("l1").unwrap();
    assert_eq!(loan.state, LoanState::Liquidating);
    assert_eq!(
        loan.liquidation_reason,
        Some(crate::loan::LiquidationReason::Default)
    );
    assert!(e.decision("l1").unwrap().is_some());
}

#[test]
fn a_deadline_expires_an_underfunded_loan_and_refunds_its_deposit() {
    let w = World::new();
    let mut e = w.engine();
    offered_and_accepted(&w, &mut e, "l1");
    let deadline = terms_input().funding_deadline;
    // No chain view yet: it waits rather than expire a loan that may be funded.
    let out = e.clock(deadline, 300, RATE, None).unwrap();
    assert_eq!(out.waiting_for_chain, vec!["l1".to_owned()]);
    let escrow = e.escrows()["l1"].clone();
    let partial = funding(&escrow, &[100_000_000]);
    let view = EscrowView {
        depth: Default::default(),
        confirmed: partial,
        ..EscrowView::default()
    };
    assert_eq!(
        e.observe("l1", view, NOW).unwrap().state,
        LoanState::AwaitingCollateral
    );
    let out = e.clock(deadline, 300, RATE, None).unwrap();
    assert_eq!(out.expired, vec!["l1".to_owned()]);
    let loan = e.loan("l1").unwrap();
    assert_eq!(loan.state, LoanState::Expired);
    let record = e.decision("l1").unwrap().expect("a refund decision");
    assert_eq!(record.decision.tx_kind(), TxKind::Refund);
    let tx = record.psbt().unwrap().unsigned_tx;
    assert_eq!(
        tx.output[0].script_pubkey,
        loan.terms.borrower_return_address().script_pubkey()
    );
    assert_eq!(tx.output[0].value, Amount::ONE_BTC - record.decision.fee);
    // The borrower co-signs the refund; broadcast is recorded in Expired.
    let mut theirs = record.psbt().unwrap();
    crate::tx::sign(
        &mut theirs,
        &w.borrower,
        &escrow,
        &FeeCap::default(),
        &w.secp,
    )
    .unwrap();
    let tx = e.cosign("l1", &theirs).unwrap();
    let loan = e.broadcasted("l1", tx.compute_txid(), 300).unwrap();
    assert_eq!(loan.broadcasts, vec![(TxKind::Refund, tx.compute_txid())]);
}

#[test]
fn a_deadline_with_nothing_deposited_expires_without_a_decision() {
    let w = World::new();
    let mut e = w.engine();
    offered_and_accepted(&w, &mut e, "l1");
    e.observe("l1", EscrowView::default(), NOW).unwrap();
    let out = e
        .clock(terms_input().funding_deadline, 300, RATE, None)
        .unwrap();
    assert_eq!(out.expired, vec!["l1".to_owned()]);
    assert!(e.decision("l1").unwrap().is_none());
}

/// A tick reads and writes only the loans it can move (the liquidation-price index at
/// the margin-call LTV, plus loans in margin call or with a breach counted); a loan
/// far from its thresholds is not even read, and its record does not change.
#[test]
fn a_tick_moves_only_the_loans_near_their_thresholds() {
    let w = World::new();
    let mut e = w.engine();
    funded(&w, &mut e); // l1: 2 BTC for $100,000
    offered_and_accepted(&w, &mut e, "l2");
    let escrow = e.escrows()["l2"].clone();
    let view = EscrowView {
        depth: Default::default(),
        confirmed: funding(&escrow, &[400_000_000]), // 4 BTC: half the LTV
        ..EscrowView::default()
    };
    e.observe("l2", view, NOW).unwrap();
    assert_eq!(e.priced_loans(), 2);
    let far_before = e.loan("l2").unwrap();
    // $70,000: l1 at 71.4 % (margin call), l2 at 35.7 %.
    let tick = e
        .price_tick(PriceEvidence::bare(usd(7_000_000)), NOW, 300, RATE)
        .unwrap();
    assert_eq!(tick.moved.len(), 1);
    assert_eq!(tick.moved[0].id, "l1");
    assert_eq!(tick.moved[0].state, LoanState::MarginCall);
    assert_eq!(e.loan("l2").unwrap(), far_before);
    // Back to $100,000: l1 (watched in margin call) clears; l2 still untouched.
    let tick = e
        .price_tick(PriceEvidence::bare(usd(10_000_000)), NOW, 300, RATE)
        .unwrap();
    assert_eq!(tick.moved.len(), 1);
    assert_eq!(e.loan("l1").unwrap().state, LoanState::Active);
    assert_eq!(e.loan("l2").unwrap(), far_before);
    // After a restart the book is rebuilt from the store.
    drop(e);
    let e = w.engine();
    assert_eq!(e.priced_loans(), 2);
}

#[test]
fn an_offer_below_the_minimum_confirm_ticks_is_refused() {
    let w = World::new();
    let mut e = w.engine();
    let mut t = terms_input();
    t.confirm_ticks = 2;
    let err = e.offer("l1", "l", t, NOW).unwrap_err();
    assert!(err.to_string().starts_with("confirm_ticks"), "{err}");
    assert!(matches!(e.loan("l1"), Err(EngineError::NotFound { .. })));
}

/// A loan whose liquidation cannot be decided (here: its escrow shows a spend and no
/// spendable deposit) is left as it was and reported; the other breached loan on the
/// same tick is decided all the same. A second accept of a loan is refused before it
/// takes an escrow index.
#[test]
fn one_undecidable_loan_holds_no_other_back() {
    let w = World::new();
    let mut e = w.engine();
    funded(&w, &mut e);
    offered_and_accepted(&w, &mut e, "l2");
    let escrow = e.escrows()["l2"].clone();
    let funded_view = EscrowView {
        depth: Default::default(),
        confirmed: funding(&escrow, &[200_000_000]),
        ..EscrowView::default()
    };
    e.observe("l2", funded_view, NOW).unwrap();
    // The deposit is being spent (by someone): nothing left to build a decision from.
    let spent_view = EscrowView {
        depth: Default::default(),
        spending: vec![Txid::from_raw_hash(bitcoin::hashes::Hash::all_zeros())],
        ..EscrowView::default()
    };
    assert_eq!(
        e.observe("l2", spent_view, NOW).unwrap().state,
        LoanState::Active
    );
    let l2_before = e.loan("l2").unwrap();
    // $50,000: both at 100 %, a hard breach.
    let tick = e
        .price_tick(PriceEvidence::bare(usd(5_000_000)), NOW, 300, RATE)
        .unwrap();
    assert_eq!(tick.moved.len(), 1);
    assert_eq!(tick.moved[0].id, "l1");
    assert_eq!(tick.failed.len(), 1, "{:?}", tick.failed);
    assert_eq!(tick.failed[0].0, "l2");
    assert_eq!(e.loan("l2").unwrap(), l2_before);
    assert_eq!(e.loan("l1").unwrap().state, LoanState::Liquidating);

    let index_before = e.store().allocate_escrow_index().unwrap();
    assert!(matches!(
        accept(&w, &mut e, "l2"),
        Err(EngineError::Transition(TransitionError::Illegal { .. }))
    ));
    assert_eq!(e.store().allocate_escrow_index().unwrap(), index_before + 1);
}

/// Sent, then a crash before the broadcast was recorded, and the chain confirms it:
/// the loan's own decision, not a stranger's spend (it was closed on chain before).
#[test]
fn a_decided_transaction_confirmed_before_its_broadcast_was_recorded_is_ours() {
    let w = World::new();
    let mut e = w.engine();
    funded(&w, &mut e);
    for _ in 0..3 {
        e.price_tick(PriceEvidence::bare(usd(6_200_000)), NOW, 300, RATE)
            .unwrap();
    }
    let record = e.decision("l1").unwrap().expect("decided");
    let escrow = e.escrows()["l1"].clone();
    let mut theirs = record.psbt().unwrap();
    crate::tx::sign(&mut theirs, &w.lender, &escrow, &FeeCap::default(), &w.secp).unwrap();
    let txid = e.cosign("l1", &theirs).unwrap().compute_txid();
    drop(e);
    let mut e = w.engine();
    let view = EscrowView {
        depth: Default::default(),
        confirmed: vec![],
        spending: vec![txid],
        confirmed_spends: vec![ConfirmedSpend {
            txid,
            height: 301,
            path: "liquidation".into(),
        }],
    };
    let loan = e.observe("l1", view, NOW).unwrap();
    assert_eq!(loan.state, LoanState::Liquidated);
    assert_eq!(loan.broadcasts, vec![(TxKind::Liquidation, txid)]);
    assert_eq!(loan.confirmed_tx, Some((TxKind::Liquidation, txid)));
}

mod mass;
