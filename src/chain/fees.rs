//! Fee rates from the server's estimate, clamped to configured bounds, with a fallback
//! that says why it was used.

use bitcoin::FeeRate;
use serde::Serialize;

/// Configured bounds and the fallback, in sat/kvB. Built through [`FeePolicy::new`],
/// which checks `0 < min ≤ fallback ≤ max < 1 BTC/kvB`, so applying it never panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeePolicy {
    min_sat_per_kvb: u64,
    max_sat_per_kvb: u64,
    fallback_sat_per_kvb: u64,
}

/// 1 BTC/kvB: an answer at or above it is absurd (see `btc_per_kvb_to_sat`), so no
/// bound may reach it.
const ABSURD_SAT_PER_KVB: u64 = 100_000_000;

/// A fee policy that cannot be used; each variant names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeePolicyError {
    #[error("min_sat_per_kvb must be above 0 (a zero fee rate does not relay)")]
    ZeroMin,
    #[error("max_sat_per_kvb ({max}) is below min_sat_per_kvb ({min})")]
    MaxBelowMin { min: u64, max: u64 },
    #[error("max_sat_per_kvb ({max}) must be below 1 BTC/kvB ({ABSURD_SAT_PER_KVB} sat/kvB)")]
    MaxAbsurd { max: u64 },
    #[error(
        "fallback_sat_per_kvb ({fallback}) is outside min_sat_per_kvb ({min}) ..= \
         max_sat_per_kvb ({max})"
    )]
    FallbackOutOfBounds { fallback: u64, min: u64, max: u64 },
}

impl FeePolicyError {
    /// The configuration field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            FeePolicyError::ZeroMin => "min_sat_per_kvb",
            FeePolicyError::MaxBelowMin { .. } | FeePolicyError::MaxAbsurd { .. } => {
                "max_sat_per_kvb"
            }
            FeePolicyError::FallbackOutOfBounds { .. } => "fallback_sat_per_kvb",
        }
    }
}

impl Default for FeePolicy {
    fn default() -> Self {
        Self::new(1_000, 500_000, 2_000).expect("the default fee policy is valid")
    }
}

impl FeePolicy {
    /// Check the bounds and the fallback: `0 < min ≤ max < 1 BTC/kvB` and
    /// `min ≤ fallback ≤ max`.
    pub fn new(
        min_sat_per_kvb: u64,
        max_sat_per_kvb: u64,
        fallback_sat_per_kvb: u64,
    ) -> Result<Self, FeePolicyError> {
        let (min, max, fallback) = (min_sat_per_kvb, max_sat_per_kvb, fallback_sat_per_kvb);
        if min == 0 {
            return Err(FeePolicyError::ZeroMin);
        }
        if max < min {
            return Err(FeePolicyError::MaxBelowMin { min, max });
        }
        if max >= ABSURD_SAT_PER_KVB {
            return Err(FeePolicyError::MaxAbsurd { max });
        }
        if !(min..=max).contains(&fallback) {
            return Err(FeePolicyError::FallbackOutOfBounds { fallback, min, max });
        }
        Ok(Self {
            min_sat_per_kvb,
            max_sat_per_kvb,
            fallback_sat_per_kvb,
        })
    }

    pub fn min_sat_per_kvb(&self) -> u64 {
        self.min_sat_per_kvb
    }

    pub fn max_sat_per_kvb(&self) -> u64 {
        self.max_sat_per_kvb
    }

    pub fn fallback_sat_per_kvb(&self) -> u64 {
        self.fallback_sat_per_kvb
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
                // Within the bounds: checked by `new`.
                sat_per_kvb: self.fallback_sat_per_kvb,
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
        let p = FeePolicy::new(1_000, 100_000, 5_000).expect("valid");
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

    #[test]
    fn invalid_policies_are_refused_naming_the_field() {
        // min > max used to reach `clamp` and panic on the first fallback.
        let err = FeePolicy::new(5_000, 1_000, 2_000).unwrap_err();
        assert_eq!(
            err,
            FeePolicyError::MaxBelowMin {
                min: 5_000,
                max: 1_000
            }
        );
        assert_eq!(err.field(), "max_sat_per_kvb");
        let err = FeePolicy::new(1_000, 10_000, 20_000).unwrap_err();
        assert_eq!(err.field(), "fallback_sat_per_kvb");
        assert!(err.to_string().contains("20000"), "{err}");
        assert_eq!(
            FeePolicy::new(1_000, 10_000, 500).unwrap_err().field(),
            "fallback_sat_per_kvb"
        );
        assert_eq!(FeePolicy::new(0, 10_000, 500), Err(FeePolicyError::ZeroMin));
        assert_eq!(
            FeePolicy::new(1_000, 100_000_000, 2_000),
            Err(FeePolicyError::MaxAbsurd { max: 100_000_000 })
        );
        // Equal bounds are a fixed rate, and valid.
        let fixed = FeePolicy::new(3_000, 3_000, 3_000).expect("valid");
        assert_eq!(fixed.apply(Err("none".into())).sat_per_kvb, 3_000);
        assert_eq!(fixed.apply(Ok(1)).sat_per_kvb, 3_000);
        let d = FeePolicy::default();
        assert_eq!(
            (
                d.min_sat_per_kvb(),
                d.max_sat_per_kvb(),
                d.fallback_sat_per_kvb()
            ),
            (1_000, 500_000, 2_000)
        );
    }
}
