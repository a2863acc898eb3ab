//! The `[oracle]` configuration section, validated at load with errors naming the
//! field.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::sources::{parse_manual_price, ManualPrice, Source, SourceKind};
use super::ticker::{MAX_HISTORY, MAX_INTERVAL};
use super::{AggregationRules, RulesError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OracleConfigError {
    #[error("oracle config: {0}")]
    Toml(String),
    #[error("oracle.{field}: {reason}")]
    Field { field: String, reason: String },
    #[error("oracle.{0}")]
    Rules(#[from] RulesError),
}

fn field_err(field: impl Into<String>, reason: impl Into<String>) -> OracleConfigError {
    OracleConfigError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKindConfig {
    Kraken,
    Bitstamp,
    Coinbase,
    Json,
    Manual,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKindConfig,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// For `json` sources: RFC 6901 pointer to the price.
    #[serde(default)]
    pub price_pointer: Option<String>,
    /// For `json` sources: pointer to a unix-seconds timestamp.
    #[serde(default)]
    pub timestamp_pointer: Option<String>,
    /// For `manual` sources: a price (decimal text) the operator set at
    /// `price_set_at`, restored at start.
    #[serde(default)]
    pub price: Option<String>,
    /// Unix seconds when the operator set `price` (required with it): the quote's
    /// date, so a price set long ago goes stale like any other quote.
    #[serde(default)]
    pub price_set_at: Option<u64>,
}

fn default_timeout_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OracleConfig {
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// How many aggregated results the ticker keeps (for confirm_ticks).
    #[serde(default = "default_history")]
    pub history: usize,
    #[serde(default = "default_quorum")]
    pub quorum: usize,
    #[serde(default = "default_staleness")]
    pub staleness_secs: u64,
    #[serde(default = "default_skew")]
    pub max_future_skew_secs: u64,
    #[serde(default = "default_deviation")]
    pub max_deviation_bps: u32,
    pub sources: Vec<SourceConfig>,
}

fn default_currency() -> String {
    "USD".into()
}
fn default_interval() -> u64 {
    30
}
fn default_history() -> usize {
    16
}
fn default_quorum() -> usize {
    2
}
fn default_staleness() -> u64 {
    120
}
fn default_skew() -> u64 {
    10
}
fn default_deviation() -> u32 {
    200
}

/// The default public endpoint of each exchange adapter, for BTC in `currency`.
fn default_url(kind: &SourceKindConfig, currency: &str) -> Option<String> {
    let (upper, lower) = (currency.to_ascii_uppercase(), currency.to_ascii_lowercase());
    match kind {
        SourceKindConfig::Kraken => Some(format!(
            "https://api.kraken.com/0/public/Ticker?pair=XBT{upper}"
        )),
        SourceKindConfig::Bitstamp => Some(format!(
            "https://www.bitstamp.net/api/v2/ticker/btc{lower}/"
        )),
        SourceKindConfig::Coinbase => Some(format!(
            "https://api.coinbase.com/v2/prices/BTC-{upper}/spot"
        )),
        SourceKindConfig::Json | SourceKindConfig::Manual => None,
    }
}

#[derive(Deserialize)]
struct File {
    oracle: OracleConfig,
}

impl OracleConfig {
    /// Parse the `[oracle]` section of a TOML file (other sections are ignored) and
    /// validate it.
    pub fn from_toml(text: &str) -> Result<Self, OracleConfigError> {
        #[derive(Deserialize)]
        struct Loose {
            oracle: toml::Value,
        }
        let loose: Loose =
            toml::from_str(text).map_err(|e| OracleConfigError::Toml(e.to_string()))?;
        let file: File = toml::Value::try_into(toml::Value::Table(
            [("oracle".to_owned(), loose.oracle)].into_iter().collect(),
        ))
        .map_err(|e| OracleConfigError::Toml(e.to_string()))?;
        file.oracle.validate()?;
        Ok(file.oracle)
    }

    pub fn validate(&self) -> Result<(), OracleConfigError> {
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(field_err("currency", "a three-letter upper-case code"));
        }
        if self.interval_secs == 0 {
            return Err(field_err("interval_secs", "must be at least 1"));
        }
        if self.interval_secs > MAX_INTERVAL.as_secs() {
            return Err(field_err(
                "interval_secs",
                format!("must be at most {}", MAX_INTERVAL.as_secs()),
            ));
        }
        if self.history == 0 || self.history > MAX_HISTORY {
            return Err(field_err(
                "history",
                format!("must be within 1..={MAX_HISTORY}"),
            ));
        }
        self.rules().validate(self.sources.len())?;
        let mut names = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = |f: &str| format!("sources[{i}].{f}");
            if s.name.trim().is_empty() {
                return Err(field_err(at("name"), "must not be empty"));
            }
            if !names.insert(s.name.as_str()) {
                return Err(field_err(at("name"), format!("{:?} is used twice", s.name)));
            }
            if s.timeout_ms == 0 || s.timeout_ms > 60_000 {
                return Err(field_err(at("timeout_ms"), "must be within 1..=60000"));
            }
            if s.kind != SourceKindConfig::Manual {
                let url = s.url.clone().or(default_url(&s.kind, &self.currency));
                match url {
                    None => return Err(field_err(at("url"), "required for this kind")),
                    Some(u) if reqwest::Url::parse(&u).is_err() => {
                        return Err(field_err(at("url"), format!("{u:?} is not a URL")))
                    }
                    Some(_) => {}
                }
            }
            match (&s.kind, &s.price_pointer) {
                (SourceKindConfig::Json, None) => {
                    return Err(field_err(at("price_pointer"), "required for json sources"))
                }
                (SourceKindConfig::Json, Some(p)) if !p.starts_with('/') => {
                    return Err(field_err(
                        at("price_pointer"),
                        "a JSON pointer starts with /",
                    ))
                }
                (SourceKindConfig::Json, _) => {}
                (_, Some(_)) => {
                    return Err(field_err(at("price_pointer"), "only for json sources"))
                }
                (_, None) => {}
            }
            if let Some(price) = &s.price {
                if s.kind != SourceKindConfig::Manual {
                    return Err(field_err(at("price"), "only for manual sources"));
                }
                parse_manual_price(price).map_err(|e| field_err(at("price"), e.to_string()))?;
                if s.price_set_at.is_none() {
                    return Err(field_err(
                        at("price_set_at"),
                        "required with price: the unix time the price was set",
                    ));
                }
            } else if s.price_set_at.is_some() {
                return Err(field_err(at("price_set_at"), "only with price"));
            }
        }
        Ok(())
    }

    pub fn rules(&self) -> AggregationRules {
        AggregationRules {
            quorum: self.quorum,
            staleness_secs: self.staleness_secs,
            max_future_skew_secs: self.max_future_skew_secs,
            max_deviation_bps: self.max_deviation_bps,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }

    /// The sources, and the handle of each manual one (by name) for the operator.
    /// A manual price from the file keeps its `price_set_at`: loading the config does
    /// not make it fresh. (`_now` is no longer used; the parameter stays for callers.)
    pub fn build(&self, _now: u64) -> (Vec<Source>, Vec<(String, ManualPrice)>) {
        let mut manual = Vec::new();
        let sources = self
            .sources
            .iter()
            .map(|s| {
                let kind = match s.kind {
                    SourceKindConfig::Kraken => SourceKind::Kraken,
                    SourceKindConfig::Bitstamp => SourceKind::Bitstamp,
                    SourceKindConfig::Coinbase => SourceKind::Coinbase,
                    SourceKindConfig::Json => SourceKind::Json {
                        price_pointer: s.price_pointer.clone().unwrap_or_default(),
                        timestamp_pointer: s.timestamp_pointer.clone(),
                    },
                    SourceKindConfig::Manual => {
                        let handle = ManualPrice::default();
                        if let (Some(Ok(p)), Some(at)) =
                            (s.price.as_deref().map(parse_manual_price), s.price_set_at)
                        {
                            handle.set_at(p, at);
                        }
                        manual.push((s.name.clone(), handle.clone()));
                        SourceKind::Manual(handle)
                    }
                };
                Source {
                    name: s.name.clone(),
                    kind,
                    url: s
                        .url
                        .clone()
                        .or_else(|| default_url(&s.kind, &self.currency))
                        .unwrap_or_default(),
                    timeout: Duration::from_millis(s.timeout_ms),
                    currency: self.currency.clone(),
                }
            })
            .collect();
        (sources, manual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [oracle]
        quorum = 2
        [[oracle.sources]]
        name = "kraken"
        kind = "kraken"
        [[oracle.sources]]
        name = "mine"
        kind = "json"
        url = "http://127.0.0.1:1/p"
        price_pointer = "/data/price"
        [[oracle.sources]]
        name = "operator"
        kind = "manual"
        price = "64000.5"
        price_set_at = 1700000000
    "#;

    #[test]
    fn a_good_config_builds_its_sources() {
        let c = OracleConfig::from_toml(GOOD).unwrap();
        let (sources, manual) = c.build(100);
        assert_eq!(sources.len(), 3);
        assert!(sources[0].url.starts_with("https://api.kraken.com/"));
        assert_eq!(manual.len(), 1);
    }

    #[test]
    fn default_urls_ask_for_the_configured_currency() {
        let c = OracleConfig::from_toml(&GOOD.replace(
            "quorum = 2",
            "quorum = 2\ncurrency = \"EUR\"\n[[oracle.sources]]\nname = \"bitstamp\"\nkind = \"bitstamp\"\n[[oracle.sources]]\nname = \"coinbase\"\nkind = \"coinbase\"",
        ))
        .unwrap();
        let (sources, _) = c.build(100);
        let url = |name: &str| {
            sources
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.url.clone())
                .unwrap()
        };
        assert_eq!(
            url("kraken"),
            "https://api.kraken.com/0/public/Ticker?pair=XBTEUR"
        );
        assert_eq!(
            url("bitstamp"),
            "https://www.bitstamp.net/api/v2/ticker/btceur/"
        );
        assert_eq!(
            url("coinbase"),
            "https://api.coinbase.com/v2/prices/BTC-EUR/spot"
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            ("quorum = 2", "quorum = 4", "oracle.quorum"),
            (
                "quorum = 2",
                "quorum = 2\ncurrency = \"usd\"",
                "oracle.currency",
            ),
            (
                "price_pointer = \"/data/price\"",
                "price_pointer = \"data\"",
                "oracle.sources[1].price_pointer",
            ),
            (
                "name = \"mine\"",
                "name = \"kraken\"",
                "oracle.sources[1].name",
            ),
            (
                "price = \"64000.5\"",
                "price = \"-1\"",
                "oracle.sources[2].price",
            ),
            (
                "price_set_at = 1700000000",
                "",
                "oracle.sources[2].price_set_at",
            ),
            ("price = \"64000.5\"", "", "oracle.sources[2].price_set_at"),
            (
                "url = \"http://127.0.0.1:1/p\"",
                "url = \"not a url\"",
                "oracle.sources[1].url",
            ),
            (
                "quorum = 2",
                "quorum = 2\nmax_deviation_bps = 0",
                "oracle.max_deviation_bps",
            ),
            ("quorum = 2", "quorum = 0", "oracle.quorum"),
            (
                "quorum = 2",
                "quorum = 2\nstaleness_secs = 0",
                "oracle.staleness_secs",
            ),
            (
                "quorum = 2",
                "quorum = 2\ninterval_secs = 0",
                "oracle.interval_secs",
            ),
            (
                "quorum = 2",
                "quorum = 2\ninterval_secs = 86401",
                "oracle.interval_secs",
            ),
            ("quorum = 2", "quorum = 2\nhistory = 0", "oracle.history"),
            (
                "quorum = 2",
                "quorum = 2\nhistory = 10001",
                "oracle.history",
            ),
        ];
        for (from, to, field) in cases {
            let text = GOOD.replacen(from, to, 1);
            let err = OracleConfig::from_toml(&text).unwrap_err().to_string();
            assert!(err.starts_with(field), "{to}: {err}");
        }
        assert!(
            OracleConfig::from_toml(&GOOD.replace("kind = \"kraken\"", "kind = \"binance\""))
                .is_err()
        );
    }
}

#[cfg(test)]
mod example_file {
    /// The example configuration in the repository must stay valid.
    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../btc-escrow.example.toml");
        let config = super::OracleConfig::from_toml(text).unwrap();
        assert_eq!(config.sources.len(), 3);
    }
}
