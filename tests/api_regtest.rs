//! `btc-escrow serve` as a separate process, driven only through its HTTP API, against
//! a real bitcoind and electrs; the lender signs with its own key outside the server,
//! re-deriving the escrow from the three account keys. One scenario per test:
//! - the whole lifecycle: the admin registers a lender and a borrower; the lender
//!   offers, the borrower accepts and funds the escrow; the manual price falls into the
//!   margin-call band, then into the liquidation band for `confirm_ticks` ticks; the
//!   pending PSBT shows the liquidation; the lender co-signs it; it is broadcast,
//!   mined, and the loan is `liquidated`; the events list every step in order;
//! - `serve` killed (SIGKILL) between "decision stored" and "broadcast": restarted, the
//!   same PSBT is pending, byte for byte; co-signed, it is broadcast once and confirms;
//! - `serve` killed between "co-signature stored" and "broadcast" (electrs is down,
//!   so the broadcast cannot happen before the kill): restarted with electrs back, it
//!   broadcasts that transaction, once, and the loan is `liquidated`.

mod common;

use std::str::FromStr;

use anyhow::{ensure, Context};
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, FeeRate, Network, Txid};
use btc_escrow::keys::AccountKey;
use btc_escrow::policy::{EscrowDescriptor, PartyAccounts, PolicyTemplate};
use btc_escrow::tx::{self, FeeCap};
use btc_escrow::util::unix_now;
use common::escrow::Parties;
use common::serve::{DataDir, Serve};
use common::wallet::TestWallet;
use common::Regtest;
use reqwest::Method;
use serde_json::{json, Value};

/// A loan in liquidation, waiting for the lender's co-signature.
struct Liquidating {
    env: Regtest,
    data: DataDir,
    serve: Serve,
    parties: Parties,
    lender: String,
    borrower: String,
    id: String,
    lender_payout: bitcoin::Address,
}

fn set_price(serve: &Serve, admin: &str, minor: u64) -> anyhow::Result<()> {
    serve.api.expect(
        200,
        Method::PUT,
        "/oracle/manual",
        admin,
        Some(&json!({ "price_minor": minor })),
    )?;
    Ok(())
}

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["state"] == want
}

/// Register the parties, offer, accept at $100,000, fund 0.2 BTC, confirm; margin
/// call at $70,000; breach at $62,000 until the liquidation is decided.
fn liquidating() -> anyhow::Result<Liquidating> {
    let env = Regtest::start()?;
    let data = DataDir::init(&env)?;
    let serve = Serve::start(&data.path)?;
    let admin = data.admin_token.clone();
    let api = serve.api.clone();
    let parties = Parties::new()?;

    // Parties.
    let party = |name: &str, role: &str, key: &AccountKey| -> anyhow::Result<String> {
        let made = api.expect(
            201,
            Method::POST,
            "/parties",
            &admin,
            Some(&json!({"name": name, "role": role, "account_key": key.to_string()})),
        )?;
        ensure!(made["role"] == role && made["id"].is_string());
        Ok(made["token"].as_str().context("token")?.to_owned())
    };
    let lender = party("Lender Ltd", "lender", &parties.account(&parties.lender)?)?;
    let borrower = party("Bob", "borrower", &parties.account(&parties.borrower)?)?;
    let me = api.get("/parties/me", &lender)?;
    ensure!(me["role"] == "lender" && me["name"] == "Lender Ltd", "{me}");

    // Offer and accept.
    let lender_payout = TestWallet::new(&env)?.address();
    let borrower_return = TestWallet::new(&env)?.address();
    let offer = json!({
        "principal_minor": 1_000_000, "currency": "USD", "apr_bps": 1_000,
        "term_secs": 90 * 86_400, "initial_ltv_bps": 5_000, "margin_call_ltv_bps": 7_000,
        "liquidation_ltv_bps": 8_000, "liquidation_penalty_bps": 500, "confirm_ticks": 3,
        "grace_blocks": 144, "recovery_delay_blocks": 1_000,
        "funding_deadline": unix_now() + 86_400,
        "lender_payout_address": lender_payout.to_string(), "min_confirmations": 1,
    });
    let loan = api.expect(201, Method::POST, "/loans", &lender, Some(&offer))?;
    ensure!(loan["state"] == "offered", "{loan}");
    let id = loan["id"].as_str().context("id")?.to_owned();
    let offers = api.get("/offers", &borrower)?;
    ensure!(offers
        .as_array()
        .is_some_and(|o| o.len() == 1 && o[0]["id"] == id.as_str()));

    set_price(&serve, &admin, 10_000_000)?;
    api.wait("/health", &admin, "fit to decide", |h| h["ok"] == true)?;
    let loan = api.expect(
        200,
        Method::POST,
        &format!("/loans/{id}/accept"),
        &borrower,
        Some(&json!({ "borrower_return_address": borrower_return.to_string() })),
    )?;
    ensure!(loan["state"] == "awaiting_collateral", "{loan}");
    ensure!(loan["required_collateral_sat"] == 20_000_000, "{loan}");
    ensure!(
        loan["borrower_id"].is_string()
            && loan["terms"]["borrower_return_address"] == borrower_return.to_string().as_str()
    );

    // The borrower re-derives the escrow from the three account keys before funding.
    let escrow = escrow_of(&loan, &parties, &data)?;
    let address = escrow.address();
    ensure!(loan["escrow"]["address"] == address.to_string().as_str());
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 1)?;
    let funding = wallet.send(
        &address,
        Amount::from_sat(20_000_000),
        FeeRate::from_sat_per_vb(2).context("rate")?,
    )?;
    env.wait_for_tx(&address.script_pubkey(), funding.compute_txid())?;
    env.mine(1)?;
    let path = format!("/loans/{id}");
    api.wait(&path, &borrower, "active", state_is("active"))?;

    set_price(&serve, &admin, 7_000_000)?;
    let loan = api.wait(&path, &borrower, "margin call", state_is("margin_call"))?;
    ensure!(
        loan["ltv_bps"]
            .as_u64()
            .is_some_and(|l| (7_100..7_200).contains(&l)),
        "{loan}"
    );
    set_price(&serve, &admin, 6_200_000)?;
    api.wait(&path, &lender, "liquidating", |v| {
        v["state"] == "liquidating" && v["pending_psbt"].is_object()
    })?;
    Ok(Liquidating {
        env,
        data,
        serve,
        parties,
        lender,
        borrower,
        id,
        lender_payout,
    })
}

/// The escrow, re-derived from the loan's descriptor and the three account keys.
fn escrow_of(loan: &Value, parties: &Parties, data: &DataDir) -> anyhow::Result<EscrowDescriptor> {
    let accounts = PartyAccounts {
        borrower: parties.account(&parties.borrower)?,
        lender: parties.account(&parties.lender)?,
        arbiter: AccountKey::parse("arbiter", &data.arbiter_account_key, Network::Regtest)?,
    };
    Ok(EscrowDescriptor::parse(
        loan["escrow"]["descriptor"]
            .as_str()
            .context("descriptor")?,
        Network::Regtest,
        &accounts,
        &PolicyTemplate::default(),
    )?)
}

impl Liquidating {
    fn path(&self) -> String {
        format!("/loans/{}", self.id)
    }

    /// The pending PSBT, signed by the lender outside the server.
    fn lender_signs(&self) -> anyhow::Result<(Value, String)> {
        let api = &self.serve.api;
        let pending = api.get(&format!("{}/psbt", self.path()), &self.lender)?;
        let loan = api.get(&self.path(), &self.lender)?;
        let escrow = escrow_of(&loan, &self.parties, &self.data)?;
        let mut psbt = Psbt::from_str(pending["psbt"].as_str().context("psbt")?)?;
        tx::sign(
            &mut psbt,
            &self.parties.lender,
            &escrow,
            &FeeCap::default(),
            &self.parties.secp,
        )?;
        Ok((pending, psbt.to_string()))
    }

    fn post(&self, psbt: &str) -> anyhow::Result<Value> {
        self.serve.api.expect(
            200,
            Method::POST,
            &format!("{}/psbt", self.path()),
            &self.lender,
            Some(&json!({ "psbt": psbt })),
        )
    }

    /// Mine and wait for `liquidated` by `txid`, the only transaction of the decision.
    fn mined_and_liquidated(&self, txid: Txid) -> anyhow::Result<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.env.mempool_contains(txid)? {
            ensure!(
                std::time::Instant::now() < deadline,
                "{txid} never broadcast"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        self.env.mine(1)?;
        let loan = self.serve.api.wait(
            &self.path(),
            &self.borrower,
            "liquidated",
            state_is("liquidated"),
        )?;
        ensure!(
            loan["confirmed_txid"] == txid.to_string().as_str(),
            "{loan}"
        );
        ensure!(
            loan["txids"] == json!([txid.to_string()]),
            "one broadcast: {loan}"
        );
        Ok(loan)
    }
}

#[test]
fn the_whole_lifecycle_through_http_only() -> anyhow::Result<()> {
    let l = liquidating()?;
    let (pending, signed) = l.lender_signs()?;
    ensure!(pending["kind"] == "liquidation", "{pending}");
    let outputs = pending["outputs"].as_array().context("outputs")?;
    let lender_out = outputs
        .iter()
        .find(|o| o["role"] == "lender")
        .context("lender output")?;
    ensure!(lender_out["address"] == l.lender_payout.to_string().as_str());
    let paid: u64 = outputs
        .iter()
        .filter_map(|o| o["amount_sat"].as_u64())
        .sum();
    ensure!(
        paid + pending["fee_sat"].as_u64().context("fee")? == 20_000_000,
        "{pending}"
    );
    let sent = l.post(&signed)?;
    let txid = Txid::from_str(sent["txid"].as_str().context("txid")?)?;
    // Posted again: the same answer, nothing new.
    ensure!(l.post(&signed)?["txid"] == sent["txid"]);
    l.mined_and_liquidated(txid)?;

    let events = l
        .serve
        .api
        .get(&format!("{}/events", l.path()), &l.borrower)?;
    let names: Vec<&str> = events
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["event"]["event"].as_str())
        .collect();
    let order = [
        "accepted",
        "activated",
        "margin_call",
        "breach_tick",
        "liquidation_decided",
        "tx_broadcast",
        "tx_confirmed",
    ];
    let mut at = 0;
    for want in order {
        at += names[at..]
            .iter()
            .position(|n| *n == want)
            .with_context(|| format!("{want} after {at} in {names:?}"))?;
    }
    let seqs: Vec<u64> = events
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["loan_seq"].as_u64())
        .collect();
    ensure!(
        seqs == (0..seqs.len() as u64).collect::<Vec<_>>(),
        "no gap: {seqs:?}"
    );
    l.serve.stop()
}

#[test]
fn serve_killed_after_the_decision_completes_it_exactly_once() -> anyhow::Result<()> {
    let mut l = liquidating()?;
    let before = l.serve.api.get(&format!("{}/psbt", l.path()), &l.lender)?;
    l.serve.kill()?;
    l.serve = Serve::start(&l.data.path)?;
    let after = l.serve.api.wait(
        &format!("{}/psbt", l.path()),
        &l.lender,
        "the pending PSBT",
        |p| p["psbt"].is_string(),
    )?;
    ensure!(
        after["psbt"] == before["psbt"],
        "the same PSBT, byte for byte"
    );
    let (_, signed) = l.lender_signs()?;
    let txid = Txid::from_str(l.post(&signed)?["txid"].as_str().context("txid")?)?;
    l.mined_and_liquidated(txid)?;
    l.serve.stop()
}

#[test]
fn serve_killed_after_the_cosignature_completes_it_exactly_once() -> anyhow::Result<()> {
    let mut l = liquidating()?;
    let (_, signed) = l.lender_signs()?;
    l.env.kill_electrs();
    let sent = l.post(&signed)?;
    ensure!(sent["broadcast"] == false, "electrs is down: {sent}");
    let txid = Txid::from_str(sent["txid"].as_str().context("txid")?)?;
    ensure!(!l.env.mempool_contains(txid)?);
    l.serve.kill()?;
    l.env.restart_electrs()?;
    l.serve = Serve::start(&l.data.path)?;
    let loan = l.serve.api.get(&l.path(), &l.lender)?;
    ensure!(
        loan["pending_psbt"].is_null(),
        "the co-signature was kept: {loan}"
    );
    l.mined_and_liquidated(txid)?;
    l.serve.stop()
}
