//! The exit kit with the service gone (its process killed, its data directory
//! deleted), real bitcoind and electrs, three funded escrows of short loans:
//! - the lender's `exit` before `default_height` signs but does not send (Bitcoin Core
//!   refuses the written transaction as non-final); at the height it is sent, mined,
//!   and the coins are at the lender's address;
//! - the borrower's `exit` from another escrow after `recovery_height`, likewise;
//! - the cooperative mode: the borrower builds and signs a B+L PSBT, the lender signs
//!   it with `psbt sign`, `psbt finalize`, `chain broadcast`: mined, split as agreed.

mod common;

use std::str::FromStr;

use anyhow::{ensure, Context};
use bitcoin::{Address, Amount};
use common::serve::Market;
use common::tools::{json_file, key_file, run, run_in};
use serde_json::{json, Value};

/// A loan of 600 s with 2 grace blocks and a recovery 5 blocks after the default
/// height, accepted and funded: its JSON, as the parties saved it.
fn funded_short_loan(m: &mut Market) -> anyhow::Result<Value> {
    let api = m.api();
    let mut terms = m.offer_terms();
    terms["term_secs"] = json!(600);
    terms["funding_deadline"] = json!(btc_escrow::util::unix_now() + 300);
    terms["grace_blocks"] = json!(2);
    terms["recovery_delay_blocks"] = json!(5);
    let offered = api.expect(
        201,
        reqwest::Method::POST,
        "/loans",
        &m.lender,
        Some(&terms),
    )?;
    let id = offered["id"].as_str().context("id")?.to_owned();
    m.set_price(10_000_000)?;
    api.wait("/health", &m.admin, "fit to decide", |h| h["ok"] == true)?;
    let loan = api.expect(
        200,
        reqwest::Method::POST,
        &format!("/loans/{id}/accept"),
        &m.borrower,
        Some(&json!({ "borrower_return_address": m.borrower_return.to_string() })),
    )?;
    let address = m.escrow_of(&loan)?.address();
    let funding = m.wallet.send(
        &address,
        Amount::from_sat(loan["required_collateral_sat"].as_u64().context("sat")?),
        bitcoin::FeeRate::from_sat_per_vb(2).context("rate")?,
    )?;
    m.env
        .wait_for_tx(&address.script_pubkey(), funding.compute_txid())?;
    Ok(loan)
}

fn received(m: &Market, to: &Address) -> anyhow::Result<u64> {
    use electrum_client::ElectrumApi;
    Ok(m.env
        .electrum()?
        .script_list_unspent(&to.script_pubkey())?
        .iter()
        .map(|u| u.value)
        .sum())
}

#[test]
fn the_parties_leave_without_the_service() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let dir = tempfile::tempdir()?;
    let loans: Vec<Value> = (0..3)
        .map(|_| funded_short_loan(&mut m))
        .collect::<anyhow::Result<_>>()?;
    m.env.mine(1)?;
    for l in &loans {
        let id = l["id"].as_str().context("id")?;
        m.api()
            .wait(&format!("/loans/{id}"), &m.lender, "active", |v| {
                v["state"] == "active"
            })?;
    }
    // What each party keeps: the loan JSON (`loan show --json`).
    let files: Vec<_> = loans
        .iter()
        .enumerate()
        .map(|(i, l)| json_file(dir.path(), &format!("loan{i}.json"), l))
        .collect::<anyhow::Result<_>>()?;
    // The service is gone.
    m.serve.kill()?;
    std::fs::remove_dir_all(&m.data.path)?;

    let lender_key = key_file(dir.path(), "lender.key", &m.parties.lender)?;
    let borrower_key = key_file(dir.path(), "borrower.key", &m.parties.borrower)?;
    let electrum = m.env.electrum_url.clone();
    let path = |p: &std::path::Path| p.to_str().map(str::to_owned).context("path");
    let exit =
        |loan: &std::path::Path, key: &std::path::Path, to: &Address, write: &std::path::Path| {
            run(&[
                "exit",
                "--loan-file",
                &path(loan)?,
                "--key",
                &path(key)?,
                "--electrum",
                &electrum,
                "--to",
                &to.to_string(),
                "--fee-rate",
                "2",
                "--write",
                &path(write)?,
            ])
        };
    let height = |loan: &Value, k: &str| {
        loan["escrow"][k]
            .as_u64()
            .context("height")
            .map(|h| h as u32)
    };

    // The lender, before and at default_height.
    let lender_to = common::wallet::TestWallet::new(&m.env)?.address();
    let written = dir.path().join("lender-exit.hex");
    let default_height = height(&loans[0], "default_height")?;
    ensure!(m.env.height()? < default_height);
    let early = exit(&files[0], &lender_key, &lender_to, &written)?;
    ensure!(
        early.code != 0 && early.stderr.contains("not final yet"),
        "{early:?}"
    );
    let hex = std::fs::read_to_string(&written)?;
    let core = run_in(&["chain", "broadcast", "--electrum", &electrum], Some(&hex))?;
    ensure!(
        core.code != 0 && core.stderr.contains("not final"),
        "Bitcoin Core took a non-final exit: {core:?}"
    );
    m.env.mine(default_height - m.env.height()?)?;
    m.env.wait_for_electrs_tip()?;
    let sent = exit(&files[0], &lender_key, &lender_to, &written)?.json()?;
    ensure!(
        sent["broadcast"] == true && sent["path"] == "default-claim",
        "{sent}"
    );
    m.env.mine(1)?;
    m.env.wait_for_electrs_tip()?;
    let collateral = loans[0]["required_collateral_sat"]
        .as_u64()
        .context("sat")?;
    let fee = sent["fee_sat"].as_u64().context("fee")?;
    ensure!(received(&m, &lender_to)? == collateral - fee);

    // The borrower, from another escrow, before and at recovery_height.
    let borrower_to = common::wallet::TestWallet::new(&m.env)?.address();
    let written = dir.path().join("borrower-exit.hex");
    let recovery_height = height(&loans[1], "recovery_height")?;
    let early = exit(&files[1], &borrower_key, &borrower_to, &written)?;
    ensure!(
        early.code != 0 && early.stderr.contains("recovery"),
        "{early:?}"
    );
    m.env.mine(recovery_height - m.env.height()?)?;
    m.env.wait_for_electrs_tip()?;
    let sent = exit(&files[1], &borrower_key, &borrower_to, &written)?.json()?;
    ensure!(
        sent["broadcast"] == true && sent["path"] == "recovery",
        "{sent}"
    );
    m.env.mine(1)?;
    m.env.wait_for_electrs_tip()?;
    let fee = sent["fee_sat"].as_u64().context("fee")?;
    ensure!(received(&m, &borrower_to)? == collateral - fee);

    // Cooperative: 0.05 BTC to the lender, the rest to the borrower, no arbiter.
    let to_lender = common::wallet::TestWallet::new(&m.env)?.address();
    let to_borrower = common::wallet::TestWallet::new(&m.env)?.address();
    let psbt = run(&[
        "exit",
        "--cooperative",
        "--loan-file",
        &path(&files[2])?,
        "--key",
        &path(&borrower_key)?,
        "--electrum",
        &electrum,
        "--to",
        &to_borrower.to_string(),
        "--pay",
        &format!("{to_lender}:5000000"),
        "--fee-rate",
        "2",
    ])?;
    let psbt = psbt.ok()?.stdout.trim().to_owned();
    let accounts = |k: &btc_escrow::keys::SigningKey| m.parties.account(k).map(|a| a.to_string());
    let arbiter = m.data.arbiter_account_key.clone();
    let descriptor = loans[2]["escrow"]["descriptor"]
        .as_str()
        .context("d")?
        .to_owned();
    let signed = run_in(
        &[
            "psbt",
            "sign",
            "--key",
            &path(&lender_key)?,
            "--descriptor",
            &descriptor,
            "--borrower",
            &accounts(&m.parties.borrower)?,
            "--lender",
            &accounts(&m.parties.lender)?,
            "--arbiter",
            &arbiter,
        ],
        Some(&psbt),
    )?;
    let signed = signed.ok()?.stdout.trim().to_owned();
    let tx_hex = run_in(&["psbt", "finalize"], Some(&signed))?
        .ok()?
        .stdout
        .trim()
        .to_owned();
    let txid = run_in(
        &["chain", "broadcast", "--electrum", &electrum],
        Some(&tx_hex),
    )?
    .ok()?
    .stdout
    .trim()
    .to_owned();
    m.env
        .wait_for_tx(&to_lender.script_pubkey(), bitcoin::Txid::from_str(&txid)?)?;
    m.env.mine(1)?;
    m.env.wait_for_electrs_tip()?;
    ensure!(received(&m, &to_lender)? == 5_000_000);
    ensure!(received(&m, &to_borrower)? > collateral - 5_000_000 - 10_000);
    Ok(())
}
