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

/// `serve` starts (here with no Electrum server reachable: it keeps running and
/// reports the chain as disconnected), stops cleanly on SIGTERM with exit 0, and
/// refuses to start on an invalid setting, naming it.
#[test]
fn serve_stops_cleanly_on_sigterm_and_refuses_a_bad_setting() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let parent = tempfile::tempdir()?;
    let dir = parent.path().join("data");
    let dir_s = dir.to_str().context("path")?;
    let (ok, _, err) = btc_escrow(
        &[
            "init",
            "--data-dir",
            dir_s,
            "--network",
            "regtest",
            "--electrum",
            "tcp://127.0.0.1:9",
            "--manual-oracle",
        ],
        &[],
    )?;
    ensure!(ok, "{err}");

    let (ok, _, err) = btc_escrow(
        &["serve", "--data-dir", dir_s],
        &[("BTC_ESCROW_TICK_SECS", "0")],
    )?;
    ensure!(!ok && err.contains("engine.tick_secs"), "{err}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_btc-escrow"))
        .args(["serve", "--data-dir", dir_s])
        .env_remove("BTC_ESCROW_TICK_SECS")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("serving")) {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "serve never started: {seen:?}");
        if let Ok(line) = lines.recv_timeout(left) {
            seen.push(line);
        }
    }
    let pid = i32::try_from(child.id())?;
    // SAFETY: kill(2) on the child we spawned, with a valid signal number.
    ensure!(unsafe { libc::kill(pid, libc::SIGTERM) } == 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
                seen.push(line);
            }
            anyhow::bail!("serve did not stop within 20 s of SIGTERM: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
        seen.push(line);
    }
    ensure!(status.success(), "exit {status:?}: {seen:?}");
    ensure!(seen.iter().any(|l| l == "stopped"), "{seen:?}");
    Ok(())
}
