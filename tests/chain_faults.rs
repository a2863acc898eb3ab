//! Chain faults under the running service (`serve` as a process, real bitcoind and
//! electrs), each checked through the API:
//! - reorgs of depth 1, 6 and 50 under a funding (the loan goes back to awaiting its
//!   collateral, is never expired though its funding deadline passed, and is active
//!   again when the funding is mined again), under a confirmed liquidation (back to
//!   liquidating, then liquidated again by the same transaction, the only one) and
//!   under a release (back to releasing, then closed again);
//! - a funding replaced by RBF before it confirms: counted once;
//! - electrs killed right after a block, while the service syncs: health says the
//!   chain is disconnected (503), nothing is lost when it is back;
//! - the escrow spent by the borrower's recovery path while a default liquidation
//!   waits: the lender's co-signature is finalized, the network refuses it as a
//!   conflict, health lists the refusal with its class, the loan is closed on chain
//!   from `liquidating`, and the refused transaction is not sent again.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bitcoin::{Amount, FeeRate};
use common::serve::Market;
use common::tools::{json_file, key_file, run};
use common::Reorg;
use electrum_client::ElectrumApi;
use reqwest::Method;
use serde_json::{json, Value};

const DEPTHS: [u32; 3] = [1, 6, 50];

fn loan(m: &Market, id: &str) -> anyhow::Result<Value> {
    m.api().get(&format!("/loans/{id}"), &m.admin)
}

fn wait_state(m: &Market, id: &str, state: &str) -> anyhow::Result<Value> {
    m.api().wait(&format!("/loans/{id}"), &m.admin, state, |l| {
        l["state"] == state
    })
}

fn event_names(m: &Market, id: &str) -> anyhow::Result<Vec<String>> {
    let all = m.api().get(&format!("/loans/{id}/events"), &m.admin)?;
    Ok(all
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["event"]["event"].as_str().map(str::to_owned))
        .collect())
}

fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

/// Mine until the escrow's last confirmed transaction has `depth` confirmations,
/// then replace that many blocks with empty ones. Their transactions go back to the
/// mempool, except after a deep `invalidateblock` (over 10 blocks) where Bitcoin Core
/// drops them: the borrower's wallet then sends its `fundings` again (the service
/// must send its own transactions again itself).
fn reorg_at(m: &Market, depth: u32, fundings: &[bitcoin::Transaction]) -> anyhow::Result<()> {
    m.env.mine(depth - 1)?;
    m.env.reorg(depth, Reorg::DropTxs)?;
    for tx in fundings {
        if !m.env.mempool_contains(tx.compute_txid())? {
            // Refused if it is still confirmed (the reorg did not reach it).
            let _ = m.env.broadcast_rpc(tx);
        }
    }
    Ok(())
}

#[test]
fn a_reorged_funding_reactivates_and_never_expires() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let mut terms = m.offer_terms();
    let deadline = btc_escrow::util::unix_now() + 30;
    terms["funding_deadline"] = json!(deadline);
    let id = m.active_with(&terms)?;
    let collateral = loan(&m, &id)?["collateral_sat"].clone();
    let funding = funding_of(&m, &id)?;
    let raw = vec![m.env.electrum()?.transaction_get(&funding)?];
    for depth in DEPTHS {
        reorg_at(&m, depth, &raw)?;
        wait_state(&m, &id, "awaiting_collateral").with_context(|| format!("depth {depth}"))?;
        if depth == 1 {
            // The deadline passes while the funding is out of the chain: never expired.
            while btc_escrow::util::unix_now() < deadline + 3 {
                let l = loan(&m, &id)?;
                ensure!(l["state"] == "awaiting_collateral", "depth {depth}: {l}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        ensure!(
            m.env.mempool_contains(funding)?,
            "depth {depth}: the funding {funding} left the mempool"
        );
        m.env.mine(1)?;
        let l = wait_state(&m, &id, "active").with_context(|| format!("depth {depth}"))?;
        ensure!(l["collateral_sat"] == collateral, "depth {depth}: {l}");
    }
    let names = event_names(&m, &id)?;
    ensure!(count(&names, "funding_reorged_out") == 3, "{names:?}");
    ensure!(count(&names, "reactivated") == 3, "{names:?}");
    ensure!(count(&names, "expired") == 0, "{names:?}");

    // electrs dies while the service syncs a new block: health says so; when it is
    // back the view catches up and nothing moved meanwhile.
    let burn = common::burn_address().to_string();
    m.env.rpc.call("generatetoaddress", json!([1, burn]))?;
    m.env.kill_electrs();
    let (status, health) = wait_health(&m, |h| h["chain"]["connected"] == false)?;
    ensure!(
        status == 503 && health["chain"]["reason"].is_string(),
        "{status} {health}"
    );
    m.env.rpc.call("generatetoaddress", json!([1, burn]))?;
    m.env.restart_electrs()?;
    let tip = m.env.height()?;
    wait_health(&m, |h| {
        h["ok"] == true && h["chain"]["tip_height"].as_u64() == Some(u64::from(tip))
    })?;
    let l = loan(&m, &id)?;
    ensure!(
        l["state"] == "active" && l["collateral_sat"] == collateral,
        "{l}"
    );
    Ok(())
}

/// The transaction that paid the loan's escrow.
fn funding_of(m: &Market, id: &str) -> anyhow::Result<bitcoin::Txid> {
    let l = loan(m, id)?;
    let script = m.escrow_of(&l)?.address().script_pubkey();
    let history = m.env.electrum()?.script_get_history(&script)?;
    Ok(history.first().context("no funding")?.tx_hash)
}

fn wait_health(m: &Market, ok: impl Fn(&Value) -> bool) -> anyhow::Result<(u16, Value)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = m.api().call(Method::GET, "/health", None, None, &[])?;
        if ok(&got.1) {
            return Ok(got);
        }
        ensure!(Instant::now() < deadline, "health never: {}", got.1);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Mine until every loan is `done` by its own transaction, the only one it sent: a
/// block as soon as all are in the mempool, or every 5 s (a transaction refused for
/// a missing parent is sent again at the next block).
fn confirm_all(m: &Market, loans: &[(&str, &str, &str)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut mined_at = Instant::now();
    loop {
        let mut done = true;
        for (id, txid, state) in loans {
            let l = loan(m, id)?;
            if l["state"] != *state {
                done = false;
                continue;
            }
            ensure!(l["confirmed_txid"] == *txid, "{id}: {l}");
            ensure!(l["txids"] == json!([txid]), "{id}: one transaction: {l}");
        }
        if done {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "never all confirmed: {loans:?}");
        let mut all_sent = true;
        for (_, txid, _) in loans {
            all_sent &= m.env.mempool_contains(txid.parse()?)?;
        }
        if all_sent || mined_at.elapsed() > Duration::from_secs(5) {
            m.env.mine(1)?;
            mined_at = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_reorged_liquidation_and_release_confirm_again() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let liquidated = m.active()?;
    let released = m.active()?;

    // The release: repaid in full, co-signed by the borrower.
    let path = format!("/loans/{released}");
    let owed = loan(&m, &released)?["owed_minor"]
        .as_u64()
        .context("owed")?;
    let mut l = m.api().expect(
        200,
        Method::POST,
        &format!("{path}/repayments"),
        &m.lender,
        Some(&json!({ "amount_minor": owed })),
    )?;
    if l["state"] != "releasing" {
        // A cent of interest accrued meanwhile.
        let rest = l["owed_minor"].as_u64().context("owed")?;
        l = m.api().expect(
            200,
            Method::POST,
            &format!("{path}/repayments"),
            &m.lender,
            Some(&json!({ "amount_minor": rest })),
        )?;
    }
    ensure!(l["state"] == "releasing", "{l}");
    let (_, signed) = m.borrower_signs(&released)?;
    let sent = m.api().expect(
        200,
        Method::POST,
        &format!("{path}/psbt"),
        &m.borrower,
        Some(&json!({ "psbt": signed })),
    )?;
    let release = sent["txid"].as_str().context("txid")?.to_owned();

    // The liquidation: breached, co-signed by the lender; both in one block.
    m.set_price(6_200_000)?;
    m.api().wait(
        &format!("/loans/{liquidated}"),
        &m.lender,
        "liquidating",
        |v| v["state"] == "liquidating" && v["pending_psbt"].is_object(),
    )?;
    let (_, signed) = m.lender_signs(&liquidated)?;
    let sent = m.post_psbt(&liquidated, &signed)?;
    let liquidation = sent["txid"].as_str().context("txid")?.to_owned();
    let both = [
        (liquidated.as_str(), liquidation.as_str(), "liquidated"),
        (released.as_str(), release.as_str(), "closed"),
    ];
    confirm_all(&m, &both)?;
    m.set_price(10_000_000)?;

    let raw = [&liquidated, &released]
        .iter()
        .map(|id| Ok(m.env.electrum()?.transaction_get(&funding_of(&m, id)?)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for depth in DEPTHS {
        reorg_at(&m, depth, &raw)?;
        wait_state(&m, &liquidated, "liquidating").with_context(|| format!("depth {depth}"))?;
        wait_state(&m, &released, "releasing").with_context(|| format!("depth {depth}"))?;
        confirm_all(&m, &both).with_context(|| format!("depth {depth}"))?;
    }
    for id in [&liquidated, &released] {
        let names = event_names(&m, id)?;
        ensure!(count(&names, "tx_reorged_out") == 3, "{id}: {names:?}");
        ensure!(count(&names, "tx_confirmed") == 4, "{id}: {names:?}");
    }
    Ok(())
}

#[test]
fn an_rbf_replaced_funding_counts_once() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let l = m.accepted()?;
    let id = l["id"].as_str().context("id")?.to_owned();
    let address = m.escrow_of(&l)?.address();
    let sat = l["required_collateral_sat"].as_u64().context("sat")?;
    let first = m.wallet.send(
        &address,
        Amount::from_sat(sat),
        FeeRate::from_sat_per_vb(2).context("rate")?,
    )?;
    m.env
        .wait_for_tx(&address.script_pubkey(), first.compute_txid())?;
    let second = m.wallet.bump_fee(
        first.compute_txid(),
        FeeRate::from_sat_per_vb(10).context("rate")?,
    )?;
    ensure!(second.compute_txid() != first.compute_txid());
    m.env
        .wait_for_tx(&address.script_pubkey(), second.compute_txid())?;
    ensure!(!m.env.mempool_contains(first.compute_txid())?, "replaced");
    m.env.mine(1)?;
    let l = wait_state(&m, &id, "active")?;
    ensure!(l["collateral_sat"] == sat, "counted once: {l}");
    Ok(())
}

#[test]
fn a_recovery_spend_during_a_pending_liquidation_closes_the_loan() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let dir = tempfile::tempdir()?;
    let mut terms = m.offer_terms();
    terms["term_secs"] = json!(600);
    terms["funding_deadline"] = json!(btc_escrow::util::unix_now() + 300);
    terms["grace_blocks"] = json!(2);
    terms["recovery_delay_blocks"] = json!(5);
    let id = m.active_with(&terms)?;
    let saved = loan(&m, &id)?;
    let recovery = saved["escrow"]["recovery_height"]
        .as_u64()
        .context("recovery_height")? as u32;
    // A breach: the liquidation is decided and waits for the lender.
    m.set_price(6_200_000)?;
    m.api()
        .wait(&format!("/loans/{id}"), &m.lender, "liquidating", |v| {
            v["state"] == "liquidating" && v["pending_psbt"].is_object()
        })?;
    let (_, signed) = m.lender_signs(&id)?;

    // The borrower leaves by its recovery path first.
    m.env.mine(recovery.saturating_sub(m.env.height()?))?;
    let file = json_file(dir.path(), "loan.json", &saved)?;
    let key = key_file(dir.path(), "borrower.key", &m.parties.borrower)?;
    let to = m.borrower_return.to_string();
    let out = run(&[
        "exit",
        "--loan-file",
        file.to_str().context("path")?,
        "--key",
        key.to_str().context("path")?,
        "--electrum",
        &m.env.electrum_url,
        "--to",
        &to,
        "--fee-rate",
        "5",
    ])?;
    out.ok()?;

    // The lender's co-signature arrives after it: finalized, refused as a conflict.
    let (status, sent) = m.api().call(
        Method::POST,
        &format!("/loans/{id}/psbt"),
        Some(&m.lender),
        Some(&json!({ "psbt": signed })),
        &[("Prefer", "respond-async")],
    )?;
    ensure!(status == 202 || status == 200, "{status} {sent}");
    let (_, health) = wait_health(&m, |h| {
        h["engine"]["refused_broadcasts"][&id]["class"] == "conflict"
    })?;
    let refused = &health["engine"]["refused_broadcasts"][&id];
    ensure!(
        refused["txid"] == sent["txid"] && refused["attempts"].as_u64() >= Some(1),
        "{health}"
    );
    m.env.mine(1)?;
    let l = wait_state(&m, &id, "closed_on_chain")?;
    ensure!(l["txids"] == json!([]), "ours never went out: {l}");
    wait_health(&m, |h| h["engine"]["refused_broadcasts"].get(&id).is_none())?;
    let sends = |m: &Market| {
        m.serve
            .stderr
            .lock()
            .map(|l| l.iter().filter(|l| l.contains("broadcast refused")).count())
            .unwrap_or(0)
    };
    let before = sends(&m);
    m.env.mine(2)?;
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        sends(&m) == before,
        "a closed loan's transaction was sent again"
    );
    Ok(())
}

/// A TCP proxy to electrs whose answers can be delayed.
struct SlowProxy {
    port: u16,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SlowProxy {
    fn start(upstream: &str) -> anyhow::Result<Self> {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicU64, Ordering};
        let upstream = upstream.trim_start_matches("tcp://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let delay_ms = std::sync::Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
                let (mut s_in, mut c_out, delay) = (server, client, delay.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = s_in.read(&mut buf) {
                        let ms = delay.load(Ordering::SeqCst);
                        if ms > 0 {
                            std::thread::sleep(Duration::from_millis(ms));
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(Self { port, delay_ms })
    }

    fn slow(&self, ms: u64) {
        self.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

/// electrs behind a proxy that starts answering 8 s late: the view gets older than
/// `max_chain_view_age_secs` (3 s here), health says so, and a breaching price
/// decides nothing meanwhile (no breach tick counted); at full speed again the same
/// price is confirmed and liquidates.
#[test]
fn a_slow_electrum_view_decides_nothing() -> anyhow::Result<()> {
    let proxy = std::cell::RefCell::new(None);
    let mut m = Market::open_with(|data| {
        let path = data.join("btc-escrow.toml");
        let text = std::fs::read_to_string(&path)?;
        let url = text
            .lines()
            .find_map(|l| l.strip_prefix("electrum_url = \""))
            .and_then(|l| l.strip_suffix('"'))
            .context("electrum_url")?
            .to_owned();
        let p = SlowProxy::start(&url)?;
        let changed = text
            .replace(&url, &format!("tcp://127.0.0.1:{}", p.port))
            .replace(
                "max_chain_view_age_secs = 60",
                "max_chain_view_age_secs = 3",
            );
        ensure!(changed.contains("max_chain_view_age_secs = 3"), "{changed}");
        std::fs::write(&path, changed)?;
        *proxy.borrow_mut() = Some(p);
        Ok(())
    })?;
    let proxy = proxy.into_inner().context("the proxy")?;
    let id = m.active()?;
    proxy.slow(8_000);
    let (status, health) = wait_health(&m, |h| {
        h["chain"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("too slowly"))
    })?;
    ensure!(
        status == 503 && health["chain"]["connected"] == false,
        "{health}"
    );
    m.set_price(6_200_000)?;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let l = loan(&m, &id)?;
        ensure!(
            l["state"] == "active" && l["breach_ticks"] == 0,
            "decided on an old view: {l}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    proxy.slow(0);
    wait_health(&m, |h| h["chain"]["connected"] == true)?;
    m.set_price(6_200_000)?;
    m.api()
        .wait(&format!("/loans/{id}"), &m.lender, "liquidating", |v| {
            v["state"] == "liquidating"
        })?;
    Ok(())
}
