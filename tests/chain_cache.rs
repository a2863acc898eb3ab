//! The watcher's cache against a real electrs and a real store: a watcher restarted
//! from what the service stored asks only for what changed while it was down and sees
//! what a watcher starting from nothing sees; blocks replaced under a transaction that
//! kept its height (so its Electrum status did not change) are proved again, whether
//! the watcher was running or restarting.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bitcoin::{Amount, Network};
use btc_escrow::chain::{
    CacheChanges, ChainCache, ChainUpdate, EscrowState, TxStatus, Watcher, WatcherConfig,
};
use btc_escrow::store::Store;
use common::escrow::{fund, Parties};
use common::wallet::TestWallet;
use common::Regtest;

fn config(env: &Regtest) -> WatcherConfig {
    WatcherConfig::new(&env.electrum_url, Network::Regtest)
}

/// Sync until `ok` holds (electrs indexes asynchronously).
fn sync_until(w: &mut Watcher, ok: impl Fn(&ChainUpdate) -> bool) -> anyhow::Result<ChainUpdate> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match w.sync() {
            Ok(update) if ok(&update) => return Ok(update),
            Ok(_) => {}
            Err(e) if Instant::now() > deadline => return Err(e).context("sync never succeeded"),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("condition never met");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the service does after each sync.
fn store_changes(store: &Store, w: &mut Watcher) -> anyhow::Result<()> {
    match w.take_cache_changes() {
        None => {}
        Some(CacheChanges::Delta(change)) => store.append_chain_cache(&change)?,
        Some(CacheChanges::Snapshot(cache)) => store.replace_chain_cache(&cache)?,
    }
    Ok(())
}

/// What the service does at start.
fn load(store: &Store) -> anyhow::Result<ChainCache> {
    let mut cache = ChainCache::default();
    for record in store.chain_cache::<ChainCache>()? {
        cache.merge(record);
    }
    Ok(cache.compacted())
}

fn confirmed_in(state: &EscrowState) -> Vec<TxStatus> {
    state.deposits.iter().map(|d| d.status).collect()
}

#[test]
fn a_restart_from_the_stored_cache_asks_only_for_what_changed() -> anyhow::Result<()> {
    let env = Regtest::start()?;
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 2)?;
    let parties = Parties::new()?;
    let escrows = [
        parties.escrow(&env, 1, 20, 30)?,
        parties.escrow(&env, 2, 20, 30)?,
        parties.escrow(&env, 3, 20, 30)?,
    ];
    let register = |w: &mut Watcher| -> anyhow::Result<()> {
        for (i, e) in escrows.iter().enumerate() {
            w.register(&format!("loan-{i}"), e.clone())?;
        }
        Ok(())
    };
    fund(&mut wallet, &env, &escrows[0], Amount::from_sat(10_000_000))?;
    fund(&mut wallet, &env, &escrows[1], Amount::from_sat(20_000_000))?;
    env.mine(1)?;

    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("db"))?;
    let mut running = Watcher::new(config(&env));
    register(&mut running)?;
    sync_until(&mut running, |u| {
        u.escrows
            .iter()
            .filter(|e| e.confirmed_collateral(1) > Amount::ZERO)
            .count()
            == 2
    })?;
    store_changes(&store, &mut running)?;
    drop(running);
    store.close()?;

    // While the watcher is down: a top-up of the second escrow, and a block.
    fund(&mut wallet, &env, &escrows[1], Amount::from_sat(5_000_000))?;
    env.mine(1)?;

    let store = Store::open(&dir.path().join("db"))?;
    let mut warm = Watcher::with_cache(config(&env), load(&store)?);
    register(&mut warm)?;
    let update = sync_until(&mut warm, |u| {
        u.escrows[1].confirmed_collateral(1) == Amount::from_sat(25_000_000)
    })?;
    let asked = warm.last_sync_requests();
    ensure!(
        asked.histories == 1 && asked.transactions == 1 && asked.proofs == 1,
        "only the second escrow changed (its top-up): {asked:?}"
    );
    let mut cold = Watcher::new(config(&env));
    register(&mut cold)?;
    let fresh = cold.sync()?;
    ensure!(
        update.escrows == fresh.escrows,
        "the restarted watcher sees what one starting from nothing sees:\n{:#?}\n{:#?}",
        update.escrows,
        fresh.escrows
    );
    ensure!(
        cold.last_sync_requests().histories == 2,
        "from nothing, both funded escrows are asked (the third has no history): {:?}",
        cold.last_sync_requests()
    );
    Ok(())
}

#[test]
fn blocks_replaced_under_a_transaction_that_kept_its_height_are_proved_again() -> anyhow::Result<()>
{
    let env = Regtest::start()?;
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 2)?;
    let parties = Parties::new()?;
    let escrow = parties.escrow(&env, 1, 20, 30)?;
    fund(&mut wallet, &env, &escrow, Amount::from_sat(10_000_000))?;
    let funded_in = env.mine(1)?[0];
    let height = env.height()?;

    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("db"))?;
    let mut running = Watcher::new(config(&env));
    running.register("loan-1", escrow.clone())?;
    sync_until(&mut running, |u| {
        u.escrows[0].confirmed_collateral(1) > Amount::ZERO
    })?;
    store_changes(&store, &mut running)?;

    // The block is replaced; the deposit is mined again at the same height, so its
    // Electrum status (txid and height) is unchanged and no notification comes.
    env.rpc.call(
        "invalidateblock",
        serde_json::json!([funded_in.to_string()]),
    )?;
    // Mined to another address than the first block was, so the block differs.
    let replaced = env.mine_to(2, &TestWallet::new(&env)?.address())?;
    ensure!(replaced[0] != funded_in);
    let same_height = |u: &ChainUpdate| {
        confirmed_in(&u.escrows[0])
            == [TxStatus::Confirmed {
                height,
                block_hash: replaced[0],
                confirmations: 2,
            }]
    };
    // The running watcher.
    let update = sync_until(&mut running, |u| u.tip.height == height + 1)?;
    ensure!(
        same_height(&update),
        "the running watcher proves the deposit in the new block: {:?}",
        confirmed_in(&update.escrows[0])
    );
    // A watcher restarted from the cache stored before the reorg.
    let mut warm = Watcher::with_cache(config(&env), load(&store)?);
    warm.register("loan-1", escrow)?;
    let update = sync_until(&mut warm, |u| u.tip.height == height + 1)?;
    ensure!(
        same_height(&update),
        "the restarted watcher proves the deposit in the new block: {:?}",
        confirmed_in(&update.escrows[0])
    );
    ensure!(
        warm.last_sync_requests().proofs == 1,
        "{:?}",
        warm.last_sync_requests()
    );
    Ok(())
}
