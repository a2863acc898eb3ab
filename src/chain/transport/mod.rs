//! Connections to an Electrum server, `tcp://host:port` or `ssl://host:port`: the
//! socket with its connect, read and write timeouts, the TLS handshake (rustls on the
//! ring provider, the server's certificate checked against the webpki roots or a
//! configured CA file), and the protocol version negotiated as the first request.
//!
//! electrum-client's own TLS support is not used: its rustls features pull aws-lc (a
//! long C build) even when ring is asked for. Instead the stream is built here and
//! handed to electrum-client, whose `RawClient<S>` speaks the protocol over any
//! `S: Read + Write`.
//!
//! One client type serves both schemes: [`ElectrumClient`] is
//! `RawClient<ElectrumStream>`, where [`ElectrumStream`] holds the plain or the TLS
//! socket and implements `Read` and `Write` by delegation (and sends batches of
//! subscriptions as one JSON-RPC array when the server takes them: see [`stream`]).
//! The schemes differ
//! only in the byte stream, so that is where the choice is made: four methods to
//! delegate rather than the thirty-odd of `ElectrumApi` (an enum of clients); no trait
//! object (`ElectrumApi` has generic batch methods, so it cannot be boxed); and no
//! type parameter carried through `Watcher` and everything that holds one.
//!
//! There is no reconnect in here (electrum-client's `Client` would redo a broken
//! connection silently and lose our script subscriptions): a failed connection is
//! returned, and the watcher reconnects and subscribes again.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU8, Ordering};

use electrum_client::raw_client::RawClient;
use electrum_client::ElectrumApi;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};

mod stream;

pub use stream::ElectrumStream;
use stream::Socket;

/// The Electrum client the service uses, over TCP or TLS alike.
pub type ElectrumClient = RawClient<ElectrumStream>;

/// How long the server gets to answer the batch-array probe (see [`stream::probe`]).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the server takes batch arrays: not asked yet, yes, no.
const ARRAYS_UNKNOWN: u8 = 0;
const ARRAYS_YES: u8 = 1;
const ARRAYS_NO: u8 = 2;

/// How the server's certificate is checked on `ssl://` URLs (ignored on `tcp://`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Trust only the certificates in this PEM file (a private CA or the server's own
    /// self-signed certificate) instead of the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate: the connection is encrypted but the server is not
    /// authenticated. An explicit opt-in, logged with a warning.
    pub insecure: bool,
}

/// Why a connection to an Electrum server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("electrum url {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("electrum server {url}: tls.ca_file and tls.insecure are both set; choose one")]
    CaFileAndInsecure { url: String },
    #[error("electrum server {url}: reading the CA file (tls.ca_file) {}: {source}", path.display())]
    ReadCaFile {
        url: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("electrum server {url}: the CA file (tls.ca_file) {}: {reason}", path.display())]
    BadCaFile {
        url: String,
        path: PathBuf,
        reason: String,
    },
    #[error("electrum server {url}: {action}: {source}")]
    Io {
        url: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// The server's certificate was refused (unknown issuer, wrong name, expired...).
    #[error("electrum server {url}: TLS certificate refused: {source}")]
    Certificate {
        url: String,
        #[source]
        source: rustls::Error,
    },
    /// The TLS handshake failed for another reason (protocol, alert from the server).
    #[error("electrum server {url}: TLS handshake failed: {source}")]
    Handshake {
        url: String,
        #[source]
        source: rustls::Error,
    },
    #[error("electrum server {url}: {source}")]
    Electrum {
        url: String,
        #[source]
        source: electrum_client::Error,
    },
}

impl ConnectError {
    /// True for failures that may pass by themselves (the server down, a network
    /// error); false for the URL, the CA file and a refused certificate, which need an
    /// operator.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectError::Io { .. }
                | ConnectError::Handshake { .. }
                | ConnectError::Electrum { .. }
        )
    }
}

/// A parsed Electrum URL with its TLS settings loaded: built once (the CA file read
/// and checked then), it opens any number of connections.
#[derive(Debug, Clone)]
pub struct Connector {
    url: String,
    host: String,
    port: u16,
    tls: Option<Tls>,
    /// Whether the server takes batch arrays, asked on the first connection and kept
    /// for the next ones (shared by the connector's clones).
    arrays: Arc<AtomicU8>,
}

#[derive(Debug, Clone)]
struct Tls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl Connector {
    /// Parse `url` (`tcp://host:port`, `ssl://host:port`, or `host:port` for TCP) and
    /// prepare its TLS settings.
    pub fn new(url: &str, tls: &TlsConfig) -> Result<Self, ConnectError> {
        let bad = |reason| ConnectError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let (secure, rest) = if let Some(rest) = url.strip_prefix("ssl://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("tcp://") {
            (false, rest)
        } else if url.contains("://") {
            return Err(bad("the scheme must be tcp:// or ssl://"));
        } else {
            (false, url)
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("no port (expected host:port)"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let tls = if secure {
            let server_name = ServerName::try_from(host.to_owned())
                .map_err(|_| bad("the host is neither a DNS name nor an IP address"))?;
            Some(Tls {
                config: Arc::new(client_config(url, tls)?),
                server_name,
            })
        } else {
            if tls.insecure || tls.ca_file.is_some() {
                tracing::warn!(url, "TLS settings are ignored for a tcp:// electrum url");
            }
            None
        };
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
            tls,
            arrays: Arc::new(AtomicU8::new(ARRAYS_UNKNOWN)),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Open a connection: `timeout` bounds the TCP connect and every later socket read
    /// and write (so the handshake too). The protocol version is negotiated before the
    /// client is returned, and on the connector's first connection the server is asked
    /// whether it takes batch arrays (a server that does not answer within
    /// [`PROBE_TIMEOUT`] is taken as a no, and connected to again).
    pub fn connect(&self, timeout: Duration) -> Result<ElectrumClient, ConnectError> {
        let known = self.arrays.load(Ordering::Relaxed);
        let (client, socket) = self.open(timeout, known != ARRAYS_NO)?;
        if known != ARRAYS_UNKNOWN {
            return Ok(client);
        }
        let probe_timeout = Some(PROBE_TIMEOUT.min(timeout));
        let set_timeout = |t| {
            socket
                .set_read_timeout(t)
                .map_err(|source| ConnectError::Io {
                    url: self.url.clone(),
                    action: "setting the socket options",
                    source,
                })
        };
        set_timeout(probe_timeout)?;
        if stream::probe(&client) {
            set_timeout(Some(timeout))?;
            self.arrays.store(ARRAYS_YES, Ordering::Relaxed);
            return Ok(client);
        }
        self.arrays.store(ARRAYS_NO, Ordering::Relaxed);
        // Both handles on the socket, so that the server sees it closed.
        drop((client, socket));
        Ok(self.open(timeout, false)?.0)
    }

    /// Whether this connector's connections send subscriptions as one array (`None`
    /// before the first connection asked the server).
    pub fn uses_arrays(&self) -> Option<bool> {
        match self.arrays.load(Ordering::Relaxed) {
            ARRAYS_YES => Some(true),
            ARRAYS_NO => Some(false),
            _ => None,
        }
    }

    /// One connection, the protocol version negotiated; with a handle on its socket
    /// (for its timeouts).
    fn open(
        &self,
        timeout: Duration,
        arrays: bool,
    ) -> Result<(ElectrumClient, TcpStream), ConnectError> {
        let io_err = |action| {
            move |source| ConnectError::Io {
                url: self.url.clone(),
                action,
                source,
            }
        };
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(io_err("resolving the host"))?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        let mut socket = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, timeout) {
                Ok(s) => {
                    socket = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let socket = socket.ok_or(last).map_err(io_err("connecting"))?;
        socket
            .set_read_timeout(Some(timeout))
            .and_then(|()| socket.set_write_timeout(Some(timeout)))
            .and_then(|()| socket.set_nodelay(true))
            .map_err(io_err("setting the socket options"))?;
        let handle = socket
            .try_clone()
            .map_err(io_err("setting the socket options"))?;
        let socket = match &self.tls {
            None => Socket::Tcp(socket),
            Some(tls) => Socket::Tls(Box::new(self.handshake(tls, socket)?)),
        };
        let client = RawClient::from(ElectrumStream::new(socket, arrays));
        // The first request, as the protocol asks (and as electrum-client's own
        // constructors do).
        client
            .protocol_version()
            .map_err(|source| ConnectError::Electrum {
                url: self.url.clone(),
                source,
            })?;
        Ok((client, handle))
    }

    fn handshake(
        &self,
        tls: &Tls,
        mut socket: TcpStream,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, ConnectError> {
        let mut conn = ClientConnection::new(tls.config.clone(), tls.server_name.clone()).map_err(
            |source| ConnectError::Handshake {
                url: self.url.clone(),
                source,
            },
        )?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut socket) {
                return Err(self.handshake_error(e));
            }
        }
        Ok(StreamOwned::new(conn, socket))
    }

    /// rustls reports its own errors inside `io::Error`s; take them out.
    fn handshake_error(&self, e: io::Error) -> ConnectError {
        let url = self.url.clone();
        let tls_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned();
        match tls_error {
            Some(
                source @ (rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented),
            ) => ConnectError::Certificate { url, source },
            Some(source) => ConnectError::Handshake { url, source },
            None => ConnectError::Io {
                url,
                action: "during the TLS handshake",
                source: e,
            },
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(url: &str, tls: &TlsConfig) -> Result<ClientConfig, ConnectError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| ConnectError::Handshake {
            url: url.to_owned(),
            source,
        })?;
    let config = match (&tls.ca_file, tls.insecure) {
        (Some(_), true) => {
            return Err(ConnectError::CaFileAndInsecure {
                url: url.to_owned(),
            })
        }
        (None, true) => {
            tracing::warn!(
                url,
                "TLS certificate verification is OFF for this electrum server \
                 (insecure): the connection is encrypted but the server is not \
                 authenticated"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth()
        }
        (Some(path), false) => builder
            .with_root_certificates(roots_from_file(url, path)?)
            .with_no_client_auth(),
        (None, false) => {
            let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

/// Every certificate of a PEM file, as trust anchors.
fn roots_from_file(url: &str, path: &Path) -> Result<RootCertStore, ConnectError> {
    let bad = |reason: String| ConnectError::BadCaFile {
        url: url.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|source| ConnectError::ReadCaFile {
        url: url.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for (n, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| bad(format!("PEM section {}: {e}", n + 1)))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("certificate {}: {e}", n + 1)))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".to_owned()));
    }
    Ok(roots)
}

/// `insecure`: any certificate is accepted, but the handshake signatures are still
/// checked (the connection is encrypted to whoever holds the presented key).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
