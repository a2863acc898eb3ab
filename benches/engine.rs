//! The engine's costs, as a bench binary that prints its figures (one line each, the
//! median of several rounds):
//! - a price tick over a book of N active loans (default 100,000; set
//!   BTC_ESCROW_BENCH_LOANS=1000000 for the million) that moves 0, 10 and 1,000 of
//!   them into margin call (read, applied, written, and flushed once per tick),
//!   through the real engine and store;
//! - 1,000 liquidation decisions computed, their PSBTs built and arbiter-signed;
//! - a mass breach: one tick liquidating 10,000 loans (BTC_ESCROW_BENCH_BREACHED)
//!   among the book, each with its real escrow and chain view: every decision built,
//!   arbiter-signed and stored with its transition, flushed once.
//!
//! `cargo bench --bench engine`

use std::time::{Duration, Instant};

use bitcoin::secp256k1::Secp256k1;
use bitcoin::{Amount, Network, OutPoint, Transaction, TxIn, TxOut};
use btc_escrow::engine::{
    Decision, DecisionRecord, Engine, EngineConfig, EscrowRecord, EscrowView,
};
use btc_escrow::keys::{account_path, AccountKey, ArbiterKey, SigningKey};
use btc_escrow::loan::calc::liquidation_price;
use btc_escrow::loan::{
    apply, Bps, Currency, Fiat, Input, Loan, LoanTerms, Price, PriceEvidence, TermsInput,
};
use btc_escrow::policy::{EscrowHeights, EscrowKeys, PolicyTemplate};
use btc_escrow::store::{Durability, Store};
use btc_escrow::tx::{self, EscrowInput, FeeCap};

const NOW: u64 = 1_800_000_000;
const OWED: u64 = 10_000_000; // $100,000
const MARGIN_CALL: Bps = Bps(7_000);

fn usd(minor: u64) -> Price {
    Price::new(minor, Currency::new("USD").expect("USD"))
}

fn terms() -> LoanTerms {
    LoanTerms::new(
        TermsInput {
            principal: Fiat::new(OWED, Currency::new("USD").expect("USD")),
            apr: Bps(0),
            term_secs: 90 * 86_400,
            initial_ltv: Bps(5_000),
            margin_call_ltv: MARGIN_CALL,
            liquidation_ltv: Bps(8_000),
            hard_liquidation_ltv: None,
            liquidation_penalty: Bps(500),
            hysteresis: Bps(200),
            confirm_ticks: 3,
            grace_blocks: 144,
            recovery_delay_blocks: 1_000,
            funding_deadline: NOW + 86_400,
            borrower_return_address:
                "bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85".into(),
            lender_payout_address: "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080".into(),
            min_confirmations: 1,
            partial_liquidation: false,
            target_ltv: None,
            margin_call_levels: Vec::new(),
        },
        Network::Regtest,
        NOW,
    )
    .expect("valid terms")
}

/// Loan i holds 2 BTC + i × 2,000 sats: the more i, the safer.
fn collateral(i: u64) -> Amount {
    Amount::from_sat(200_000_000 + i * 2_000)
}

fn active(i: u64, terms: &LoanTerms) -> Loan {
    let id = format!("loan-{i:07}");
    let (loan, _) = apply(
        &Loan::offered(&id, terms.clone()),
        &Input::Accepted {
            now: NOW,
            escrow_index: i as u32,
            descriptor: "wsh(bench)".into(),
            required_collateral: collateral(i),
            schedule: terms.escrow_heights(100, NOW).expect("heights"),
        },
    )
    .expect("accept");
    let (mut loan, _) = apply(
        &loan,
        &Input::CollateralObserved {
            now: NOW,
            confirmed: collateral(i),
            escrow_spent: false,
        },
    )
    .expect("activate");
    // Stored as a fresh record (the bench does not replay the first events).
    loan.version = 0;
    loan.event_count = 0;
    loan
}

/// A stand-in deposit paying `value` to `spk` (no chain is needed for what is measured).
fn deposit(spk: bitcoin::ScriptBuf, value: Amount) -> Transaction {
    Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value,
            script_pubkey: spk,
        }],
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn config() -> EngineConfig {
    EngineConfig {
        network: Network::Regtest,
        min_confirmations: 1,
        min_confirm_ticks: 1,
        fee_cap: FeeCap::default(),
        template: PolicyTemplate::default(),
    }
}

fn ticks() {
    let n: u64 = std::env::var("BTC_ESCROW_BENCH_LOANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    ArbiterKey::create(dir.path(), Network::Regtest).expect("key");
    let store = Store::open(&dir.path().join("db")).expect("store");
    let t = terms();
    let started = Instant::now();
    for i in 0..n {
        store
            .insert_loan(&active(i, &t), &[], Durability::Buffered)
            .expect("insert");
    }
    store.flush().expect("flush");
    let filled = started.elapsed();
    let opened = Instant::now();
    let arbiter = ArbiterKey::load(dir.path(), Network::Regtest).expect("key");
    let mut engine = Engine::open(store, arbiter, config()).expect("engine");
    println!(
        "book: {n} active loans stored in {:.1} s; engine opened (book rebuilt) in {:.2} s",
        filled.as_secs_f64(),
        opened.elapsed().as_secs_f64()
    );
    // Let sled's background writer finish with the fill before measuring.
    engine.store().flush().expect("flush");
    std::thread::sleep(Duration::from_secs(10));
    for k in [0u64, 10, 1_000] {
        // The price at which exactly loans 0..k reach their margin-call LTV.
        let lp = |i: u64| liquidation_price(OWED, collateral(i), MARGIN_CALL).expect("owes");
        let down = if k == 0 { lp(0) + 1 } else { lp(k - 1) };
        let mut times = Vec::new();
        for _ in 0..7 {
            let t0 = Instant::now();
            let out = engine
                .price_tick(PriceEvidence::bare(usd(down)), NOW, 200, 2_000)
                .expect("tick");
            times.push(t0.elapsed());
            assert_eq!(out.moved.len() as u64, k, "the tick must move {k} loans");
            // Back up: clears the margin calls (not measured).
            engine
                .price_tick(PriceEvidence::bare(usd(20_000_000)), NOW, 200, 2_000)
                .expect("tick");
        }
        println!(
            "engine tick over {n} loans moving {k:>5} into margin call (durable writes): {:>10.3} ms",
            median(times.clone()).as_secs_f64() * 1e3
        );
        println!(
            "figure: tick_{k} = {:.3} ms",
            median(times).as_secs_f64() * 1e3
        );
    }
}

fn decisions() {
    let secp = Secp256k1::new();
    let key = |seed: u8| {
        let m = bitcoin::bip32::Xpriv::new_master(Network::Regtest, &[seed; 32]).expect("key");
        SigningKey::parse(&m.to_string(), Network::Regtest).expect("key")
    };
    let (b, l, a) = (key(1), key(2), key(3));
    let account = |k: &SigningKey| {
        AccountKey::from_master(
            k.master(),
            &account_path(Network::Regtest, 0).expect("account"),
            &secp,
        )
        .expect("account")
    };
    let escrow = PolicyTemplate::default()
        .instantiate(
            &EscrowKeys {
                borrower: account(&b),
                lender: account(&l),
                arbiter: account(&a),
                index: 0,
            },
            EscrowHeights::new(1_000, 2_000, 100).expect("heights"),
            Network::Regtest,
        )
        .expect("escrow");
    let prev = deposit(escrow.script_pubkey(), collateral(0));
    let inputs = vec![EscrowInput {
        outpoint: OutPoint::new(prev.compute_txid(), 0),
        prev_tx: prev,
    }];
    let loan = {
        let mut l = active(0, &terms());
        l.version = 2;
        l
    };
    let price = PriceEvidence::bare(usd(6_000_000));
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..1_000 {
            let d = Decision::liquidation(&loan, &escrow, inputs.clone(), &price, NOW, 2_000, 500)
                .expect("decision");
            std::hint::black_box(
                DecisionRecord::sign(d, &escrow, &a, &FeeCap::default(), &secp).expect("signed"),
            );
        }
        times.push(t0.elapsed());
    }
    println!(
        "1,000 liquidation decisions built and arbiter-signed: {:>10.1} ms ({:.0} us each)",
        median(times.clone()).as_secs_f64() * 1e3,
        median(times.clone()).as_secs_f64() * 1e3
    );
    println!(
        "figure: decisions_1000 = {:.1} ms",
        median(times).as_secs_f64() * 1e3
    );

    // The PSBT alone: built from the decision and arbiter-signed (its key derived
    // beforehand, as the engine does when it opens); then a co-signed copy verified,
    // merged and finalized.
    let cap = FeeCap::default();
    let d = Decision::liquidation(&loan, &escrow, inputs.clone(), &price, NOW, 2_000, 500)
        .expect("decision");
    let unsigned = d.unsigned(&escrow).expect("builds").psbt;
    let expected = tx::SpendDecision {
        tx: unsigned.unsigned_tx.clone(),
    };
    let per = |f: &mut dyn FnMut()| {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            for _ in 0..1_000 {
                f();
            }
            times.push(t0.elapsed() / 1_000);
        }
        median(times)
    };
    let build_sign = per(&mut || {
        let mut psbt = d.unsigned(&escrow).expect("builds").psbt;
        tx::sign_decision(&mut psbt, &a, &escrow, &expected, &cap, &secp).expect("signs");
        std::hint::black_box(psbt);
    });
    let mut ours = unsigned.clone();
    tx::sign_decision(&mut ours, &a, &escrow, &expected, &cap, &secp).expect("signs");
    // The lender signs the arbiter-signed PSBT the API shows it (as the co-signer does).
    let mut theirs = ours.clone();
    tx::sign(&mut theirs, &l, &escrow, &cap, &secp).expect("signs");
    let merge_finalize = per(&mut || {
        std::hint::black_box(tx::merge_and_finalize(&ours, &theirs, &secp).expect("merges"));
    });
    let ecdsa = {
        let sk = bitcoin::secp256k1::SecretKey::from_slice(&[7; 32]).expect("key");
        let msg = bitcoin::secp256k1::Message::from_digest([9; 32]);
        per(&mut || {
            std::hint::black_box(secp.sign_ecdsa(&msg, &sk));
        })
    };
    println!(
        "liquidation PSBT built and arbiter-signed: {:.1} us; co-signed copy verified, merged and finalized: {:.1} us; one ECDSA signature: {:.1} us",
        build_sign.as_secs_f64() * 1e6,
        merge_finalize.as_secs_f64() * 1e6,
        ecdsa.as_secs_f64() * 1e6
    );
    println!(
        "figure: psbt_build_sign = {:.1} us",
        build_sign.as_secs_f64() * 1e6
    );
    println!(
        "figure: merge_finalize = {:.1} us",
        merge_finalize.as_secs_f64() * 1e6
    );
    println!("figure: ecdsa_sign = {:.1} us", ecdsa.as_secs_f64() * 1e6);
    // The same breach under terms asking for a partial liquidation back to 50 %.
    let partial_terms = {
        let mut i = terms().get().clone();
        i.partial_liquidation = true;
        i.target_ltv = Some(Bps(5_000));
        LoanTerms::new(i, Network::Regtest, NOW).expect("valid terms")
    };
    let partial = {
        let mut l = active(0, &partial_terms);
        l.version = 2;
        l
    };
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..1_000 {
            let d = Decision::partial_liquidation(
                &partial,
                &escrow,
                inputs.clone(),
                &price,
                Bps(5_000),
                NOW,
                2_000,
                500,
            )
            .expect("decision")
            .expect("a partial sale");
            std::hint::black_box(
                DecisionRecord::sign(d, &escrow, &a, &FeeCap::default(), &secp).expect("signed"),
            );
        }
        times.push(t0.elapsed());
    }
    println!(
        "1,000 partial liquidation decisions built and arbiter-signed: {:>10.1} ms ({:.0} us each)",
        median(times.clone()).as_secs_f64() * 1e3,
        median(times).as_secs_f64() * 1e3
    );
}

fn env_count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One tick breaching `breached` loans of a book of `n` (see the module doc).
fn mass_breach() {
    let n = env_count("BTC_ESCROW_BENCH_LOANS", 100_000);
    let breached = env_count("BTC_ESCROW_BENCH_BREACHED", 10_000).min(n);
    let secp = Secp256k1::new();
    let account = |seed: u8| {
        let m = bitcoin::bip32::Xpriv::new_master(Network::Regtest, &[seed; 32]).expect("key");
        AccountKey::from_master(
            &m,
            &account_path(Network::Regtest, 0).expect("account"),
            &secp,
        )
        .expect("account")
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let arbiter = ArbiterKey::create(dir.path(), Network::Regtest).expect("key");
    let arbiter_account = arbiter.account(&secp).expect("account").to_string();
    let (borrower, lender) = (account(1).to_string(), account(2).to_string());
    let store = Store::open(&dir.path().join("db")).expect("store");
    // One confirming tick liquidates.
    let t = {
        let mut i = terms().get().clone();
        i.confirm_ticks = 1;
        LoanTerms::new(i, Network::Regtest, NOW).expect("valid terms")
    };
    let schedule = t.escrow_heights(100, NOW).expect("heights");
    let started = Instant::now();
    for i in 0..n {
        let mut loan = active(i, &t);
        if i >= breached {
            // The rest of the book is safe at any price the bench uses.
            loan.required_collateral = Amount::from_sat(2_000_000_000);
            loan.collateral = Amount::from_sat(2_000_000_000);
            store
                .insert_loan(&loan, &[], Durability::Buffered)
                .expect("insert");
            continue;
        }
        let record = EscrowRecord {
            borrower: borrower.clone(),
            lender: lender.clone(),
            arbiter: arbiter_account.clone(),
            index: i as u32,
            default_height: schedule.default_height,
            recovery_height: schedule.recovery_height,
            accepted_at_height: 100,
        };
        store
            .insert_loan(&loan, &[], Durability::Buffered)
            .expect("insert");
        loan.version = 1;
        store
            .apply_with_escrow(0, &loan, &[], &record, Durability::Buffered)
            .expect("escrow");
    }
    store.flush().expect("flush");
    let filled = started.elapsed();
    let opened = Instant::now();
    let mut engine = Engine::open(store, arbiter, config()).expect("engine");
    println!(
        "mass breach: book of {n} loans ({breached} with escrows) stored in {:.1} s, engine opened in {:.1} s",
        filled.as_secs_f64(),
        opened.elapsed().as_secs_f64()
    );
    for i in 0..breached {
        let id = format!("loan-{i:07}");
        let spk = engine.escrows()[&id].script_pubkey();
        let prev = deposit(spk, collateral(i));
        let view = EscrowView {
            confirmed: vec![EscrowInput {
                outpoint: OutPoint::new(prev.compute_txid(), 0),
                prev_tx: prev,
            }],
            ..EscrowView::default()
        };
        engine.observe(&id, view, NOW).expect("observed");
    }
    // The engine keyed its book at the real clock, and the bench's loans live at NOW:
    // a first tick there (moving nothing) re-keys the whole book, as the ticks of a
    // running service keep it keyed. Not the figure.
    let t0 = Instant::now();
    let out = engine
        .price_tick(PriceEvidence::bare(usd(20_000_000)), NOW, 200, 2_000)
        .expect("tick");
    assert!(out.moved.is_empty());
    println!(
        "mass breach: a first tick re-keying the book of {n} loans at the bench's clock: {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    engine.store().flush().expect("flush");
    std::thread::sleep(Duration::from_secs(5));
    // The price at which exactly loans 0..breached reach the liquidation LTV.
    let price = liquidation_price(OWED, collateral(breached - 1), Bps(8_000)).expect("owes");
    let t0 = Instant::now();
    let out = engine
        .price_tick(PriceEvidence::bare(usd(price)), NOW, 200, 2_000)
        .expect("tick");
    let took = t0.elapsed();
    assert!(
        out.failed.is_empty(),
        "{:?}",
        &out.failed[..out.failed.len().min(3)]
    );
    assert_eq!(
        out.moved.len() as u64,
        breached,
        "every breached loan decided"
    );
    assert!(out
        .moved
        .iter()
        .all(|l| l.state == btc_escrow::loan::LoanState::Liquidating && l.decisions == 1));
    println!(
        "mass breach: one tick over {n} loans liquidating {breached} (decided, built, arbiter-signed, stored, one flush): {:>8.1} ms",
        took.as_secs_f64() * 1e3
    );
    println!("figure: mass_breach = {:.1} ms", took.as_secs_f64() * 1e3);
}

/// One loan transition (the loan rewritten with one event) stored durably (flushed
/// each) and buffered.
fn store_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("db")).expect("store");
    let mut loan = active(0, &terms());
    store
        .insert_loan(&loan, &[], Durability::Durable)
        .expect("insert");
    let event = btc_escrow::loan::Event::BreachHeld {
        reason: "bench".into(),
        after_ticks: 0,
    };
    let mut step = |durability: Durability| {
        let before = loan.version;
        loan.version += 1;
        loan.event_count += 1;
        store
            .apply(before, &loan, std::slice::from_ref(&event), durability)
            .expect("stored");
    };
    for (name, durability, count) in [
        ("durable", Durability::Durable, 300u32),
        ("buffered", Durability::Buffered, 10_000),
    ] {
        let t0 = Instant::now();
        for _ in 0..count {
            step(durability);
        }
        let each = t0.elapsed() / count;
        println!(
            "store: one transition with its event, {name}: {:.1} us",
            each.as_secs_f64() * 1e6
        );
        println!("figure: store_{name} = {:.1} us", each.as_secs_f64() * 1e6);
    }
}

/// The allocator the service binary runs with (see `btc_escrow::alloc`).
#[global_allocator]
static ALLOCATOR: btc_escrow::alloc::Allocator = btc_escrow::alloc::ALLOCATOR;

fn main() {
    btc_escrow::alloc::configure();
    // `cargo bench` passes --bench; nothing else is taken.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    // BTC_ESCROW_BENCH_PARTS=decisions,store,mass_breach,ticks (default: all).
    let parts = std::env::var("BTC_ESCROW_BENCH_PARTS").unwrap_or_default();
    let wanted = |part: &str| parts.is_empty() || parts.split(',').any(|p| p == part);
    if wanted("decisions") {
        decisions();
    }
    if wanted("store") {
        store_writes();
    }
    if wanted("mass_breach") {
        mass_breach();
    }
    if wanted("ticks") {
        ticks();
    }
}
