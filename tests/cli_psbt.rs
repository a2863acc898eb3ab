//! The command line end to end on regtest: three `key new` keys, `policy compile`
//! (descriptor, multipath descriptor, wallet policy), fund the address, `psbt build` a
//! cooperative settlement paying the lender, `psbt sign` by borrower and lender (each
//! given the escrow; the arbiter's key is refused: it signs only recorded decisions),
//! `psbt finalize`, and bitcoind accepts the result. Also: `psbt sign` refuses a PSBT
//! that asks for a sighash other than ALL or lacks the previous transaction, and
//! `policy check` exits 1 naming the broken guarantee.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context};
use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::Amount;
use common::wallet::TestWallet;
use common::Regtest;

fn run(args: &[&str], stdin: Option<&str>) -> anyhow::Result<(bool, String, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_btc-escrow"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let written = child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.unwrap_or("").as_bytes());
    // A command refused at argument parsing exits without reading its input.
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

fn ok(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let (success, out, err) = run(args, stdin)?;
    ensure!(success, "btc-escrow {args:?} failed: {err}");
    Ok(out.trim().to_owned())
}

#[test]
fn settlement_through_the_command_line() -> anyhow::Result<()> {
    let env = Regtest::start()?;
    let dir = tempfile::tempdir()?;
    let mut xpubs = Vec::new();
    let mut key_files = Vec::new();
    for name in ["borrower", "lender", "arbiter"] {
        let key: serde_json::Value =
            serde_json::from_str(&ok(&["key", "new", "--network", "regtest"], None)?)?;
        ensure!(key["account_path"] == "m/48'/1'/0'/2'", "{key}");
        let file = dir.path().join(name);
        // The lender's file holds the mnemonic, the others the master xprv.
        let secret = if name == "lender" {
            &key["mnemonic"]
        } else {
            &key["xprv"]
        };
        std::fs::write(&file, secret.as_str().context("secret")?)?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        xpubs.push(key["xpub"].as_str().context("xpub")?.to_owned());
        key_files.push(file);
    }
    let tip = env.height()?;
    let compiled: serde_json::Value = serde_json::from_str(&ok(
        &[
            "policy",
            "compile",
            "--network",
            "regtest",
            "--borrower",
            &xpubs[0],
            "--lender",
            &xpubs[1],
            "--arbiter",
            &xpubs[2],
            "--index",
            "4",
            "--default-height",
            &(tip + 500).to_string(),
            "--recovery-height",
            &(tip + 600).to_string(),
        ],
        None,
    )?)?;
    let descriptor = compiled["descriptor"].as_str().context("descriptor")?;
    // The BIP-388 forms: the multipath descriptor and the wallet policy.
    ensure!(
        compiled["multipath_descriptor"]
            .as_str()
            .is_some_and(|m| m.contains("/<0;1>/*") && m.contains("/<2;3>/*")),
        "{compiled}"
    );
    ensure!(
        compiled["wallet_policy"]["template"]
            .as_str()
            .is_some_and(|t| t.starts_with("wsh(or_d(multi(2,@0/<0;1>/*,@1/<0;1>/*,@2/<0;1>/*)")),
        "{compiled}"
    );
    ensure!(
        compiled["wallet_policy"]["keys"] == serde_json::json!(xpubs),
        "{compiled}"
    );
    let address: bitcoin::Address = compiled["address"]
        .as_str()
        .context("address")?
        .parse::<bitcoin::Address<_>>()?
        .assume_checked();

    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 1)?;
    let funding = wallet.send(
        &address,
        Amount::from_sat(25_000_000),
        bitcoin::FeeRate::from_sat_per_vb(2).expect("2"),
    )?;
    env.mine(1)?;
    let vout = funding
        .output
        .iter()
        .position(|o| o.script_pubkey == address.script_pubkey())
        .context("escrow output")?;
    let lender_payout = TestWallet::new(&env)?.address();
    let borrower_rest = TestWallet::new(&env)?.address();
    let input = format!(
        "{}:{vout}:{}",
        funding.compute_txid(),
        bitcoin::consensus::encode::serialize_hex(&funding)
    );
    let pay = format!("{lender_payout}:15000000");
    let tip = env.height()?.to_string();
    let parties = [
        "--descriptor",
        descriptor,
        "--borrower",
        &xpubs[0],
        "--lender",
        &xpubs[1],
        "--arbiter",
        &xpubs[2],
    ];
    let sign = |key: &str, psbt: &str| {
        let mut args = vec!["psbt", "sign", "--key", key];
        args.extend(parties);
        run(&args, Some(psbt))
    };
    let rest_to = borrower_rest.to_string();
    let mut build_args = vec!["psbt", "build"];
    build_args.extend(parties);
    build_args.extend([
        "--network",
        "regtest",
        "--path",
        "cooperative",
        "--input",
        &input,
        "--pay",
        &pay,
        "--rest-to",
        &rest_to,
        "--fee-rate",
        "4",
        "--tip",
        &tip,
    ]);
    let unsigned = ok(&build_args, None)?;
    let borrower = key_files[0].to_str().context("path")?;
    let lender = key_files[1].to_str().context("path")?;
    let arbiter = key_files[2].to_str().context("path")?;
    // The arbiter's key signs only a recorded decision, never through `psbt sign`.
    let (success, _, stderr) = sign(arbiter, &unsigned)?;
    ensure!(!success && stderr.contains("recorded decision"), "{stderr}");
    // Without the escrow, the signer refuses.
    let (success, _, stderr) = run(&["psbt", "sign", "--key", borrower], Some(&unsigned))?;
    ensure!(!success && stderr.contains("--descriptor"), "{stderr}");
    let (success, signed_once, stderr) = sign(borrower, &unsigned)?;
    ensure!(success, "{stderr}");
    ensure!(
        stderr.contains(&lender_payout.to_string()) && stderr.contains("0.15000000 BTC"),
        "describes outputs: {stderr}"
    );
    let (success, _, stderr) = run(&["psbt", "finalize"], Some(&signed_once))?;
    ensure!(
        !success && stderr.contains("cannot finalize"),
        "one signature is not enough: {stderr}"
    );
    let (success, signed, stderr) = sign(lender, &signed_once)?;
    ensure!(success, "{stderr}");
    let hex = ok(&["psbt", "finalize"], Some(&signed))?;
    let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(&hex)?;
    let txid = env.broadcast_rpc(&tx)?;
    env.mine(1)?;
    env.wait_for_history(&lender_payout.script_pubkey(), |h| {
        h.iter().any(|e| e.tx_hash == txid && e.height > 0)
    })?;
    ensure!(tx.output[0].value == Amount::from_sat(15_000_000));

    // A PSBT asking for SIGHASH_NONE, or without the previous transaction, is refused.
    let mut psbt: Psbt = unsigned.parse()?;
    psbt.inputs[0].sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::None));
    let (success, _, stderr) = sign(borrower, &psbt.to_string())?;
    ensure!(!success && stderr.contains("only SIGHASH_ALL"), "{stderr}");
    let mut psbt: Psbt = unsigned.parse()?;
    psbt.inputs[0].non_witness_utxo = None;
    let (success, _, stderr) = sign(borrower, &psbt.to_string())?;
    ensure!(
        !success && stderr.contains("non_witness_utxo is missing"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn policy_check_names_the_broken_guarantee() -> anyhow::Result<()> {
    let out = ok(&["policy", "check"], None)?;
    for path in [
        "cooperative",
        "arbitrated-release",
        "liquidation",
        "default-claim",
        "recovery",
    ] {
        ensure!(out.contains(path), "{out}");
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.policy");
    std::fs::write(&file, "or(pk({arbiter}),and(pk({borrower}),pk({lender})))")?;
    let (success, _, stderr) = run(&["policy", "check", file.to_str().context("path")?], None)?;
    ensure!(
        !success && stderr.contains("the arbiter's key alone can spend"),
        "{stderr}"
    );
    Ok(())
}

/// Scenario: keys and addresses of another network are refused, naming the flag.
#[test]
fn wrong_network_keys_and_addresses_are_refused() -> anyhow::Result<()> {
    let key = |network: &str| -> anyhow::Result<String> {
        let k: serde_json::Value =
            serde_json::from_str(&ok(&["key", "new", "--network", network], None)?)?;
        Ok(k["xpub"].as_str().context("xpub")?.to_owned())
    };
    let (b, l, a, mainnet) = (
        key("regtest")?,
        key("regtest")?,
        key("regtest")?,
        key("bitcoin")?,
    );
    let compile = |borrower: &str| {
        run(
            &[
                "policy",
                "compile",
                "--network",
                "regtest",
                "--borrower",
                borrower,
                "--lender",
                &l,
                "--arbiter",
                &a,
                "--index",
                "0",
                "--default-height",
                "500",
                "--recovery-height",
                "600",
            ],
            None,
        )
    };
    let (success, _, stderr) = compile(&mainnet)?;
    ensure!(
        !success && stderr.contains("borrower") && stderr.contains("regtest"),
        "{stderr}"
    );
    let (success, out, stderr) = compile(&b)?;
    ensure!(success, "{stderr}");
    let compiled: serde_json::Value = serde_json::from_str(&out)?;
    let spk = bitcoin::ScriptBuf::from_hex(compiled["script_pubkey"].as_str().context("spk")?)?;
    let prev = bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![bitcoin::TxIn::default()],
        output: vec![bitcoin::TxOut {
            value: Amount::from_sat(1_000_000),
            script_pubkey: spk,
        }],
    };
    let input = format!(
        "{}:0:{}",
        prev.compute_txid(),
        bitcoin::consensus::encode::serialize_hex(&prev)
    );
    let descriptor = compiled["descriptor"].as_str().context("descriptor")?;
    let mainnet_address = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
    let regtest_address = compiled["address"].as_str().context("address")?;
    for (flag, pay, rest) in [
        ("--rest-to", None, mainnet_address),
        (
            "--pay",
            Some(format!("{mainnet_address}:50000")),
            regtest_address,
        ),
    ] {
        let mut args = vec![
            "psbt",
            "build",
            "--descriptor",
            descriptor,
            "--borrower",
            &b,
            "--lender",
            &l,
            "--arbiter",
            &a,
            "--network",
            "regtest",
            "--path",
            "cooperative",
            "--input",
            &input,
            "--rest-to",
            rest,
            "--fee-rate",
            "2",
            "--tip",
            "100",
        ];
        if let Some(p) = pay.as_deref() {
            args.extend(["--pay", p]);
        }
        let (success, _, stderr) = run(&args, None)?;
        ensure!(
            !success && stderr.contains(flag) && stderr.contains("regtest"),
            "{flag}: {stderr}"
        );
    }
    Ok(())
}
