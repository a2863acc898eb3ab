//! Watch 2,000 escrow scripts (`BTC_ESCROW_BENCH_ESCROWS` sets how many), each funded
//! once, on a local regtest electrs: time the first full sync, the incremental sync
//! after one new block, a restart from the cache the service stores (through a real
//! store), and (BTC_ESCROW_BENCH_UNBATCHED=1) the histories fetched one script per
//! request and batched. Prints its
//! figures (a bench binary, not criterion: each figure needs a fresh chain state).
//! Needs `regtest/setup`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use anyhow::Context;
use bitcoin::{Amount, FeeRate, Network};
use btc_escrow::chain::{ChainCache, Watcher, WatcherConfig};
use btc_escrow::store::Store;
use common::escrow::Parties;
use common::wallet::TestWallet;
use common::Regtest;
use electrum_client::ElectrumApi;

/// The allocator the service binary runs with (see `btc_escrow::alloc`).
#[global_allocator]
static ALLOCATOR: btc_escrow::alloc::Allocator = btc_escrow::alloc::ALLOCATOR;

fn main() -> anyhow::Result<()> {
    btc_escrow::alloc::configure();
    let escrows_wanted: usize = std::env::var("BTC_ESCROW_BENCH_ESCROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    #[allow(non_snake_case)]
    let ESCROWS = escrows_wanted;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let env = Regtest::start()?;
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 5 + (ESCROWS / 20_000) as u32)?;
    let parties = Parties::new()?;
    let t = Instant::now();
    let tip = env.height()?;
    let escrows = (0..ESCROWS as u32)
        .map(|i| parties.escrow_at(tip, i, 1_000, 2_000))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "instantiated {ESCROWS} escrow descriptors in {:?}",
        t.elapsed()
    );

    // Two transactions of 1,000 outputs each (a standard transaction stays < 100 kvB).
    for chunk in escrows.chunks(1_000) {
        let mut builder = wallet.wallet.build_tx();
        for e in chunk {
            builder.add_recipient(e.script_pubkey(), Amount::from_sat(10_000));
        }
        builder.fee_rate(FeeRate::from_sat_per_vb(1).context("1 sat/vB")?);
        let psbt = builder.finish().map_err(|e| anyhow::anyhow!("{e}"))?;
        wallet.sign_and_broadcast(psbt)?;
        // Each in its own block: a chain of unconfirmed 43 kvB transactions would pass
        // the mempool's ancestor size limit (101 kvB).
        env.mine(1)?;
        wallet.sync()?;
    }

    let mut config = WatcherConfig::new(&env.electrum_url, Network::Regtest);
    config.batch_size = std::env::var("BTC_ESCROW_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(config.batch_size);
    let mut w = Watcher::new(config.clone());
    for (i, e) in escrows.iter().enumerate() {
        w.register(&format!("loan-{i}"), e.clone())?;
    }
    let t = Instant::now();
    let first = w.sync()?;
    let first_time = t.elapsed();
    let first_requests = w.last_sync_requests();
    let funded = first
        .escrows
        .iter()
        .filter(|e| !e.deposits.is_empty())
        .count();
    anyhow::ensure!(funded == ESCROWS, "{funded} of {ESCROWS} escrows funded");
    let mut incremental = Vec::new();
    for round in 1..=3 {
        env.mine(1)?;
        let t = Instant::now();
        let next = w.sync()?;
        anyhow::ensure!(next.tip.height == env.height()?);
        incremental.push(t.elapsed());
        println!(
            "watcher, incremental sync after new block #{round}: {:?}",
            t.elapsed()
        );
    }
    incremental.sort();
    // For the bench report (`cargo bench --bench report`).
    println!(
        "figure: first_sync_{ESCROWS} = {:.2} s",
        first_time.as_secs_f64()
    );
    println!(
        "figure: incremental_sync_{ESCROWS} = {:.1} ms",
        incremental[1].as_secs_f64() * 1e3
    );
    println!("watcher, first full sync of {ESCROWS} scripts: {first_time:?} ({first_requests:?})");

    // A restart: the cache as the service stores it, read back from a reopened store.
    // The first watcher goes away as a stopped service does: electrs re-checks every
    // subscription of every connection after each batch it answers, so keeping its
    // 20,000 subscriptions would charge the restart for a service no longer running.
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("db"))?;
    store.replace_chain_cache(&w.cache())?;
    store.close()?;
    let before = w.sync()?;
    drop(w);
    let t = Instant::now();
    let store = Store::open(&dir.path().join("db"))?;
    let mut cache = ChainCache::default();
    for record in store.chain_cache::<ChainCache>()? {
        cache.merge(record);
    }
    let loaded = t.elapsed();
    let mut warm = Watcher::with_cache(config.clone(), cache);
    for (i, e) in escrows.iter().enumerate() {
        warm.register(&format!("loan-{i}"), e.clone())?;
    }
    let again = warm.sync()?;
    let warm_time = t.elapsed();
    anyhow::ensure!(
        again.escrows == before.escrows,
        "the restarted watcher must see what the running one sees"
    );
    println!(
        "figure: warm_restart_{ESCROWS} = {:.2} s",
        warm_time.as_secs_f64()
    );
    println!(
        "watcher, restart from the stored cache ({ESCROWS} scripts, cache read in {loaded:?}): {warm_time:?} ({:?})",
        warm.last_sync_requests()
    );

    // The same histories fetched one script per request, and batched (slow: only with
    // BTC_ESCROW_BENCH_UNBATCHED=1).
    if std::env::var_os("BTC_ESCROW_BENCH_UNBATCHED").is_none() {
        return Ok(());
    }
    let client = env.electrum()?;
    let scripts: Vec<_> = escrows.iter().map(|e| e.script_pubkey()).collect();
    let t = Instant::now();
    for s in &scripts {
        client.script_get_history(s)?;
    }
    println!(
        "histories of {ESCROWS} scripts one request each: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    for chunk in scripts.chunks(100) {
        client.batch_script_get_history(chunk.iter().map(|s| s.as_script()))?;
    }
    println!(
        "histories of {ESCROWS} scripts in batches of 100: {:?}",
        t.elapsed()
    );
    Ok(())
}
