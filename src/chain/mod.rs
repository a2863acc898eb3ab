//! Everything that talks to an Electrum server: the escrow watcher, broadcast, fee
//! estimates and the one-shot chain status.

pub mod broadcast;
pub mod fees;
pub mod lookup;
pub mod transport;
pub mod watcher;

pub use broadcast::BroadcastError;
pub use fees::{FeeEstimate, FeePolicy, FeePolicyError, FeeSource};
pub use transport::{ConnectError, Connector, ElectrumClient, TlsConfig};
pub use watcher::{
    Backoff, CacheChanges, ChainCache, ChainEvent, ChainUpdate, ConnectionStatus, Deposit,
    Divergence, EscrowState, Spend, SyncRequests, TxStatus, WatchError, Watcher, WatcherConfig,
};

use bitcoin::{BlockHash, Network};
use electrum_client::ElectrumApi;
use serde::Serialize;

/// Errors from talking to the Electrum server.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The server could not be reached or answered with a protocol error.
    #[error("electrum server {url}: {source}")]
    Electrum {
        url: String,
        #[source]
        source: electrum_client::Error,
    },
    /// The connection could not be set up (URL, TLS settings, certificate, network).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server serves a chain other than the configured network.
    #[error("electrum server {url} serves genesis {genesis}, not the {network} chain")]
    WrongNetwork {
        url: String,
        genesis: String,
        network: Network,
    },
}

/// One snapshot of what the server says.
#[derive(Debug, Clone, Serialize)]
pub struct ChainStatus {
    pub network: Network,
    pub tip_height: u32,
    pub tip_hash: BlockHash,
    pub server_version: String,
    pub protocol_version: String,
    /// The server's estimate for confirmation within 6 blocks, in sat/kvB rounded up;
    /// `None` when the server has no estimate (regtest answers -1).
    pub fee_estimate_sat_per_kvb_6_blocks: Option<u64>,
    /// The server's minimum relay fee in sat/kvB, rounded up.
    pub relay_fee_sat_per_kvb: u64,
}

/// Connect once (TLS settings at their defaults: webpki roots) and read the tip, the
/// server version and its fee estimate.
pub fn status(url: &str, network: Network) -> Result<ChainStatus, ChainError> {
    status_with(url, network, &TlsConfig::default())
}

/// [`status`] with the given TLS settings. A connection that fails on the way (not a
/// wrong network nor a refused certificate) is tried once more.
pub fn status_with(
    url: &str,
    network: Network,
    tls: &TlsConfig,
) -> Result<ChainStatus, ChainError> {
    let connector = Connector::new(url, tls)?;
    match status_once(&connector, network) {
        Err(e) if e.is_transient() => {
            tracing::debug!(%e, "retrying once");
            std::thread::sleep(std::time::Duration::from_secs(1));
            status_once(&connector, network)
        }
        other => other,
    }
}

impl ChainError {
    /// A network failure that may pass by itself (not a wrong network, a bad URL or
    /// TLS setting, nor a refused certificate).
    pub fn is_transient(&self) -> bool {
        match self {
            ChainError::Connect(e) => e.is_transient(),
            ChainError::Electrum { source, .. } => {
                matches!(source, electrum_client::Error::IOError(_))
            }
            ChainError::WrongNetwork { .. } => false,
        }
    }
}

/// Ask the server for its features and refuse it unless it serves `network`'s chain
/// (its genesis block).
pub(crate) fn check_network(
    client: &ElectrumClient,
    url: &str,
    network: Network,
) -> Result<electrum_client::ServerFeaturesRes, ChainError> {
    let features = client
        .server_features()
        .map_err(|source| ChainError::Electrum {
            url: url.to_owned(),
            source,
        })?;
    // The server sends the genesis hash as hex in display (reversed) byte order.
    let genesis: String = features
        .genesis_hash
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let expected = bitcoin::constants::genesis_block(network).block_hash();
    if genesis != expected.to_string() {
        return Err(ChainError::WrongNetwork {
            url: url.to_owned(),
            genesis,
            network,
        });
    }
    Ok(features)
}

fn status_once(connector: &Connector, network: Network) -> Result<ChainStatus, ChainError> {
    let url = connector.url();
    let err = |source| ChainError::Electrum {
        url: url.to_owned(),
        source,
    };
    let client = connector.connect(std::time::Duration::from_secs(10))?;
    let version = check_network(&client, url, network)?;
    let tip = client.block_headers_subscribe().map_err(err)?;
    let estimate = client.estimate_fee(6, None).map_err(err)?;
    let relay = client.relay_fee().map_err(err)?;
    Ok(ChainStatus {
        network,
        tip_height: u32::try_from(tip.height).unwrap_or(u32::MAX),
        tip_hash: tip.header.block_hash(),
        server_version: version.server_version,
        protocol_version: version.protocol_max,
        fee_estimate_sat_per_kvb_6_blocks: btc_per_kvb_to_sat(estimate),
        relay_fee_sat_per_kvb: btc_per_kvb_to_sat(relay).unwrap_or(0),
    })
}

/// The Electrum protocol gives fee rates as a float of BTC/kvB; this is the one place
/// they become integers: sat/kvB, rounded up (a fee rate that errs high still
/// confirms). Negative (no estimate), NaN, infinite or absurd (≥ 1 BTC/kvB) → `None`.
pub fn btc_per_kvb_to_sat(btc_per_kvb: f64) -> Option<u64> {
    if !btc_per_kvb.is_finite() || btc_per_kvb <= 0.0 || btc_per_kvb >= 1.0 {
        return None;
    }
    // Round away float noise in the ninth decimal first (1e-06 arrives as 9.99...e-07).
    let sats = (btc_per_kvb * 100_000_000.0 * 1_000.0).round() / 1_000.0;
    // Rounded up: a positive estimate is never zero sats.
    Some((sats.ceil() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::btc_per_kvb_to_sat;

    #[test]
    fn electrum_fee_floats_become_integer_sats_rounded_up() {
        assert_eq!(btc_per_kvb_to_sat(0.000_001), Some(100));
        assert_eq!(
            btc_per_kvb_to_sat(0.000_009_999_999_999_999_999),
            Some(1_000)
        );
        assert_eq!(btc_per_kvb_to_sat(0.000_010_01), Some(1_001));
        assert_eq!(btc_per_kvb_to_sat(0.000_000_001_5), Some(1));
        assert_eq!(btc_per_kvb_to_sat(-1.0), None);
        assert_eq!(btc_per_kvb_to_sat(f64::NAN), None);
        assert_eq!(btc_per_kvb_to_sat(f64::INFINITY), None);
        assert_eq!(btc_per_kvb_to_sat(2.0), None);
    }
}
