//! The lender's co-signer (`btc-escrow cosign`) against a real `serve`, bitcoind and
//! electrs:
//! - behind a hostile server (a proxy in this test that rewrites the pending PSBT the
//!   real server shows), it refuses, each with its reason in `status.json`, a
//!   liquidation paying the lender less than owed × (1 + penalty), one paying the
//!   borrower's share elsewhere, one with an extra input of the lender's own wallet,
//!   one with a fee above its cap, and a loan it does not own; the loan stays pending.
//!   The honest PSBT it signs, and the liquidation confirms;
//! - as a daemon following the event stream with its own Electrum view, it co-signs a
//!   release after the lender recorded the full repayment; killed (SIGKILL) and
//!   restarted, it co-signs the liquidation that came while it was down, and each
//!   decision was signed once, with the transaction that confirmed.

mod common;

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{ensure, Context};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, OutPoint, Transaction, TxIn, TxOut};
use common::serve::Market;
use common::tools::{key_file, run};
use serde_json::{json, Value};

type Tamper = Arc<dyn Fn(&mut Value) + Send + Sync>;

#[derive(Clone)]
struct Proxy {
    upstream: String,
    tamper: Arc<std::sync::Mutex<Tamper>>,
    client: reqwest::Client,
}

async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|q| q.as_str().to_owned())
        .unwrap_or_default();
    if path.starts_with("/v1/events/stream") {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let method = req.method().clone();
    let auth = req.headers().get("authorization").cloned();
    let body: Bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let root = p.upstream.trim_end_matches("/v1");
    let mut out = p
        .client
        .request(method.clone(), format!("{root}{path}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(a) = auth {
        out = out.header("authorization", a);
    }
    let Ok(answer) = out.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::OK);
    let text = answer.text().await.unwrap_or_default();
    let is_loans = method == reqwest::Method::GET
        && (path == "/v1/loans"
            || (path.starts_with("/v1/loans/") && path.matches('/').count() == 3));
    if !is_loans {
        return (status, text).into_response();
    }
    let mut v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let tamper = p.tamper.lock().expect("lock").clone();
    tamper(&mut v);
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// A proxy on a free port in front of `upstream`: its `/v1` base and its tamper slot.
fn hostile(
    rt: &tokio::runtime::Runtime,
    upstream: &str,
) -> anyhow::Result<(String, Arc<std::sync::Mutex<Tamper>>)> {
    let tamper: Arc<std::sync::Mutex<Tamper>> = Arc::new(std::sync::Mutex::new(Arc::new(|_| {})));
    let proxy = Proxy {
        upstream: upstream.to_owned(),
        tamper: tamper.clone(),
        client: reqwest::Client::new(),
    };
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    rt.spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}/v1"), tamper))
}

/// Rewrite the pending PSBT of every loan shown (a list or one loan) with `f`.
fn with_psbt(f: impl Fn(&mut Psbt) + Send + Sync + 'static) -> Tamper {
    Arc::new(move |body: &mut Value| {
        let one = |loan: &mut Value| {
            let Some(text) = loan["pending_psbt"]["psbt"].as_str() else {
                return;
            };
            let Ok(mut psbt) = Psbt::from_str(text) else {
                return;
            };
            f(&mut psbt);
            loan["pending_psbt"]["psbt"] = json!(psbt.to_string());
        };
        match body {
            Value::Array(loans) => loans.iter_mut().for_each(one),
            loan => one(loan),
        }
    })
}

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["state"] == want
}

/// Breach loan `id` (0.2 BTC for $10,000) at $62,000 until its liquidation waits.
fn breach(m: &Market, id: &str) -> anyhow::Result<Value> {
    m.set_price(6_200_000)?;
    m.api()
        .wait(&format!("/loans/{id}"), &m.lender, "liquidating", |v| {
            v["state"] == "liquidating" && v["pending_psbt"].is_object()
        })
}

fn cosign_once(
    api: &str,
    token: &str,
    key: &std::path::Path,
    state: &std::path::Path,
    policy: Option<&std::path::Path>,
) -> anyhow::Result<Value> {
    let mut args = vec![
        "cosign",
        "--once",
        "--api",
        api,
        "--token",
        token,
        "--key",
        key.to_str().context("key")?,
        "--state-dir",
        state.to_str().context("state")?,
    ];
    if let Some(p) = policy {
        args.extend(["--policy", p.to_str().context("policy")?]);
    }
    run(&args)?.json()
}

#[test]
fn the_cosigner_refuses_what_a_hostile_server_shows_and_signs_the_honest_psbt() -> anyhow::Result<()>
{
    let mut m = Market::open()?;
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let (proxy, tamper) = hostile(&rt, &m.api().base)?;
    let id = m.active()?;
    let loan = breach(&m, &id)?;
    let pending = &loan["pending_psbt"];
    let lender_key = key_file(dir.path(), "lender.key", &m.parties.lender)?;
    let lender_at = pending["outputs"]
        .as_array()
        .context("outputs")?
        .iter()
        .position(|o| o["role"] == "lender")
        .context("a lender output")?;
    let borrower_at = 1 - lender_at;
    let elsewhere = common::burn_address().script_pubkey();

    let mut n = 0;
    let mut refused_with = |t: Tamper, policy: Option<&std::path::Path>, reason: &str| {
        n += 1;
        *tamper.lock().expect("lock") = t;
        let state = dir.path().join(format!("state{n}"));
        let status = cosign_once(&proxy, &m.lender, &lender_key, &state, policy)?;
        let got = status["refused"][&id]["reason"].as_str().unwrap_or("");
        ensure!(got.contains(reason), "wanted {reason:?}, status: {status}");
        ensure!(status["signed"] == 0, "{status}");
        // The real loan still waits for its co-signature.
        let real = m.api().get(&format!("/loans/{id}"), &m.lender)?;
        ensure!(
            real["state"] == "liquidating" && real["pending_psbt"] == loan["pending_psbt"],
            "{real}"
        );
        Ok::<(), anyhow::Error>(())
    };
    // 10,000 sats less for the lender, more for the borrower.
    refused_with(
        with_psbt(move |p| {
            p.unsigned_tx.output[lender_at].value -= Amount::from_sat(10_000);
            p.unsigned_tx.output[borrower_at].value += Amount::from_sat(10_000);
        }),
        None,
        "below owed × (1 + penalty)",
    )?;
    // The borrower's share to another address.
    refused_with(
        with_psbt(move |p| p.unsigned_tx.output[borrower_at].script_pubkey = elsewhere.clone()),
        None,
        "pays neither",
    )?;
    // An extra input: a coin of the lender's own wallet.
    let own_coin = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn::default()],
        output: vec![TxOut {
            value: Amount::from_sat(50_000),
            script_pubkey: m.lender_payout.script_pubkey(),
        }],
    };
    refused_with(
        with_psbt(move |p| {
            p.unsigned_tx.input.push(TxIn {
                previous_output: OutPoint::new(own_coin.compute_txid(), 0),
                sequence: bitcoin::Sequence::ENABLE_RBF_NO_LOCKTIME,
                ..TxIn::default()
            });
            let mut input = bitcoin::psbt::Input {
                witness_utxo: Some(own_coin.output[0].clone()),
                non_witness_utxo: Some(own_coin.clone()),
                ..Default::default()
            };
            input.sighash_type = p.inputs[0].sighash_type;
            p.inputs.push(input);
        }),
        None,
        "input 1 does not spend the escrow",
    )?;
    // A fee above its own cap (the honest PSBT, a strict policy).
    let strict = dir.path().join("strict.toml");
    std::fs::write(&strict, "max_fee_sat = 100\n")?;
    refused_with(
        Arc::new(|_| {}),
        Some(&strict),
        "above this co-signer's cap",
    )?;
    // A loan it does not own: another lender, shown this loan as its own.
    let other_key = common::escrow::random_key()?;
    let other = m.api().expect(
        201,
        reqwest::Method::POST,
        "/parties",
        &m.admin,
        Some(&json!({"name": "Other", "role": "lender",
                     "account_key": m.parties.account(&other_key)?.to_string()})),
    )?;
    let other_token = other["token"].as_str().context("token")?.to_owned();
    let other_id = other["id"].as_str().context("id")?.to_owned();
    let mut shown = m.api().get(&format!("/loans/{id}"), &m.lender)?;
    shown["lender_id"] = json!(other_id);
    *tamper.lock().expect("lock") = Arc::new(move |body: &mut Value| {
        *body = match body {
            Value::Array(_) => json!([shown.clone()]),
            _ => shown.clone(),
        };
    });
    let other_file = key_file(dir.path(), "other.key", &other_key)?;
    let status = cosign_once(
        &proxy,
        &other_token,
        &other_file,
        &dir.path().join("state-other"),
        None,
    )?;
    let got = status["refused"][&id]["reason"].as_str().unwrap_or("");
    ensure!(
        status["signed"] == 0 && got.contains("not among the escrow's keys"),
        "{status}"
    );

    // The honest PSBT, through the proxy doing nothing: signed, broadcast, mined.
    *tamper.lock().expect("lock") = Arc::new(|_| {});
    let state = dir.path().join("honest");
    let status = cosign_once(&proxy, &m.lender, &lender_key, &state, None)?;
    ensure!(
        status["signed"] == 1 && status["refused"] == json!({}),
        "{status}"
    );
    let sent = m
        .api()
        .wait(&format!("/loans/{id}"), &m.lender, "broadcast", |v| {
            v["txids"].as_array().is_some_and(|t| !t.is_empty())
        })?;
    let txid = bitcoin::Txid::from_str(sent["txids"][0].as_str().context("txid")?)?;
    m.env.wait_for_tx(&m.lender_payout.script_pubkey(), txid)?;
    m.env.mine(1)?;
    m.api().wait(
        &format!("/loans/{id}"),
        &m.lender,
        "liquidated",
        state_is("liquidated"),
    )?;
    Ok(())
}

#[test]
fn the_daemon_cosigns_a_release_and_after_a_kill_the_liquidation_it_missed() -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let mut m = Market::open()?;
    let dir = tempfile::tempdir()?;
    let lender_key = key_file(dir.path(), "lender.key", &m.parties.lender)?;
    let state = dir.path().join("cosigner");
    let ledger = dir.path().join("repayments.jsonl");
    let (base, token, electrum) = (
        m.api().base.clone(),
        m.lender.clone(),
        m.env.electrum_url.clone(),
    );
    let start = || -> anyhow::Result<std::process::Child> {
        Ok(Command::new(env!("CARGO_BIN_EXE_btc-escrow"))
            .args(["cosign", "--api", &base, "--token", &token])
            .arg("--key")
            .arg(&lender_key)
            .arg("--state-dir")
            .arg(&state)
            .args(["--electrum", &electrum])
            .arg("--ledger")
            .arg(&ledger)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    };
    let mut daemon = start()?;

    // A release: the lender records the full repayment; the daemon co-signs.
    let released = m.active()?;
    let path = format!("/loans/{released}");
    for _ in 0..3 {
        let owed = m.api().get(&path, &m.lender)?["owed_minor"]
            .as_u64()
            .unwrap_or(0);
        if owed == 0 {
            break;
        }
        // Recorded with the lender's own ledger, which the co-signer counts.
        run(&[
            "loan",
            "repay",
            &released,
            "--amount-minor",
            &owed.to_string(),
            "--ledger",
            ledger.to_str().context("ledger")?,
            "--api",
            &base,
            "--token",
            &token,
        ])?
        .ok()?;
    }
    let sent = m.api().wait(&path, &m.lender, "release broadcast", |v| {
        v["state"] == "releasing" && v["txids"].as_array().is_some_and(|t| !t.is_empty())
    })?;
    let release_txid = bitcoin::Txid::from_str(sent["txids"][0].as_str().context("txid")?)?;
    m.env
        .wait_for_tx(&m.borrower_return.script_pubkey(), release_txid)?;
    m.env.mine(1)?;
    m.api()
        .wait(&path, &m.lender, "closed", state_is("closed"))?;

    // Killed; a liquidation comes while it is down; restarted, it co-signs it.
    daemon.kill()?;
    daemon.wait()?;
    let liquidated = m.active()?;
    breach(&m, &liquidated)?;
    let mut daemon = start()?;
    let path = format!("/loans/{liquidated}");
    let sent = m
        .api()
        .wait(&path, &m.lender, "liquidation broadcast", |v| {
            v["txids"].as_array().is_some_and(|t| !t.is_empty())
        })?;
    let liquidation_txid = bitcoin::Txid::from_str(sent["txids"][0].as_str().context("txid")?)?;
    m.env
        .wait_for_tx(&m.lender_payout.script_pubkey(), liquidation_txid)?;
    m.env.mine(1)?;
    m.api()
        .wait(&path, &m.lender, "liquidated", state_is("liquidated"))?;
    let _ = daemon.kill();
    let _ = daemon.wait();

    // Each decision signed once, with the transaction that confirmed.
    let journal: Value = serde_json::from_slice(&std::fs::read(state.join("journal.json"))?)?;
    let signed = journal["signed"].as_object().context("signed")?;
    ensure!(signed.len() == 2, "{journal}");
    for (loan, txid) in [(&released, release_txid), (&liquidated, liquidation_txid)] {
        let entry = &signed[&format!("{loan}/0")];
        ensure!(
            entry["txid"] == txid.to_string().as_str() && entry["posted"] == true,
            "{journal}"
        );
    }
    let status: Value = serde_json::from_slice(&std::fs::read(state.join("status.json"))?)?;
    ensure!(status["refused"] == json!({}), "{status}");
    Ok(())
}
