//! The shared regtest harness: a real bitcoind and a real electrs per test, on free
//! loopback ports in a temporary directory, stopped when the harness is dropped (also
//! when the test panics). Binaries come from `BITCOIND_EXE` / `ELECTRS_EXE` or the
//! cache `regtest/setup` fills; when they are missing the harness fails and says to run
//! `regtest/setup`. It never skips.

#![allow(dead_code)]

pub mod escrow;
pub mod serve;
pub mod tools;
pub mod wallet;
pub mod web;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bitcoin::{Address, BlockHash, Network, Script, ScriptBuf, Transaction, Txid};
use electrum_client::ElectrumApi;
use serde_json::{json, Value};

/// Versions `regtest/setup` builds; keep in sync with that script.
const CORE_DIR: &str = "bitcoin-core-kernel-sys-0.4.1";
const ELECTRS_DIR: &str = "electrs-0.12.0";

/// How long any wait in the harness may take before it fails the test.
pub const WAIT: Duration = Duration::from_secs(60);

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BTC_ESCROW_REGTEST_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("btc-escrow").join("regtest")
}

/// The `btc-escrow` binary: cargo's path for integration tests; for an example (the
/// demo), the one beside it (`target/<profile>/examples/demo` → `target/<profile>/`).
pub fn bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_btc-escrow") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the running program's path");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("btc-escrow"))
        .expect("an example runs from target/<profile>/examples")
}

/// Where a binary is: the environment variable if set, else the regtest cache (only a
/// completed build counts). Missing → an error that says how to build it.
pub fn find_exe(var: &str, dir: &str, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{var}={} does not exist: run regtest/setup (it builds bitcoind and electrs) \
             or point {var} at the binary",
            path.display()
        );
    }
    let root = cache_dir().join(dir);
    let path = root.join("bin").join(name);
    if root.join(".complete").is_file() && path.is_file() {
        return Ok(path);
    }
    bail!(
        "{name} not found: {var} is unset and {} holds no finished build. \
         Run regtest/setup (it builds bitcoind and electrs from registry sources) \
         and try again",
        root.display()
    )
}

pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// An address nobody needs: coinbase rewards of filler blocks go there.
pub fn burn_address() -> Address {
    Address::p2wsh(Script::from_bytes(&[0x51]), Network::Regtest)
}

/// A child process killed and reaped on drop. On Linux it also dies with the thread
/// that started it (PR_SET_PDEATHSIG), so a test runner killed hard leaves no orphan.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child })
    }

    fn check_alive(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!(
                "{} exited with {status}; last lines of its log:\n{tail}",
                self.name
            );
        }
        Ok(())
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Minimal JSON-RPC client for bitcoind over HTTP with cookie authentication.
#[derive(Clone)]
pub struct Rpc {
    port: u16,
    cookie: PathBuf,
}

impl Rpc {
    pub fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        use bitcoin::base64::Engine as _;
        let cookie = std::fs::read_to_string(&self.cookie)
            .with_context(|| format!("reading {}", self.cookie.display()))?;
        let auth = bitcoin::base64::engine::general_purpose::STANDARD.encode(cookie.trim());
        let body =
            json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}).to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .with_context(|| format!("connecting to bitcoind RPC on port {}", self.port))?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_nodelay(true)?;
        // One write: split writes meet Nagle + delayed ACK and cost 40 ms per call.
        let request = format!(
            "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (_, payload) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed HTTP answer from bitcoind: {response}"))?;
        let value: Value = serde_json::from_str(payload)
            .with_context(|| format!("{method}: bitcoind answered {payload}"))?;
        if !value["error"].is_null() {
            bail!("{method}: {}", value["error"]);
        }
        Ok(value["result"].clone())
    }
}

/// A running regtest network: one bitcoind, one electrs.
pub struct Regtest {
    // Field order is drop order: electrs first, then bitcoind, then the directory.
    electrs: Proc,
    bitcoind: Proc,
    pub rpc: Rpc,
    pub electrum_url: String,
    pub p2p_port: u16,
    dir: tempfile::TempDir,
    electrs_args: Vec<String>,
    electrs_exe: PathBuf,
}

impl Regtest {
    /// Start bitcoind and electrs, mine one block (bitcoind leaves initial block
    /// download only then, and electrs waits for that) and wait until electrs has
    /// indexed it. Free ports are probed, then bound by the daemons: another test may
    /// take one in between, so a failed start is retried on new ports.
    pub fn start() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once() {
                Ok(env) => return Ok(env),
                Err(e) if format!("{e:#}").contains("regtest/setup") => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .expect("three attempts were made")
            .context("starting bitcoind + electrs"))
    }

    fn start_once() -> anyhow::Result<Self> {
        let bitcoind_exe = find_exe("BITCOIND_EXE", CORE_DIR, "bitcoind")?;
        let electrs_exe = find_exe("ELECTRS_EXE", ELECTRS_DIR, "electrs")?;
        let dir = tempfile::Builder::new()
            .prefix("btc-escrow-regtest-")
            .tempdir()?;
        let datadir = dir.path().join("bitcoind");
        std::fs::create_dir_all(&datadir)?;
        let (rpc_port, p2p_port) = (free_port()?, free_port()?);
        let bitcoind_log = dir.path().join("bitcoind.log");
        let mut bitcoind = Proc::spawn(
            "bitcoind",
            Command::new(&bitcoind_exe).args([
                "-regtest".to_owned(),
                format!("-datadir={}", datadir.display()),
                format!("-rpcport={rpc_port}"),
                "-rpcbind=127.0.0.1".to_owned(),
                "-rpcallowip=127.0.0.1".to_owned(),
                format!("-bind=127.0.0.1:{p2p_port}"),
                "-listen=1".to_owned(),
                "-rest=1".to_owned(),
                "-server=1".to_owned(),
                "-printtoconsole=1".to_owned(),
                "-debug=0".to_owned(),
                "-fallbackfee=0.0001".to_owned(),
                "-dnsseed=0".to_owned(),
                "-fixedseeds=0".to_owned(),
                "-rpcthreads=8".to_owned(),
            ]),
            &bitcoind_log,
        )?;
        let rpc = Rpc {
            port: rpc_port,
            cookie: datadir.join("regtest").join(".cookie"),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            bitcoind.check_alive(&bitcoind_log)?;
            match rpc.call("getblockchaininfo", json!([])) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context("bitcoind did not answer RPC in time"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        rpc.call("generatetoaddress", json!([1, burn_address().to_string()]))?;

        let electrum_port = free_port()?;
        let electrs_args = vec![
            "--skip-default-conf-files".to_owned(),
            "--network=regtest".to_owned(),
            format!("--db-dir={}", dir.path().join("electrs-db").display()),
            format!("--daemon-dir={}", datadir.display()),
            format!(
                "--cookie-file={}",
                datadir.join("regtest").join(".cookie").display()
            ),
            format!("--daemon-rpc-addr=127.0.0.1:{rpc_port}"),
            format!("--electrum-rpc-addr=127.0.0.1:{electrum_port}"),
            format!("--monitoring-addr=127.0.0.1:{}", free_port()?),
            "--log-filters=INFO".to_owned(),
        ];
        let electrs = Self::spawn_electrs(&electrs_exe, &electrs_args, dir.path())?;
        let env = Self {
            electrs,
            bitcoind,
            rpc,
            electrum_url: format!("tcp://127.0.0.1:{electrum_port}"),
            p2p_port,
            dir,
            electrs_args,
            electrs_exe,
        };
        env.wait_for_electrs_tip()?;
        Ok(env)
    }

    fn spawn_electrs(exe: &Path, args: &[String], dir: &Path) -> anyhow::Result<Proc> {
        Proc::spawn(
            "electrs",
            Command::new(exe).args(args),
            &dir.join("electrs.log"),
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh Electrum connection to this network's electrs.
    pub fn electrum(&self) -> anyhow::Result<electrum_client::Client> {
        let config = electrum_client::ConfigBuilder::new()
            .timeout(Some(Duration::from_secs(30)))
            .retry(0)
            .build();
        electrum_client::Client::from_config(&self.electrum_url, config)
            .with_context(|| format!("connecting to electrs at {}", self.electrum_url))
    }

    pub fn height(&self) -> anyhow::Result<u32> {
        let h = self.rpc.call("getblockcount", json!([]))?;
        h.as_u64()
            .and_then(|h| u32::try_from(h).ok())
            .ok_or_else(|| anyhow!("getblockcount answered {h}"))
    }

    pub fn tip_hash(&self) -> anyhow::Result<BlockHash> {
        let h = self.rpc.call("getbestblockhash", json!([]))?;
        Ok(h.as_str().ok_or_else(|| anyhow!("bad hash {h}"))?.parse()?)
    }

    /// Mine `n` blocks paying to `address`, wait until electrs has them.
    pub fn mine_to(&self, n: u32, address: &Address) -> anyhow::Result<Vec<BlockHash>> {
        let hashes = self
            .rpc
            .call("generatetoaddress", json!([n, address.to_string()]))?;
        let hashes = serde_json::from_value(hashes)?;
        self.wait_for_electrs_tip()?;
        Ok(hashes)
    }

    /// Mine `n` blocks to the burn address, wait until electrs has them.
    pub fn mine(&self, n: u32) -> anyhow::Result<Vec<BlockHash>> {
        self.mine_to(n, &burn_address())
    }

    /// Mine one block holding exactly `txids` (in that order) and nothing else from the
    /// mempool.
    pub fn mine_block_with(&self, txids: &[Txid]) -> anyhow::Result<BlockHash> {
        let txs: Vec<String> = txids.iter().map(|t| t.to_string()).collect();
        let res = self
            .rpc
            .call("generateblock", json!([burn_address().to_string(), txs]))?;
        self.wait_for_electrs_tip()?;
        Ok(res["hash"]
            .as_str()
            .ok_or_else(|| anyhow!("generateblock answered {res}"))?
            .parse()?)
    }

    /// Wait until electrs reports bitcoind's tip.
    pub fn wait_for_electrs_tip(&self) -> anyhow::Result<()> {
        let target = self.tip_hash()?;
        let height = self.height()?;
        let deadline = Instant::now() + WAIT;
        let mut last_err = None;
        loop {
            match self
                .electrum()
                .and_then(|c| c.block_header(height as usize).map_err(anyhow::Error::from))
            {
                Ok(header) if header.block_hash() == target => {
                    // The header can be served before the subscription tip moves; ask
                    // the tip too so script histories are up to date.
                    let tip = self.electrum()?.block_headers_subscribe()?;
                    if tip.header.block_hash() == target {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
            if Instant::now() > deadline {
                bail!(
                    "electrs did not reach block {height} ({target}) within {WAIT:?} \
                     (last error: {last_err:?}); see {}",
                    self.dir().join("electrs.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until electrs lists `txid` in the history of `script` (confirmed or not).
    pub fn wait_for_tx(&self, script: &Script, txid: Txid) -> anyhow::Result<()> {
        self.wait_for_history(script, |h| h.iter().any(|e| e.tx_hash == txid))
            .with_context(|| format!("waiting for electrs to index {txid}"))?;
        Ok(())
    }

    /// Wait until electrs' history of `script` satisfies `ok`; returns that history.
    pub fn wait_for_history(
        &self,
        script: &Script,
        ok: impl Fn(&[electrum_client::GetHistoryRes]) -> bool,
    ) -> anyhow::Result<Vec<electrum_client::GetHistoryRes>> {
        let client = self.electrum()?;
        let deadline = Instant::now() + WAIT;
        loop {
            let history = client.script_get_history(script)?;
            if ok(&history) {
                return Ok(history);
            }
            if Instant::now() > deadline {
                bail!("electrs history of {script} never matched; last: {history:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn broadcast_rpc(&self, tx: &Transaction) -> anyhow::Result<Txid> {
        let hex = bitcoin::consensus::encode::serialize_hex(tx);
        let txid = self.rpc.call("sendrawtransaction", json!([hex]))?;
        Ok(txid
            .as_str()
            .ok_or_else(|| anyhow!("bad txid {txid}"))?
            .parse()?)
    }

    pub fn mempool_contains(&self, txid: Txid) -> anyhow::Result<bool> {
        let pool: Vec<Txid> = serde_json::from_value(self.rpc.call("getrawmempool", json!([]))?)?;
        Ok(pool.contains(&txid))
    }

    /// Reorganize the last `depth` blocks away and mine `depth + 1` replacement blocks,
    /// so the new chain is longer. With [`Reorg::KeepTxs`] the disconnected
    /// transactions are mined again in the replacement blocks; with
    /// [`Reorg::DropTxs`] the replacement blocks are empty and those transactions wait
    /// in the mempool (a later block may confirm them unless they are double-spent).
    pub fn reorg(&self, depth: u32, mode: Reorg) -> anyhow::Result<Vec<BlockHash>> {
        let height = self.height()?;
        if depth == 0 || depth >= height {
            bail!("cannot reorg {depth} blocks at height {height}");
        }
        let first = self.rpc.call("getblockhash", json!([height - depth + 1]))?;
        self.rpc.call("invalidateblock", json!([first]))?;
        let mut hashes = Vec::new();
        for _ in 0..=depth {
            match mode {
                Reorg::KeepTxs => {
                    let h = self
                        .rpc
                        .call("generatetoaddress", json!([1, burn_address().to_string()]))?;
                    let mut h: Vec<BlockHash> = serde_json::from_value(h)?;
                    hashes.append(&mut h);
                }
                Reorg::DropTxs => {
                    let res = self.rpc.call(
                        "generateblock",
                        json!([burn_address().to_string(), Vec::<String>::new()]),
                    )?;
                    hashes.push(
                        res["hash"]
                            .as_str()
                            .ok_or_else(|| anyhow!("generateblock answered {res}"))?
                            .parse()?,
                    );
                }
            }
        }
        self.wait_for_electrs_tip()?;
        Ok(hashes)
    }

    /// Kill electrs (SIGKILL) without touching bitcoind.
    pub fn kill_electrs(&mut self) {
        self.electrs.stop();
    }

    /// Start electrs again on the same port and database; wait until it has the tip.
    pub fn restart_electrs(&mut self) -> anyhow::Result<()> {
        self.electrs.stop();
        self.electrs = Self::spawn_electrs(&self.electrs_exe, &self.electrs_args, self.dir.path())?;
        self.wait_for_electrs_tip()
    }

    /// The escrow descriptor's addresses as Bitcoin Core derives them.
    pub fn derive_addresses(&self, descriptor: &str) -> anyhow::Result<Vec<String>> {
        let info = self.rpc.call("getdescriptorinfo", json!([descriptor]))?;
        let with_checksum = info["descriptor"]
            .as_str()
            .ok_or_else(|| anyhow!("getdescriptorinfo answered {info}"))?;
        Ok(serde_json::from_value(
            self.rpc.call("deriveaddresses", json!([with_checksum]))?,
        )?)
    }

    pub fn script_of(address: &Address) -> ScriptBuf {
        address.script_pubkey()
    }
}

/// What happens to the transactions of blocks a reorg removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reorg {
    KeepTxs,
    DropTxs,
}
