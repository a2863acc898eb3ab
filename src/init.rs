//! `btc-escrow init`: a new data directory (mode 0700) holding the arbiter key (0600),
//! the database with its schema version, a commented configuration file and one admin
//! API token, printed once and stored only as its SHA-256. Nothing is overwritten: a
//! directory that already holds a key, a database or a configuration is refused, and
//! the configuration is validated before anything is created.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::Network;
use serde::{Deserialize, Serialize};

use crate::config::{self, ConfigError, Overrides, Settings};
use crate::keys::{ArbiterKey, KeyError};
use crate::store::{Durability, Store, StoreError};

/// The database's directory inside the data directory.
pub const STORE_DIR: &str = "db";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path}: already exists; init never overwrites a key, database or configuration")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `init` is asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub data_dir: PathBuf,
    pub network: Network,
    /// Default: electrs's default port for the network on localhost.
    pub electrum_url: Option<String>,
    /// Default: 127.0.0.1:8080.
    pub listen: Option<String>,
    /// The manual price source alone, quorum 1 (regtest and demos).
    pub manual_oracle: bool,
}

/// What `init` prints, once.
#[derive(Debug, Serialize)]
pub struct Initialized {
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub admin_token: String,
    pub arbiter_account_key: String,
}

/// An API token as stored: under the hash of the token, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub party_id: String,
    pub role: String,
    pub created_at: u64,
}

/// A new API token: 32 random bytes, hex.
pub fn new_token() -> String {
    random_hex(32)
}

/// `n` random bytes, hex (tokens, ids).
pub fn random_hex(n: usize) -> String {
    let mut raw = vec![0u8; n];
    bitcoin::secp256k1::rand::RngCore::fill_bytes(
        &mut bitcoin::secp256k1::rand::thread_rng(),
        &mut raw,
    );
    bitcoin::hex::DisplayHex::to_lower_hex_string(&raw[..])
}

/// The key a token is stored under: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    sha256::Hash::hash(token.as_bytes()).to_string()
}

/// electrs's default Electrum port for each network.
fn default_electrum(network: Network) -> String {
    let port = match network {
        Network::Bitcoin => 50001,
        Network::Testnet | Network::Testnet4 => 60001,
        Network::Signet => 60601,
        _ => 60401,
    };
    format!("tcp://127.0.0.1:{port}")
}

/// The configuration file `init` writes: every setting with its default, commented.
fn config_text(network: Network, electrum_url: &str, listen: &str, manual_oracle: bool) -> String {
    let oracle = if manual_oracle {
        "# The manual source alone, quorum 1 (regtest and demos): the operator sets the\n\
         # price, dated when set.\n\
         [oracle]\nquorum = 1\n\n[[oracle.sources]]\nname = \"operator\"\nkind = \"manual\"\n"
            .to_owned()
    } else {
        format!(
            "# Three exchanges, two of which must agree (see btc-escrow.example.toml).{}",
            config::DEFAULT_ORACLE
        )
    };
    format!(
        r#"# btc-escrow service configuration, written by `btc-escrow init`.
# Layered: this file < BTC_ESCROW_* environment variables < command-line flags.
# `btc-escrow config check --data-dir DIR` shows the result. Every field is documented
# in btc-escrow.example.toml.

network = "{network}"
electrum_url = "{electrum_url}"
# The HTTP API's address.
listen = "{listen}"

[engine]
# How often the engine checks the clock (maturity, deadlines, rebroadcasts), seconds.
tick_secs = 5
# Confirmations before a deposit counts as collateral.
min_confirmations = 1
# The fewest consecutive aggregated prices in breach an offer may require.
confirm_ticks = 3
# Blocks a broadcast may stay unconfirmed before its fee is bumped (RBF).
rebroadcast_after_blocks = 6
# The oldest a chain view may be for the engine to decide on it (seconds): a slow
# Electrum server stops decisions rather than let them use an old view.
max_chain_view_age_secs = 60

[fees]
# Fee rate bounds and the fallback when the server has no estimate, sat/kvB.
min_sat_per_kvb = 1000
max_sat_per_kvb = 500000
fallback_sat_per_kvb = 2000
# The arbiter signs nothing paying more than both caps allow.
max_fee_sat = 100000
max_fee_bps = 200

{oracle}"#,
    )
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Create the data directory. Refuses one that already holds a key, a database or a
/// configuration; validates the configuration before creating anything.
pub fn init(opts: &InitOptions) -> Result<Initialized, InitError> {
    let dir = &opts.data_dir;
    let config_path = dir.join(config::FILE_NAME);
    for path in [
        dir.join(ArbiterKey::FILE_NAME),
        dir.join(STORE_DIR),
        config_path.clone(),
    ] {
        if path.exists() {
            return Err(InitError::Exists { path });
        }
    }
    let electrum = opts
        .electrum_url
        .clone()
        .unwrap_or_else(|| default_electrum(opts.network));
    let listen = opts
        .listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let text = config_text(opts.network, &electrum, &listen, opts.manual_oracle);
    // What is written must load: checked before anything exists on disk.
    Settings::from_parts(dir, &text, &Overrides::default())?;

    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    let arbiter = ArbiterKey::create(dir, opts.network)?;
    let secp = Secp256k1::new();
    let account = arbiter.account(&secp)?;

    let store = Store::open(&dir.join(STORE_DIR))?;
    let token = new_token();
    store.put_token(
        &token_hash(&token),
        &TokenRecord {
            party_id: "admin".to_owned(),
            role: "admin".to_owned(),
            created_at: crate::util::unix_now(),
        },
        Durability::Durable,
    )?;
    store.close()?;

    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&config_path)
        .map_err(io_err(&config_path))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(&config_path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;

    Ok(Initialized {
        data_dir: dir.clone(),
        config: config_path,
        admin_token: token,
        arbiter_account_key: account.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, manual_oracle: bool) -> InitOptions {
        InitOptions {
            data_dir: dir.to_owned(),
            network: Network::Regtest,
            electrum_url: None,
            listen: None,
            manual_oracle,
        }
    }

    #[test]
    fn init_makes_a_private_directory_whose_config_loads() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let done = init(&options(&dir, true)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(ArbiterKey::FILE_NAME)), 0o600);
        assert_eq!(mode(&done.config), 0o600);
        assert!(done.arbiter_account_key.starts_with('['));
        assert_eq!(done.admin_token.len(), 64);
        let settings = Settings::load(&dir, &Overrides::default()).unwrap();
        assert_eq!(settings.network, Network::Regtest);
        assert_eq!(settings.electrum_url, "tcp://127.0.0.1:60401");
        assert_eq!(settings.oracle.quorum, 1);
        // The token is stored only as its hash.
        let store = Store::open(&dir.join(STORE_DIR)).unwrap();
        let record: Option<TokenRecord> = store.token(&token_hash(&done.admin_token)).unwrap();
        assert_eq!(record.map(|r| r.role), Some("admin".to_owned()));
        assert_eq!(store.token::<TokenRecord>(&done.admin_token).unwrap(), None);
        let key = std::fs::read_to_string(dir.join(ArbiterKey::FILE_NAME)).unwrap();
        let text = std::fs::read_to_string(&done.config).unwrap();
        assert!(!text.contains(key.trim()) && !text.contains(&done.admin_token));
    }

    #[test]
    fn init_refuses_a_directory_in_use_and_a_bad_setting_creates_nothing() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        init(&options(&dir, false)).unwrap();
        let key_before = std::fs::read(dir.join(ArbiterKey::FILE_NAME)).unwrap();
        let err = init(&options(&dir, false)).unwrap_err();
        assert!(matches!(err, InitError::Exists { .. }), "{err}");
        assert_eq!(
            std::fs::read(dir.join(ArbiterKey::FILE_NAME)).unwrap(),
            key_before
        );
        let fresh = parent.path().join("other");
        let mut bad = options(&fresh, false);
        bad.electrum_url = Some("http://nowhere".into());
        let err = init(&bad).unwrap_err();
        assert!(err.to_string().starts_with("electrum_url"), "{err}");
        assert!(!fresh.exists(), "nothing created");
    }
}
