use super::codec::event_key;
use super::*;
use crate::loan::terms::tests::{terms, NOW};
use crate::loan::{apply, Input};
use bitcoin::Amount;

fn accepted() -> (Loan, Vec<Event>) {
    let loan = Loan::offered("loan-1", terms());
    apply(
        &loan,
        &Input::Accepted {
            now: NOW,
            escrow_index: 0,
            descriptor: "wsh(x)".into(),
            required_collateral: Amount::ONE_BTC,
            schedule: terms().escrow_heights(100, NOW).expect("heights fit"),
        },
    )
    .unwrap()
}

#[test]
fn every_record_kind_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let offered = Loan::offered("loan-1", terms());
        store
            .insert_loan(&offered, &[], Durability::Buffered)
            .unwrap();
        let (next, events) = accepted();
        store.apply(0, &next, &events, Durability::Durable).unwrap();
        store
            .put_party(
                "lender-1",
                &serde_json::json!({"xpub": "tpub..."}),
                Durability::Buffered,
            )
            .unwrap();
        store
            .put_token(
                "hash-of-token",
                &serde_json::json!({"party": "lender-1", "role": "lender"}),
                Durability::Buffered,
            )
            .unwrap();
        store
            .put_psbt("loan-1", "liquidation", "cHNidP8BAA==", Durability::Durable)
            .unwrap();
        assert_eq!(store.allocate_escrow_index().unwrap(), 0);
        assert_eq!(store.allocate_escrow_index().unwrap(), 1);
    }
    let store = Store::open(dir.path()).unwrap();
    let (next, _) = accepted();
    assert_eq!(store.loan("loan-1").unwrap(), Some(next));
    assert_eq!(store.loans().unwrap().len(), 1);
    let events = store.events("loan-1").unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].loan_seq, events[0].global_seq), (0, 1));
    let party: serde_json::Value = store.party("lender-1").unwrap().unwrap();
    assert_eq!(party["xpub"], "tpub...");
    let token: serde_json::Value = store.token("hash-of-token").unwrap().unwrap();
    assert_eq!(token["role"], "lender");
    assert_eq!(
        store.psbt("loan-1", "liquidation").unwrap().as_deref(),
        Some("cHNidP8BAA==")
    );
    assert_eq!(
        store.allocate_escrow_index().unwrap(),
        2,
        "indexes continue after a reopen"
    );
}

#[test]
fn a_stale_version_is_a_conflict_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .insert_loan(&Loan::offered("loan-1", terms()), &[], Durability::Buffered)
        .unwrap();
    let (next, events) = accepted();
    store
        .apply(0, &next, &events, Durability::Buffered)
        .unwrap();
    let err = store
        .apply(0, &next, &events, Durability::Buffered)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::VersionConflict {
                expected: 0,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store.events("loan-1").unwrap().len(),
        1,
        "no duplicate events"
    );
    assert!(matches!(
        store.insert_loan(&Loan::offered("loan-1", terms()), &[], Durability::Buffered),
        Err(StoreError::Exists { .. })
    ));
    assert!(matches!(
        store.insert_loan(
            &Loan::offered("bad id!", terms()),
            &[],
            Durability::Buffered
        ),
        Err(StoreError::BadId(_))
    ));
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path())
        .unwrap()
        .put_raw_schema(SCHEMA_VERSION + 1)
        .unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::FutureSchema { found } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
}

#[test]
fn a_value_from_a_newer_version_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_raw_loan(
            "loan-9",
            br#"{"v": 2, "data": {"id": "loan-9", "state": "something_new"}}"#,
        )
        .unwrap();
    let err = store.loan("loan-9").unwrap_err();
    assert!(
        matches!(err, StoreError::FutureValue { found: 2, .. }),
        "{err}"
    );
}

#[test]
fn a_write_that_does_not_append_exactly_its_events_is_refused() {
    // The old store overwrote the last event when a transition returned events without
    // bumping event_count; now the count and the version are checked in the transaction.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .insert_loan(&Loan::offered("loan-1", terms()), &[], Durability::Buffered)
        .unwrap();
    let (next, events) = accepted();
    store
        .apply(0, &next, &events, Durability::Buffered)
        .unwrap();
    let extra = [Event::Expired];
    // Same event_count with one more event: would overwrite event 0.
    let mut same_count = next.clone();
    same_count.version += 1;
    let err = store
        .apply(1, &same_count, &extra, Durability::Buffered)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::EventCountMismatch {
                stored: 1,
                appended: 1,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
    // Version not bumped.
    let mut not_bumped = next.clone();
    not_bumped.event_count += 1;
    let err = store
        .apply(1, &not_bumped, &extra, Durability::Buffered)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::VersionNotBumped {
                stored: 1,
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
    // A new loan's event_count must equal its events.
    let mut odd = Loan::offered("loan-2", terms());
    odd.event_count = 3;
    assert!(matches!(
        store.insert_loan(&odd, &[], Durability::Buffered),
        Err(StoreError::EventCountMismatch { .. })
    ));
    let stored = store.events("loan-1").unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].event, events[0], "the first event is untouched");
    assert_eq!(store.loan("loan-1").unwrap(), Some(next));
}

#[test]
fn a_corrupt_counter_is_an_error_not_zero() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.allocate_escrow_index().unwrap(), 0);
    store
        .meta
        .insert(META_NEXT_INDEX, &[1u8, 2, 3][..])
        .unwrap();
    let err = store.allocate_escrow_index().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { key, .. } if key == "next_escrow_index"),
        "{err}"
    );
    store.meta.insert(META_EVENT_SEQ, &[9u8][..]).unwrap();
    let err = store
        .insert_loan(&Loan::offered("loan-1", terms()), &[], Durability::Buffered)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { key, .. } if key == "event_seq"),
        "{err}"
    );
}

#[test]
fn reopening_waits_for_the_lock_and_names_a_holder_that_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Held: a short wait fails and names this process.
    let err = Store::open_waiting(dir.path(), Duration::from_millis(50)).unwrap_err();
    assert!(
        matches!(&err, StoreError::Locked { holder, .. } if holder.contains(&std::process::id().to_string())),
        "{err}"
    );
    // Released a moment later: open waits for it instead of failing with WouldBlock.
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        store.close().unwrap();
    });
    let reopened = Store::open(dir.path()).unwrap();
    closer.join().unwrap();
    assert_eq!(reopened.allocate_escrow_index().unwrap(), 0);
}

#[test]
fn the_price_sequence_only_grows_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.allocate_price_seq().unwrap(), 1);
    assert_eq!(store.allocate_price_seq().unwrap(), 2);
    store.close().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.allocate_price_seq().unwrap(), 3);
    assert_eq!(
        store.allocate_escrow_index().unwrap(),
        0,
        "counters are separate"
    );
}

#[test]
fn an_event_already_stored_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .insert_loan(&Loan::offered("loan-1", terms()), &[], Durability::Buffered)
        .unwrap();
    let (next, events) = accepted();
    // An event at seq 0 already there (say, left by a bug elsewhere): refused.
    store
        .events
        .insert(event_key("loan-1", 0), b"{}".to_vec())
        .unwrap();
    let err = store
        .apply(0, &next, &events, Durability::Buffered)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::EventExists { seq: 0, .. }),
        "{err}"
    );
    assert_eq!(store.loan("loan-1").unwrap().unwrap().version, 0);
}

/// A process killed while sled writes a snapshot leaves `snap.<lsn>.generating`, which
/// sled 0.34 then takes for the latest snapshot and refuses as corrupt. The store
/// removes it (nothing else holds the database) and opens with every record.
#[test]
fn a_partial_snapshot_left_by_a_crash_is_removed_and_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let offered = Loan::offered("loan-1", terms());
        store
            .insert_loan(&offered, &[], Durability::Durable)
            .unwrap();
        store.close().unwrap();
    }
    let partial = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&partial, b"half a snapshot").unwrap();
    let alone = sled::open(dir.path()).map(|_| ());
    assert!(
        matches!(alone, Err(sled::Error::Corruption { at: None, .. })),
        "sled alone refuses it: {alone:?}"
    );
    let store = Store::open(dir.path()).unwrap();
    assert!(store.loan("loan-1").unwrap().is_some());
    assert!(!partial.exists());
}

#[test]
fn a_buffered_write_is_unsettled_until_a_flush_covers_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reader = store.clone();
    assert!(reader.is_settled(), "a fresh store has nothing pending");
    store
        .insert_loan(&Loan::offered("loan-1", terms()), &[], Durability::Buffered)
        .unwrap();
    assert!(
        !reader.is_settled(),
        "a buffered write is pending for every clone"
    );
    reader.settle().unwrap();
    assert!(store.is_settled());
    let (next, events) = accepted();
    store.apply(0, &next, &events, Durability::Durable).unwrap();
    assert!(reader.is_settled(), "a durable write settles itself");
    store.allocate_price_seq().unwrap();
    assert!(!reader.is_settled(), "a buffered counter is pending too");
    store.flush().unwrap();
    assert!(reader.is_settled());
}

#[test]
fn prepared_decisions_are_written_all_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (accepted_1, events) = accepted();
    let mut offered_2 = Loan::offered("loan-2", terms());
    offered_2.version = 0;
    for loan in [Loan::offered("loan-1", terms()), offered_2.clone()] {
        store.insert_loan(&loan, &[], Durability::Buffered).unwrap();
    }
    let accepted_2 = Loan {
        id: "loan-2".into(),
        ..accepted_1.clone()
    };
    let prepared = |loan: &Loan, before: u64, key: &str| {
        PreparedDecision::new(
            before,
            loan.clone(),
            events.clone(),
            key.into(),
            &serde_json::json!({"decision": key}),
        )
    };
    // The second is stale (its loan is at version 0, not 5): neither is written.
    let batch = [
        prepared(&accepted_1, 0, "loan-1/d"),
        prepared(&accepted_2, 5, "loan-2/d"),
    ];
    assert!(matches!(
        store.apply_prepared(&batch, Durability::Durable),
        Err(StoreError::VersionConflict { .. })
    ));
    assert_eq!(store.loan("loan-1").unwrap().unwrap().version, 0);
    assert!(store.events("loan-1").unwrap().is_empty());
    assert!(store
        .decision::<serde_json::Value>("loan-1/d")
        .unwrap()
        .is_none());
    // Both good: both written, each with its events and its decision.
    let batch = [
        prepared(&accepted_1, 0, "loan-1/d"),
        prepared(&accepted_2, 0, "loan-2/d"),
    ];
    store.apply_prepared(&batch, Durability::Durable).unwrap();
    for id in ["loan-1", "loan-2"] {
        assert_eq!(store.loan(id).unwrap().unwrap().version, 1);
        assert_eq!(store.events(id).unwrap().len(), events.len());
        let d: serde_json::Value = store.decision(&format!("{id}/d")).unwrap().unwrap();
        assert_eq!(d["decision"], format!("{id}/d"));
    }
    let globals: Vec<u64> = ["loan-1", "loan-2"]
        .iter()
        .flat_map(|id| store.events(id).unwrap())
        .map(|e| e.global_seq)
        .collect();
    assert_eq!(globals, [1, 2], "one global sequence across the batch");
}
