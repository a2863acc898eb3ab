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

/// `btc-escrow` with only the BTC_ESCROW_* variables the caller sets.
pub fn command() -> Command {
    let mut cmd = Command::new(super::bin());
    // Only what the test sets: a developer's own BTC_ESCROW_* must not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("BTC_ESCROW_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Make the oracle and the engine of a data directory made by `init --manual-oracle`
/// tick every second (the configuration file's defaults are slower).
pub fn one_second_ticks(data: &Path) -> anyhow::Result<()> {
    let config = data.join("btc-escrow.toml");
    let text = std::fs::read_to_string(&config)?;
    let fast = text
        .replace(
            "[oracle]\nquorum = 1",
            "[oracle]\nquorum = 1\ninterval_secs = 1",
        )
        .replace("tick_secs = 5", "tick_secs = 1");
    ensure!(
        fast != text,
        "{}: not the file init writes",
        config.display()
    );
    std::fs::write(&config, fast)?;
    Ok(())
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
        one_second_ticks(&path)?;
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

    /// The process id (for a test that kills it from another thread).
    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// The status of a `GET`, without reading the body (an event stream's never ends).
    pub fn status_only(&self, path: &str, token: Option<&str>) -> anyhow::Result<u16> {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Ok(req.send()?.status().as_u16())
    }

    /// `GET` a path at the server's root (not under `/v1`), as text.
    pub fn root_text(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let root = self.base.trim_end_matches("/v1");
        let resp = self.client.get(format!("{root}{path}")).send()?;
        Ok((resp.status().as_u16(), resp.text()?))
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

    /// Read the SSE stream `/events/stream` (from `Last-Event-ID: after`, if given)
    /// until `enough` holds for the events read: each as (id, event name, data).
    pub fn sse(
        &self,
        token: &str,
        after: Option<u64>,
        enough: impl Fn(&[(u64, String, Value)]) -> bool,
    ) -> anyhow::Result<Vec<(u64, String, Value)>> {
        let mut req = self
            .client
            .get(format!("{}/events/stream", self.base))
            .bearer_auth(token);
        if let Some(a) = after {
            req = req.header("Last-Event-ID", a.to_string());
        }
        let resp = req.send()?;
        ensure!(resp.status() == 200, "stream: {}", resp.status());
        let mut lines = BufReader::new(resp).lines();
        let mut out = Vec::new();
        let (mut id, mut name, mut data) = (None, String::new(), String::new());
        while !enough(&out) {
            let line = lines.next().context("the stream ended")??;
            if line.is_empty() {
                if let Some(i) = id.take() {
                    out.push((i, std::mem::take(&mut name), serde_json::from_str(&data)?));
                }
                data.clear();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().parse()?);
            } else if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        Ok(out)
    }

    /// Poll `GET path` until `ok` holds (60 s at most).
    pub fn wait(
        &self,
        path: &str,
        token: &str,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        self.wait_every(Duration::from_millis(200), path, token, what, ok)
    }

    /// [`Api::wait`], polling every `every`.
    pub fn wait_every(
        &self,
        every: Duration,
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
            std::thread::sleep(every);
        }
    }
}

/// A regtest market through the API: a running `serve`, a lender and a borrower
/// registered by the admin, and a funded wallet for the borrower.
pub struct Market {
    pub env: Regtest,
    pub data: DataDir,
    pub serve: Serve,
    pub parties: super::escrow::Parties,
    pub admin: String,
    pub lender: String,
    pub borrower: String,
    pub wallet: super::wallet::TestWallet,
    pub lender_payout: bitcoin::Address,
    pub borrower_return: bitcoin::Address,
}

impl Market {
    pub fn open() -> anyhow::Result<Self> {
        Self::open_with(|_| Ok(()))
    }

    /// [`Market::open`], with `configure` run on the data directory before `serve`
    /// starts (e.g. to change the oracle's sources).
    pub fn open_with(configure: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<Self> {
        use btc_escrow::keys::AccountKey;
        let env = Regtest::start()?;
        let data = DataDir::init(&env)?;
        configure(&data.path)?;
        let serve = Serve::start(&data.path)?;
        let admin = data.admin_token.clone();
        let parties = super::escrow::Parties::new()?;
        let party = |name: &str, role: &str, key: &AccountKey| -> anyhow::Result<String> {
            let made = serve.api.expect(
                201,
                Method::POST,
                "/parties",
                &admin,
                Some(&serde_json::json!({
                    "name": name, "role": role, "account_key": key.to_string()
                })),
            )?;
            ensure!(made["role"] == role && made["id"].is_string(), "{made}");
            Ok(made["token"].as_str().context("token")?.to_owned())
        };
        let lender = party("Lender Ltd", "lender", &parties.account(&parties.lender)?)?;
        let borrower = party("Bob", "borrower", &parties.account(&parties.borrower)?)?;
        let mut wallet = super::wallet::TestWallet::new(&env)?;
        wallet.fund(&env, 1)?;
        let lender_payout = super::wallet::TestWallet::new(&env)?.address();
        let borrower_return = super::wallet::TestWallet::new(&env)?.address();
        Ok(Self {
            env,
            data,
            serve,
            parties,
            admin,
            lender,
            borrower,
            wallet,
            lender_payout,
            borrower_return,
        })
    }

    pub fn api(&self) -> &Api {
        &self.serve.api
    }

    /// Register another party with a fresh key: its token.
    pub fn register(&self, name: &str, role: &str) -> anyhow::Result<String> {
        let key = super::escrow::random_key()?;
        let account = self.parties.account(&key)?;
        let made = self.api().expect(
            201,
            Method::POST,
            "/parties",
            &self.admin,
            Some(&serde_json::json!({
                "name": name, "role": role, "account_key": account.to_string()
            })),
        )?;
        Ok(made["token"].as_str().context("token")?.to_owned())
    }

    /// Set the manual price (a tick follows at once).
    pub fn set_price(&self, minor: u64) -> anyhow::Result<()> {
        self.api().expect(
            200,
            Method::PUT,
            "/oracle/manual",
            &self.admin,
            Some(&serde_json::json!({ "price_minor": minor })),
        )?;
        Ok(())
    }

    /// $10,000 for 90 days at 10 %, 50 % initial LTV, margin call 70 %, liquidation
    /// 80 % confirmed over 3 ticks, 5 % penalty.
    pub fn offer_terms(&self) -> Value {
        serde_json::json!({
            "principal_minor": 1_000_000, "currency": "USD", "apr_bps": 1_000,
            "term_secs": 90 * 86_400, "initial_ltv_bps": 5_000, "margin_call_ltv_bps": 7_000,
            "liquidation_ltv_bps": 8_000, "liquidation_penalty_bps": 500, "confirm_ticks": 3,
            "grace_blocks": 144, "recovery_delay_blocks": 1_000,
            "funding_deadline": btc_escrow::util::unix_now() + 86_400,
            "lender_payout_address": self.lender_payout.to_string(), "min_confirmations": 1,
        })
    }

    /// Offer (the terms above), accept at $100,000/BTC: the loan, awaiting collateral.
    pub fn accepted(&self) -> anyhow::Result<Value> {
        self.accepted_with(&self.offer_terms())
    }

    /// [`Market::accepted`] with these terms.
    pub fn accepted_with(&self, terms: &Value) -> anyhow::Result<Value> {
        let api = self.api();
        let loan = api.expect(201, Method::POST, "/loans", &self.lender, Some(terms))?;
        ensure!(loan["state"] == "offered", "{loan}");
        let id = loan["id"].as_str().context("id")?.to_owned();
        // Without a manual source the market's feeds set the price.
        let (status, _) = api.call(
            Method::PUT,
            "/oracle/manual",
            Some(&self.admin),
            Some(&serde_json::json!({ "price_minor": 10_000_000 })),
            &[],
        )?;
        ensure!(
            status == 200 || status == 409,
            "setting the price: {status}"
        );
        api.wait("/health", &self.admin, "fit to decide", |h| h["ok"] == true)?;
        let loan = api.expect(
            200,
            Method::POST,
            &format!("/loans/{id}/accept"),
            &self.borrower,
            Some(&serde_json::json!({
                "borrower_return_address": self.borrower_return.to_string()
            })),
        )?;
        ensure!(loan["state"] == "awaiting_collateral", "{loan}");
        Ok(loan)
    }

    /// The escrow, re-derived from the loan's descriptor and the three account keys.
    pub fn escrow_of(&self, loan: &Value) -> anyhow::Result<btc_escrow::policy::EscrowDescriptor> {
        use btc_escrow::keys::AccountKey;
        use btc_escrow::policy::{EscrowDescriptor, PartyAccounts, PolicyTemplate};
        let accounts = PartyAccounts {
            borrower: self.parties.account(&self.parties.borrower)?,
            lender: self.parties.account(&self.parties.lender)?,
            arbiter: AccountKey::parse(
                "arbiter",
                &self.data.arbiter_account_key,
                bitcoin::Network::Regtest,
            )?,
        };
        Ok(EscrowDescriptor::parse(
            loan["escrow"]["descriptor"]
                .as_str()
                .context("descriptor")?,
            bitcoin::Network::Regtest,
            &accounts,
            &PolicyTemplate::default(),
        )?)
    }

    /// Offer, accept, fund the re-derived escrow address with 0.2 BTC, mine: active.
    pub fn active(&mut self) -> anyhow::Result<String> {
        self.active_with(&self.offer_terms())
    }

    /// [`Market::active`] with these terms.
    pub fn active_with(&mut self, terms: &Value) -> anyhow::Result<String> {
        let loan = self.accepted_with(terms)?;
        let id = loan["id"].as_str().context("id")?.to_owned();
        let address = self.escrow_of(&loan)?.address();
        ensure!(loan["escrow"]["address"] == address.to_string().as_str());
        let funding = self.wallet.send(
            &address,
            bitcoin::Amount::from_sat(loan["required_collateral_sat"].as_u64().context("sat")?),
            bitcoin::FeeRate::from_sat_per_vb(2).context("rate")?,
        )?;
        self.env
            .wait_for_tx(&address.script_pubkey(), funding.compute_txid())?;
        self.env.mine(1)?;
        self.api()
            .wait(&format!("/loans/{id}"), &self.borrower, "active", |v| {
                v["state"] == "active"
            })?;
        Ok(id)
    }

    /// The pending PSBT of loan `id`, signed by the lender outside the server.
    pub fn lender_signs(&self, id: &str) -> anyhow::Result<(Value, String)> {
        self.signs(id, &self.parties.lender, &self.lender)
    }

    /// The pending PSBT of loan `id`, signed by the borrower outside the server.
    pub fn borrower_signs(&self, id: &str) -> anyhow::Result<(Value, String)> {
        self.signs(id, &self.parties.borrower, &self.borrower)
    }

    fn signs(
        &self,
        id: &str,
        key: &btc_escrow::keys::SigningKey,
        token: &str,
    ) -> anyhow::Result<(Value, String)> {
        use std::str::FromStr;
        let api = self.api();
        let pending = api.get(&format!("/loans/{id}/psbt"), token)?;
        let loan = api.get(&format!("/loans/{id}"), token)?;
        let escrow = self.escrow_of(&loan)?;
        let mut psbt = bitcoin::psbt::Psbt::from_str(pending["psbt"].as_str().context("psbt")?)?;
        btc_escrow::tx::sign(
            &mut psbt,
            key,
            &escrow,
            &btc_escrow::tx::FeeCap::default(),
            &self.parties.secp,
        )?;
        Ok((pending, psbt.to_string()))
    }

    /// Post the lender's co-signed PSBT of loan `id`.
    pub fn post_psbt(&self, id: &str, psbt: &str) -> anyhow::Result<Value> {
        self.api().expect(
            200,
            Method::POST,
            &format!("/loans/{id}/psbt"),
            &self.lender,
            Some(&serde_json::json!({ "psbt": psbt })),
        )
    }
}
