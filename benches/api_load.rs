//! The HTTP API under load on loopback, against a real `serve` process on a data
//! directory made by `init` and filled through the engine: N loans (default 2,000;
//! BTC_ESCROW_BENCH_COSIGNS) funded by stand-in deposits and breached into liquidation,
//! each with its arbiter-signed PSBT pending. The chain is not needed for what is
//! measured (the Electrum URL points at a closed port):
//! - `GET /v1/loans/{id}`: requests per second and the 99th percentile latency;
//! - `POST /v1/loans/{id}/psbt` with each loan's lender-signed PSBT and `Prefer:
//!   respond-async` (answered once verified, merged, finalized and stored durably):
//!   requests per second and p99.
//!
//! Client and server share the machine's cores. `cargo bench --bench api_load`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bitcoin::{Amount, Network, OutPoint, Transaction, TxIn, TxOut};
use btc_escrow::api::PartyRecord;
use btc_escrow::engine::{Acceptance, Engine, EngineConfig, EscrowView};
use btc_escrow::init::{init, new_token, token_hash, InitOptions, TokenRecord};
use btc_escrow::keys::{account_path, AccountKey, ArbiterKey, SigningKey};
use btc_escrow::loan::{Bps, Currency, Fiat, Price, PriceEvidence, TermsInput};
use btc_escrow::policy::PolicyTemplate;
use btc_escrow::store::{Durability, Store};
use btc_escrow::tx::{self, EscrowInput, FeeCap};
use btc_escrow::util::unix_now;

const CONCURRENCY: usize = 32;

fn usd(minor: u64) -> Price {
    Price::new(minor, Currency::new("USD").expect("USD"))
}

fn key(seed: u8) -> anyhow::Result<SigningKey> {
    let m = bitcoin::bip32::Xpriv::new_master(Network::Regtest, &[seed; 32])?;
    Ok(SigningKey::parse(&m.to_string(), Network::Regtest)?)
}

fn terms(now: u64) -> TermsInput {
    TermsInput {
        principal: Fiat::new(1_000_000, Currency::new("USD").expect("USD")),
        apr: Bps(1_000),
        term_secs: 90 * 86_400,
        initial_ltv: Bps(5_000),
        margin_call_ltv: Bps(7_000),
        liquidation_ltv: Bps(8_000),
        hard_liquidation_ltv: None,
        liquidation_penalty: Bps(500),
        hysteresis: Bps(200),
        confirm_ticks: 3,
        grace_blocks: 144,
        recovery_delay_blocks: 1_000,
        funding_deadline: now + 86_400,
        borrower_return_address: String::new(),
        lender_payout_address: "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080".into(),
        min_confirmations: 1,
        partial_liquidation: false,
        target_ltv: None,
        margin_call_levels: Vec::new(),
    }
}

/// A stand-in deposit of `sats` to `script` (never broadcast).
fn deposit(script: bitcoin::ScriptBuf, sats: u64, i: usize) -> EscrowInput {
    let prev_tx = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(
                bitcoin::Txid::from_byte_array({
                    let mut b = [7u8; 32];
                    b[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    b
                }),
                0,
            ),
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: Amount::from_sat(sats),
            script_pubkey: script,
        }],
    };
    EscrowInput {
        outpoint: OutPoint::new(prev_tx.compute_txid(), 0),
        prev_tx,
    }
}

use bitcoin::hashes::Hash;

struct Filled {
    lender_token: String,
    ids: Vec<String>,
    /// Each loan's lender-signed PSBT.
    signed: Vec<String>,
}

/// Parties, N loans in liquidation with their PSBTs signed by the lender.
fn fill(data: &std::path::Path, n: usize) -> anyhow::Result<Filled> {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let (lender, borrower) = (key(2)?, key(1)?);
    let account = |k: &SigningKey| -> anyhow::Result<AccountKey> {
        Ok(AccountKey::from_master(
            k.master(),
            &account_path(Network::Regtest, 0)?,
            &secp,
        )?)
    };
    let (lender_account, borrower_account) = (account(&lender)?, account(&borrower)?);
    let store = Store::open(&data.join("db"))?;
    let lender_token = new_token();
    let now = unix_now();
    for (id, role, acct, token) in [
        ("p_lender", "lender", &lender_account, lender_token.clone()),
        ("p_borrower", "borrower", &borrower_account, new_token()),
    ] {
        store.put_party_with_token(
            id,
            &PartyRecord {
                id: id.into(),
                name: id.into(),
                role: role.into(),
                account_key: acct.to_string(),
                created_at: now,
            },
            &token_hash(&token),
            &TokenRecord {
                party_id: id.into(),
                role: role.into(),
                created_at: now,
            },
            Durability::Durable,
        )?;
    }
    let arbiter = ArbiterKey::load(data, Network::Regtest)?;
    let mut engine = Engine::open(
        store,
        arbiter,
        EngineConfig {
            network: Network::Regtest,
            min_confirmations: 1,
            min_confirm_ticks: 1,
            fee_cap: FeeCap::default(),
            template: PolicyTemplate::default(),
        },
    )?;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("ln_bench{i:06}");
        engine.offer(&id, "p_lender", terms(now), now)?;
        let loan = engine.accept(
            &id,
            Acceptance {
                borrower_id: "p_borrower",
                borrower: &borrower_account,
                lender: &lender_account,
                price: usd(10_000_000),
                return_address: Some(
                    "bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85",
                ),
            },
            100,
            now,
        )?;
        let script = engine.escrows()[&id].script_pubkey();
        engine.observe(
            &id,
            EscrowView {
                confirmed: vec![deposit(script, loan.required_collateral.to_sat(), i)],
                depth: Default::default(),
                spending: Vec::new(),
                confirmed_spends: Vec::new(),
            },
            now,
        )?;
        ids.push(id);
    }
    for _ in 0..3 {
        engine.price_tick(PriceEvidence::bare(usd(6_200_000)), now, 100, 2_000)?;
    }
    let mut signed = Vec::with_capacity(n);
    for id in &ids {
        let record = engine.decision(id)?.context("decided")?;
        let mut psbt = record.psbt()?;
        tx::sign(
            &mut psbt,
            &lender,
            &engine.escrows()[id],
            &FeeCap::default(),
            &secp,
        )?;
        signed.push(psbt.to_string());
    }
    engine.store().flush()?;
    Ok(Filled {
        lender_token,
        ids,
        signed,
    })
}

/// Run `requests` with `CONCURRENCY` in flight; each returns its status. Prints and
/// returns nothing: requests per second and p99.
async fn load(name: &str, want: u16, requests: Vec<reqwest::RequestBuilder>) -> anyhow::Result<()> {
    let total = requests.len();
    let queue = Arc::new(tokio::sync::Mutex::new(requests));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let Some(req) = queue.lock().await.pop() else {
                    return Ok::<_, anyhow::Error>(times);
                };
                let t0 = Instant::now();
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let body = resp.bytes().await?;
                ensure!(
                    status == want,
                    "status {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                times.push(t0.elapsed());
            }
        }));
    }
    let mut times = Vec::with_capacity(total);
    for t in tasks {
        times.extend(t.await??);
    }
    let elapsed = started.elapsed();
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{name}: {total} requests, {CONCURRENCY} in flight: {:>8.0} req/s, p50 {:>6.2} ms, p99 {:>6.2} ms",
        total as f64 / elapsed.as_secs_f64(),
        p(0.50).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3
    );
    // For the bench report (`cargo bench --bench report`).
    let key = if name.starts_with("GET") {
        "get_loan"
    } else {
        "cosign_post"
    };
    println!(
        "figure: {key}_rps = {:.0} req/s",
        total as f64 / elapsed.as_secs_f64()
    );
    println!("figure: {key}_p99 = {:.1} ms", p(0.99).as_secs_f64() * 1e3);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BTC_ESCROW_BENCH_COSIGNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let parent = tempfile::tempdir()?;
    let data = parent.path().join("data");
    init(&InitOptions {
        data_dir: data.clone(),
        network: Network::Regtest,
        electrum_url: Some("tcp://127.0.0.1:1".into()),
        listen: None,
        manual_oracle: true,
    })?;
    let t0 = Instant::now();
    let filled = fill(&data, n)?;
    println!(
        "{n} loans decided and their PSBTs lender-signed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_btc-escrow"))
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let base = loop {
        let line = lines.next().context("serve ended")??;
        if let Some(b) = line.strip_prefix("api ") {
            break b.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let token = &filled.lender_token;
        let gets: Vec<_> = (0..10_000)
            .map(|i| {
                client
                    .get(format!("{base}/loans/{}", filled.ids[i % filled.ids.len()]))
                    .bearer_auth(token)
            })
            .collect();
        load("GET /v1/loans/{id}", 200, gets).await?;
        let posts: Vec<_> = filled
            .ids
            .iter()
            .zip(&filled.signed)
            .map(|(id, psbt)| {
                client
                    .post(format!("{base}/loans/{id}/psbt"))
                    .bearer_auth(token)
                    .header("Prefer", "respond-async")
                    .json(&serde_json::json!({ "psbt": psbt }))
            })
            .collect();
        load(
            "POST /v1/loans/{id}/psbt (co-signed, stored durably)",
            202,
            posts,
        )
        .await
    });
    let _ = child.kill();
    let _ = child.wait();
    result
}
