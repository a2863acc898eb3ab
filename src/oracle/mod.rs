//! The BTC price oracle: exchange sources, the aggregation that turns their quotes into
//! one price (or refuses to), and a ticker that polls them. Nothing downstream gets a
//! price without its evidence: every quote used and every quote dropped, with why.

pub mod aggregate;
pub mod config;
pub mod decimal;
pub mod sources;
pub mod ticker;

use serde::{Deserialize, Serialize};

pub use aggregate::{aggregate, AggregationRules, RulesError};
pub use config::{OracleConfig, OracleConfigError, SourceConfig};
pub use sources::{ManualPrice, Source, SourceError};
pub use ticker::{Ticker, TickerError, TickerHandle};

/// The wall clock in unix seconds (0 if it reads before 1970, which the staleness
/// rule then treats as a clock far behind every quote).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
