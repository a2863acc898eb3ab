//! The BTC price oracle: exchange sources, the aggregation that turns their quotes into
//! one price (or refuses to), and a ticker that polls them. Nothing downstream gets a
//! price without its evidence: every quote used and every quote dropped, with why.

pub mod aggregate;
pub mod config;
pub mod decimal;
pub mod sources;
pub mod ticker;

use serde::{Deserialize, Serialize};

use crate::loan::money::MoneyError;
use crate::loan::{Currency, Price, PriceEvidence, QuoteEvidence};

pub use aggregate::{aggregate, AggregationRules, RulesError};
pub use config::{OracleConfig, OracleConfigError, SourceConfig};
pub use sources::{ManualPrice, Source, SourceError};
pub use ticker::{TickNow, TickReader, Ticker, TickerError, TickerHandle};

/// The wall clock in unix seconds (0 if it reads before 1970, which the staleness
/// rule then treats as a clock far behind every quote).
pub(crate) use crate::util::unix_now;

/// One source's price at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub source: String,
    /// Minor units (cents) per BTC.
    pub price_minor: u64,
    pub currency: String,
    /// Unix seconds: the exchange's timestamp, or the fetch time when it gives none.
    pub at: u64,
}

/// A source's answer in one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceResult {
    pub source: String,
    pub outcome: Result<Quote, SourceError>,
}

/// Why a source's answer was not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum DropReason {
    Failed { error: SourceError },
    Stale { age_secs: u64, limit_secs: u64 },
    FromTheFuture { ahead_secs: u64, limit_secs: u64 },
    Outlier { median: u64, limit_bps: u32 },
    WrongCurrency { expected: String, found: String },
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DropReason::Failed { error } => write!(f, "failed: {error}"),
            DropReason::Stale {
                age_secs,
                limit_secs,
            } => write!(f, "stale: {age_secs} s old, limit {limit_secs} s"),
            DropReason::FromTheFuture {
                ahead_secs,
                limit_secs,
            } => write!(
                f,
                "from the future: {ahead_secs} s ahead, limit {limit_secs} s"
            ),
            DropReason::Outlier { median, limit_bps } => write!(
                f,
                "outlier: more than {limit_bps} bps from the median {median}"
            ),
            DropReason::WrongCurrency { expected, found } => {
                write!(f, "wrong currency: {found}, expected {expected}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub source: String,
    pub quote: Option<Quote>,
    pub reason: DropReason,
}

/// A price with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregatedPrice {
    /// Minor units (cents) per BTC: the median of the quotes used.
    pub price_minor: u64,
    pub currency: String,
    /// When it was aggregated (unix seconds).
    pub at: u64,
    pub used: Vec<Quote>,
    pub dropped: Vec<Dropped>,
}

impl AggregatedPrice {
    /// The evidence a loan decision stores: the aggregate and every quote, used and
    /// dropped (with why).
    pub fn evidence(&self) -> Result<PriceEvidence, MoneyError> {
        let currency = Currency::new(&self.currency)?;
        let used = self.used.iter().map(|q| QuoteEvidence {
            source: q.source.clone(),
            minor_per_btc: Some(q.price_minor),
            at: Some(q.at),
            dropped: None,
        });
        let dropped = self.dropped.iter().map(|d| QuoteEvidence {
            source: d.source.clone(),
            minor_per_btc: d.quote.as_ref().map(|q| q.price_minor),
            at: d.quote.as_ref().map(|q| q.at),
            dropped: Some(d.reason.to_string()),
        });
        Ok(PriceEvidence {
            price: Price::new(self.price_minor, currency),
            quotes: used.chain(dropped).collect(),
        })
    }
}

/// No price: too few usable quotes. Carries the same evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoPrice {
    pub at: u64,
    pub currency: String,
    pub reason: String,
    pub used: Vec<Quote>,
    pub dropped: Vec<Dropped>,
}

/// One tick's result.
pub type OracleResult = Result<AggregatedPrice, NoPrice>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_evidence_carries_every_quote_used_and_dropped() {
        let quote = |source: &str, price_minor, at| SourceResult {
            source: source.into(),
            outcome: Ok(Quote {
                source: source.into(),
                price_minor,
                currency: "USD".into(),
                at,
            }),
        };
        let rules = AggregationRules {
            quorum: 2,
            staleness_secs: 60,
            max_future_skew_secs: 5,
            max_deviation_bps: 200,
        };
        let results = vec![
            quote("a", 6_000_000, 1_000),
            quote("b", 6_010_000, 1_000),
            quote("wick", 3_600_000, 1_000),
            quote("old", 6_000_000, 10),
            SourceResult {
                source: "down".into(),
                outcome: Err(SourceError::Empty),
            },
        ];
        let aggregated = aggregate(results, "USD", 1_000, &rules).unwrap();
        let evidence = aggregated.evidence().unwrap();
        assert_eq!(evidence.price.minor_per_btc, aggregated.price_minor);
        assert_eq!(evidence.quotes.len(), 5);
        let reason = |name: &str| {
            evidence
                .quotes
                .iter()
                .find(|q| q.source == name)
                .and_then(|q| q.dropped.clone())
        };
        assert_eq!(reason("a"), None);
        assert!(reason("wick").is_some_and(|r| r.starts_with("outlier")));
        assert!(reason("old").is_some_and(|r| r.starts_with("stale")));
        assert!(reason("down").is_some_and(|r| r.starts_with("failed")));
        let down = evidence.quotes.iter().find(|q| q.source == "down").unwrap();
        assert_eq!((down.minor_per_btc, down.at), (None, None));
    }
}
