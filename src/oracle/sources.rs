//! Price sources: adapters for exchange tickers in their real JSON shapes (including
//! their error shapes), a generic JSON-pointer source, and a manual operator price.
//! HTTP goes through reqwest (rustls); bodies are read up to a limit; no response can
//! make a source panic.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decimal::{parse_price, price_from_json, PriceParseError};
use super::Quote;

/// Bodies larger than this are refused (a ticker answer is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a source gave no quote; stored as evidence, so serializable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceError {
    #[error("no answer within {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("cannot reach the source: {message}")]
    Connect { message: String },
    #[error("HTTP status {status}")]
    Http { status: u16 },
    #[error("the body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("empty body")]
    Empty,
    #[error("malformed JSON: {message}")]
    Malformed { message: String },
    #[error("the exchange reports an error: {message}")]
    Exchange { message: String },
    #[error("{source_name}: {field} is missing")]
    MissingField { source_name: String, field: String },
    #[error("{source_name}: {field}: {error}")]
    BadPrice {
        source_name: String,
        field: String,
        error: PriceParseError,
    },
    /// Not a whole number of unix seconds (`found` is the JSON value as sent).
    #[error("{source_name}: {field}: {found} is not a unix time in seconds")]
    BadTimestamp {
        source_name: String,
        field: String,
        found: String,
    },
    /// The answer is for another market than BTC in the configured currency: another
    /// pair, several pairs, another base asset.
    #[error("{source_name}: {field} is {found}, expected {expected}")]
    WrongMarket {
        source_name: String,
        field: String,
        expected: String,
        found: String,
    },
    #[error("the operator has set no manual price")]
    ManualUnset,
}

/// An operator-set price, shared between the operator's handle and the source. It is
/// dated when it is set, so a price set long ago goes stale under the same rule as
/// any exchange quote.
#[derive(Debug, Clone, Default)]
pub struct ManualPrice(Arc<Mutex<Option<(u64, u64)>>>);

impl ManualPrice {
    /// Set the price (minor units per BTC), dated now. Returns that date (unix seconds).
    pub fn set(&self, price_minor: u64) -> u64 {
        let at = super::unix_now();
        self.set_at(price_minor, at);
        at
    }

    /// Restore a price the operator set at `at` (unix seconds), e.g. one written in
    /// the configuration with its `price_set_at`.
    pub fn set_at(&self, price_minor: u64, at: u64) {
        if let Ok(mut p) = self.0.lock() {
            *p = Some((price_minor, at));
        }
    }

    pub fn clear(&self) {
        if let Ok(mut p) = self.0.lock() {
            *p = None;
        }
    }

    fn get(&self) -> Option<(u64, u64)> {
        self.0.lock().ok().and_then(|p| *p)
    }
}

/// What a source is.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// `GET /0/public/Ticker?pair=XBTUSD`: `{"error":[],"result":{"XXBTZUSD":{"c":["price","vol"],…}}}`.
    /// The result must hold exactly one pair, BTC in the source's currency
    /// (`XXBTZUSD` or `XBTUSD` for USD; see [`kraken_pair_names`]).
    Kraken,
    /// `GET /api/v2/ticker/btcusd/`: `{"last":"…","timestamp":"…","pair":"BTC/USD",…}`.
    /// A `pair` other than BTC/<currency> is refused (answers without one, the older
    /// format, are read as the market the URL asked for).
    Bitstamp,
    /// `GET /v2/prices/BTC-USD/spot`: `{"data":{"amount":"…","base":"BTC","currency":"USD"}}`.
    Coinbase,
    /// Any JSON: RFC 6901 pointers to the price and optionally a unix-seconds timestamp.
    Json {
        price_pointer: String,
        timestamp_pointer: Option<String>,
    },
    Manual(ManualPrice),
}

/// A configured source.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    pub url: String,
    pub timeout: Duration,
    pub currency: String,
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, SourceError> {
    if let Some(len) = response.content_length() {
        if len > MAX_BODY_BYTES as u64 {
            return Err(SourceError::TooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| SourceError::Connect {
        message: e.to_string(),
    })? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(SourceError::TooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The names Kraken gives the BTC/`currency` pair in a Ticker result: the legacy
/// asset-code form (`XXBTZUSD`, `XXBTZEUR`, …) and the plain form newer fiat pairs use
/// (`XBTCHF`, `XBTAUD`, …).
pub fn kraken_pair_names(currency: &str) -> [String; 2] {
    let c = currency.to_ascii_uppercase();
    [format!("XXBTZ{c}"), format!("XBT{c}")]
}

impl Source {
    /// The value at `pointer` within `v`; `path` is `v`'s own place in the answer
    /// ("" for the root), so a missing field is named by its full pointer.
    fn field<'a>(&self, v: &'a Value, path: &str, pointer: &str) -> Result<&'a Value, SourceError> {
        v.pointer(pointer).ok_or_else(|| SourceError::MissingField {
            source_name: self.name.clone(),
            field: format!("{path}{pointer}"),
        })
    }

    /// The price at `path`.
    fn price(&self, v: &Value, path: String) -> Result<u64, SourceError> {
        price_from_json(v, 2).map_err(|error| SourceError::BadPrice {
            source_name: self.name.clone(),
            field: path,
            error,
        })
    }

    /// The unix-seconds timestamp at `path`: a non-negative integer, or a string of one.
    fn timestamp(&self, v: &Value, path: &str) -> Result<u64, SourceError> {
        let bad = || SourceError::BadTimestamp {
            source_name: self.name.clone(),
            field: path.to_owned(),
            found: v.to_string(),
        };
        match v {
            Value::Number(n) => n.as_u64().ok_or_else(bad),
            Value::String(s) => s.trim().parse().map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    fn wrong_market(&self, field: &str, expected: String, found: String) -> SourceError {
        SourceError::WrongMarket {
            source_name: self.name.clone(),
            field: field.to_owned(),
            expected,
            found,
        }
    }

    /// Fetch one quote; `now` (unix seconds) stands in for sources without timestamps.
    pub async fn fetch(&self, client: &reqwest::Client, now: u64) -> Result<Quote, SourceError> {
        if let SourceKind::Manual(manual) = &self.kind {
            let (price_minor, at) = manual.get().ok_or(SourceError::ManualUnset)?;
            return Ok(self.quote(price_minor, at));
        }
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let work = async {
            let response =
                client
                    .get(&self.url)
                    .send()
                    .await
                    .map_err(|e| SourceError::Connect {
                        message: e.to_string(),
                    })?;
            let status = response.status();
            let body = read_body(response).await?;
            Ok::<_, SourceError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| SourceError::Timeout {
                after_ms: timeout_ms,
            })??;
        // Exchanges send their error shapes with 4xx/5xx statuses too: read the
        // message when there is one, else report the status.
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            if let Some(message) = json.as_ref().and_then(|j| self.error_message(j)) {
                return Err(SourceError::Exchange { message });
            }
            return Err(SourceError::Http {
                status: status.as_u16(),
            });
        }
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(SourceError::Empty);
        }
        let json = match json {
            Some(j) => j,
            None => {
                let message = serde_json::from_slice::<Value>(&body)
                    .err()
                    .map_or_else(String::new, |e| e.to_string());
                return Err(SourceError::Malformed { message });
            }
        };
        if let Some(message) = self.error_message(&json) {
            return Err(SourceError::Exchange { message });
        }
        self.parse(&json, now)
    }

    fn quote(&self, price_minor: u64, at: u64) -> Quote {
        Quote {
            source: self.name.clone(),
            price_minor,
            currency: self.currency.clone(),
            at,
        }
    }

    /// The exchange's own error shape, if the body is one.
    fn error_message(&self, json: &Value) -> Option<String> {
        match self.kind {
            SourceKind::Kraken => json
                .get("error")
                .and_then(Value::as_array)
                .filter(|errors| !errors.is_empty())
                .map(|errors| {
                    errors
                        .iter()
                        .map(|e| e.as_str().unwrap_or("?").to_owned())
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
            SourceKind::Bitstamp => {
                let is_error = json.get("status").and_then(Value::as_str) == Some("error");
                let text = json
                    .get("reason")
                    .or_else(|| json.get("message"))
                    .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_owned));
                if is_error || (json.get("last").is_none() && text.is_some()) {
                    Some(text.unwrap_or_else(|| "error".into()))
                } else {
                    None
                }
            }
            SourceKind::Coinbase => json
                .get("errors")
                .and_then(Value::as_array)
                .filter(|errors| !errors.is_empty())
                .map(|errors| {
                    errors
                        .iter()
                        .map(|e| {
                            e.get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("?")
                                .to_owned()
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
            SourceKind::Json { .. } | SourceKind::Manual(_) => None,
        }
    }

    fn parse(&self, json: &Value, now: u64) -> Result<Quote, SourceError> {
        match &self.kind {
            SourceKind::Kraken => {
                let result = self.field(json, "", "/result")?;
                let pairs = result.as_object().ok_or_else(|| {
                    self.wrong_market("/result", "an object of pairs".into(), result.to_string())
                })?;
                let names = kraken_pair_names(&self.currency);
                let (pair, ticker) = match pairs.iter().collect::<Vec<_>>()[..] {
                    [(pair, ticker)] if names.contains(pair) => (pair, ticker),
                    [] => {
                        return Err(SourceError::MissingField {
                            source_name: self.name.clone(),
                            field: format!("/result/{}", names[0]),
                        })
                    }
                    _ => {
                        let found: Vec<&str> = pairs.keys().map(String::as_str).collect();
                        return Err(self.wrong_market(
                            "/result",
                            format!("one pair, {}", names.join(" or ")),
                            format!("pair(s) {}", found.join(", ")),
                        ));
                    }
                };
                let path = format!("/result/{pair}");
                let last = self.field(ticker, &path, "/c/0")?;
                Ok(self.quote(self.price(last, format!("{path}/c/0"))?, now))
            }
            SourceKind::Bitstamp => {
                if let Some(pair) = json.get("pair") {
                    let expected = format!("BTC/{}", self.currency.to_ascii_uppercase());
                    match pair.as_str() {
                        Some(p) if p.eq_ignore_ascii_case(&expected) => {}
                        _ => {
                            let found = pair
                                .as_str()
                                .map_or_else(|| pair.to_string(), str::to_owned);
                            return Err(self.wrong_market("/pair", expected, found));
                        }
                    }
                }
                let at = self.timestamp(self.field(json, "", "/timestamp")?, "/timestamp")?;
                let last = self.field(json, "", "/last")?;
                Ok(self.quote(self.price(last, "/last".into())?, at))
            }
            SourceKind::Coinbase => {
                let text = |pointer: &str| -> Result<String, SourceError> {
                    let v = self.field(json, "", pointer)?;
                    Ok(v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                };
                let base = text("/data/base")?;
                if base != "BTC" {
                    return Err(self.wrong_market("/data/base", "BTC".into(), base));
                }
                // A quote in another currency is kept, labelled with it, for the
                // aggregation to drop as WrongCurrency (with the evidence).
                let currency = text("/data/currency")?;
                let amount = self.field(json, "", "/data/amount")?;
                let mut q = self.quote(self.price(amount, "/data/amount".into())?, now);
                q.currency = currency;
                Ok(q)
            }
            SourceKind::Json {
                price_pointer,
                timestamp_pointer,
            } => {
                let at = match timestamp_pointer {
                    Some(p) => self.timestamp(self.field(json, "", p)?, p)?,
                    None => now,
                };
                let price = self.field(json, "", price_pointer)?;
                Ok(self.quote(self.price(price, price_pointer.clone())?, at))
            }
            SourceKind::Manual(_) => unreachable!("fetch answers manual sources before any HTTP"),
        }
    }
}

/// Parse an operator's decimal price text (e.g. "64250.12") into minor units.
pub fn parse_manual_price(text: &str) -> Result<u64, PriceParseError> {
    parse_price(text, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(kind: SourceKind) -> Source {
        Source {
            name: "ex".into(),
            kind,
            url: String::new(),
            timeout: Duration::from_secs(1),
            currency: "EUR".into(),
        }
    }

    #[test]
    fn kraken_accepts_both_spellings_of_its_pair_only() {
        let s = source(SourceKind::Kraken);
        for pair in ["XXBTZEUR", "XBTEUR"] {
            let body = json!({"error": [], "result": {pair: {"c": ["60000.1", "0.1"]}}});
            assert_eq!(s.parse(&body, 7).map(|q| q.price_minor), Ok(6_000_010));
        }
        for pair in ["XXBTZUSD", "XETHZEUR", "XBTEURT"] {
            let body = json!({"error": [], "result": {pair: {"c": ["60000.1", "0.1"]}}});
            assert!(
                matches!(s.parse(&body, 7), Err(SourceError::WrongMarket { found, .. }) if found.contains(pair)),
                "{pair}"
            );
        }
    }

    #[test]
    fn bitstamp_checks_the_pair_when_it_names_one() {
        let s = source(SourceKind::Bitstamp);
        let body = |pair: Option<&str>| {
            let mut b = json!({"last": "60000", "timestamp": "7"});
            if let Some(p) = pair {
                b["pair"] = json!(p);
            }
            b
        };
        assert!(s.parse(&body(Some("BTC/EUR")), 0).is_ok());
        assert!(
            s.parse(&body(None), 0).is_ok(),
            "the older format has no pair"
        );
        let err = s.parse(&body(Some("BTC/USD")), 0).unwrap_err();
        assert_eq!(err.to_string(), "ex: /pair is BTC/USD, expected BTC/EUR");
    }

    #[tokio::test]
    async fn a_manual_price_carries_the_moment_it_was_set() {
        let manual = ManualPrice::default();
        let s = source(SourceKind::Manual(manual.clone()));
        let client = reqwest::Client::new();
        assert_eq!(
            s.fetch(&client, 5).await,
            Err(SourceError::ManualUnset),
            "nothing set yet"
        );
        let before = crate::oracle::unix_now();
        let at = manual.set(6_000_000);
        assert!(at >= before);
        let q = s.fetch(&client, 5).await.unwrap();
        assert_eq!((q.price_minor, q.at), (6_000_000, at), "not the fetch time");
        manual.set_at(6_100_000, 42);
        assert_eq!(s.fetch(&client, 5).await.map(|q| q.at), Ok(42));
        manual.clear();
        assert_eq!(s.fetch(&client, 5).await, Err(SourceError::ManualUnset));
    }

    #[test]
    fn coinbase_refuses_another_base_asset() {
        let s = source(SourceKind::Coinbase);
        let body = json!({"data": {"amount": "3000", "base": "ETH", "currency": "EUR"}});
        assert!(matches!(
            s.parse(&body, 0),
            Err(SourceError::WrongMarket { found, .. }) if found == "ETH"
        ));
    }
}
