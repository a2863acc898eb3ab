//! The main job (`regtest/demo`): a regtest network (bitcoind + electrs), `btc-escrow
//! serve` with the manual price source and two local exchange feeds (Kraken's and
//! Bitstamp's formats), and two loans lived through the real API, the parties' own
//! commands and real transactions, one line per step with the numbers:
//! - loan 1: offered, accepted, checked with `verify-escrow`, funded from the
//!   borrower's BDK wallet, active; the price falls 30 % (margin call), then further
//!   (breach confirmed over three ticks), the liquidation PSBT is co-signed by the
//!   lender's `cosign` daemon, broadcast and mined: who got what, at what price;
//! - loan 2: funded, repaid, released to the borrower by the daemon, closed.
//!
//! It then prints the API and the parties' tokens and serves until Ctrl-C (`--exit`:
//! tears everything down at once). A failing step is named; every process it started
//! stops with it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bitcoin::{Amount, FeeRate, Network};
use common::serve::{DataDir, Serve};
use common::tools::{key_file, run};
use reqwest::Method;
use serde_json::{json, Value};

/// A child process killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn usd(minor: u64) -> String {
    format!("{} USD", btc_escrow::util::grouped_minor(minor))
}

use btc_escrow::util::{btc, percent as pct};

/// Name the step a failure happened in.
fn step<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    f().with_context(|| format!("demo step failed: {name}"))
}

/// The two local exchange feeds: Kraken's and Bitstamp's answer formats, both at the
/// shared price (minor units).
fn feeds(rt: &tokio::runtime::Runtime, price: Arc<AtomicU64>) -> anyhow::Result<(String, String)> {
    use axum::routing::get;
    let text = |p: &AtomicU64| {
        let m = p.load(Ordering::SeqCst);
        format!("{}.{:02}", m / 100, m % 100)
    };
    let (k, b) = (price.clone(), price);
    let kraken = axum::Router::new().route(
        "/0/public/Ticker",
        get(move || {
            let p = text(&k);
            async move {
                axum::Json(json!({"error": [], "result": {"XXBTZUSD": {
                    "a": [p, "1", "1.000"], "b": [p, "1", "1.000"], "c": [p, "0.001"],
                    "v": ["1", "1"], "p": [p, p], "t": [1, 1], "l": [p, p], "h": [p, p], "o": p}}}))
            }
        }),
    );
    let bitstamp = axum::Router::new().route(
        "/api/v2/ticker/btcusd/",
        get(move || {
            let p = text(&b);
            async move {
                axum::Json(
                    json!({"timestamp": btc_escrow::util::unix_now().to_string(),
                    "open": p, "high": p, "low": p, "last": p, "volume": "1", "vwap": p,
                    "bid": p, "ask": p, "side": "0", "open_24": p, "percent_change_24": "0",
                    "pair": "BTC/USD"}),
                )
            }
        }),
    );
    let mut urls = Vec::new();
    for (app, path) in [
        (kraken, "/0/public/Ticker?pair=XBTUSD"),
        (bitstamp, "/api/v2/ticker/btcusd/"),
    ] {
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        urls.push(format!("http://{}{path}", listener.local_addr()?));
        rt.spawn(async move { axum::serve(listener, app).await });
    }
    Ok((urls[0].clone(), urls[1].clone()))
}

struct Demo {
    env: common::Regtest,
    _data: DataDir,
    serve: Serve,
    rt: tokio::runtime::Runtime,
    price: Arc<AtomicU64>,
    admin: String,
    lender: String,
    borrower: String,
    lender_key: std::path::PathBuf,
    borrower_key: std::path::PathBuf,
    ledger: std::path::PathBuf,
    wallet: common::wallet::TestWallet,
    payout: bitcoin::Address,
    return_to: bitcoin::Address,
    dir: tempfile::TempDir,
}

impl Demo {
    fn api(&self) -> &common::serve::Api {
        &self.serve.api
    }

    /// Move every source to `minor` (the feeds, then the manual source, which ticks).
    fn set_price(&self, minor: u64) -> anyhow::Result<()> {
        self.price.store(minor, Ordering::SeqCst);
        self.api().expect(
            200,
            Method::PUT,
            "/oracle/manual",
            &self.admin,
            Some(&json!({ "price_minor": minor })),
        )?;
        Ok(())
    }

    fn loan(&self, id: &str) -> anyhow::Result<Value> {
        self.api().get(&format!("/loans/{id}"), &self.lender)
    }

    fn wait(&self, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        self.api().wait_every(
            Duration::from_millis(200),
            &format!("/loans/{id}"),
            &self.lender,
            what,
            ok,
        )
    }

    /// `btc-escrow ARGS --api … --token TOKEN`, its JSON.
    fn cli(&self, token: &str, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.extend(["--json", "--api", &self.api().base, "--token", token]);
        run(&all)?.json()
    }

    /// Offer (the lender), accept (the borrower): the loan awaiting collateral.
    fn offer_and_accept(&self, tag: &str) -> anyhow::Result<Value> {
        let path = |p: &std::path::Path| p.to_str().map(str::to_owned).context("path");
        let terms = json!({
            "principal_minor": 1_000_000, "currency": "USD", "apr_bps": 1_000,
            "term_secs": 90 * 86_400, "initial_ltv_bps": 5_000, "margin_call_ltv_bps": 7_000,
            "liquidation_ltv_bps": 8_000, "liquidation_penalty_bps": 500, "confirm_ticks": 3,
            "grace_blocks": 144, "recovery_delay_blocks": 1_000,
            "funding_deadline": btc_escrow::util::unix_now() + 86_400,
            "lender_payout_address": self.payout.to_string(), "min_confirmations": 1,
        });
        let terms_file = common::tools::json_file(self.dir.path(), "offer.json", &terms)?;
        let offered = step(&format!("{tag}: offer"), || {
            self.cli(
                &self.lender,
                &["loan", "offer", "--terms", &path(&terms_file)?],
            )
        })?;
        let id = offered["id"].as_str().context("id")?.to_owned();
        println!(
            "[{tag}] offered {id}: {} for 90 days at 10 % APR, initial LTV 50 %, margin call at 70 %, liquidation at 80 % (confirmed over 3 ticks), penalty 5 %",
            usd(1_000_000)
        );
        let accepted = step(&format!("{tag}: accept"), || {
            self.cli(
                &self.borrower,
                &[
                    "loan",
                    "accept",
                    &id,
                    "--return-address",
                    &self.return_to.to_string(),
                ],
            )
        })?;
        let e = &accepted["escrow"];
        println!(
            "[{tag}] accepted by the borrower: escrow {} (index {}), send {}; lender's solo path from block {}, borrower's from block {}",
            e["address"].as_str().unwrap_or(""),
            e["index"],
            btc(accepted["required_collateral_sat"].as_u64().unwrap_or(0)),
            e["default_height"],
            e["recovery_height"]
        );
        let verified = step(&format!("{tag}: verify-escrow"), || {
            self.cli(
                &self.borrower,
                &[
                    "verify-escrow",
                    "--loan",
                    &id,
                    "--key",
                    &path(&self.borrower_key)?,
                    "--role",
                    "borrower",
                    "--terms",
                    &path(&terms_file)?,
                    "--electrum",
                    &self.env.electrum_url,
                ],
            )
        })?;
        ensure!(verified["address"] == e["address"]);
        println!(
            "[{tag}] verify-escrow (the borrower's own key and terms): OK, {} spending paths, none for the arbiter alone",
            verified["paths"].as_array().map_or(0, Vec::len)
        );
        Ok(accepted)
    }

    /// Fund the escrow from the borrower's BDK wallet, mine, wait until active.
    fn fund(&mut self, tag: &str, loan: &Value) -> anyhow::Result<()> {
        let id = loan["id"].as_str().context("id")?;
        let address = bitcoin::Address::from_str(loan["escrow"]["address"].as_str().context("a")?)?
            .require_network(Network::Regtest)?;
        let sats = loan["required_collateral_sat"].as_u64().context("sat")?;
        let tx = self.wallet.send(
            &address,
            Amount::from_sat(sats),
            FeeRate::from_sat_per_vb(2).context("rate")?,
        )?;
        self.env
            .wait_for_tx(&address.script_pubkey(), tx.compute_txid())?;
        self.env.mine(1)?;
        let height = self.env.height()?;
        let active = self.wait(id, "active", |v| v["state"] == "active")?;
        println!(
            "[{tag}] funded from the borrower's BDK wallet: {} in {}, mined at height {height}; active, LTV {}",
            btc(sats),
            tx.compute_txid(),
            active["ltv_bps"].as_u64().map_or("-".into(), pct)
        );
        Ok(())
    }

    /// `txid` as bitcoind has it in block `block` (checked confirmed), and the block's
    /// height.
    fn confirmed(
        &self,
        txid: &str,
        block: &bitcoin::BlockHash,
    ) -> anyhow::Result<(bitcoin::Transaction, u64)> {
        let tx = self
            .env
            .rpc
            .call("getrawtransaction", json!([txid, true, block.to_string()]))?;
        ensure!(
            tx["confirmations"].as_u64().unwrap_or(0) >= 1,
            "{txid} is not confirmed on chain"
        );
        let header = self
            .env
            .rpc
            .call("getblockheader", json!([block.to_string()]))?;
        let raw: bitcoin::Transaction =
            bitcoin::consensus::encode::deserialize_hex(tx["hex"].as_str().context("hex")?)?;
        Ok((raw, header["height"].as_u64().context("height")?))
    }

    /// What `tx` pays to `to`, in sats.
    fn paid(tx: &bitcoin::Transaction, to: &bitcoin::Address) -> u64 {
        tx.output
            .iter()
            .filter(|o| o.script_pubkey == to.script_pubkey())
            .map(|o| o.value.to_sat())
            .sum()
    }
}

fn open(rt: tokio::runtime::Runtime) -> anyhow::Result<Demo> {
    let env = step(
        "start bitcoind and electrs (regtest)",
        common::Regtest::start,
    )?;
    println!(
        "network: regtest bitcoind + electrs at {}, tip {}",
        env.electrum_url,
        env.height()?
    );
    let price = Arc::new(AtomicU64::new(10_000_000));
    let (kraken, bitstamp) = step("start the local price feeds", || feeds(&rt, price.clone()))?;
    let data = step("btc-escrow init", || DataDir::init(&env))?;
    step("configure the oracle", || {
        let config = data.path.join("btc-escrow.toml");
        let text = std::fs::read_to_string(&config)?;
        let more = text.replace(
            "[oracle]\nquorum = 1\ninterval_secs = 1",
            "[oracle]\nquorum = 2\ninterval_secs = 1",
        );
        ensure!(more != text, "not the file init writes");
        std::fs::write(
            &config,
            format!(
                "{more}\n[[oracle.sources]]\nname = \"kraken-local\"\nkind = \"kraken\"\nurl = \"{kraken}\"\n\n\
                 [[oracle.sources]]\nname = \"bitstamp-local\"\nkind = \"bitstamp\"\nurl = \"{bitstamp}\"\n"
            ),
        )?;
        Ok(())
    })?;
    let serve = step("btc-escrow serve", || Serve::start(&data.path))?;
    println!(
        "service: {} (OpenAPI at {}/openapi.json); oracle: operator + Kraken-format feed + Bitstamp-format feed, 2 must agree",
        serve.api.base, serve.api.base
    );
    let admin = data.admin_token.clone();
    let dir = tempfile::tempdir()?;
    let parties = common::escrow::Parties::new()?;
    let register = |name: &str, role: &str, key: &btc_escrow::keys::SigningKey| {
        let account = parties.account(key)?.to_string();
        let mut args = vec!["party", "create", "--name", name, "--role", role];
        args.extend([
            "--account-key",
            &account,
            "--json",
            "--api",
            &serve.api.base,
        ]);
        args.extend(["--token", &admin]);
        let made = run(&args)?.json()?;
        println!(
            "party: {role} {name} {} (account key {account})",
            made["id"].as_str().unwrap_or("")
        );
        Ok::<String, anyhow::Error>(made["token"].as_str().context("token")?.to_owned())
    };
    let lender = step("register the lender", || {
        register("Lender Ltd", "lender", &parties.lender)
    })?;
    let borrower = step("register the borrower", || {
        register("Bob", "borrower", &parties.borrower)
    })?;
    let lender_key = key_file(dir.path(), "lender.key", &parties.lender)?;
    let borrower_key = key_file(dir.path(), "borrower.key", &parties.borrower)?;
    let wallet = step("fund the borrower's BDK wallet", || {
        let mut w = common::wallet::TestWallet::new(&env)?;
        w.fund(&env, 1)?;
        Ok(w)
    })?;
    println!("borrower's BDK wallet: {}", btc(wallet.balance().to_sat()));
    let payout = common::wallet::TestWallet::new(&env)?.address();
    let return_to = common::wallet::TestWallet::new(&env)?.address();
    Ok(Demo {
        ledger: dir.path().join("repayments.jsonl"),
        env,
        _data: data,
        serve,
        rt,
        price,
        admin,
        lender,
        borrower,
        lender_key,
        borrower_key,
        wallet,
        payout,
        return_to,
        dir,
    })
}

fn main() -> std::process::ExitCode {
    let exit_after = std::env::args().any(|a| a == "--exit");
    let started = Instant::now();
    match demo(exit_after) {
        Ok(()) => {
            eprintln!("demo done in {:.0} s", started.elapsed().as_secs_f64());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn demo(exit_after: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let mut d = open(rt)?;
    step("price 100,000 USD", || d.set_price(10_000_000))?;
    d.api()
        .wait("/health", &d.admin, "fit to decide", |h| h["ok"] == true)?;
    println!("price: {} per BTC (all three sources)", usd(10_000_000));

    // The lender's co-signer, unattended.
    let cosigner = step("start the lender's cosign daemon", || {
        Ok(Daemon(
            Command::new(common::bin())
                .args(["cosign", "--api", &d.api().base, "--token", &d.lender])
                .arg("--key")
                .arg(&d.lender_key)
                .arg("--state-dir")
                .arg(d.dir.path().join("cosigner"))
                .arg("--ledger")
                .arg(&d.ledger)
                .args(["--electrum", &d.env.electrum_url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        ))
    })?;
    println!("lender: cosign daemon running (its own Electrum view, its own repayment ledger)");

    // Loan 1: margin call, breach, liquidation.
    let loan1 = d.offer_and_accept("loan 1")?;
    let id1 = loan1["id"].as_str().context("id")?.to_owned();
    step("loan 1: fund", || d.fund("loan 1", &loan1))?;
    step("loan 1: margin call", || {
        d.set_price(7_000_000)?;
        d.wait(&id1, "margin call", |v| v["state"] == "margin_call")?;
        // The view's LTV is at the latest aggregate: once it has the new price.
        let v = d.wait(&id1, "margin call priced", |v| {
            v["ltv_bps"].as_u64().is_some_and(|l| l >= 7_000)
        })?;
        println!(
            "[loan 1] price falls 30 % to {} → margin call, LTV {} (liquidation below {})",
            usd(7_000_000),
            v["ltv_bps"].as_u64().map_or("-".into(), pct),
            v["liquidation_price_minor"]
                .as_u64()
                .map_or("-".into(), usd)
        );
        Ok(())
    })?;
    let pending = step("loan 1: breach", || {
        d.set_price(6_200_000)?;
        let v = d.wait(&id1, "liquidation", |v| v["pending_psbt"].is_object())?;
        println!(
            "[loan 1] price falls to {} → LTV {} over the 80 % line, confirmed over 3 ticks → liquidation decided",
            usd(6_200_000),
            v["ltv_bps"].as_u64().map_or("-".into(), pct)
        );
        Ok(v["pending_psbt"].clone())
    })?;
    let owed = pending["owed_minor"].as_u64().unwrap_or(0);
    let price = pending["price_minor"].as_u64().unwrap_or(0);
    let share = |role: &str| {
        pending["outputs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["role"] == role)
            .filter_map(|o| o["amount_sat"].as_u64())
            .sum::<u64>()
    };
    println!(
        "[loan 1] liquidation PSBT (arbiter-signed): lender {} = {} owed × 1.05 at {}, borrower {}, fee {}",
        btc(share("lender")),
        usd(owed),
        usd(price),
        btc(share("borrower")),
        btc(pending["fee_sat"].as_u64().unwrap_or(0))
    );
    let txid1 = step(
        "loan 1: the cosign daemon signs, the service broadcasts",
        || {
            let v = d.wait(&id1, "broadcast", |v| {
                v["txids"].as_array().is_some_and(|t| !t.is_empty())
            })?;
            Ok(v["txids"][0].as_str().context("txid")?.to_owned())
        },
    )?;
    println!("[loan 1] co-signed by the lender's cosign daemon, broadcast: {txid1}");
    step("loan 1: mined", || {
        d.env
            .wait_for_tx(&d.payout.script_pubkey(), bitcoin::Txid::from_str(&txid1)?)?;
        let block = d.env.mine(1)?;
        d.wait(&id1, "liquidated", |v| v["state"] == "liquidated")?;
        let (tx, height) = d.confirmed(&txid1, block.first().context("a block")?)?;
        let (to_lender, to_borrower) = (Demo::paid(&tx, &d.payout), Demo::paid(&tx, &d.return_to));
        // The lender's share, independently: owed × 1.05 in sats at the decision
        // price, rounded up to the next sat.
        let expected =
            (u128::from(owed) * 10_500 * 100_000_000).div_ceil(10_000 * u128::from(price));
        ensure!(
            u128::from(to_lender) == expected,
            "the lender got {to_lender} sats, owed × 1.05 at the price is {expected}"
        );
        println!(
            "[loan 1] mined at height {height} → liquidated: the lender received {} (= {} × 1.05 at {} per BTC, rounded up to the sat), the borrower {}",
            btc(to_lender),
            usd(owed),
            usd(price),
            btc(to_borrower)
        );
        Ok(())
    })?;

    // Loan 2: repaid and released.
    step("price back to 100,000 USD", || d.set_price(10_000_000))?;
    println!("price: back to {}", usd(10_000_000));
    let loan2 = d.offer_and_accept("loan 2")?;
    let id2 = loan2["id"].as_str().context("id")?.to_owned();
    step("loan 2: fund", || d.fund("loan 2", &loan2))?;
    step("loan 2: repay", || {
        let ledger = d.ledger.to_str().context("ledger")?.to_owned();
        for _ in 0..3 {
            let v = d.loan(&id2)?;
            let owed = v["owed_minor"].as_u64().unwrap_or(0);
            if owed == 0 || v["state"] == "releasing" {
                break;
            }
            let after = d.cli(
                &d.lender,
                &[
                    "loan",
                    "repay",
                    &id2,
                    "--amount-minor",
                    &owed.to_string(),
                    "--ledger",
                    &ledger,
                ],
            )?;
            println!(
                "[loan 2] the lender records a repayment of {} → {}",
                usd(owed),
                after["state"].as_str().unwrap_or("")
            );
        }
        Ok(())
    })?;
    let txid2 = step("loan 2: release co-signed and broadcast", || {
        let v = d.wait(&id2, "release broadcast", |v| {
            v["txids"].as_array().is_some_and(|t| !t.is_empty())
        })?;
        Ok(v["txids"][0].as_str().context("txid")?.to_owned())
    })?;
    println!("[loan 2] release co-signed by the lender's cosign daemon, broadcast: {txid2}");
    step("loan 2: mined", || {
        d.env.wait_for_tx(
            &d.return_to.script_pubkey(),
            bitcoin::Txid::from_str(&txid2)?,
        )?;
        let block = d.env.mine(1)?;
        d.wait(&id2, "closed", |v| v["state"] == "closed")?;
        let (tx, height) = d.confirmed(&txid2, block.first().context("a block")?)?;
        println!(
            "[loan 2] mined at height {height} → closed: {} back at the borrower's address {} (0.2 BTC less the fee)",
            btc(Demo::paid(&tx, &d.return_to)),
            d.return_to
        );
        Ok(())
    })?;
    drop(cosigner);

    println!("summary: loan 1 {id1} liquidated by {txid1} (confirmed); loan 2 {id2} closed by {txid2} (confirmed)");
    let root = d.api().base.trim_end_matches("/v1").to_owned();
    println!("web page: {root}/  (sign in with a token below; the loan planner at {root}/planner)");
    println!(
        "api: {}  (openapi: {}/openapi.json)",
        d.api().base,
        d.api().base
    );
    println!(
        "tokens: admin {}  lender {}  borrower {}",
        d.admin, d.lender, d.borrower
    );
    if exit_after {
        return Ok(());
    }
    println!("serving until Ctrl-C");
    d.rt.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    println!("stopping");
    Ok(())
}
