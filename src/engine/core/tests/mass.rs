//! A crash breaching many loans in one tick: the decisions are made on every core and
//! stored in batches (see `engine::tick`); each must come out as one decided alone
//! would.

use super::*;

/// More than `tick::PARALLEL_FROM`: the parallel path.
const LOANS: usize = 40;
const _: () = assert!(LOANS > crate::engine::tick::PARALLEL_FROM);

#[test]
fn a_tick_breaching_many_loans_decides_and_stores_each_as_alone() {
    let w = World::new();
    let mut e = w.engine();
    let ids: Vec<String> = (0..LOANS).map(|i| format!("m{i:02}")).collect();
    for id in &ids {
        offered_and_accepted(&w, &mut e, id);
        let escrow = e.escrows()[id].clone();
        let view = EscrowView {
            confirmed: funding(&escrow, &[200_000_000]),
            ..EscrowView::default()
        };
        assert_eq!(e.observe(id, view, NOW).unwrap().state, LoanState::Active);
    }
    for _ in 0..2 {
        let tick = e
            .price_tick(PriceEvidence::bare(usd(6_200_000)), NOW, 300, RATE)
            .unwrap();
        assert_eq!(tick.moved.len(), LOANS);
    }
    let tick = e
        .price_tick(PriceEvidence::bare(usd(6_200_000)), NOW, 300, RATE)
        .unwrap();
    assert!(tick.failed.is_empty(), "{:?}", tick.failed);
    assert_eq!(tick.moved.len(), LOANS);
    let mut moved: Vec<&str> = tick.moved.iter().map(|l| l.id.as_str()).collect();
    moved.sort();
    assert_eq!(moved, ids.iter().map(String::as_str).collect::<Vec<_>>());

    // Durable, and each loan's decision is its own: reopened, every one is there.
    drop(e);
    let mut e = w.engine();
    let claim = (10_500_000u128 * 100_000_000).div_ceil(6_200_000) as u64;
    for id in &ids {
        let loan = e.loan(id).unwrap();
        assert_eq!(loan.state, LoanState::Liquidating, "{id}");
        assert_eq!(loan.decisions, 1, "{id}");
        let record = e.decision(id).unwrap().expect("decided");
        assert_eq!(record.decision.loan_id, *id);
        assert_eq!(record.progress, Progress::AwaitingCosignature);
        let psbt = record.psbt().unwrap();
        assert_eq!(psbt.unsigned_tx.output[0].value, Amount::from_sat(claim));
        let escrow = &e.escrows()[id];
        assert_eq!(
            psbt.inputs[0].witness_utxo.as_ref().unwrap().script_pubkey,
            escrow.script_pubkey(),
            "{id} spends its own escrow"
        );
        let decided = e
            .store()
            .events(id)
            .unwrap()
            .iter()
            .filter(|ev| matches!(ev.event, crate::loan::Event::LiquidationDecided { .. }))
            .count();
        assert_eq!(decided, 1, "{id}: one decision event");
    }
    // Each arbiter signature is good: the lender's co-signature finalizes it.
    for id in [&ids[0], &ids[LOANS - 1]] {
        let escrow = e.escrows()[id].clone();
        let mut theirs = e.decision(id).unwrap().unwrap().psbt().unwrap();
        crate::tx::sign(&mut theirs, &w.lender, &escrow, &FeeCap::default(), &w.secp).unwrap();
        e.cosign(id, &theirs).unwrap();
    }
}
