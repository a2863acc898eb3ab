//! The `[oracle]` configuration section, validated at load with errors naming the
//! field.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::decimal::PriceParseError;
use super::sources::{parse_manual_price, ManualPrice, Source, SourceKind};
use super::ticker::{MAX_HISTORY, MAX_INTERVAL, MAX_SOURCE_TIMEOUT};
use super::{AggregationRules, RulesError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OracleConfigError {
    #[error("oracle config: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("oracle.{field}: {problem}")]
    Field {
        field: String,
        problem: FieldProblem,
    },
    #[error("oracle.{0}")]
    Rules(#[from] RulesError),
}

/// What is wrong with one field's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    #[error("{0:?} is not a three-letter upper-case currency code")]
    NotACurrencyCode(String),
    #[error("{found} is not within {min}..={max}")]
    OutOfRange { found: u64, min: u64, max: u64 },
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} is used twice")]
    UsedTwice(String),
    #[error("required for {0} sources")]
    RequiredFor(&'static str),
    #[error("not used by {0} sources")]
    NotUsedBy(&'static str),
    #[error("required with {0}")]
    RequiredWith(&'static str),
    #[error("only with {0}")]
    OnlyWith(&'static str),
    #[error("{0:?} is not a URL")]
    NotAUrl(String),
    #[error("{0:?} is not a JSON pointer (one starts with /)")]
    NotAPointer(String),
    #[error(transparent)]
    BadPrice(#[from] PriceParseError),
}

fn field_err(field: impl Into<String>, problem: FieldProblem) -> OracleConfigError {
    OracleConfigError::Field {
        field: field.into(),
        problem,
    }
}

/// `found` unless it is outside `min..=max`.
fn in_range(field: &str, found: u64, min: u64, max: u64) -> Result<(), OracleConfigError> {
    if (min..=max).contains(&found) {
        Ok(())
    } else {
        Err(field_err(
            field,
            FieldProblem::OutOfRange { found, min, max },
        ))
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
    /// How many aggregated results the ticker keeps (1..=[`MAX_HISTORY`]).
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

impl SourceKindConfig {
    /// The name as written in the config.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kraken => "kraken",
            Self::Bitstamp => "bitstamp",
            Self::Coinbase => "coinbase",
            Self::Json => "json",
            Self::Manual => "manual",
        }
    }
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
        let loose: Loose = toml::from_str(text)?;
        let file: File = toml::Value::try_into(toml::Value::Table(
            [("oracle".to_owned(), loose.oracle)].into_iter().collect(),
        ))?;
        file.oracle.validate()?;
        Ok(file.oracle)
    }

    pub fn validate(&self) -> Result<(), OracleConfigError> {
        use FieldProblem::*;
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(field_err(
                "currency",
                NotACurrencyCode(self.currency.clone()),
            ));
        }
        in_range(
            "interval_secs",
            self.interval_secs,
            1,
            MAX_INTERVAL.as_secs(),
        )?;
        let history = u64::try_from(self.history).unwrap_or(u64::MAX);
        in_range("history", history, 1, MAX_HISTORY as u64)?;
        self.rules().validate(self.sources.len())?;
        let max_timeout_ms = u64::try_from(MAX_SOURCE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        let mut names = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = |f: &str| format!("sources[{i}].{f}");
            let err = |f: &str, problem| Err(field_err(at(f), problem));
            if s.name.trim().is_empty() {
                return err("name", Empty);
            }
            if !names.insert(s.name.as_str()) {
                return err("name", UsedTwice(s.name.clone()));
            }
            in_range(&at("timeout_ms"), s.timeout_ms, 1, max_timeout_ms)?;
            match (&s.kind, &s.url) {
                (SourceKindConfig::Manual, Some(_)) => return err("url", NotUsedBy("manual")),
                (SourceKindConfig::Manual, None) => {}
                (kind, url) => match url.clone().or_else(|| default_url(kind, &self.currency)) {
                    None => return err("url", RequiredFor("json")),
                    Some(u) if reqwest::Url::parse(&u).is_err() => return err("url", NotAUrl(u)),
                    Some(_) => {}
                },
            }
            let json = s.kind == SourceKindConfig::Json;
            for (f, pointer) in [
                ("price_pointer", &s.price_pointer),
                ("timestamp_pointer", &s.timestamp_pointer),
            ] {
                match pointer {
                    Some(_) if !json => return err(f, NotUsedBy(s.kind.name())),
                    Some(p) if !p.starts_with('/') => return err(f, NotAPointer(p.clone())),
                    None if json && f == "price_pointer" => return err(f, RequiredFor("json")),
                    _ => {}
                }
            }
            match (&s.price, s.price_set_at) {
                (Some(_), _) if s.kind != SourceKindConfig::Manual => {
                    return err("price", NotUsedBy(s.kind.name()))
                }
                (Some(price), set_at) => {
                    if let Err(e) = parse_manual_price(price) {
                        return err("price", BadPrice(e));
                    }
                    if set_at.is_none() {
                        return err("price_set_at", RequiredWith("price"));
                    }
                }
                (None, Some(_)) => return err("price_set_at", OnlyWith("price")),
                (None, None) => {}
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
                "kind = \"kraken\"",
                "kind = \"kraken\"\ntimestamp_pointer = \"/t\"",
                "oracle.sources[0].timestamp_pointer",
            ),
            (
                "price_pointer = \"/data/price\"",
                "price_pointer = \"/data/price\"\ntimestamp_pointer = \"t\"",
                "oracle.sources[1].timestamp_pointer",
            ),
            (
                "kind = \"manual\"",
                "kind = \"manual\"\nurl = \"http://127.0.0.1:1/\"",
                "oracle.sources[2].url",
            ),
            (
                "kind = \"kraken\"",
                "kind = \"kraken\"\ntimeout_ms = 60001",
                "oracle.sources[0].timeout_ms",
            ),
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
        assert!(matches!(
            OracleConfig::from_toml(&GOOD.replace("price = \"64000.5\"", "price = \"-1\"")),
            Err(OracleConfigError::Field {
                problem: FieldProblem::BadPrice(PriceParseError::Negative(_)),
                ..
            })
        ));
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

    /// Every key the example shows, commented out or not, is one the config reads:
    /// with its commented-out sources enabled the `[oracle]` part still loads
    /// (unknown keys are refused), and its values are the documented defaults.
    #[test]
    fn the_examples_commented_keys_exist() {
        let text = include_str!("../../btc-escrow.example.toml");
        let start = text
            .find("[oracle]")
            .expect("the example has an [oracle] section");
        let mut oracle = String::new();
        for line in text[start..].lines() {
            let t = line.trim_start();
            if t.starts_with('[') && !t.starts_with("[oracle") && !t.starts_with("[[oracle") {
                break;
            }
            let uncommented = t.strip_prefix("# ").filter(|rest| {
                rest.starts_with("[[oracle.")
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
            });
            oracle.push_str(uncommented.unwrap_or(line));
            oracle.push('\n');
        }
        let config = super::OracleConfig::from_toml(&oracle).unwrap();
        let kinds: Vec<_> = config.sources.iter().map(|s| s.kind.name()).collect();
        assert_eq!(kinds, ["kraken", "bitstamp", "coinbase", "json", "manual"]);
        let defaults = super::OracleConfig::from_toml(
            "[oracle]\nquorum = 1\n[[oracle.sources]]\nname = \"k\"\nkind = \"kraken\"",
        )
        .unwrap();
        assert_eq!(
            (config.interval_secs, config.history, config.staleness_secs),
            (
                defaults.interval_secs,
                defaults.history,
                defaults.staleness_secs
            )
        );
        assert_eq!(
            (
                config.max_future_skew_secs,
                config.max_deviation_bps,
                config.sources[0].timeout_ms
            ),
            (
                defaults.max_future_skew_secs,
                defaults.max_deviation_bps,
                defaults.sources[0].timeout_ms
            )
        );
    }
}
