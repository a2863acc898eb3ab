//! The few helpers every module shares: the clock and address parsing.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::address::NetworkUnchecked;
use bitcoin::{Address, Network};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why an address was refused; `field` names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{field}: {text:?} is not an address ({reason})")]
    Parse {
        field: String,
        text: String,
        reason: String,
    },
    #[error("{field}: {text} is not a {network} address")]
    WrongNetwork {
        field: String,
        text: String,
        network: Network,
    },
    #[error("{field}: missing")]
    Missing { field: String },
}

/// Parse an address of `network`; the one address parser of the crate.
pub fn parse_address(field: &str, text: &str, network: Network) -> Result<Address, AddressError> {
    let text = text.trim();
    Address::<NetworkUnchecked>::from_str(text)
        .map_err(|e| AddressError::Parse {
            field: field.to_owned(),
            text: text.to_owned(),
            reason: e.to_string(),
        })?
        .require_network(network)
        .map_err(|_| AddressError::WrongNetwork {
            field: field.to_owned(),
            text: text.to_owned(),
            network,
        })
}

/// Sats as BTC with all eight decimals: `20000000` → `0.20000000 BTC` (exact).
pub fn btc(sats: u64) -> String {
    format!("{}.{:08} BTC", sats / 100_000_000, sats % 100_000_000)
}

/// Basis points as a percentage with both decimals: `7141` → `71.41 %` (exact: an LTV
/// is never shown lower than it is).
pub fn percent(bps: u64) -> String {
    format!("{}.{:02} %", bps / 100, bps % 100)
}

/// Minor units as a grouped decimal: `123456789` → `1,234,567.89` (display only).
pub fn grouped_minor(minor: u64) -> String {
    let whole = (minor / 100).to_string();
    let mut out = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{out}.{:02}", minor % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_for_their_network_naming_the_field() {
        let regtest = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
        assert!(parse_address("payout", regtest, Network::Regtest).is_ok());
        let err = parse_address("payout", regtest, Network::Bitcoin).unwrap_err();
        assert!(err.to_string().starts_with("payout: "), "{err}");
        assert!(matches!(err, AddressError::WrongNetwork { .. }));
        assert!(matches!(
            parse_address("payout", "nonsense", Network::Regtest),
            Err(AddressError::Parse { .. })
        ));
    }
}
