//! Electrum over TLS against a real electrs: a TLS terminator (a small rustls proxy in
//! this file, with a CA and a server certificate made by rcgen) sits in front of the
//! harness's electrs, and the watcher and `chain::status` connect through
//! `ssl://127.0.0.1:PORT`: with the CA file (deposits seen, blocks announced, a cut
//! connection redone with its subscriptions), without it (the certificate refused,
//! naming the URL), and with `insecure` (connects).

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use bitcoin::{Amount, Network};
use btc_escrow::chain::{
    self, ChainError, ChainUpdate, ConnectError, ConnectionStatus, TlsConfig, WatchError, Watcher,
    WatcherConfig,
};
use common::escrow::{fund, Parties};
use common::wallet::TestWallet;
use common::Regtest;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// A test CA and a server certificate for 127.0.0.1 signed by it.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Pki {
    fn new() -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "btc-escrow test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).context("signing the CA")?;
        let key = KeyPair::generate().context("generating the server key")?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "electrs behind TLS");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .context("signing the server certificate")?;
        Ok(Self {
            ca_pem: ca.pem(),
            chain: vec![cert.der().clone(), ca.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        Ok(Arc::new(config))
    }

    /// The CA certificate written to `<dir>/ca.pem`.
    fn write_ca(&self, env: &Regtest) -> anyhow::Result<PathBuf> {
        let path = env.dir().join("ca.pem");
        std::fs::write(&path, &self.ca_pem)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// A TLS terminator: accepts TLS on a loopback port and pipes the plaintext to
/// `upstream` (electrs), one thread per connection. Stopped on drop.
struct TlsProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// The client side of every connection, to cut them.
    clients: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl TlsProxy {
    fn start(upstream: SocketAddr, config: Arc<ServerConfig>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the TLS proxy")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let accept = {
            let (stop, clients, accepted) = (stop.clone(), clients.clone(), accepted.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    if let (Ok(clone), Ok(mut list)) = (client.try_clone(), clients.lock()) {
                        list.push(clone);
                    }
                    let (stop, config) = (stop.clone(), config.clone());
                    std::thread::spawn(move || {
                        // A connection ends with an error when it is cut: nothing to do.
                        let _ = pump(client, upstream, config, &stop);
                    });
                }
            })
        };
        Ok(Self {
            port,
            stop,
            accepted,
            clients,
            accept: Some(accept),
        })
    }

    fn url(&self) -> String {
        format!("ssl://127.0.0.1:{}", self.port)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Shut down every open connection (the client sees its socket closed).
    fn cut(&self) {
        if let Ok(mut list) = self.clients.lock() {
            for s in list.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Pipe one TLS connection to a new plain connection to `upstream`, both ways, until
/// either side closes or the proxy stops.
fn pump(
    client: TcpStream,
    upstream: SocketAddr,
    config: Arc<ServerConfig>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut upstream = TcpStream::connect(upstream)?;
    let tick = Some(Duration::from_millis(5));
    client.set_read_timeout(tick)?;
    upstream.set_read_timeout(tick)?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let mut tls = StreamOwned::new(ServerConnection::new(config)?, client);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match tls.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => upstream.write_all(&buf[..n])?,
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e.into()),
        }
        match upstream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                tls.write_all(&buf[..n])?;
                tls.flush()?;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// electrs' plain address, from the harness's `tcp://` URL.
fn electrs_addr(env: &Regtest) -> anyhow::Result<SocketAddr> {
    let addr = env
        .electrum_url
        .strip_prefix("tcp://")
        .ok_or_else(|| anyhow!("unexpected electrum url {}", env.electrum_url))?;
    addr.parse()
        .with_context(|| format!("parsing electrs' address {addr}"))
}

fn tls_watcher(url: &str, tls: TlsConfig) -> Watcher {
    let mut config = WatcherConfig::new(url, Network::Regtest);
    config.tls = tls;
    config.timeout = Duration::from_secs(10);
    Watcher::new(config)
}

/// Sync until `ok` holds (electrs indexes the mempool asynchronously; a cut connection
/// is redone after the backoff).
fn sync_until(w: &mut Watcher, ok: impl Fn(&ChainUpdate) -> bool) -> anyhow::Result<ChainUpdate> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match w.sync() {
            Ok(update) if ok(&update) => return Ok(update),
            Ok(_) => {}
            Err(e) if Instant::now() > deadline => return Err(e).context("sync never succeeded"),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("condition never met; status {:?}", w.status());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Setup {
    env: Regtest,
    pki: Pki,
    proxy: TlsProxy,
}

fn setup() -> anyhow::Result<Setup> {
    let env = Regtest::start()?;
    let pki = Pki::new()?;
    let proxy = TlsProxy::start(electrs_addr(&env)?, pki.server_config()?)?;
    Ok(Setup { env, pki, proxy })
}

/// Scenario: electrs behind a TLS terminator whose certificate is signed by a test CA;
/// the watcher connects to `ssl://` with that CA file. `chain status` reads the tip
/// through it; an escrow is registered and funded, the deposit seen unconfirmed, a
/// mined block announced by the header subscription and the deposit confirmed; then
/// every connection is cut, a top-up is sent, and the watcher reconnects by itself
/// (subscriptions redone) and sees both deposits.
#[test]
fn watcher_over_tls_with_a_ca_file_sees_deposits_and_survives_a_cut() -> anyhow::Result<()> {
    let Setup { env, pki, proxy } = setup()?;
    let tls = TlsConfig {
        ca_file: Some(pki.write_ca(&env)?),
        insecure: false,
    };
    let url = proxy.url();

    let status = chain::status_with(&url, Network::Regtest, &tls)
        .with_context(|| format!("chain status through {url}"))?;
    ensure!(status.tip_height == env.height()?, "{status:?}");
    ensure!(status.tip_hash == env.tip_hash()?, "{status:?}");

    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 2)?;
    let parties = Parties::new()?;
    let escrow = parties.escrow(&env, 1, 20, 30)?;
    let mut watcher = tls_watcher(&url, tls);
    watcher.register("loan-tls", escrow.clone())?;
    let first = sync_until(&mut watcher, |_| true)?;
    ensure!(first.escrows[0].deposits.is_empty(), "{first:?}");
    // Batch arrays through TLS too (the proxy pumps bytes to electrs).
    ensure!(watcher.uses_batch_arrays() == Some(true));

    let deposit = fund(&mut wallet, &env, &escrow, Amount::from_sat(30_000_000))?;
    let u = sync_until(&mut watcher, |u| !u.escrows[0].deposits.is_empty())?;
    ensure!(u.escrows[0].deposits[0].outpoint == deposit.outpoint);
    ensure!(u.escrows[0].unconfirmed_collateral() == Amount::from_sat(30_000_000));

    env.mine(1)?;
    ensure!(
        watcher.wait_for_block(Duration::from_secs(30))?,
        "the header subscription over TLS announced no block"
    );
    let u = sync_until(&mut watcher, |u| {
        u.escrows[0].confirmed_collateral(1) == Amount::from_sat(30_000_000)
    })?;
    ensure!(u.tip.height == env.height()?);

    let before_cut = proxy.accepted();
    proxy.cut();
    match watcher.sync() {
        Err(WatchError::Disconnected { url: u, .. }) if u == url => {}
        other => bail!("a sync on a cut connection answered {other:?}"),
    }
    ensure!(matches!(
        watcher.status(),
        ConnectionStatus::Disconnected { .. }
    ));
    fund(&mut wallet, &env, &escrow, Amount::from_sat(20_000_000))?;
    env.mine(1)?;
    let u = sync_until(&mut watcher, |u| {
        u.escrows[0].confirmed_collateral(1) == Amount::from_sat(50_000_000)
    })?;
    ensure!(u.escrows[0].deposits.len() == 2, "{u:?}");
    ensure!(
        proxy.accepted() > before_cut,
        "the watcher never opened a new TLS connection"
    );
    ensure!(
        matches!(watcher.status(), ConnectionStatus::Connected { tip_height, .. } if *tip_height == env.height()?),
        "{:?}",
        watcher.status()
    );
    // The new connection's header subscription works too.
    env.mine(1)?;
    ensure!(watcher.wait_for_block(Duration::from_secs(30))?);
    Ok(())
}

/// Scenario: the same terminator, but the watcher trusts only the webpki roots (no CA
/// file): the test CA is unknown, so the connection is refused with a certificate
/// error naming the URL, the status says disconnected with that reason, and `chain
/// status` refuses the same way.
#[test]
fn a_certificate_from_an_unknown_ca_is_refused_naming_the_url() -> anyhow::Result<()> {
    let Setup { env, proxy, .. } = setup()?;
    let url = proxy.url();
    let parties = Parties::new()?;
    let mut watcher = tls_watcher(&url, TlsConfig::default());
    watcher.register("loan-tls", parties.escrow(&env, 1, 20, 30)?)?;

    let err = match watcher.sync() {
        Ok(u) => bail!("synced through an untrusted certificate: {u:?}"),
        Err(e) => e,
    };
    ensure!(
        matches!(
            &err,
            WatchError::Connect { url: u, error, .. }
                if *u == url && matches!(**error, ConnectError::Certificate { .. })
        ),
        "{err:?}"
    );
    let text = err.to_string();
    ensure!(
        text.contains(&url) && text.contains("certificate"),
        "{text}"
    );
    ensure!(
        matches!(watcher.status(), ConnectionStatus::Disconnected { reason, .. } if reason.contains("certificate")),
        "{:?}",
        watcher.status()
    );

    let err = match chain::status_with(&url, Network::Regtest, &TlsConfig::default()) {
        Ok(s) => bail!("chain status through an untrusted certificate: {s:?}"),
        Err(e) => e,
    };
    ensure!(
        matches!(&err, ChainError::Connect(ConnectError::Certificate { url: u, .. }) if *u == url),
        "{err:?}"
    );
    Ok(())
}

/// Scenario: the same terminator with `insecure: true` and no CA file: the certificate
/// is not checked, the watcher connects and syncs a funded escrow, and `chain status`
/// reads the tip.
#[test]
fn insecure_connects_without_checking_the_certificate() -> anyhow::Result<()> {
    let Setup { env, proxy, .. } = setup()?;
    let url = proxy.url();
    let insecure = TlsConfig {
        ca_file: None,
        insecure: true,
    };
    let mut wallet = TestWallet::new(&env)?;
    wallet.fund(&env, 2)?;
    let parties = Parties::new()?;
    let escrow = parties.escrow(&env, 1, 20, 30)?;
    let mut watcher = tls_watcher(&url, insecure.clone());
    watcher.register("loan-tls", escrow.clone())?;
    let deposit = fund(&mut wallet, &env, &escrow, Amount::from_sat(10_000_000))?;
    env.mine(1)?;
    let u = sync_until(&mut watcher, |u| {
        u.escrows[0].confirmed_collateral(1) == Amount::from_sat(10_000_000)
    })?;
    ensure!(u.escrows[0].deposits[0].outpoint == deposit.outpoint);

    let status = chain::status_with(&url, Network::Regtest, &insecure)?;
    ensure!(status.tip_height == env.height()?, "{status:?}");
    Ok(())
}
