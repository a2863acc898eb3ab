//! Loan book costs: answering a price tick with the liquidation-price index versus a
//! full scan, for books of 10k, 100k and 1M active loans and ticks breaching 0, 10
//! and 1,000 of them; store transitions per second, durable and buffered; and the
//! search for a partial liquidation's smallest sale.

use std::hint::black_box;

use bitcoin::{Amount, Network};
use btc_escrow::loan::calc::{liquidation_price, Accrual};
use btc_escrow::loan::index::{IndexedLoan, LiquidationIndex};
use btc_escrow::loan::money::{Bps, Currency, Fiat, Price};
use btc_escrow::loan::{apply, Input, Loan, LoanState, LoanTerms, TermsInput};
use btc_escrow::store::{Durability, Store};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const NOW: u64 = 1_800_000_000;

fn usd() -> Currency {
    Currency::new("USD").expect("valid code")
}

fn book_loan(i: u64) -> IndexedLoan {
    IndexedLoan {
        accrual: Accrual::new(Fiat::new(5_000_000, usd()), Bps(1_000), NOW),
        // Distinct collateral, so distinct liquidation prices.
        collateral: Amount::from_sat(100_000_000 + i * 1_000),
        threshold: Bps(8_000),
    }
}

fn index_ticks(c: &mut Criterion) {
    let mut group = c.benchmark_group("price_tick");
    group.sample_size(10);
    for n in [10_000u64, 100_000, 1_000_000] {
        let mut index = LiquidationIndex::new(usd(), 86_400);
        for i in 0..n {
            index.upsert(&format!("loan-{i}"), book_loan(i), NOW);
        }
        for k in [0u64, 10, 1_000] {
            // Loan i's liquidation price falls with i: the price of loan k-1 breaches
            // exactly loans 0..k.
            let lp = |i: u64| {
                liquidation_price(5_000_000, book_loan(i).collateral, Bps(8_000))
                    .expect("owes money")
            };
            let price = Price::new(if k == 0 { lp(0) + 1 } else { lp(k - 1) }, usd());
            let found = index.breached(price, NOW).len() as u64;
            assert_eq!(found, k, "the tick must breach {k} loans");
            group.bench_with_input(BenchmarkId::new(format!("index/{n}"), k), &price, |b, p| {
                b.iter(|| black_box(index.breached(*p, NOW)))
            });
            group.bench_with_input(
                BenchmarkId::new(format!("full_scan/{n}"), k),
                &price,
                |b, p| b.iter(|| black_box(index.scan(*p, NOW))),
            );
        }
    }
    group.finish();
}

fn transitions(c: &mut Criterion) {
    let terms = LoanTerms::new(
        TermsInput {
            principal: Fiat::new(10_000_000, usd()),
            apr: Bps(1_000),
            term_secs: 86_400,
            initial_ltv: Bps(5_000),
            margin_call_ltv: Bps(7_000),
            liquidation_ltv: Bps(8_000),
            hard_liquidation_ltv: None,
            liquidation_penalty: Bps(500),
            hysteresis: Bps(200),
            confirm_ticks: 2,
            grace_blocks: 10,
            recovery_delay_blocks: 10,
            funding_deadline: NOW + 1_000,
            borrower_return_address:
                "bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85".into(),
            lender_payout_address:
                "bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85".into(),
            min_confirmations: 1,
            partial_liquidation: false,
            target_ltv: None,
            margin_call_levels: Vec::new(),
        },
        Network::Regtest,
        NOW,
    )
    .expect("valid terms");
    let mut group = c.benchmark_group("store_transition");
    for durability in [Durability::Buffered, Durability::Durable] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let offered = Loan::offered("bench", terms.clone());
        let (mut loan, events) = apply(
            &offered,
            &Input::Accepted {
                now: NOW,
                escrow_index: 0,
                descriptor: "wsh(x)".into(),
                required_collateral: Amount::ONE_BTC,
                schedule: terms.escrow_heights(100, NOW).expect("heights fit"),
            },
        )
        .expect("legal");
        store
            .insert_loan(&loan, &events, Durability::Durable)
            .expect("insert");
        group.bench_function(format!("{durability:?}"), |b| {
            b.iter(|| {
                let confirmed = if loan.state == LoanState::Active {
                    Amount::ZERO
                } else {
                    Amount::ONE_BTC
                };
                let (next, events) = apply(
                    &loan,
                    &Input::CollateralObserved {
                        now: NOW,
                        confirmed,
                        escrow_spent: false,
                    },
                )
                .expect("legal");
                store
                    .apply(loan.version, &next, &events, durability)
                    .expect("stored");
                loan = next;
            })
        });
    }
    group.finish();
}

/// The smallest partial sale restoring the target, for a loan just over the line and
/// one far over it (the search the engine runs per breached loan, and the co-signer
/// again).
fn partial_sales(c: &mut Criterion) {
    use btc_escrow::loan::partial::{partial_sale, Sale};
    let mut group = c.benchmark_group("partial_sale");
    for (name, ltv) in [("81pct", 8_100u64), ("93pct", 9_300)] {
        // $80,000-ish owed on 1 BTC at a price giving `ltv`.
        let owed = Fiat::new(8_000_000, usd());
        let price = Price::new(8_000_000 * 10_000 / ltv, usd());
        group.bench_function(name, |b| {
            b.iter(|| {
                let sale = partial_sale(
                    black_box(owed),
                    Amount::ONE_BTC,
                    black_box(price),
                    Bps(5_000),
                    Bps(500),
                    Amount::from_sat(500),
                    Amount::from_sat(330),
                )
                .expect("computes");
                assert!(matches!(sale, Sale::Partial(_)));
                sale
            })
        });
    }
    group.finish();
}

criterion_group!(benches, index_ticks, transitions, partial_sales);
criterion_main!(benches);
