//! From the tick that confirms a breach to the liquidation in bitcoind's mempool, on
//! regtest, through the real `serve` process and its API: the price that makes the
//! third consecutive breach tick is set (the oracle ticks at once), the engine decides
//! and arbiter-signs, the lender (this program, as the co-signer would) fetches the
//! PSBT, checks and signs it with its own key, posts it, and the service broadcasts.
//! Prints each run and the median. Needs the regtest binaries (`regtest/setup`).
//!
//! `cargo bench --bench breach_to_broadcast` (BTC_ESCROW_BENCH_RUNS, default 5)

#[path = "../tests/common/mod.rs"]
mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::serve::Market;

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("BTC_ESCROW_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut m = Market::open()?;
    let mut times = Vec::new();
    for run in 0..runs {
        m.set_price(10_000_000)?;
        let id = m.active()?;
        let path = format!("/loans/{id}");
        // Two breach ticks at $62,000 (LTV 80.6 %): one short of the decision.
        for want in 1..=2u64 {
            m.set_price(6_200_000)?;
            m.api().wait(&path, &m.lender, "a breach tick", |v| {
                v["breach_ticks"].as_u64().is_some_and(|t| t >= want)
            })?;
        }
        let t0 = Instant::now();
        m.set_price(6_190_000)?;
        let decided = m.api().wait_every(
            Duration::from_millis(2),
            &path,
            &m.lender,
            "the decision",
            |v| v["pending_psbt"].is_object(),
        )?;
        let t_decided = t0.elapsed();
        anyhow::ensure!(decided["state"] == "liquidating", "{decided}");
        let (_, signed) = m.lender_signs(&id)?;
        let sent = m.post_psbt(&id, &signed)?;
        let txid = bitcoin::Txid::from_str(sent["txid"].as_str().context("txid")?)?;
        while !m.env.mempool_contains(txid)? {
            std::thread::sleep(Duration::from_millis(5));
        }
        let total = t0.elapsed();
        println!(
            "run {run}: breach tick -> decision visible {:>7.1} ms, -> broadcast (in the mempool) {:>7.1} ms",
            t_decided.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
        times.push(total);
        m.env.mine(1)?;
        m.api().wait(&path, &m.borrower, "liquidated", |v| {
            v["state"] == "liquidated"
        })?;
    }
    times.sort();
    println!(
        "breach tick -> broadcast on regtest, median of {runs}: {:.1} ms",
        times[times.len() / 2].as_secs_f64() * 1e3
    );
    println!(
        "figure: breach_to_broadcast = {:.1} ms",
        times[times.len() / 2].as_secs_f64() * 1e3
    );
    Ok(())
}
