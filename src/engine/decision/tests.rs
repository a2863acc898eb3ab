use super::*;
use crate::loan::money::Currency;
use crate::loan::terms::tests::{terms, NOW};
use crate::loan::{apply, Input, LoanState, Price};
use crate::tx::tests::{fixture, funding, Fixture};
use crate::tx::FeeCap;

const RATE: u64 = 2_000; // sat/kvB

/// Principal $100,000 (10^7 cents), 5 % penalty; the fixture's escrow holds `sats`.
pub(crate) fn setup(sats: &[u64]) -> (Fixture, Loan, Vec<EscrowInput>) {
    let f = fixture();
    let inputs = funding(&f.escrow, sats);
    let total: u64 = sats.iter().sum();
    let loan = Loan::offered("l1", terms());
    let (loan, _) = apply(
        &loan,
        &Input::Accepted {
            now: NOW,
            escrow_index: 7,
            descriptor: f.escrow.to_string(),
            required_collateral: Amount::from_sat(total),
            schedule: terms().escrow_heights(100, NOW).unwrap(),
        },
    )
    .unwrap();
    let (loan, _) = apply(
        &loan,
        &Input::CollateralObserved {
            now: NOW,
            confirmed: Amount::from_sat(total),
            escrow_spent: false,
        },
    )
    .unwrap();
    assert_eq!(loan.state, LoanState::Active);
    (f, loan, inputs)
}

pub(crate) fn at(minor_per_btc: u64) -> PriceEvidence {
    PriceEvidence::bare(Price::new(minor_per_btc, Currency::new("USD").unwrap()))
}

fn lender(loan: &Loan) -> ScriptBuf {
    loan.terms.lender_payout_address().script_pubkey()
}

fn borrower(loan: &Loan) -> ScriptBuf {
    loan.terms.borrower_return_address().script_pubkey()
}

#[test]
fn a_liquidation_pays_the_lender_what_is_owed_plus_the_penalty_rounded_up() {
    let (f, loan, inputs) = setup(&[150_000_000, 50_000_000]);
    let d =
        Decision::liquidation(&loan, &f.escrow, inputs, &at(6_200_000), NOW, RATE, 250).unwrap();
    let tx = d.transaction(&f.escrow).unwrap();
    // Independently: $105,000 at $62,000/BTC = 1.693548387... BTC, rounded up.
    let claim = (10_500_000u128 * 100_000_000).div_ceil(6_200_000) as u64;
    assert_eq!(claim, 169_354_839);
    assert_eq!(tx.output.len(), 2);
    assert_eq!(tx.output[0].script_pubkey, lender(&loan));
    assert_eq!(tx.output[0].value, Amount::from_sat(claim));
    assert_eq!(tx.output[1].script_pubkey, borrower(&loan));
    assert_eq!(
        tx.output[1].value,
        Amount::from_sat(200_000_000 - claim) - d.fee,
        "the fee comes from the borrower's share"
    );
    let DecisionKind::Liquidation { split, owed, .. } = &d.kind else {
        panic!("{:?}", d.kind)
    };
    assert_eq!(owed.minor, 10_000_000);
    assert_eq!(
        split.lender + split.borrower + split.fee,
        Amount::from_sat(200_000_000)
    );
    assert_eq!(tx.lock_time.to_consensus_u32(), 250);
    // The fee covers the signed size at the decided rate.
    let built = d.unsigned(&f.escrow).unwrap();
    let min_fee = fee_rate(RATE).unwrap().fee_wu(built.max_weight).unwrap();
    assert!(d.fee >= min_fee, "{} < {min_fee}", d.fee);
}

#[test]
fn underwater_or_dust_left_goes_all_to_the_lender_in_one_output() {
    // $40,000/BTC: $105,000 is more than the 2 BTC hold.
    let (f, loan, inputs) = setup(&[200_000_000]);
    let d = Decision::liquidation(
        &loan,
        &f.escrow,
        inputs.clone(),
        &at(4_000_000),
        NOW,
        RATE,
        250,
    )
    .unwrap();
    let tx = d.transaction(&f.escrow).unwrap();
    assert_eq!(tx.output.len(), 1);
    assert_eq!(tx.output[0].script_pubkey, lender(&loan));
    assert_eq!(tx.output[0].value, Amount::from_sat(200_000_000) - d.fee);
    // A price at which the borrower would keep less than dust: to the lender too.
    // $105,000 = 1.99999 BTC at $52,500.0263/BTC: take the price leaving ~100 sats.
    let price = (10_500_000u128 * 100_000_000).div_ceil(199_999_900) as u64;
    let d = Decision::liquidation(&loan, &f.escrow, inputs, &at(price), NOW, RATE, 250).unwrap();
    let tx = d.transaction(&f.escrow).unwrap();
    assert_eq!(tx.output.len(), 1, "{:?}", d.kind);
    assert_eq!(tx.output[0].script_pubkey, lender(&loan));
}

#[test]
fn a_release_pays_everything_back_minus_the_fee() {
    let (f, loan, inputs) = setup(&[120_000_000, 80_000_000]);
    for refund in [false, true] {
        let d = Decision::release(&loan, &f.escrow, inputs.clone(), RATE, 300, refund).unwrap();
        let tx = d.transaction(&f.escrow).unwrap();
        assert_eq!(tx.output.len(), 1);
        assert_eq!(tx.output[0].script_pubkey, borrower(&loan));
        assert_eq!(tx.output[0].value, Amount::from_sat(200_000_000) - d.fee);
        assert_eq!(tx.input.len(), 2);
        assert_eq!(
            d.tx_kind(),
            if refund {
                TxKind::Refund
            } else {
                TxKind::Release
            }
        );
    }
    assert!(matches!(
        Decision::release(&loan, &f.escrow, vec![], RATE, 300, false),
        Err(DecisionError::NoInputs { .. })
    ));
}

#[test]
fn a_stored_decision_rebuilds_the_same_transaction_and_the_arbiter_signs_only_it() {
    let (f, loan, inputs) = setup(&[200_000_000]);
    let d =
        Decision::liquidation(&loan, &f.escrow, inputs, &at(6_200_000), NOW, RATE, 250).unwrap();
    let stored = serde_json::to_string(&d).unwrap();
    let back: Decision = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, d);
    let tx = d.transaction(&f.escrow).unwrap();
    assert_eq!(back.transaction(&f.escrow).unwrap(), tx);
    let decision = crate::tx::SpendDecision {
        tx: back.transaction(&f.escrow).unwrap(),
    };
    let mut psbt = d.unsigned(&f.escrow).unwrap().psbt;
    let n = crate::tx::sign_decision(
        &mut psbt,
        &f.arbiter,
        &f.escrow,
        &decision,
        &FeeCap::default(),
        &f.secp,
    )
    .unwrap();
    assert_eq!(n, 1);
    // Another decision's transaction (a later price) is refused.
    let other = Decision::liquidation(
        &loan,
        &f.escrow,
        d.inputs.clone(),
        &at(6_000_000),
        NOW,
        RATE,
        250,
    )
    .unwrap();
    let mut psbt = other.unsigned(&f.escrow).unwrap().psbt;
    assert!(crate::tx::sign_decision(
        &mut psbt,
        &f.arbiter,
        &f.escrow,
        &decision,
        &FeeCap::default(),
        &f.secp
    )
    .is_err());
}

#[test]
fn a_fee_bump_takes_from_the_borrower_and_keeps_the_lenders_payment() {
    let (f, loan, inputs) = setup(&[200_000_000]);
    let d =
        Decision::liquidation(&loan, &f.escrow, inputs, &at(6_200_000), NOW, RATE, 250).unwrap();
    // Interest accrues meanwhile; the bump keeps the decided amount owed.
    let bumped = d.bumped(&loan, &f.escrow, RATE * 3).unwrap();
    assert_eq!(bumped.attempt, 1);
    assert!(bumped.fee > d.fee);
    let (a, b) = (
        d.transaction(&f.escrow).unwrap(),
        bumped.transaction(&f.escrow).unwrap(),
    );
    assert_eq!(
        a.input, b.input,
        "an RBF replacement spends the same inputs"
    );
    assert_eq!(
        a.output[0], b.output[0],
        "the lender's payment is unchanged"
    );
    assert_eq!(a.output[1].value - b.output[1].value, bumped.fee - d.fee);
}

#[test]
fn the_fee_rate_rounds_up_to_whole_sat_per_kwu() {
    // 1,001 sat/kvB = 250.25 sat/kwu: 251, never below the rate decided; zero is refused.
    assert_eq!(fee_rate(1_001).unwrap(), FeeRate::from_sat_per_kwu(251));
    assert_eq!(fee_rate(1_000).unwrap(), FeeRate::from_sat_per_kwu(250));
    assert!(matches!(fee_rate(0), Err(DecisionError::FeeRate { .. })));
}
