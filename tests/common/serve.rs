//! `btc-escrow serve` as a separate process on a data directory made by `init`, and a
//! small blocking HTTP client for its API. The process is killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use reqwest::Method;
use serde_json::Value;

use super::Regtest;

fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_btc-escrow"));
    // Only what the test sets: a developer's own BTC_ESCROW_* must not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("BTC_ESCROW_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A data directory made by `btc-escrow init` (regtest, the manual oracle) with
/// one-second oracle and engine ticks.
pub struct DataDir {
    _parent: tempfile::TempDir,
    pub path: PathBuf,
    pub admin_token: String,
    pub arbiter_account_key: String,
}

impl DataDir {
    pub fn init(env: &Regtest) -> anyhow::Result<Self> {
        let parent = tempfile::tempdir()?;
        let path = parent.path().join("data");
        let out = command()
            .args(["init", "--network", "regtest", "--manual-oracle"])
            .arg("--data-dir")
            .arg(&path)
            .args(["--electrum", &env.electrum_url])
            .output()?;
        ensure!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done: Value = serde_json::from_slice(&out.stdout)?;
        let config = path.join("btc-escrow.toml");
        let text = std::fs::read_to_string(&config)?
            .replace(
                "[oracle]\nquorum = 1",
                "[oracle]\nquorum = 1\ninterval_secs = 1",
            )
            .replace("tick_secs = 5", "tick_secs = 1");
        std::fs::write(&config, text)?;
        Ok(Self {
            _parent: parent,
            path,
            admin_token: done["admin_token"].as_str().context("admin_token")?.into(),
            arbiter_account_key: done["arbiter_account_key"]
                .as_str()
                .context("arbiter_account_key")?
                .into(),
        })
    }
}

/// A running `serve`.
pub struct Serve {
    child: Child,
    pub api: Api,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    /// Start `serve` on `data` (listening on a free loopback port); wait until it
    /// prints its address.
    pub fn start(data: &Path) -> anyhow::Result<Self> {
        let mut child = command()
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "btc_escrow=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix("api ") {
                        let _ = tx.send(addr.to_owned());
                    }
                    if std::env::var_os("BTC_ESCROW_TEST_LOG").is_some() {
                        eprintln!("serve: {line}");
                    }
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        let base = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "serve did not start: {:?}",
                    lines.lock().expect("lines").join("\n")
                )
            }
        };
        Ok(Self {
            child,
            api: Api::new(&base),
            stderr: lines,
        })
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM; it must exit 0.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        ensure!(unsafe { libc::kill(pid, libc::SIGTERM) } == 0);
        let status = self.child.wait()?;
        ensure!(
            status.success(),
            "serve exited with {status}: {:?}",
            self.stderr.lock().expect("lines")
        );
        Ok(())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API's client: every call returns the status and the JSON body.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    client: reqwest::blocking::Client,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("a client"),
        }
    }

    pub fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let text = resp.text()?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("{path}: {text}"))?
        };
        Ok((status, json))
    }

    /// A call that must answer `want`.
    pub fn expect(
        &self,
        want: u16,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, json) = self.call(method.clone(), path, Some(token), body, &[])?;
        ensure!(
            status == want,
            "{method} {path}: {status}, expected {want}: {json}"
        );
        Ok(json)
    }

    pub fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        self.expect(200, Method::GET, path, token, None)
    }

    /// Poll `GET path` until `ok` holds (60 s at most).
    pub fn wait(
        &self,
        path: &str,
        token: &str,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, v)) = self.call(Method::GET, path, Some(token), None, &[]) {
                if ok(&v) {
                    return Ok(v);
                }
                if Instant::now() > deadline {
                    bail!("{what}: never; last {path}: {v}");
                }
            } else if Instant::now() > deadline {
                bail!("{what}: never ({path} does not answer)");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
