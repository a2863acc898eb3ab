//! `btc-escrow init` and `config check` through the real binary: init prints the four
//! fields once and refuses a directory in use; the configuration is layered file <
//! BTC_ESCROW_* environment < flags; an invalid field stops `config check` naming it.
//! (No chain needed: nothing here talks to bitcoind or electrs.)

use std::process::Command;

use anyhow::{ensure, Context};

fn btc_escrow(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(bool, String, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_btc-escrow"));
    cmd.args(args);
    // Only what the test sets: a developer's own BTC_ESCROW_* must not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("BTC_ESCROW_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().context("running btc-escrow")?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[test]
fn init_once_then_layered_config() -> anyhow::Result<()> {
    let parent = tempfile::tempdir()?;
    let dir = parent.path().join("data");
    let dir_s = dir.to_str().context("path")?;
    let init = [
        "init",
        "--data-dir",
        dir_s,
        "--network",
        "regtest",
        "--manual-oracle",
    ];
    let (ok, out, err) = btc_escrow(&init, &[])?;
    ensure!(ok, "{err}");
    let done: serde_json::Value = serde_json::from_str(&out)?;
    for field in ["data_dir", "config", "admin_token", "arbiter_account_key"] {
        ensure!(done[field].is_string(), "{field} in {out}");
    }
    let (ok, _, err) = btc_escrow(&init, &[])?;
    ensure!(
        !ok && err.contains("already exists"),
        "a second init: {err}"
    );

    let check = |args: &[&str], env: &[(&str, &str)]| -> anyhow::Result<serde_json::Value> {
        let mut all = vec!["config", "check", "--data-dir", dir_s];
        all.extend(args);
        let (ok, out, err) = btc_escrow(&all, env)?;
        ensure!(ok, "{err}");
        Ok(serde_json::from_str(&out)?)
    };
    ensure!(check(&[], &[])?["listen"] == "127.0.0.1:8080");
    let env = [("BTC_ESCROW_LISTEN", "127.0.0.1:9001")];
    ensure!(
        check(&[], &env)?["listen"] == "127.0.0.1:9001",
        "env over file"
    );
    let flagged = check(&["--listen", "127.0.0.1:9002"], &env)?;
    ensure!(flagged["listen"] == "127.0.0.1:9002", "flag over env");
    let secret = "a-secret-long-enough-to-use";
    let shown = check(&[], &[("BTC_ESCROW_WEBHOOK_SECRET", secret)])?;
    ensure!(shown["webhook_secret_set"] == true && !shown.to_string().contains(secret));

    // An invalid field in the file stops it, naming the field.
    let config = dir.join("btc-escrow.toml");
    let text = std::fs::read_to_string(&config)?.replace("tick_secs = 5", "tick_secs = 0");
    std::fs::write(&config, text)?;
    let (ok, _, err) = btc_escrow(&["config", "check", "--data-dir", dir_s], &[])?;
    ensure!(!ok && err.contains("engine.tick_secs"), "{err}");
    // So does one from the environment.
    let (ok, _, err) = btc_escrow(
        &["config", "check", "--data-dir", dir_s, "--tick-secs", "5"],
        &[("BTC_ESCROW_NETWORK", "moon")],
    )?;
    ensure!(!ok && err.contains("network"), "{err}");
    Ok(())
}
