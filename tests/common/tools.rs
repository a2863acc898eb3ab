//! The `btc-escrow` binary run as a party would: a command, its exit code, its output.

use std::path::{Path, PathBuf};

use anyhow::Context;
use btc_escrow::keys::SigningKey;
use serde_json::Value;

/// What a command did.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Stdout as JSON (the command must have succeeded).
    pub fn json(&self) -> anyhow::Result<Value> {
        anyhow::ensure!(self.code == 0, "exit {}: {}", self.code, self.stderr);
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout: {}", self.stdout))
    }

    pub fn ok(&self) -> anyhow::Result<&Self> {
        anyhow::ensure!(
            self.code == 0,
            "exit {}: {}\n{}",
            self.code,
            self.stderr,
            self.stdout
        );
        Ok(self)
    }
}

/// Run `btc-escrow args…` with only the given BTC_ESCROW_* variables, stdin empty.
pub fn run(args: &[&str]) -> anyhow::Result<Ran> {
    run_in(args, None)
}

pub fn run_in(args: &[&str], stdin: Option<&str>) -> anyhow::Result<Ran> {
    use std::io::Write;
    let mut cmd = super::serve::command();
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("starting btc-escrow")?;
    if let Some(mut i) = child.stdin.take() {
        if let Some(text) = stdin {
            i.write_all(text.as_bytes())?;
        }
    }
    let out = child.wait_with_output()?;
    Ok(Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Write `key`'s master xprv to `dir/name` with mode 0600.
pub fn key_file(dir: &Path, name: &str, key: &SigningKey) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, key.master().to_string())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// Write `value` as JSON to `dir/name`.
pub fn json_file(dir: &Path, name: &str, value: &Value) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    Ok(path)
}
