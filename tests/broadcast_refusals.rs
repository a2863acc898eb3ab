//! A broadcast refused for its fee, through the running service. The service is
//! configured to price transactions at 50 sat/kvB (its fee floor lowered to 10),
//! under Bitcoin Core's minimum relay fee (100 since Core 29): the lender co-signs the
//! liquidation, the network refuses it (`fee_too_low`), health lists the refusal,
//! and the service bumps the fee at once — a new attempt of the same decision at
//! 1,050 sat/kvB, signed by the arbiter, the same amount to the lender — which the
//! lender co-signs; it is accepted, mined, and the loan is liquidated by it. The
//! refusal then leaves health.

mod common;

use anyhow::{ensure, Context};
use common::serve::Market;
use reqwest::Method;
use serde_json::{json, Value};

fn lender_output(pending: &Value) -> anyhow::Result<u64> {
    pending["outputs"]
        .as_array()
        .context("outputs")?
        .iter()
        .find(|o| o["role"] == "lender")
        .and_then(|o| o["amount_sat"].as_u64())
        .context("the lender's output")
}

#[test]
fn a_fee_too_low_is_bumped_at_once_and_shown_in_health() -> anyhow::Result<()> {
    let mut m = Market::open_with(|data| {
        let path = data.join("btc-escrow.toml");
        let text = std::fs::read_to_string(&path)?;
        let cheap = text
            .replace("min_sat_per_kvb = 1000", "min_sat_per_kvb = 10")
            .replace("fallback_sat_per_kvb = 2000", "fallback_sat_per_kvb = 50");
        ensure!(cheap.contains("fallback_sat_per_kvb = 50\n"), "{cheap}");
        std::fs::write(&path, cheap)?;
        Ok(())
    })?;
    let id = m.active()?;
    let path = format!("/loans/{id}");
    m.set_price(6_200_000)?;
    m.api().wait(&path, &m.lender, "liquidating", |v| {
        v["state"] == "liquidating" && v["pending_psbt"].is_object()
    })?;
    let (first, signed) = m.lender_signs(&id)?;
    ensure!(first["attempt"] == 0, "{first}");
    let (status, sent) = m.api().call(
        Method::POST,
        &format!("{path}/psbt"),
        Some(&m.lender),
        Some(&json!({ "psbt": signed })),
        &[("Prefer", "respond-async")],
    )?;
    ensure!(status == 202 || status == 200, "{status} {sent}");

    // Refused for its fee: shown in health, and bumped at once.
    let health = m.api().wait_every(
        std::time::Duration::from_millis(100),
        "/health",
        &m.admin,
        "the refusal in health",
        |h| h["engine"]["refused_broadcasts"][&id]["class"] == "fee_too_low",
    );
    // Health answers 200 only when fit to decide, which it is: the wait reads it.
    let health = health?;
    ensure!(
        health["engine"]["refused_broadcasts"][&id]["txid"] == sent["txid"],
        "{health}"
    );
    let (_, metrics) = m.api().root_text("/metrics")?;
    ensure!(
        metrics
            .lines()
            .any(|l| l == "btc_escrow_broadcasts_refused 1"),
        "{metrics}"
    );
    let bumped = m
        .api()
        .wait(&format!("{path}/psbt"), &m.lender, "a bump", |p| {
            p["attempt"] == 1
        })?;
    ensure!(
        lender_output(&bumped)? == lender_output(&first)?,
        "the lender's amount moved: {first} {bumped}"
    );
    ensure!(
        bumped["fee_sat"].as_u64() > first["fee_sat"].as_u64(),
        "not a higher fee: {first} {bumped}"
    );

    let (_, signed) = m.lender_signs(&id)?;
    let sent = m.post_psbt(&id, &signed)?;
    let txid: bitcoin::Txid = sent["txid"].as_str().context("txid")?.parse()?;
    ensure!(sent["broadcast"] == true, "{sent}");
    ensure!(m.env.mempool_contains(txid)?, "{txid} not in the mempool");
    m.env.mine(1)?;
    let l = m.api().wait(&path, &m.lender, "liquidated", |v| {
        v["state"] == "liquidated"
    })?;
    ensure!(l["confirmed_txid"] == txid.to_string().as_str(), "{l}");
    m.api().wait("/health", &m.admin, "the refusal gone", |h| {
        h["engine"]["refused_broadcasts"].get(&id).is_none()
    })?;
    Ok(())
}
