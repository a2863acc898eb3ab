//! The chain watcher against a real electrs: deposits with their confirmations and
//! top-ups, the five spending paths classified, reorgs of depth 1 and 6, a spend
//! replaced by a conflicting spend in a reorg, an RBF-replaced deposit, electrs killed
//! and restarted, broadcast answers classified, an escrow unregistered and registered
//! again, a server whose chain became a shorter fork of ours, a server of another
//! network, and the graph kept bounded across register/unregister cycles.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bitcoin::{Amount, BlockHash, FeeRate, Network, OutPoint};
use btc_escrow::chain::{
    BroadcastError, ChainEvent, ChainUpdate, ConnectionStatus, FeeSource, TxStatus, WatchError,
    Watcher, WatcherConfig,
};
use btc_escrow::policy::{EscrowDescriptor, PathName};
use btc_escrow::tx::{self, SpendRequest};
use common::escrow::{fund, spend, Parties};
use common::wallet::TestWallet;
use common::{Regtest, Reorg};
use serde_json::json;

fn watcher(env: &Regtest) -> Watcher {
    Watcher::new(WatcherConfig::new(&env.electrum_url, Network::Regtest))
}

/// Sync until `ok` holds for the update (electrs indexes the mempool asynchronously);
/// returns every event seen on the way.
fn sync_until(
    w: &mut Watcher,
    ok: impl Fn(&ChainUpdate) -> bool,
) -> anyhow::Result<(ChainUpdate, Vec<ChainEvent>)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = Vec::new();
    loop {
        match w.sync() {
            Ok(update) => {
                events.extend(update.events.clone());
                if ok(&update) {
                    return Ok((update, events));
                }
            }
            Err(e) if Instant::now() > deadline => return Err(e).context("sync never succeeded"),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("condition never met; events so far: {events:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn collateral(u: &ChainUpdate, min_conf: u32) -> Amount {
    u.escrows[0].confirmed_collateral(min_conf)
}

struct Setup {
    env: Regtest,
    wallet: TestWallet,
    parties: Parties,
    escrow: EscrowDescriptor,
    watcher: Watcher,
}

fn setup() -> anyhow::Result<Setup> {
    let env = Regtest::start()?;
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 2)?;
    let parties = Parties::new()?;
    let escrow = parties.escrow(&env, 1, 20, 30)?;
    let mut watcher = watcher(&env);
    watcher.register("loan-1", escrow.clone())?;
    Ok(Setup {
        env,
        wallet,
        parties,
        escrow,
        watcher,
    })
}

/// Scenario: a deposit is seen unconfirmed, then with 1 and with 6 confirmations; a
/// top-up adds to the collateral. Growing confirmation counts are not events.
#[test]
fn deposit_then_confirmations_then_top_up() -> anyhow::Result<()> {
    let Setup {
        env,
        mut wallet,
        escrow,
        mut watcher,
        ..
    } = setup()?;
    let first = fund(&mut wallet, &env, &escrow, Amount::from_sat(30_000_000))?;
    let (u, events) = sync_until(&mut watcher, |u| !u.escrows[0].deposits.is_empty())?;
    ensure!(u.escrows[0].unconfirmed_collateral() == Amount::from_sat(30_000_000));
    ensure!(collateral(&u, 1) == Amount::ZERO);
    // electrs takes JSON-RPC batch arrays: subscriptions go out as one array.
    ensure!(watcher.uses_batch_arrays() == Some(true));
    ensure!(
        matches!(events.as_slice(), [ChainEvent::DepositSeen { outpoint, .. }] if *outpoint == first.outpoint),
        "{events:?}"
    );

    env.mine(1)?;
    let (u, events) = sync_until(&mut watcher, |u| collateral(u, 1) > Amount::ZERO)?;
    ensure!(u.escrows[0].deposits[0].status.confirmations() == 1);
    ensure!(
        matches!(events.as_slice(), [ChainEvent::DepositConfirmed { height, .. }] if *height == env.height()?)
    );

    env.mine(5)?;
    let (u, events) = sync_until(&mut watcher, |u| {
        u.escrows[0].deposits[0].status.confirmations() == 6
    })?;
    ensure!(
        events.is_empty(),
        "confirmations alone are not events: {events:?}"
    );
    ensure!(collateral(&u, 6) == Amount::from_sat(30_000_000));

    fund(&mut wallet, &env, &escrow, Amount::from_sat(20_000_000))?;
    env.mine(1)?;
    let (u, _) = sync_until(&mut watcher, |u| {
        collateral(u, 1) == Amount::from_sat(50_000_000)
    })?;
    ensure!(u.escrows[0].deposits.len() == 2);
    ensure!(
        collateral(&u, 6) == Amount::from_sat(30_000_000),
        "the top-up has 1 confirmation"
    );
    Ok(())
}

/// Scenario: five escrows, each spent by another path (the timelocked ones once the
/// chain reaches their heights); the watcher names the path of each spend.
#[test]
fn every_spending_path_is_classified() -> anyhow::Result<()> {
    let env = Regtest::start()?;
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 2)?;
    let parties = Parties::new()?;
    let mut w = watcher(&env);
    let mut escrows = Vec::new();
    for (i, path) in PathName::ALL.into_iter().enumerate() {
        let escrow = parties.escrow(&env, i as u32, 10, 15)?;
        w.register(path.as_str(), escrow.clone())?;
        let input = fund(&mut wallet, &env, &escrow, Amount::from_sat(10_000_000))?;
        escrows.push((path, escrow, input));
    }
    env.mine(1)?;
    let to = TestWallet::new(&env)?.address();
    for (path, escrow, input) in escrows {
        if let Some(h) = escrow.path(path)?.after_height {
            let tip = env.height()?;
            if h > tip {
                env.mine(h - tip)?;
            }
        }
        let tx = spend(&parties, &escrow, path, vec![input], &to, env.height()?)?;
        env.broadcast_rpc(&tx)?;
    }
    env.mine(1)?;
    let (u, _) = sync_until(&mut w, |u| {
        u.escrows
            .iter()
            .all(|e| e.spends.iter().any(|s| s.status.is_confirmed()))
    })?;
    for state in &u.escrows {
        let spend = &state.spends[0];
        let observed = spend.path.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            observed.path.as_str() == state.loan_id,
            "{} classified as {:?}",
            state.loan_id,
            observed
        );
        ensure!(
            state.confirmed_collateral(1) == Amount::ZERO,
            "spent escrows hold nothing"
        );
    }
    Ok(())
}

/// Scenario: the funding block is reorganized away at depth 1 and later at depth 6;
/// each time the deposit is reported out and the collateral drops, and when the same
/// transaction is mined again it is reported confirmed again.
#[test]
fn reorgs_of_depth_1_and_6_remove_the_funding() -> anyhow::Result<()> {
    let Setup {
        env,
        mut wallet,
        escrow,
        mut watcher,
        ..
    } = setup()?;
    let deposit = fund(&mut wallet, &env, &escrow, Amount::from_sat(25_000_000))?;
    env.mine(1)?;
    sync_until(&mut watcher, |u| collateral(u, 1) > Amount::ZERO)?;

    for depth in [1u32, 6] {
        if depth == 6 {
            env.mine(5)?;
            sync_until(&mut watcher, |u| {
                u.escrows[0].deposits[0].status.confirmations() == 6
            })?;
        }
        env.reorg(depth, Reorg::DropTxs)?;
        let (u, events) = sync_until(&mut watcher, |u| collateral(u, 1) == Amount::ZERO)?;
        ensure!(
            u.escrows[0].unconfirmed_collateral() == Amount::from_sat(25_000_000),
            "back in the mempool"
        );
        ensure!(
            events.iter().any(|e| matches!(e, ChainEvent::DepositReorgedOut { outpoint, .. } if *outpoint == deposit.outpoint)),
            "depth {depth}: {events:?}"
        );
        env.mine(1)?;
        let (_, events) = sync_until(&mut watcher, |u| {
            collateral(u, 1) == Amount::from_sat(25_000_000)
        })?;
        ensure!(
            events.iter().any(|e| matches!(e, ChainEvent::DepositConfirmed { outpoint, .. } if *outpoint == deposit.outpoint)),
            "depth {depth}: re-mined: {events:?}"
        );
    }
    Ok(())
}

/// Scenario: a cooperative release is mined, then its block is reorganized away and a
/// conflicting liquidation of the same escrow is mined instead: the first spend is
/// reported gone and the liquidation reported as a different spend.
#[test]
fn reorg_replacing_a_spend_reports_the_other_spend() -> anyhow::Result<()> {
    let Setup {
        env,
        mut wallet,
        parties,
        escrow,
        mut watcher,
    } = setup()?;
    let input = fund(&mut wallet, &env, &escrow, Amount::from_sat(25_000_000))?;
    env.mine(1)?;
    let to = TestWallet::new(&env)?.address();
    let release = spend(
        &parties,
        &escrow,
        PathName::Cooperative,
        vec![input.clone()],
        &to,
        env.height()?,
    )?;
    env.broadcast_rpc(&release)?;
    let block = env.mine(1)?[0];
    let (_, events) = sync_until(&mut watcher, |u| {
        u.escrows[0].spends.iter().any(|s| s.status.is_confirmed())
    })?;
    ensure!(events.iter().any(
        |e| matches!(e, ChainEvent::SpendSeen { txid, .. } if *txid == release.compute_txid())
    ));

    env.rpc
        .call("invalidateblock", json!([block.to_string()]))?;
    // A higher fee rate replaces the release in the mempool (full RBF).
    let req = SpendRequest {
        path: PathName::Liquidation,
        inputs: vec![input],
        payments: vec![],
        rest_to: TestWallet::new(&env)?.address().script_pubkey(),
        fee_rate: FeeRate::from_sat_per_vb(20).expect("20"),
        tip: env.height()?,
    };
    let mut psbt = tx::build(&escrow, &req)?.psbt;
    parties.sign(&mut psbt, &parties.lender, &escrow)?;
    parties.sign(&mut psbt, &parties.arbiter, &escrow)?;
    let liquidation = tx::finalize(&psbt, &parties.secp)?;
    env.broadcast_rpc(&liquidation)?;
    env.mine(2)?;
    let (u, events) = sync_until(&mut watcher, |u| {
        u.escrows[0]
            .spends
            .iter()
            .any(|s| s.txid == liquidation.compute_txid() && s.status.is_confirmed())
    })?;
    ensure!(
        u.escrows[0].spends.len() == 1,
        "only the liquidation: {:?}",
        u.escrows[0].spends
    );
    ensure!(
        events.iter().any(
            |e| matches!(e, ChainEvent::SpendGone { txid, .. } if *txid == release.compute_txid())
        ),
        "{events:?}"
    );
    let path = u.escrows[0].spends[0]
        .path
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(path.path == PathName::Liquidation);
    Ok(())
}

/// Scenario: a deposit replaced by RBF before confirmation: the replaced transaction
/// disappears and only the replacement counts.
#[test]
fn rbf_replaced_deposit_counts_once() -> anyhow::Result<()> {
    let Setup {
        env,
        mut wallet,
        escrow,
        mut watcher,
        ..
    } = setup()?;
    let first = fund(&mut wallet, &env, &escrow, Amount::from_sat(15_000_000))?;
    sync_until(&mut watcher, |u| !u.escrows[0].deposits.is_empty())?;
    let replacement = wallet.bump_fee(
        first.outpoint.txid,
        FeeRate::from_sat_per_vb(30).expect("30"),
    )?;
    env.wait_for_tx(&escrow.script_pubkey(), replacement.compute_txid())?;
    let (u, events) = sync_until(&mut watcher, |u| {
        u.escrows[0]
            .deposits
            .iter()
            .all(|d| d.outpoint.txid == replacement.compute_txid())
    })?;
    ensure!(u.escrows[0].unconfirmed_collateral() == Amount::from_sat(15_000_000));
    ensure!(
        events.iter().any(
            |e| matches!(e, ChainEvent::DepositGone { outpoint, .. } if *outpoint == first.outpoint)
        ),
        "{events:?}"
    );
    env.mine(1)?;
    let (u, _) = sync_until(&mut watcher, |u| collateral(u, 1) > Amount::ZERO)?;
    ensure!(collateral(&u, 1) == Amount::from_sat(15_000_000));
    Ok(())
}

/// Scenario: electrs is killed; syncs fail and the status says disconnected; blocks
/// are mined meanwhile; electrs restarts and the watcher reconnects and catches up,
/// reporting the confirmation exactly once.
#[test]
fn electrs_restart_is_caught_up_without_losing_or_duplicating() -> anyhow::Result<()> {
    let Setup {
        mut env,
        mut wallet,
        escrow,
        mut watcher,
        ..
    } = setup()?;
    fund(&mut wallet, &env, &escrow, Amount::from_sat(12_000_000))?;
    sync_until(&mut watcher, |u| !u.escrows[0].deposits.is_empty())?;
    env.kill_electrs();
    ensure!(watcher.sync().is_err(), "no update while electrs is down");
    ensure!(matches!(
        watcher.status(),
        ConnectionStatus::Disconnected { .. }
    ));
    env.rpc.call(
        "generatetoaddress",
        json!([3, common::burn_address().to_string()]),
    )?;
    env.restart_electrs()?;
    let (u, events) = sync_until(&mut watcher, |u| collateral(u, 1) > Amount::ZERO)?;
    ensure!(u.tip.height == env.height()?);
    ensure!(u.escrows[0].deposits[0].status.confirmations() == 3);
    let confirmed = events
        .iter()
        .filter(|e| matches!(e, ChainEvent::DepositConfirmed { .. }))
        .count();
    ensure!(confirmed == 1, "one confirmation event: {events:?}");
    ensure!(matches!(
        watcher.status(),
        ConnectionStatus::Connected { .. }
    ));
    let again = watcher.sync()?;
    ensure!(
        again.events.is_empty(),
        "nothing new, nothing repeated: {:?}",
        again.events
    );
    Ok(())
}

/// Scenario: broadcasting a timelocked spend too early, a duplicate, a conflicting
/// spend and a zero-fee spend each gives its own error; regtest has no fee estimate,
/// so the fallback is used and says so.
#[test]
fn broadcast_answers_are_classified() -> anyhow::Result<()> {
    let Setup {
        env,
        mut wallet,
        parties,
        escrow,
        mut watcher,
    } = setup()?;
    let input = fund(&mut wallet, &env, &escrow, Amount::from_sat(20_000_000))?;
    env.mine(1)?;
    let to = TestWallet::new(&env)?.address();
    let early = spend(
        &parties,
        &escrow,
        PathName::DefaultClaim,
        vec![input.clone()],
        &to,
        env.height()?,
    )?;
    ensure!(
        matches!(
            watcher.broadcast(&early),
            Err(BroadcastError::NonFinal { .. })
        ),
        "non-final"
    );

    let mut req = SpendRequest {
        path: PathName::Cooperative,
        inputs: vec![input.clone()],
        payments: vec![],
        rest_to: to.script_pubkey(),
        fee_rate: FeeRate::ZERO,
        tip: env.height()?,
    };
    let sign = |req: &SpendRequest| -> anyhow::Result<bitcoin::Transaction> {
        let mut psbt = tx::build(&escrow, req)?.psbt;
        parties.sign(&mut psbt, &parties.borrower, &escrow)?;
        parties.sign(&mut psbt, &parties.lender, &escrow)?;
        Ok(tx::finalize(&psbt, &parties.secp)?)
    };
    let free = sign(&req)?;
    let got = watcher.broadcast(&free);
    ensure!(
        matches!(got, Err(BroadcastError::FeeTooLow { .. })),
        "{got:?}"
    );

    req.fee_rate = FeeRate::from_sat_per_vb(5).expect("5");
    let release = sign(&req)?;
    ensure!(watcher.broadcast(&release)? == release.compute_txid());
    env.wait_for_tx(&escrow.script_pubkey(), release.compute_txid())?;
    let got = watcher.broadcast(&release);
    ensure!(
        matches!(got, Err(BroadcastError::AlreadyKnown { .. })),
        "{got:?}"
    );

    req.fee_rate = FeeRate::from_sat_per_vb(4).expect("4");
    let conflicting = sign(&req)?;
    let got = watcher.broadcast(&conflicting);
    ensure!(
        matches!(got, Err(BroadcastError::Conflict { .. })),
        "{got:?}"
    );

    let fee = watcher.fee_estimate(6);
    ensure!(matches!(fee.source, FeeSource::Fallback { .. }), "{fee:?}");
    Ok(())
}

/// Scenario: the header subscription wakes the watcher when a block arrives, and a
/// quiet chain times out without waking it; an unregistered escrow is no longer in
/// the snapshot.
#[test]
fn new_blocks_wake_the_watcher() -> anyhow::Result<()> {
    let Setup {
        env, mut watcher, ..
    } = setup()?;
    sync_until(&mut watcher, |u| u.escrows.len() == 1)?;
    ensure!(
        !watcher.wait_for_block(Duration::from_millis(300))?,
        "no block yet"
    );
    env.mine(1)?;
    ensure!(
        watcher.wait_for_block(Duration::from_secs(30))?,
        "the new block wakes it"
    );
    let u = watcher.sync()?;
    ensure!(u.tip.height == env.height()?);
    watcher.unregister("loan-1");
    ensure!(watcher.sync()?.escrows.is_empty());
    Ok(())
}

/// Sync until `ok` holds, failing on the first sync error: for scenarios where a
/// reconnect (which subscribes every script anew and syncs everything) would hide the
/// bug under test.
fn sync_strictly_until(
    w: &mut Watcher,
    ok: impl Fn(&ChainUpdate) -> bool,
) -> anyhow::Result<(ChainUpdate, Vec<ChainEvent>)> {
    let deadline = Instant::now() + common::WAIT;
    let mut events = Vec::new();
    loop {
        let update = w.sync().context("every sync must succeed here")?;
        events.extend(update.events.clone());
        if ok(&update) {
            return Ok((update, events));
        }
        if Instant::now() > deadline {
            bail!("condition never met; events so far: {events:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Scenario: an escrow is funded, confirmed and synced, then unregistered and
/// registered again on the same connection. The very next sync reports its deposit
/// again (the script was unsubscribed on the server and is subscribed anew, rather
/// than refused as already subscribed, which used to drop the connection), and a
/// top-up paid after that is picked up through the new subscription's notification,
/// every sync on the way succeeding.
#[test]
fn an_unregistered_escrow_registered_again_is_watched_again() -> anyhow::Result<()> {
    let Setup {
        env,
        mut wallet,
        escrow,
        mut watcher,
        ..
    } = setup()?;
    let first = fund(&mut wallet, &env, &escrow, Amount::from_sat(10_000_000))?;
    env.mine(1)?;
    sync_until(&mut watcher, |u| collateral(u, 1) > Amount::ZERO)?;
    watcher.unregister("loan-1");
    ensure!(watcher.sync()?.escrows.is_empty());

    watcher.register("loan-1", escrow.clone())?;
    let u = watcher
        .sync()
        .context("the first sync after registering again")?;
    ensure!(collateral(&u, 1) == Amount::from_sat(10_000_000));
    ensure!(
        matches!(
            u.events.as_slice(),
            [
                ChainEvent::DepositSeen { outpoint: seen, .. },
                ChainEvent::DepositConfirmed { outpoint: confirmed, .. },
            ] if *seen == first.outpoint && *confirmed == first.outpoint
        ),
        "the deposit is reported again: {:?}",
        u.events
    );
    ensure!(matches!(
        watcher.status(),
        ConnectionStatus::Connected { .. }
    ));

    let top_up = fund(&mut wallet, &env, &escrow, Amount::from_sat(3_000_000))?;
    let (u, events) = sync_strictly_until(&mut watcher, |u| {
        u.escrows[0]
            .deposits
            .iter()
            .any(|d| d.outpoint == top_up.outpoint)
    })?;
    ensure!(u.escrows[0].unconfirmed_collateral() == Amount::from_sat(3_000_000));
    ensure!(
        matches!(events.as_slice(), [ChainEvent::DepositSeen { outpoint, .. }] if *outpoint == top_up.outpoint),
        "{events:?}"
    );
    Ok(())
}

/// Scenario: two escrows, one funded deep in the chain, one a few blocks below the
/// tip. The server then drops its last two (empty) blocks and mines a single other
/// one, so its chain is a shorter fork of ours: bdk alone would keep our longer chain
/// and report a tip the server no longer has. No escrow's history changes, so no
/// script notification marks any escrow for a sync. On the same connection, the next
/// sync refuses the server's chain as not connecting to ours and reports Disconnected
/// with the reason; the sync after that rescans every escrow from genesis and reports
/// the server's tip with no event at all: both deposits are still in their blocks
/// (before the fix, the one deeper than the last eight blocks would have lost its
/// anchor's block and been reported gone).
#[test]
fn a_shorter_fork_is_resynced_without_spurious_events() -> anyhow::Result<()> {
    let Setup {
        env,
        mut wallet,
        parties,
        escrow: deep,
        mut watcher,
    } = setup()?;
    let shallow = parties.escrow(&env, 2, 20, 30)?;
    watcher.register("loan-2", shallow.clone())?;
    fund(&mut wallet, &env, &deep, Amount::from_sat(10_000_000))?;
    env.mine(11)?;
    fund(&mut wallet, &env, &shallow, Amount::from_sat(20_000_000))?;
    env.mine(4)?;
    let our_tip = env.height()?;
    let (before, _) = sync_until(&mut watcher, |u| {
        u.tip.height == our_tip
            && u.escrows
                .iter()
                .all(|e| e.confirmed_collateral(1) > Amount::ZERO)
    })?;

    let dropped = env.rpc.call("getblockhash", json!([our_tip - 1]))?;
    env.rpc.call("invalidateblock", json!([dropped]))?;
    // Paid elsewhere than the dropped block, so not that same block again.
    let elsewhere = bitcoin::Address::p2wsh(bitcoin::Script::from_bytes(&[0x52]), Network::Regtest);
    let fork_tip = env.mine_to(1, &elsewhere)?[0];
    ensure!(
        env.height()? == our_tip - 1,
        "the server's chain is shorter"
    );

    let refused = watcher.sync();
    ensure!(
        matches!(refused, Err(WatchError::CannotConnect { .. })),
        "the shorter fork must be refused: {refused:?}"
    );
    ensure!(
        matches!(watcher.status(), ConnectionStatus::Disconnected { reason, .. } if reason.contains("does not connect")),
        "{:?}",
        watcher.status()
    );

    let u = watcher.sync().context("the resync from genesis")?;
    ensure!(
        (u.tip.height, u.tip.hash) == (our_tip - 1, fork_tip),
        "the server's tip: {:?}",
        u.tip
    );
    ensure!(u.events.is_empty(), "no deposit moved: {:?}", u.events);
    // Same outpoints in the same blocks; only the confirmation counts moved.
    let place = |u: &ChainUpdate| -> Vec<(OutPoint, Option<(u32, BlockHash)>)> {
        u.escrows
            .iter()
            .flat_map(|e| &e.deposits)
            .map(|d| match d.status {
                TxStatus::Confirmed {
                    height, block_hash, ..
                } => (d.outpoint, Some((height, block_hash))),
                TxStatus::Unconfirmed => (d.outpoint, None),
            })
            .collect()
    };
    ensure!(place(&u).len() == 2 && place(&u).iter().all(|(_, b)| b.is_some()));
    ensure!(place(&u) == place(&before), "{:?} then {:?}", before, u);
    ensure!(matches!(
        watcher.status(),
        ConnectionStatus::Connected { tip_height, .. } if *tip_height == our_tip - 1
    ));
    Ok(())
}

/// Scenario: watchers configured for testnet and for signet are pointed at the regtest
/// electrs. Each sync is refused with an error naming the expected and the found
/// genesis block, the status says disconnected with that reason, and a fee estimate
/// is not asked of the wrong server (it falls back, saying why). A regtest watcher on
/// the same server is accepted.
#[test]
fn a_server_of_another_network_is_refused() -> anyhow::Result<()> {
    let env = Regtest::start()?;
    let genesis = |n: Network| bitcoin::constants::genesis_block(n).block_hash();
    let found = genesis(Network::Regtest);
    for network in [Network::Testnet, Network::Signet] {
        let expected = genesis(network);
        let mut w = Watcher::new(WatcherConfig::new(&env.electrum_url, network));
        let got = w.sync();
        ensure!(
            matches!(&got, Err(WatchError::WrongNetwork { expected: e, found: f, .. }) if *e == expected && *f == found),
            "{network}: {got:?}"
        );
        let ConnectionStatus::Disconnected { reason, .. } = w.status() else {
            bail!("{network}: {:?}", w.status());
        };
        ensure!(
            reason.contains(&expected.to_string()) && reason.contains(&found.to_string()),
            "{network}: {reason}"
        );

        let mut fresh = Watcher::new(WatcherConfig::new(&env.electrum_url, network));
        let fee = fresh.fee_estimate(6);
        ensure!(
            matches!(&fee.source, FeeSource::Fallback { reason } if reason.contains(&found.to_string())),
            "{network}: {fee:?}"
        );
    }
    let mut w = watcher(&env);
    ensure!(w.sync()?.tip.height == env.height()?);
    Ok(())
}

/// Scenario: one escrow stays watched and funded while eight others, one after the
/// other, are registered, funded, synced and unregistered, with the graph set to be
/// rebuilt after every second unregister. After each unregister the graph holds at
/// most the watched escrow's deposit and one unregistered escrow's; the watched
/// escrow's state is untouched by the rebuilds, and an escrow registered again after
/// its transactions were pruned is filled again from the server.
#[test]
fn the_graph_stays_bounded_across_register_unregister_cycles() -> anyhow::Result<()> {
    let env = Regtest::start()?;
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 2)?;
    let parties = Parties::new()?;
    let mut config = WatcherConfig::new(&env.electrum_url, Network::Regtest);
    config.prune_after_unregistered = 2;
    let mut watcher = Watcher::new(config);
    let kept = parties.escrow(&env, 1, 20, 30)?;
    watcher.register("kept", kept.clone())?;
    fund(&mut wallet, &env, &kept, Amount::from_sat(10_000_000))?;
    env.mine(1)?;
    let (before, _) = sync_until(&mut watcher, |u| collateral(u, 1) > Amount::ZERO)?;

    let mut cycles = Vec::new();
    for i in 0..8u32 {
        let id = format!("cycle-{i}");
        let escrow = parties.escrow(&env, 10 + i, 20, 30)?;
        watcher.register(&id, escrow.clone())?;
        let deposit = fund(&mut wallet, &env, &escrow, Amount::from_sat(1_000_000))?;
        sync_until(&mut watcher, |u| {
            u.escrows.iter().any(|e| {
                e.loan_id == id && e.deposits.iter().any(|d| d.outpoint == deposit.outpoint)
            })
        })?;
        watcher.unregister(&id);
        ensure!(
            watcher.graph_tx_count() <= 2,
            "after cycle {i} the graph holds {} transactions",
            watcher.graph_tx_count()
        );
        cycles.push((id, escrow, deposit));
    }

    let u = watcher.sync()?;
    ensure!(u.events.is_empty(), "{:?}", u.events);
    ensure!(u.escrows == before.escrows, "{:?}", u.escrows);

    let (id, escrow, deposit) = &cycles[0];
    watcher.register(id, escrow.clone())?;
    let (_, events) = sync_until(&mut watcher, |u| u.escrows.len() == 2)?;
    ensure!(
        matches!(events.as_slice(), [ChainEvent::DepositSeen { outpoint, .. }] if *outpoint == deposit.outpoint),
        "{events:?}"
    );
    Ok(())
}
