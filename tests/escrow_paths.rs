//! Every spending path of the escrow against a real bitcoind and electrs: fund the
//! escrow address from the test wallet, build the path's spend, sign it with exactly
//! the path's keys, finalize it; bitcoind accepts and mines it and electrs reports it.
//! Timelocked paths are first refused as non-final, then accepted at their height.

mod common;

use anyhow::{ensure, Context};
use bitcoin::{Amount, FeeRate};
use btc_escrow::policy::PathName;
use btc_escrow::tx::{self, SpendRequest};
use common::escrow::{fund, spend, Parties};
use common::wallet::TestWallet;
use common::Regtest;
use electrum_client::ElectrumApi;
use serde_json::json;

/// Fund, spend by `path`, and check bitcoind and electrs agree the spend is mined.
fn spend_by(path: PathName, deposits: &[Amount]) -> anyhow::Result<()> {
    let env = Regtest::start()?;
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 2)?;
    let parties = Parties::new()?;
    let escrow = parties.escrow(&env, 3, 20, 30)?;
    let mut inputs = Vec::new();
    for amount in deposits {
        inputs.push(fund(&mut wallet, &env, &escrow, *amount)?);
    }
    env.mine(1)?;
    let to = TestWallet::new(&env)?.address();
    let tx = spend(&parties, &escrow, path, inputs, &to, env.height()?)?;
    ensure!(
        tx.input.len() == deposits.len(),
        "every escrow UTXO is spent at once"
    );

    if let Some(height) = escrow.path(path)?.after_height {
        // One block short of the height: not final yet.
        let tip = env.height()?;
        env.mine(height - 1 - tip)?;
        let err = env
            .broadcast_rpc(&tx)
            .expect_err("a timelocked spend before its height");
        ensure!(
            err.to_string().contains("non-final"),
            "bitcoind said: {err:#}"
        );
        env.mine(1)?;
    }
    let txid = env
        .broadcast_rpc(&tx)
        .with_context(|| format!("{path} spend"))?;
    env.mine(1)?;
    let height = env.height()?;
    let history = env.wait_for_history(&to.script_pubkey(), |h| {
        h.iter().any(|e| e.tx_hash == txid && e.height > 0)
    })?;
    ensure!(history[0].height == height as i32);
    // The escrow is empty now, and electrs saw the spend in its history.
    let electrum = env.electrum()?;
    ensure!(electrum
        .script_list_unspent(&escrow.script_pubkey())?
        .is_empty());
    ensure!(electrum
        .script_get_history(&escrow.script_pubkey())?
        .iter()
        .any(|e| e.tx_hash == txid));
    let first = tx.input[0].previous_output;
    let spent = electrum.transaction_get(&first.txid)?.output[first.vout as usize].clone();
    let observed =
        escrow.classify_spend(&parties.secp, &electrum.transaction_get(&txid)?, 0, &spent)?;
    ensure!(observed.path == path, "classified as {:?}", observed.path);
    Ok(())
}

#[test]
fn cooperative_release() -> anyhow::Result<()> {
    spend_by(PathName::Cooperative, &[Amount::from_sat(50_000_000)])
}

#[test]
fn arbitrated_release() -> anyhow::Result<()> {
    spend_by(PathName::ArbitratedRelease, &[Amount::from_sat(50_000_000)])
}

#[test]
fn liquidation_with_a_top_up_spends_both_utxos() -> anyhow::Result<()> {
    spend_by(
        PathName::Liquidation,
        &[Amount::from_sat(30_000_000), Amount::from_sat(20_000_000)],
    )
}

#[test]
fn default_claim_after_default_height() -> anyhow::Result<()> {
    spend_by(PathName::DefaultClaim, &[Amount::from_sat(50_000_000)])
}

#[test]
fn recovery_after_recovery_height() -> anyhow::Result<()> {
    spend_by(
        PathName::Recovery,
        &[Amount::from_sat(40_000_000), Amount::from_sat(10_000_000)],
    )
}

/// Scenario: a liquidation signed only by the arbiter cannot be finalized, so nothing
/// is ever broadcast; with the lender's co-signature merged it confirms.
#[test]
fn one_key_on_a_two_key_path_fails_in_finalize() -> anyhow::Result<()> {
    let env = Regtest::start()?;
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 1)?;
    let parties = Parties::new()?;
    let escrow = parties.escrow(&env, 0, 20, 30)?;
    let input = fund(&mut wallet, &env, &escrow, Amount::from_sat(10_000_000))?;
    env.mine(1)?;
    let to = TestWallet::new(&env)?.address();
    let req = SpendRequest {
        path: PathName::Liquidation,
        inputs: vec![input],
        payments: vec![],
        rest_to: to.script_pubkey(),
        fee_rate: FeeRate::from_sat_per_vb(2).expect("2 sat/vB"),
        tip: env.height()?,
    };
    let built = tx::build(&escrow, &req)?;
    let mut ours = built.psbt.clone();
    parties.sign(&mut ours, &parties.arbiter, &escrow)?;
    ensure!(
        tx::finalize(&ours, &parties.secp).is_err(),
        "one signature must not finalize"
    );
    let mut theirs = built.psbt;
    parties.sign(&mut theirs, &parties.lender, &escrow)?;
    let merged = tx::merge(&ours, &theirs, &parties.secp)?;
    let signed = tx::finalize(&merged, &parties.secp)?;
    let txid = env.broadcast_rpc(&signed)?;
    env.mine(1)?;
    env.wait_for_history(&to.script_pubkey(), |h| {
        h.iter().any(|e| e.tx_hash == txid && e.height > 0)
    })?;
    Ok(())
}

/// Scenario: for several key sets and indexes, the address `btc-escrow policy compile`
/// prints equals the one Bitcoin Core derives for the same descriptor.
#[test]
fn policy_compile_address_matches_bitcoin_core() -> anyhow::Result<()> {
    let env = Regtest::start()?;
    for index in [0u32, 1, 77] {
        let parties = Parties::new()?;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_btc-escrow"))
            .args(["policy", "compile", "--network", "regtest"])
            .args([
                "--borrower",
                &parties.account(&parties.borrower)?.to_string(),
            ])
            .args(["--lender", &parties.account(&parties.lender)?.to_string()])
            .args(["--arbiter", &parties.account(&parties.arbiter)?.to_string()])
            .args([
                "--index",
                &index.to_string(),
                "--default-height",
                "500",
                "--recovery-height",
                "600",
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "policy compile failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let descriptor = json["descriptor"].as_str().context("descriptor")?;
        let ours = json["address"].as_str().context("address")?;
        let core = env.derive_addresses(descriptor)?;
        ensure!(
            core == vec![ours.to_owned()],
            "core derived {core:?}, we printed {ours}"
        );
        let paths = json["paths"].as_array().context("paths")?;
        ensure!(paths.len() == 5);
        // Bitcoin Core also accepts the descriptor as is (checksum included).
        let info = env.rpc.call("getdescriptorinfo", json!([descriptor]))?;
        ensure!(info["issolvable"] == json!(true), "{info}");
    }
    Ok(())
}
