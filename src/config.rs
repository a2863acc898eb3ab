//! The service's configuration, layered: the TOML file < `BTC_ESCROW_*` environment
//! variables < command-line flags (clap reads a flag's variable when the flag is
//! absent). Everything is validated once, at start: an invalid field stops the process
//! with the field's name and why. Secrets never appear in `Debug` or in `show()`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bitcoin::{Amount, Network};
use serde::{Deserialize, Serialize};

use crate::chain::{Connector, FeePolicy, FeePolicyError, TlsConfig};
use crate::oracle::{OracleConfig, OracleConfigError};
use crate::tx::FeeCap;

/// The configuration file's name in the data directory.
pub const FILE_NAME: &str = "btc-escrow.toml";

/// Why the configuration was refused; `field` is the dotted name as in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("{field}: {problem}")]
    Field {
        field: &'static str,
        problem: Problem,
    },
    #[error("fees.{field}: {source}", field = .source.field())]
    Fees {
        #[from]
        source: FeePolicyError,
    },
    #[error(transparent)]
    Oracle(#[from] OracleConfigError),
}

impl ConfigError {
    /// The field at fault, as named in the file (`None` for an unreadable file).
    pub fn field(&self) -> Option<String> {
        match self {
            ConfigError::Field { field, .. } => Some((*field).to_owned()),
            ConfigError::Fees { source } => Some(format!("fees.{}", source.field())),
            ConfigError::Oracle(OracleConfigError::Field { field, .. }) => {
                Some(format!("oracle.{field}"))
            }
            _ => None,
        }
    }
}

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("missing (set it in the file, the environment or a flag)")]
    Missing,
    #[error("{0:?} is not one of bitcoin, testnet, testnet4, signet, regtest")]
    NotANetwork(String),
    #[error("{0:?} is not tcp://HOST:PORT or ssl://HOST:PORT")]
    NotAnElectrumUrl(String),
    #[error("{0}")]
    Tls(String),
    #[error("{0:?} is not an IP address and port")]
    NotAnAddress(String),
    #[error("{found} is not within {min}..={max}")]
    OutOfRange { found: u64, min: u64, max: u64 },
    #[error("must be at least {0} characters")]
    TooShort(usize),
}

fn field(field: &'static str, problem: Problem) -> ConfigError {
    ConfigError::Field { field, problem }
}

fn in_range(name: &'static str, found: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&found) {
        Ok(())
    } else {
        Err(field(name, Problem::OutOfRange { found, min, max }))
    }
}

/// A secret value: redacted in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The file as written: every field optional (defaults below), unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub network: Option<String>,
    pub electrum_url: Option<String>,
    /// For ssl:// URLs: trust only the certificates in this PEM file.
    pub electrum_ca_file: Option<PathBuf>,
    /// For ssl:// URLs: accept any certificate (explicit opt-in, logged).
    pub electrum_insecure: Option<bool>,
    pub listen: Option<String>,
    #[serde(default)]
    pub engine: EngineFile,
    #[serde(default)]
    pub fees: FeesFile,
    #[serde(default)]
    pub webhooks: WebhooksFile,
    /// Validated by [`OracleConfig`].
    pub oracle: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineFile {
    pub tick_secs: Option<u64>,
    pub min_confirmations: Option<u32>,
    pub confirm_ticks: Option<u32>,
    pub rebroadcast_after_blocks: Option<u32>,
    pub max_chain_view_age_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeesFile {
    pub min_sat_per_kvb: Option<u64>,
    pub max_sat_per_kvb: Option<u64>,
    pub fallback_sat_per_kvb: Option<u64>,
    pub max_fee_sat: Option<u64>,
    pub max_fee_bps: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksFile {
    pub secret: Option<Secret>,
    pub timeout_ms: Option<u64>,
    pub max_attempts: Option<u32>,
}

/// What the environment and the command line set; each wins over the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// bitcoin, testnet, testnet4, signet or regtest.
    #[arg(long, env = "BTC_ESCROW_NETWORK")]
    pub network: Option<String>,
    /// Electrum server, tcp://HOST:PORT (or ssl://HOST:PORT).
    #[arg(long, env = "BTC_ESCROW_ELECTRUM")]
    pub electrum: Option<String>,
    /// For ssl:// Electrum URLs: trust only the certificates in this PEM file.
    #[arg(long, env = "BTC_ESCROW_ELECTRUM_CA_FILE")]
    pub electrum_ca_file: Option<PathBuf>,
    /// For ssl:// Electrum URLs: accept any certificate. Only for testing.
    #[arg(long, env = "BTC_ESCROW_ELECTRUM_INSECURE")]
    pub electrum_insecure: bool,
    /// The HTTP API's address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "BTC_ESCROW_LISTEN")]
    pub listen: Option<String>,
    /// Engine tick interval in seconds (maturity, deadlines, rebroadcasts).
    #[arg(long, env = "BTC_ESCROW_TICK_SECS")]
    pub tick_secs: Option<u64>,
    /// Confirmations a deposit needs before it counts as collateral.
    #[arg(long, env = "BTC_ESCROW_MIN_CONFIRMATIONS")]
    pub min_confirmations: Option<u32>,
    /// The secret webhook payloads are signed with.
    #[arg(long, env = "BTC_ESCROW_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub network: Network,
    pub electrum_url: String,
    pub electrum_tls: TlsConfig,
    pub listen: SocketAddr,
    pub tick_interval: Duration,
    pub min_confirmations: u32,
    /// The fewest `confirm_ticks` an offer may ask for (a single wick liquidates
    /// nobody).
    pub confirm_ticks: u32,
    /// Blocks a broadcast may stay unconfirmed before its fee is bumped.
    pub rebroadcast_after_blocks: u32,
    /// The oldest a chain view may be (since its sync completed) for the engine to
    /// decide on it: an Electrum server answering too slowly stops decisions.
    pub max_chain_view_age: Duration,
    pub fees: FeePolicy,
    pub fee_cap: FeeCap,
    pub webhooks: Webhooks,
    pub oracle: OracleConfig,
}

/// Webhook delivery settings.
#[derive(Debug, Clone)]
pub struct Webhooks {
    pub secret: Option<Secret>,
    pub timeout: Duration,
    pub max_attempts: u32,
}

/// The settings as shown to an operator (`config check`): no secret, only whether one
/// is set.
#[derive(Debug, Serialize)]
pub struct Shown {
    pub data_dir: PathBuf,
    pub network: String,
    pub electrum_url: String,
    pub electrum_ca_file: Option<PathBuf>,
    pub electrum_insecure: bool,
    pub listen: String,
    pub tick_secs: u64,
    pub min_confirmations: u32,
    pub confirm_ticks: u32,
    pub rebroadcast_after_blocks: u32,
    pub max_chain_view_age_secs: u64,
    pub min_sat_per_kvb: u64,
    pub max_sat_per_kvb: u64,
    pub fallback_sat_per_kvb: u64,
    pub max_fee_sat: u64,
    pub max_fee_bps: u32,
    pub webhook_secret_set: bool,
    pub webhook_timeout_ms: u64,
    pub webhook_max_attempts: u32,
    pub oracle_sources: Vec<String>,
    pub oracle_quorum: usize,
}

/// The oracle when the file names none: the three exchanges, two of them agreeing.
pub const DEFAULT_ORACLE: &str = r#"
[oracle]
quorum = 2
[[oracle.sources]]
name = "kraken"
kind = "kraken"
[[oracle.sources]]
name = "bitstamp"
kind = "bitstamp"
[[oracle.sources]]
name = "coinbase"
kind = "coinbase"
"#;

/// Parse a network name (bitcoin, testnet, testnet4, signet, regtest: bitcoin's own
/// names), naming the field on error.
pub fn parse_network(text: &str) -> Result<Network, ConfigError> {
    Network::from_str(text.trim())
        .map_err(|_| field("network", Problem::NotANetwork(text.trim().to_owned())))
}

fn check_electrum(url: &str) -> Result<String, ConfigError> {
    let bad = || field("electrum_url", Problem::NotAnElectrumUrl(url.to_owned()));
    let rest = url
        .strip_prefix("tcp://")
        .or_else(|| url.strip_prefix("ssl://"))
        .ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(url.to_owned())
}

impl Settings {
    /// Read `<data_dir>/btc-escrow.toml` (absent: every field from the overrides and
    /// the defaults) and apply the overrides.
    pub fn load(data_dir: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let path = data_dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::from_parts(data_dir, &text, overrides)
    }

    /// The settings from a file's text and the overrides.
    pub fn from_parts(
        data_dir: &Path,
        text: &str,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text)?;
        let network_text = overrides
            .network
            .clone()
            .or(file.network)
            .ok_or_else(|| field("network", Problem::Missing))?;
        let network = parse_network(&network_text)?;
        let electrum_url = check_electrum(
            &overrides
                .electrum
                .clone()
                .or(file.electrum_url)
                .ok_or_else(|| field("electrum_url", Problem::Missing))?,
        )?;
        let electrum_tls = TlsConfig {
            ca_file: overrides.electrum_ca_file.clone().or(file.electrum_ca_file),
            insecure: overrides.electrum_insecure || file.electrum_insecure.unwrap_or(false),
        };
        // The URL and the TLS settings together: a CA file that cannot be read, or a
        // CA file with insecure, stops the service here.
        Connector::new(&electrum_url, &electrum_tls)
            .map_err(|e| field("electrum_ca_file", Problem::Tls(e.to_string())))?;
        let listen_text = overrides
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen = SocketAddr::from_str(&listen_text)
            .map_err(|_| field("listen", Problem::NotAnAddress(listen_text.clone())))?;

        let e = &file.engine;
        let tick_secs = overrides.tick_secs.or(e.tick_secs).unwrap_or(5);
        in_range("engine.tick_secs", tick_secs, 1, 3_600)?;
        let min_confirmations = overrides
            .min_confirmations
            .or(e.min_confirmations)
            .unwrap_or(1);
        in_range(
            "engine.min_confirmations",
            u64::from(min_confirmations),
            1,
            100,
        )?;
        let confirm_ticks = e.confirm_ticks.unwrap_or(3);
        in_range("engine.confirm_ticks", u64::from(confirm_ticks), 1, 1_000)?;
        let rebroadcast_after_blocks = e.rebroadcast_after_blocks.unwrap_or(6);
        in_range(
            "engine.rebroadcast_after_blocks",
            u64::from(rebroadcast_after_blocks),
            1,
            1_000,
        )?;
        let max_chain_view_age_secs = e.max_chain_view_age_secs.unwrap_or(60);
        in_range(
            "engine.max_chain_view_age_secs",
            max_chain_view_age_secs,
            1,
            3_600,
        )?;

        let f = &file.fees;
        let default_fees = FeePolicy::default();
        let fees = FeePolicy::new(
            f.min_sat_per_kvb.unwrap_or(default_fees.min_sat_per_kvb()),
            f.max_sat_per_kvb.unwrap_or(default_fees.max_sat_per_kvb()),
            f.fallback_sat_per_kvb
                .unwrap_or(default_fees.fallback_sat_per_kvb()),
        )?;
        let default_cap = FeeCap::default();
        let max_fee_sat = f.max_fee_sat.unwrap_or(default_cap.max_fee.to_sat());
        in_range("fees.max_fee_sat", max_fee_sat, 1, 10_000_000)?;
        let max_fee_bps = f.max_fee_bps.unwrap_or(default_cap.max_fee_bps);
        in_range("fees.max_fee_bps", u64::from(max_fee_bps), 1, 5_000)?;

        let w = &file.webhooks;
        let secret = overrides
            .webhook_secret
            .clone()
            .map(Secret::new)
            .or(w.secret.clone());
        if let Some(s) = &secret {
            if s.expose().len() < 16 {
                return Err(field("webhooks.secret", Problem::TooShort(16)));
            }
        }
        let timeout_ms = w.timeout_ms.unwrap_or(5_000);
        in_range("webhooks.timeout_ms", timeout_ms, 1, 60_000)?;
        let max_attempts = w.max_attempts.unwrap_or(8);
        in_range("webhooks.max_attempts", u64::from(max_attempts), 1, 100)?;

        let oracle = match file.oracle {
            Some(section) => {
                let mut table = toml::Table::new();
                table.insert("oracle".to_owned(), section);
                let text =
                    toml::to_string(&table).expect("a table parsed from TOML prints back as TOML");
                OracleConfig::from_toml(&text)?
            }
            None => OracleConfig::from_toml(DEFAULT_ORACLE)?,
        };

        Ok(Self {
            data_dir: data_dir.to_owned(),
            network,
            electrum_url,
            electrum_tls,
            listen,
            tick_interval: Duration::from_secs(tick_secs),
            min_confirmations,
            confirm_ticks,
            rebroadcast_after_blocks,
            max_chain_view_age: Duration::from_secs(max_chain_view_age_secs),
            fees,
            fee_cap: FeeCap {
                max_fee: Amount::from_sat(max_fee_sat),
                max_fee_bps,
            },
            webhooks: Webhooks {
                secret,
                timeout: Duration::from_millis(timeout_ms),
                max_attempts,
            },
            oracle,
        })
    }

    /// What an operator may see.
    pub fn show(&self) -> Shown {
        Shown {
            data_dir: self.data_dir.clone(),
            network: self.network.to_string(),
            electrum_url: self.electrum_url.clone(),
            electrum_ca_file: self.electrum_tls.ca_file.clone(),
            electrum_insecure: self.electrum_tls.insecure,
            listen: self.listen.to_string(),
            tick_secs: self.tick_interval.as_secs(),
            min_confirmations: self.min_confirmations,
            confirm_ticks: self.confirm_ticks,
            rebroadcast_after_blocks: self.rebroadcast_after_blocks,
            max_chain_view_age_secs: self.max_chain_view_age.as_secs(),
            min_sat_per_kvb: self.fees.min_sat_per_kvb(),
            max_sat_per_kvb: self.fees.max_sat_per_kvb(),
            fallback_sat_per_kvb: self.fees.fallback_sat_per_kvb(),
            max_fee_sat: self.fee_cap.max_fee.to_sat(),
            max_fee_bps: self.fee_cap.max_fee_bps,
            webhook_secret_set: self.webhooks.secret.is_some(),
            webhook_timeout_ms: u64::try_from(self.webhooks.timeout.as_millis())
                .unwrap_or(u64::MAX),
            webhook_max_attempts: self.webhooks.max_attempts,
            oracle_sources: self.oracle.sources.iter().map(|s| s.name.clone()).collect(),
            oracle_quorum: self.oracle.quorum,
        }
    }
}

#[cfg(test)]
mod tests;
