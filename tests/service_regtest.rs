//! The running service (`Service::start`, as `serve` runs it) against bitcoind +
//! electrs, with the manual oracle source at a one-second interval: a loan offered and
//! accepted through the handle is funded from a BDK wallet and activated by the chain
//! thread's reports; the operator's price falls into the liquidation band; the engine
//! decides on the third tick; the lender's co-signature comes through the handle; the
//! service broadcasts the transaction by itself; one block later the loan is
//! Liquidated. Then a clean shutdown, and a restart finds the loan as it was.
//! - With the loan active and the price deep in the liquidation band: while the oracle
//!   has no price (the operator's source cleared: no quorum) and then while electrs
//!   is down, tick after tick decides nothing; once both are back, the breach is
//!   counted afresh and decided.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bitcoin::{Amount, FeeRate, Network};
use btc_escrow::config::{Overrides, Settings};
use btc_escrow::engine::Acceptance;
use btc_escrow::init::{init, InitOptions};
use btc_escrow::keys::{account_path, AccountKey};
use btc_escrow::loan::{LoanState, Price};
use btc_escrow::service::{Ctx, Service, ServiceHandle};
use btc_escrow::tx::{self, FeeCap};
use btc_escrow::util::unix_now;
use common::escrow::Parties;
use common::wallet::TestWallet;
use common::Regtest;

/// Poll `f` on the engine thread until it returns `Some`.
fn wait_for<R: Send + 'static>(
    handle: &ServiceHandle,
    what: &str,
    f: impl Fn(&mut Ctx) -> Option<R> + Send + Clone + 'static,
) -> anyhow::Result<R> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = handle.call(f.clone())? {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn set_price(handle: &ServiceHandle, minor: u64) -> anyhow::Result<()> {
    handle.call(move |ctx| {
        for (_, manual) in &ctx.manual {
            manual.set(minor);
        }
    })?;
    Ok(())
}

/// A data directory made by `init` (manual oracle, one-second oracle and engine
/// ticks), the service running on it, and loan "l1" offered, accepted at $100,000,
/// funded with 0.2 BTC from a BDK wallet and activated by the chain thread's reports.
struct Running {
    env: Regtest,
    _parent: tempfile::TempDir,
    settings: Settings,
    service: Service,
    handle: ServiceHandle,
    parties: Parties,
}

fn running_active_loan() -> anyhow::Result<Running> {
    let env = Regtest::start()?;
    let parent = tempfile::tempdir()?;
    let data = parent.path().join("data");
    init(&InitOptions {
        data_dir: data.clone(),
        network: Network::Regtest,
        electrum_url: Some(env.electrum_url.clone()),
        listen: None,
        manual_oracle: true,
    })?;
    common::serve::one_second_ticks(&data)?;
    let settings = Settings::load(&data, &Overrides::default())?;
    ensure!(settings.oracle.interval() == Duration::from_secs(1));

    let parties = Parties::new()?;
    let account = |k: &btc_escrow::keys::SigningKey| -> anyhow::Result<AccountKey> {
        Ok(AccountKey::from_master(
            k.master(),
            &account_path(Network::Regtest, 0)?,
            &parties.secp,
        )?)
    };
    let (borrower, lender) = (account(&parties.borrower)?, account(&parties.lender)?);
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 1)?;
    let terms = common::escrow::loan_terms(
        &TestWallet::new(&env)?.address(),
        &TestWallet::new(&env)?.address(),
    );

    let service = Service::start(&settings)?;
    let handle = service.handle();
    set_price(&handle, 10_000_000)?;
    // Accept once the oracle has a price and the chain thread has reported.
    let loan = wait_for(&handle, "a price and a chain view", move |ctx| {
        let now = unix_now();
        let price: Price = ctx.fresh_price(now)?.price;
        let tip = ctx.tip()?;
        if ctx.engine.loan("l1").is_err() {
            ctx.engine.offer("l1", "lender", terms.clone(), now).ok()?;
        }
        ctx.engine
            .accept(
                "l1",
                Acceptance {
                    borrower_id: "borrower",
                    borrower: &borrower,
                    lender: &lender,
                    price,
                    return_address: None,
                },
                tip,
                now,
            )
            .ok()
    })?;
    ensure!(loan.required_collateral == Amount::from_sat(20_000_000));
    let address = handle.call(|ctx| ctx.engine.escrows()["l1"].address())?;
    let funding = wallet.send(
        &address,
        loan.required_collateral,
        FeeRate::from_sat_per_vb(2).context("rate")?,
    )?;
    env.wait_for_tx(&address.script_pubkey(), funding.compute_txid())?;
    env.mine(1)?;
    wait_for(&handle, "activation", in_state(LoanState::Active))?;
    Ok(Running {
        env,
        _parent: parent,
        settings,
        service,
        handle,
        parties,
    })
}

fn in_state(want: LoanState) -> impl Fn(&mut Ctx) -> Option<()> + Send + Clone + 'static {
    move |ctx: &mut Ctx| {
        ctx.engine
            .loan("l1")
            .ok()
            .filter(|l| l.state == want)
            .map(|_| ())
    }
}

#[test]
fn the_service_liquidates_a_breached_loan_by_itself() -> anyhow::Result<()> {
    let Running {
        env,
        settings,
        service,
        handle,
        parties,
        // Bound, not `..`: the data directory must outlive the restart below.
        _parent: _data,
    } = running_active_loan()?;
    // $62,000: the third tick in the band decides.
    set_price(&handle, 6_200_000)?;
    let record = wait_for(&handle, "the liquidation decision", |ctx| {
        ctx.engine.decision("l1").ok().flatten()
    })?;
    let secp = parties.secp.clone();
    let lender_key = btc_escrow::keys::SigningKey::parse(
        &parties.lender.master().to_string(),
        Network::Regtest,
    )?;
    let txid = handle.call(move |ctx| -> anyhow::Result<bitcoin::Txid> {
        let escrow = ctx.engine.escrows()["l1"].clone();
        let mut theirs = record.psbt()?;
        tx::sign(&mut theirs, &lender_key, &escrow, &FeeCap::default(), &secp)?;
        Ok(ctx.engine.cosign("l1", &theirs)?.compute_txid())
    })??;
    // The service broadcasts it by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.mempool_contains(txid)? {
        ensure!(Instant::now() < deadline, "never broadcast");
        std::thread::sleep(Duration::from_millis(200));
    }
    env.mine(1)?;
    wait_for(&handle, "Liquidated", in_state(LoanState::Liquidated))?;
    service.shutdown();

    // A restart finds the loan as it was.
    let service = Service::start(&settings)?;
    let loan = service.handle().call(|ctx| ctx.engine.loan("l1"))??;
    ensure!(loan.state == LoanState::Liquidated);
    service.shutdown();
    Ok(())
}

fn ticks_seen(handle: &ServiceHandle) -> anyhow::Result<u64> {
    Ok(handle.call(|ctx| ctx.ticks_seen)?)
}

/// Wait until `n` more oracle results have reached the engine.
fn wait_ticks(handle: &ServiceHandle, n: u64) -> anyhow::Result<()> {
    let start = ticks_seen(handle)?;
    wait_for(handle, "oracle ticks", move |ctx| {
        (ctx.ticks_seen >= start + n).then_some(())
    })
}

#[test]
fn nothing_is_decided_without_a_price_or_a_chain_view_then_it_catches_up() -> anyhow::Result<()> {
    let Running {
        mut env,
        service,
        handle,
        _parent: _data,
        ..
    } = running_active_loan()?;
    let undecided = |handle: &ServiceHandle| -> anyhow::Result<bool> {
        Ok(handle.call(|ctx| {
            ctx.engine.decision("l1").ok().flatten().is_none()
                && ctx.engine.loan("l1").ok().map(|l| l.state) != Some(LoanState::Liquidating)
        })?)
    };

    // No quorum: the operator's source cleared. Ticks come, without a price.
    handle.call(|ctx| {
        for (_, manual) in &ctx.manual {
            manual.clear();
        }
    })?;
    wait_ticks(&handle, 4)?;
    ensure!(
        handle.call(|ctx| ctx.no_price.is_some())?,
        "the engine knows why"
    );
    ensure!(undecided(&handle)?, "no liquidation without a price");

    // electrs down, a breaching price back: ticks with a price, no chain view.
    env.kill_electrs();
    wait_for(&handle, "the chain seen as disconnected", |ctx| {
        matches!(
            ctx.chain,
            btc_escrow::service::ChainState::Disconnected { .. }
        )
        .then_some(())
    })?;
    set_price(&handle, 6_200_000)?;
    wait_ticks(&handle, 4)?;
    ensure!(undecided(&handle)?, "no liquidation on a stale chain view");

    // Both back: the breach is counted from here and decided on the third tick.
    env.restart_electrs()?;
    wait_for(&handle, "the liquidation decision", |ctx| {
        ctx.engine.decision("l1").ok().flatten()
    })?;
    ensure!(handle.call(|ctx| ctx.engine.loan("l1").map(|l| l.state))?? == LoanState::Liquidating);
    service.shutdown();
    Ok(())
}
