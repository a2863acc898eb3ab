//! Fee rates from the server's estimate, clamped to configured bounds, with a fallback
//! that says why it was used.

use bitcoin::FeeRate;
use serde::Serialize;

/// Configured bounds and the fallback, in sat/kvB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeePolicy {
    pub min_sat_per_kvb: u64,
    pub max_sat_per_kvb: u64,
    pub fallback_sat_per_kvb: u64,
}

impl Default for FeePolicy {
    fn default() -> Self {
        Self {
            min_sat_per_kvb: 1_000,
            max_sat_per_kvb: 500_000,
            fallback_sat_per_kvb: 2_000,
        }
    }
}

/// Where a fee rate came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum FeeSource {
    /// The server's estimate, within bounds.
    Server,
    /// The server's estimate, raised or lowered to a bound.
    Clamped { estimate_sat_per_kvb: u64 },
    /// The fallback, because the server had no usable estimate.
    Fallback { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeeEstimate {
    pub sat_per_kvb: u64,
    #[serde(flatten)]
    pub source: FeeSource,
}

impl FeeEstimate {
    /// As a `FeeRate`, rounded up to whole sat/kwu.
    pub fn fee_rate(&self) -> FeeRate {
        FeeRate::from_sat_per_kwu(self.sat_per_kvb.div_ceil(4))
    }
}

impl FeePolicy {
    /// Apply the bounds to a server answer (`None`: no usable estimate, with why).
    pub fn apply(&self, estimate: Result<u64, String>) -> FeeEstimate {
        match estimate {
            Ok(e) if e < self.min_sat_per_kvb => FeeEstimate {
                sat_per_kvb: self.min_sat_per_kvb,
                source: FeeSource::Clamped {
                    estimate_sat_per_kvb: e,
                },
            },
            Ok(e) if e > self.max_sat_per_kvb => FeeEstimate {
                sat_per_kvb: self.max_sat_per_kvb,
                source: FeeSource::Clamped {
                    estimate_sat_per_kvb: e,
                },
            },
            Ok(e) => FeeEstimate {
                sat_per_kvb: e,
                source: FeeSource::Server,
            },
            Err(reason) => FeeEstimate {
                sat_per_kvb: self
                    .fallback_sat_per_kvb
                    .clamp(self.min_sat_per_kvb, self.max_sat_per_kvb),
                source: FeeSource::Fallback { reason },
            },
        }
    }
}

/// Ask the server for a `target`-block estimate and apply `policy`.
pub fn estimate(
    client: &impl electrum_client::ElectrumApi,
    target: usize,
    policy: &FeePolicy,
) -> FeeEstimate {
    let answer = match client.estimate_fee(target, None) {
        Ok(btc_per_kvb) => super::btc_per_kvb_to_sat(btc_per_kvb)
            .ok_or_else(|| format!("the server's estimate {btc_per_kvb} BTC/kvB is not usable")),
        Err(e) => Err(format!("the server gave no estimate: {e}")),
    };
    policy.apply(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_are_clamped_or_replaced_and_say_so() {
        let p = FeePolicy {
            min_sat_per_kvb: 1_000,
            max_sat_per_kvb: 100_000,
            fallback_sat_per_kvb: 5_000,
        };
        assert_eq!(p.apply(Ok(20_000)).source, FeeSource::Server);
        let low = p.apply(Ok(100));
        assert_eq!(
            (low.sat_per_kvb, low.source),
            (
                1_000,
                FeeSource::Clamped {
                    estimate_sat_per_kvb: 100
                }
            )
        );
        assert_eq!(p.apply(Ok(1_000_000)).sat_per_kvb, 100_000);
        let fallback = p.apply(Err("none".into()));
        assert_eq!(fallback.sat_per_kvb, 5_000);
        assert!(matches!(fallback.source, FeeSource::Fallback { .. }));
        // 1001 sat/kvB -> 251 sat/kwu (rounded up), never below the estimate.
        let e = FeeEstimate {
            sat_per_kvb: 1_001,
            source: FeeSource::Server,
        };
        assert_eq!(e.fee_rate().to_sat_per_kwu(), 251);
    }
}
