use super::*;
use crate::engine::decision::tests::{at, setup};
use crate::loan::terms::tests::NOW;
use crate::loan::{apply, Event, Input, LoanState, TxKind};
use crate::store::{Durability, Store, StoreError};

const RATE: u64 = 2_000;

#[test]
fn the_arbiters_psbt_is_the_same_when_signed_again_from_the_stored_decision() {
    let (f, loan, inputs) = setup(&[200_000_000]);
    let d =
        Decision::liquidation(&loan, &f.escrow, inputs, &at(6_200_000), NOW, RATE, 250).unwrap();
    let cap = FeeCap::default();
    let record = DecisionRecord::sign(d.clone(), &f.escrow, &f.arbiter, &cap, &f.secp).unwrap();
    let stored: DecisionRecord =
        serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
    let again = DecisionRecord::sign(
        stored.decision.clone(),
        &f.escrow,
        &f.arbiter,
        &cap,
        &f.secp,
    )
    .unwrap();
    assert_eq!(
        again, record,
        "RFC 6979: the same decision signs to the same PSBT"
    );
}

#[test]
fn a_cosignature_finalizes_the_decided_transaction_and_nothing_else() {
    let (f, loan, inputs) = setup(&[150_000_000, 50_000_000]);
    let cap = FeeCap::default();
    let d = Decision::liquidation(
        &loan,
        &f.escrow,
        inputs.clone(),
        &at(6_200_000),
        NOW,
        RATE,
        250,
    )
    .unwrap();
    let record = DecisionRecord::sign(d.clone(), &f.escrow, &f.arbiter, &cap, &f.secp).unwrap();
    // The lender signs its copy (what the co-signer or the API client does).
    let mut theirs = record.psbt().unwrap();
    crate::tx::sign(&mut theirs, &f.lender, &f.escrow, &cap, &f.secp).unwrap();
    let (done, tx) = record.cosign(&theirs, &f.secp).unwrap();
    assert_eq!(tx.output, d.transaction(&f.escrow).unwrap().output);
    assert!(matches!(done.progress, Progress::Finalized { txid, .. } if txid == tx.compute_txid()));
    // Once finalized, no second co-signature is taken.
    assert!(matches!(
        done.cosign(&theirs, &f.secp),
        Err(RecordError::NotAwaiting { .. })
    ));
    // A co-signed PSBT of another decision (another price) is refused.
    let other =
        Decision::liquidation(&loan, &f.escrow, inputs, &at(5_000_000), NOW, RATE, 250).unwrap();
    let mut wrong = other.unsigned(&f.escrow).unwrap().psbt;
    crate::tx::sign(&mut wrong, &f.lender, &f.escrow, &cap, &f.secp).unwrap();
    assert!(matches!(
        record.cosign(&wrong, &f.secp),
        Err(RecordError::Cosignature(MergeError::TxDiffers(_)))
    ));
}

#[test]
fn a_decision_is_stored_with_its_transition_or_not_at_all() {
    let (f, loan, inputs) = setup(&[200_000_000]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // The active loan, stored as the engine would have it.
    let mut stored_loan = loan.clone();
    stored_loan.version = 0;
    stored_loan.event_count = 0;
    store
        .insert_loan(&stored_loan, &[], Durability::Durable)
        .unwrap();
    let tick = Input::PriceTick {
        now: NOW,
        seq: 1,
        price: Some(at(5_000_000)),
    };
    let (liquidating, events) = apply(&stored_loan, &tick).unwrap();
    assert_eq!(liquidating.state, LoanState::Liquidating);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::LiquidationDecided { .. })));
    let d = Decision::liquidation(
        &stored_loan,
        &f.escrow,
        inputs,
        &at(5_000_000),
        NOW,
        RATE,
        250,
    )
    .unwrap();
    let record =
        DecisionRecord::sign(d, &f.escrow, &f.arbiter, &FeeCap::default(), &f.secp).unwrap();
    let key = record.store_key();
    // A stale version: neither the transition nor the decision is written.
    let err = store
        .apply_with_decision(
            stored_loan.version + 7,
            &liquidating,
            &events,
            &key,
            &record,
            Durability::Durable,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }), "{err}");
    assert_eq!(store.decision::<DecisionRecord>(&key).unwrap(), None);
    store
        .apply_with_decision(
            stored_loan.version,
            &liquidating,
            &events,
            &key,
            &record,
            Durability::Durable,
        )
        .unwrap();
    store.close().unwrap();
    // After a restart both are there.
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.loan("l1").unwrap().unwrap().state,
        LoanState::Liquidating
    );
    let back: DecisionRecord = store.decision(&key).unwrap().unwrap();
    assert_eq!(back, record);
    assert_eq!(back.decision.tx_kind(), TxKind::Liquidation);
    let listed: Vec<(String, DecisionRecord)> = store.decisions("l1/").unwrap();
    assert_eq!(listed.len(), 1);
}
