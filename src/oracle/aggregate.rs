//! Aggregation (pure): staleness and future-skew limits, outliers against the median
//! of the others, a quorum, and the median. Every quote used and every one dropped
//! (with its reason) is kept as evidence.

use serde::{Deserialize, Serialize};

use super::{AggregatedPrice, DropReason, Dropped, NoPrice, SourceResult};

/// Aggregation limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregationRules {
    /// Minimum number of quotes that must survive the filters.
    pub quorum: usize,
    /// A quote older than this (seconds) is stale.
    pub staleness_secs: u64,
    /// A quote timestamped more than this (seconds) in the future is dropped.
    pub max_future_skew_secs: u64,
    /// A quote farther than this (basis points) from the median of all fresh quotes
    /// is an outlier.
    pub max_deviation_bps: u32,
}

/// An aggregation limit that makes no sense, named by its config field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("quorum: must be at least 1")]
    QuorumZero,
    #[error("quorum: {quorum} is more than the {sources} configured sources")]
    QuorumAboveSources { quorum: usize, sources: usize },
    #[error("staleness_secs: must be at least 1")]
    StalenessZero,
    #[error("max_deviation_bps: {0} is not within 1..=10000")]
    DeviationOutOfRange(u32),
}

impl AggregationRules {
    /// Check the limits for `sources` configured sources: a quorum they can meet (and
    /// not zero), a staleness limit above zero, a deviation limit within 1..=10000 bps.
    /// A zero future skew is allowed (quotes must not be ahead of our clock at all).
    pub fn validate(&self, sources: usize) -> Result<(), RulesError> {
        if self.quorum == 0 {
            return Err(RulesError::QuorumZero);
        }
        if self.quorum > sources {
            return Err(RulesError::QuorumAboveSources {
                quorum: self.quorum,
                sources,
            });
        }
        if self.staleness_secs == 0 {
            return Err(RulesError::StalenessZero);
        }
        if !(1..=10_000).contains(&self.max_deviation_bps) {
            return Err(RulesError::DeviationOutOfRange(self.max_deviation_bps));
        }
        Ok(())
    }
}

impl Default for AggregationRules {
    fn default() -> Self {
        Self {
            quorum: 2,
            staleness_secs: 120,
            max_future_skew_secs: 10,
            max_deviation_bps: 200,
        }
    }
}

/// Median of sorted values. For an even count, the mean of the two middle values
/// rounded UP (a price never lower than the data supports; see `decimal`).
fn median(sorted: &[u64]) -> Option<u64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => {
            let (a, b) = (u128::from(sorted[n / 2 - 1]), u128::from(sorted[n / 2]));
            Some((a + b).div_ceil(2) as u64)
        }
    }
}

/// |a - b| > max_bps/10_000 × m, in integers.
fn deviates(price: u64, reference: u64, max_bps: u32) -> bool {
    let diff = u128::from(price.abs_diff(reference));
    diff * 10_000 > u128::from(max_bps) * u128::from(reference)
}

/// Aggregate the results of one polling round at time `now` (unix seconds).
pub fn aggregate(
    results: Vec<SourceResult>,
    currency: &str,
    now: u64,
    rules: &AggregationRules,
) -> Result<AggregatedPrice, NoPrice> {
    let mut dropped = Vec::new();
    let mut fresh = Vec::new();
    for result in results {
        match result.outcome {
            Err(error) => dropped.push(Dropped {
                source: result.source,
                quote: None,
                reason: DropReason::Failed { error },
            }),
            Ok(q) if q.currency != currency => dropped.push(Dropped {
                source: result.source,
                reason: DropReason::WrongCurrency {
                    expected: currency.to_owned(),
                    found: q.currency.clone(),
                },
                quote: Some(q),
            }),
            // Age and lead are differences taken in the order that cannot wrap: a
            // quote is either not after `now` (it has an age) or after it (a lead).
            Ok(q) if q.at <= now && now - q.at > rules.staleness_secs => dropped.push(Dropped {
                source: result.source,
                reason: DropReason::Stale {
                    age_secs: now - q.at,
                    limit_secs: rules.staleness_secs,
                },
                quote: Some(q),
            }),
            Ok(q) if q.at > now && q.at - now > rules.max_future_skew_secs => {
                dropped.push(Dropped {
                    source: result.source,
                    reason: DropReason::FromTheFuture {
                        ahead_secs: q.at - now,
                        limit_secs: rules.max_future_skew_secs,
                    },
                    quote: Some(q),
                })
            }
            Ok(q) => fresh.push(q),
        }
    }
    // Outliers: each quote against the median of all fresh quotes. (Not the median of
    // the *others*: with three sources that is the mean of the other two, which one
    // outlier drags far enough to condemn the honest quotes too. The median of all
    // resists up to (n-1)/2 outliers; with two disagreeing quotes both are dropped,
    // since nothing says which one lies.)
    let mut all: Vec<u64> = fresh.iter().map(|q| q.price_minor).collect();
    all.sort_unstable();
    let mut used = Vec::new();
    if let Some(m) = median(&all) {
        for q in fresh {
            if deviates(q.price_minor, m, rules.max_deviation_bps) {
                dropped.push(Dropped {
                    source: q.source.clone(),
                    quote: Some(q),
                    reason: DropReason::Outlier {
                        median: m,
                        limit_bps: rules.max_deviation_bps,
                    },
                });
            } else {
                used.push(q);
            }
        }
    }
    if used.len() < rules.quorum.max(1) {
        return Err(NoPrice {
            at: now,
            currency: currency.to_owned(),
            // Why, in one line: health and a held breach's event show it.
            reason: format!(
                "{} usable quote(s), the quorum is {}{}",
                used.len(),
                rules.quorum.max(1),
                dropped
                    .iter()
                    .map(|d| format!("; {}: {}", d.source, d.reason))
                    .collect::<String>()
            ),
            used,
            dropped,
        });
    }
    let mut prices: Vec<u64> = used.iter().map(|q| q.price_minor).collect();
    prices.sort_unstable();
    let price = median(&prices).expect("quorum >= 1 quote");
    Ok(AggregatedPrice {
        price_minor: price,
        currency: currency.to_owned(),
        at: now,
        used,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::Quote;

    fn quote(source: &str, price: u64, at: u64) -> SourceResult {
        SourceResult {
            source: source.to_owned(),
            outcome: Ok(Quote {
                source: source.to_owned(),
                price_minor: price,
                currency: "USD".into(),
                at,
            }),
        }
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn median_of_agreeing_sources() {
        let r = aggregate(
            vec![
                quote("a", 10000, NOW),
                quote("b", 10100, NOW),
                quote("c", 10050, NOW),
            ],
            "USD",
            NOW,
            &AggregationRules::default(),
        )
        .unwrap();
        assert_eq!(r.price_minor, 10050);
        assert_eq!(r.used.len(), 3);
        assert!(r.dropped.is_empty());
    }

    #[test]
    fn even_median_rounds_up() {
        assert_eq!(median(&[100, 101]), Some(101));
        assert_eq!(median(&[100, 102]), Some(101));
        assert_eq!(median(&[u64::MAX - 1, u64::MAX]), Some(u64::MAX));
    }

    #[test]
    fn outlier_is_dropped_and_named() {
        let rules = AggregationRules::default();
        let r = aggregate(
            vec![
                quote("a", 10000, NOW),
                quote("b", 7000, NOW),
                quote("c", 10010, NOW),
            ],
            "USD",
            NOW,
            &rules,
        )
        .unwrap();
        assert_eq!(r.price_minor, 10005);
        assert_eq!(r.dropped.len(), 1);
        assert_eq!(r.dropped[0].source, "b");
        assert!(matches!(r.dropped[0].reason, DropReason::Outlier { .. }));
    }

    #[test]
    fn two_disagreeing_sources_give_no_price() {
        let err = aggregate(
            vec![quote("a", 10000, NOW), quote("b", 7000, NOW)],
            "USD",
            NOW,
            &AggregationRules::default(),
        )
        .unwrap_err();
        assert_eq!(err.dropped.len(), 2);
    }

    #[test]
    fn stale_future_and_wrong_currency_are_dropped() {
        let rules = AggregationRules::default();
        let mut wrong = quote("eur", 10000, NOW);
        if let Ok(q) = &mut wrong.outcome {
            q.currency = "EUR".into();
        }
        let err = aggregate(
            vec![
                quote("old", 10000, NOW - 121),
                quote("future", 10000, NOW + 11),
                wrong,
                quote("ok", 10000, NOW - 120),
            ],
            "USD",
            NOW,
            &rules,
        )
        .unwrap_err();
        let reasons: Vec<_> = err
            .dropped
            .iter()
            .map(|d| (d.source.as_str(), &d.reason))
            .collect();
        assert!(matches!(
            reasons[0],
            ("old", DropReason::Stale { age_secs: 121, .. })
        ));
        assert!(matches!(
            reasons[1],
            ("future", DropReason::FromTheFuture { ahead_secs: 11, .. })
        ));
        assert!(matches!(
            reasons[2],
            ("eur", DropReason::WrongCurrency { .. })
        ));
        assert_eq!(err.used.len(), 1, "the 120 s old quote is still fresh");
    }

    #[test]
    fn extreme_timestamps_are_dropped_not_wrapped() {
        let rules = AggregationRules::default();
        // A quote from the end of time, at an ordinary now: from the future.
        let err = aggregate(vec![quote("max", 10000, u64::MAX)], "USD", NOW, &rules).unwrap_err();
        assert!(matches!(
            err.dropped[0].reason,
            DropReason::FromTheFuture { ahead_secs, .. } if ahead_secs == u64::MAX - NOW
        ));
        // An ordinary quote when the clock reads the end of time: stale, not future.
        let err = aggregate(vec![quote("old", 10000, NOW)], "USD", u64::MAX, &rules).unwrap_err();
        assert!(matches!(
            err.dropped[0].reason,
            DropReason::Stale { age_secs, .. } if age_secs == u64::MAX - NOW
        ));
        // A clock at zero (unreadable) and any later quote: from the future.
        let err = aggregate(vec![quote("late", 10000, NOW)], "USD", 0, &rules).unwrap_err();
        assert!(matches!(
            err.dropped[0].reason,
            DropReason::FromTheFuture {
                ahead_secs: NOW,
                ..
            }
        ));
        // Both at the end of time: fresh (age zero).
        let p = aggregate(
            vec![quote("a", 10000, u64::MAX), quote("b", 10000, u64::MAX)],
            "USD",
            u64::MAX,
            &rules,
        )
        .unwrap();
        assert_eq!(p.used.len(), 2);
        // Limits at u64::MAX accept any age and any skew.
        let lax = AggregationRules {
            quorum: 1,
            staleness_secs: u64::MAX,
            max_future_skew_secs: u64::MAX,
            max_deviation_bps: 200,
        };
        assert!(aggregate(vec![quote("a", 10000, 0)], "USD", u64::MAX, &lax).is_ok());
        assert!(aggregate(vec![quote("a", 10000, u64::MAX)], "USD", 0, &lax).is_ok());
    }

    proptest::proptest! {
        /// Any timestamps, clock and limits: no panic, and each quote is used exactly
        /// when its age and its lead are within the limits (checked in u128).
        #[test]
        fn arbitrary_times_never_panic(
            ats in proptest::collection::vec(proptest::num::u64::ANY, 0..6),
            now in proptest::num::u64::ANY,
            staleness_secs in proptest::num::u64::ANY,
            max_future_skew_secs in proptest::num::u64::ANY,
        ) {
            let rules = AggregationRules {
                quorum: 1,
                staleness_secs,
                max_future_skew_secs,
                max_deviation_bps: 10_000,
            };
            let results = ats
                .iter()
                .enumerate()
                .map(|(i, at)| quote(&format!("s{i}"), 10000, *at))
                .collect();
            let (used, dropped) = match aggregate(results, "USD", now, &rules) {
                Ok(p) => (p.used, p.dropped),
                Err(n) => (n.used, n.dropped),
            };
            proptest::prop_assert_eq!(used.len() + dropped.len(), ats.len());
            for q in &used {
                let (at, now) = (i128::from(q.at), i128::from(now));
                proptest::prop_assert!(now - at <= i128::from(staleness_secs));
                proptest::prop_assert!(at - now <= i128::from(max_future_skew_secs));
            }
            for d in &dropped {
                match d.reason {
                    DropReason::Stale { age_secs, .. } => {
                        proptest::prop_assert!(age_secs > staleness_secs);
                    }
                    DropReason::FromTheFuture { ahead_secs, .. } => {
                        proptest::prop_assert!(ahead_secs > max_future_skew_secs);
                    }
                    ref other => proptest::prop_assert!(false, "{other:?}"),
                }
            }
        }
    }

    #[test]
    fn each_senseless_rule_is_refused_by_name() {
        let ok = AggregationRules::default();
        assert_eq!(ok.validate(2), Ok(()));
        let cases = [
            (
                AggregationRules { quorum: 0, ..ok },
                3,
                RulesError::QuorumZero,
            ),
            (
                AggregationRules { quorum: 4, ..ok },
                3,
                RulesError::QuorumAboveSources {
                    quorum: 4,
                    sources: 3,
                },
            ),
            (
                AggregationRules {
                    staleness_secs: 0,
                    ..ok
                },
                3,
                RulesError::StalenessZero,
            ),
            (
                AggregationRules {
                    max_deviation_bps: 0,
                    ..ok
                },
                3,
                RulesError::DeviationOutOfRange(0),
            ),
            (
                AggregationRules {
                    max_deviation_bps: 10_001,
                    ..ok
                },
                3,
                RulesError::DeviationOutOfRange(10_001),
            ),
        ];
        for (rules, sources, want) in cases {
            assert_eq!(rules.validate(sources), Err(want.clone()), "{rules:?}");
        }
        assert!(RulesError::QuorumZero.to_string().starts_with("quorum: "));
        assert!(RulesError::DeviationOutOfRange(0)
            .to_string()
            .starts_with("max_deviation_bps: "));
    }

    #[test]
    fn deviation_is_integer_exact_at_the_limit() {
        // 200 bps of 10_000 is exactly 200: allowed; 201 is not.
        assert!(!deviates(10_200, 10_000, 200));
        assert!(deviates(10_201, 10_000, 200));
        assert!(!deviates(9_800, 10_000, 200));
        assert!(deviates(9_799, 10_000, 200));
        assert!(deviates(u64::MAX, 1, 10_000));
    }
}
