//! `btc-escrow serve` as a separate process, driven only through its HTTP API, against
//! a real bitcoind and electrs; the lender signs with its own key outside the server,
//! re-deriving the escrow from the three account keys. One scenario per test:
//! - the whole lifecycle: the admin registers a lender and a borrower; the lender
//!   offers, the borrower accepts and funds the escrow; the manual price falls into the
//!   margin-call band, then into the liquidation band for `confirm_ticks` ticks; the
//!   pending PSBT shows the liquidation; the lender co-signs it; it is broadcast,
//!   mined, and the loan is `liquidated`; the events list and the SSE stream show
//!   every step in order, and the stream resumes from `Last-Event-ID` without a gap
//!   or a repeat; `/metrics` counts it;
//! - `serve` killed (SIGKILL) between "decision stored" and "broadcast": restarted, the
//!   same PSBT is pending, byte for byte; co-signed, it is broadcast once and confirms;
//! - a repaid loan's release co-signed by the borrower over HTTP, mined: `closed`, the
//!   coins at the borrower's return address;
//! - `serve` killed between "co-signature stored" and "broadcast" (electrs is down,
//!   so the broadcast cannot happen before the kill): restarted with electrs back, it
//!   broadcasts that transaction, once, and the loan is `liquidated`.

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bitcoin::Txid;
use common::serve::{Market, Serve};
use serde_json::{json, Value};

/// A loan in liquidation, waiting for the lender's co-signature.
struct Liquidating {
    m: Market,
    id: String,
}

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["state"] == want
}

/// The market opened, a loan active (0.2 BTC for $10,000); margin call at $70,000;
/// breach at $62,000 until the liquidation is decided.
fn liquidating() -> anyhow::Result<Liquidating> {
    let mut m = Market::open()?;
    let me = m.api().get("/parties/me", &m.lender)?;
    ensure!(me["role"] == "lender" && me["name"] == "Lender Ltd", "{me}");
    let id = m.active()?;
    let path = format!("/loans/{id}");
    m.set_price(7_000_000)?;
    let loan = m
        .api()
        .wait(&path, &m.borrower, "margin call", state_is("margin_call"))?;
    ensure!(
        loan["ltv_bps"]
            .as_u64()
            .is_some_and(|l| (7_100..7_200).contains(&l)),
        "{loan}"
    );
    m.set_price(6_200_000)?;
    m.api().wait(&path, &m.lender, "liquidating", |v| {
        v["state"] == "liquidating" && v["pending_psbt"].is_object()
    })?;
    Ok(Liquidating { m, id })
}

impl Liquidating {
    fn path(&self) -> String {
        format!("/loans/{}", self.id)
    }

    /// Mine and wait for `liquidated` by `txid`, the only transaction of the decision.
    fn mined_and_liquidated(&self, txid: Txid) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.m.env.mempool_contains(txid)? {
            ensure!(Instant::now() < deadline, "{txid} never broadcast");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.m.env.mine(1)?;
        let loan = self.m.api().wait(
            &self.path(),
            &self.m.borrower,
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
    let m = &l.m;
    let (pending, signed) = m.lender_signs(&l.id)?;
    ensure!(pending["kind"] == "liquidation", "{pending}");
    let outputs = pending["outputs"].as_array().context("outputs")?;
    let lender_out = outputs
        .iter()
        .find(|o| o["role"] == "lender")
        .context("lender output")?;
    ensure!(lender_out["address"] == m.lender_payout.to_string().as_str());
    ensure!(outputs.iter().any(|o| o["role"] == "borrower"));
    let paid: u64 = outputs
        .iter()
        .filter_map(|o| o["amount_sat"].as_u64())
        .sum();
    ensure!(
        paid + pending["fee_sat"].as_u64().context("fee")? == 20_000_000,
        "{pending}"
    );
    let sent = m.post_psbt(&l.id, &signed)?;
    ensure!(sent["broadcast"] == true, "{sent}");
    let txid = Txid::from_str(sent["txid"].as_str().context("txid")?)?;
    // Posted again: the same answer, nothing new.
    ensure!(m.post_psbt(&l.id, &signed)?["txid"] == sent["txid"]);
    l.mined_and_liquidated(txid)?;

    let events = m.api().get(&format!("{}/events", l.path()), &m.borrower)?;
    let events = events.as_array().context("events")?;
    let names: Vec<&str> = events
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
        .iter()
        .filter_map(|e| e["loan_seq"].as_u64())
        .collect();
    ensure!(
        seqs == (0..seqs.len() as u64).collect::<Vec<_>>(),
        "no gap: {seqs:?}"
    );

    // The SSE stream shows the same events, in order, each with its global sequence;
    // resumed after the third, it shows exactly the rest.
    let n = events.len();
    let streamed = m.api().sse(&m.borrower, None, |got| got.len() >= n)?;
    ensure!(streamed.len() == n);
    for ((id, name, data), listed) in streamed.iter().zip(events) {
        ensure!(
            Some(*id) == listed["global_seq"].as_u64(),
            "{id} vs {listed}"
        );
        ensure!(data == listed, "{data} vs {listed}");
        ensure!(
            name == listed["event"]["event"].as_str().unwrap_or(""),
            "{name}"
        );
    }
    let third = streamed[2].0;
    let rest = m
        .api()
        .sse(&m.borrower, Some(third), |got| got.len() >= n - 3)?;
    let ids: Vec<u64> = rest.iter().map(|(i, _, _)| *i).collect();
    let want: Vec<u64> = streamed[3..].iter().map(|(i, _, _)| *i).collect();
    ensure!(ids == want, "resumed: {ids:?} vs {want:?}");

    // The metrics count it.
    let (status, metrics) = m.api().root_text("/metrics")?;
    ensure!(status == 200, "{metrics}");
    for line in [
        "btc_escrow_loans{state=\"liquidated\"} 1",
        "btc_escrow_broadcasts 1",
        "btc_escrow_chain_connected 1",
        "btc_escrow_cosign_latency_seconds_count 1",
        "btc_escrow_http_requests_total{route=\"/v1/loans/{id}/psbt\",method=\"POST\",status=\"200\"} 2",
    ] {
        ensure!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let Liquidating { m, .. } = l;
    m.serve.stop()
}

#[test]
fn serve_killed_after_the_decision_completes_it_exactly_once() -> anyhow::Result<()> {
    let mut l = liquidating()?;
    let psbt_path = format!("{}/psbt", l.path());
    let before = l.m.api().get(&psbt_path, &l.m.lender)?;
    l.m.serve.kill()?;
    l.m.serve = Serve::start(&l.m.data.path)?;
    let after =
        l.m.api()
            .wait(&psbt_path, &l.m.lender, "the pending PSBT", |p| {
                p["psbt"].is_string()
            })?;
    ensure!(
        after["psbt"] == before["psbt"],
        "the same PSBT, byte for byte"
    );
    let (_, signed) = l.m.lender_signs(&l.id)?;
    let sent = l.m.post_psbt(&l.id, &signed)?;
    let txid = Txid::from_str(sent["txid"].as_str().context("txid")?)?;
    l.mined_and_liquidated(txid)?;
    let Liquidating { m, .. } = l;
    m.serve.stop()
}

#[test]
fn serve_killed_after_the_cosignature_completes_it_exactly_once() -> anyhow::Result<()> {
    let mut l = liquidating()?;
    let (_, signed) = l.m.lender_signs(&l.id)?;
    l.m.env.kill_electrs();
    let sent = l.m.post_psbt(&l.id, &signed)?;
    ensure!(sent["broadcast"] == false, "electrs is down: {sent}");
    let txid = Txid::from_str(sent["txid"].as_str().context("txid")?)?;
    ensure!(!l.m.env.mempool_contains(txid)?);
    l.m.serve.kill()?;
    l.m.env.restart_electrs()?;
    l.m.serve = Serve::start(&l.m.data.path)?;
    let loan = l.m.api().get(&l.path(), &l.m.lender)?;
    ensure!(
        loan["pending_psbt"].is_null(),
        "the co-signature was kept: {loan}"
    );
    l.mined_and_liquidated(txid)?;
    let Liquidating { m, .. } = l;
    m.serve.stop()
}

/// The lender records the full repayment over HTTP: the release is decided, the
/// borrower co-signs it with its own key outside the server, it is broadcast and
/// mined, the loan is `closed`, and the borrower's return address holds the
/// collateral minus the fee.
#[test]
fn a_repaid_loan_is_released_to_the_borrower_over_http() -> anyhow::Result<()> {
    use std::str::FromStr;
    let mut m = Market::open()?;
    let id = m.active()?;
    let path = format!("/loans/{id}");
    let owed = m.api().get(&path, &m.lender)?["owed_minor"]
        .as_u64()
        .context("owed")?;
    // Interest accrues by the second: what was owed when read, then what is left.
    let loan = m.api().expect(
        200,
        reqwest::Method::POST,
        &format!("{path}/repayments"),
        &m.lender,
        Some(&json!({ "amount_minor": owed })),
    )?;
    let loan = if loan["state"] == "releasing" {
        loan
    } else {
        let rest = loan["owed_minor"].as_u64().context("owed")?;
        m.api().expect(
            200,
            reqwest::Method::POST,
            &format!("{path}/repayments"),
            &m.lender,
            Some(&json!({ "amount_minor": rest })),
        )?
    };
    ensure!(loan["state"] == "releasing", "{loan}");
    let pending = m.api().get(&format!("{path}/psbt"), &m.borrower)?;
    ensure!(pending["kind"] == "release", "{pending}");
    let outputs = pending["outputs"].as_array().context("outputs")?;
    ensure!(
        outputs.len() == 1 && outputs[0]["role"] == "borrower",
        "{pending}"
    );
    let (_, signed) = m.borrower_signs(&id)?;
    let sent = m.api().expect(
        200,
        reqwest::Method::POST,
        &format!("{path}/psbt"),
        &m.borrower,
        Some(&json!({ "psbt": signed })),
    )?;
    let txid = Txid::from_str(sent["txid"].as_str().context("txid")?)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !m.env.mempool_contains(txid)? {
        ensure!(Instant::now() < deadline, "{txid} never broadcast");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tx = m
        .env
        .rpc
        .call("getrawtransaction", json!([txid.to_string(), true]))?;
    m.env.mine(1)?;
    let closed = m
        .api()
        .wait(&path, &m.borrower, "closed", state_is("closed"))?;
    ensure!(
        closed["confirmed_txid"] == txid.to_string().as_str(),
        "{closed}"
    );
    let vout = &tx["vout"][0];
    ensure!(
        vout["scriptPubKey"]["address"] == m.borrower_return.to_string().as_str(),
        "{tx}"
    );
    // bitcoind writes BTC as a JSON number; bitcoin's parser reads it exactly.
    let paid =
        bitcoin::Amount::from_str_in(&vout["value"].to_string(), bitcoin::Denomination::Bitcoin)?
            .to_sat();
    ensure!(
        paid + pending["fee_sat"].as_u64().context("fee")? == 20_000_000,
        "{tx}"
    );
    m.serve.stop()
}
