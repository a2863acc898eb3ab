//! The liquidation-price index: active loans ordered by the price at which they breach
//! their liquidation LTV, so a price tick finds the breached loans in O(log n + k)
//! instead of scanning the book.
//!
//! Interest drift: what is owed grows every second, so a loan's liquidation price
//! creeps up. The index uses a **conservative key with a bounded re-key schedule**: a
//! loan is keyed by its liquidation price at the end of a window (`rekey_secs` ahead),
//! which is at least its liquidation price at any moment inside the window, so no
//! breached loan can be missed; when the window ends the loan is re-keyed. Candidates
//! are then checked exactly, so a tick returns exactly the loans a full scan finds.
//!
//! The windows are staggered: a loan's window ends between half of `rekey_secs` and
//! all of it, at a point its id picks. Loans keyed together (a whole book when the
//! engine opens) would otherwise all be re-keyed by the same tick, once a window: a
//! million of them take about 1.6 s, and a crash arriving on that tick would wait for
//! them. Staggered, each tick re-keys its share.

use std::collections::{BTreeSet, HashMap};

use bitcoin::Amount;

use super::calc;
#[cfg(test)]
use super::calc::Accrual;
use super::money::{Bps, Currency, Fiat, Price};

/// What the index needs to know of a loan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedLoan {
    /// What is owed and how it grows (the loan's own [`calc::Accrual`]).
    pub accrual: calc::Accrual,
    pub collateral: Amount,
    /// The LTV at which the loan is breached (its liquidation LTV).
    pub threshold: Bps,
}

impl IndexedLoan {
    fn owed(&self, now: u64) -> Fiat {
        // Overflow means more is owed than any price can cover: breached.
        self.accrual
            .owed(now)
            .unwrap_or(Fiat::new(u64::MAX, self.accrual.currency))
    }

    /// Exactly: is the LTV at `price` and `now` at or above the threshold?
    pub fn breached(&self, price: Price, now: u64) -> bool {
        calc::ltv(self.owed(now), self.collateral, price).is_ok_and(|ltv| ltv >= self.threshold)
    }
}

/// How long `id`'s key stays valid: from half of `rekey_secs` to all of it, the
/// same for an id every time (see the module doc).
fn window(id: &str, rekey_secs: u64) -> u64 {
    // FNV-1a: any spread will do, and it is the same on every run and machine.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let half = rekey_secs / 2;
    rekey_secs - hash % (half + 1)
}

struct Entry {
    loan: IndexedLoan,
    key: Option<u64>,
    until: u64,
}

/// Loans by conservative liquidation price, for one currency.
pub struct LiquidationIndex {
    currency: Currency,
    rekey_secs: u64,
    by_price: BTreeSet<(u64, String)>,
    schedule: BTreeSet<(u64, String)>,
    entries: HashMap<String, Entry>,
}

impl LiquidationIndex {
    /// `rekey_secs`: the window a key stays valid (shorter: fewer false candidates,
    /// more re-keying).
    pub fn new(currency: Currency, rekey_secs: u64) -> Self {
        Self {
            currency,
            rekey_secs: rekey_secs.max(1),
            by_price: BTreeSet::new(),
            schedule: BTreeSet::new(),
            entries: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn unlink(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        if let Some(k) = entry.key {
            self.by_price.remove(&(k, id.to_owned()));
        }
        self.schedule.remove(&(entry.until, id.to_owned()));
        Some(entry)
    }

    /// Insert or re-key a loan (call when collateral, repayments or terms change).
    pub fn upsert(&mut self, id: &str, loan: IndexedLoan, now: u64) {
        self.unlink(id);
        let until = now.saturating_add(window(id, self.rekey_secs));
        // Owed grows with time, so the liquidation price at `until` bounds the window.
        let key = calc::liquidation_price(loan.owed(until).minor, loan.collateral, loan.threshold);
        if let Some(k) = key {
            self.by_price.insert((k, id.to_owned()));
        }
        self.schedule.insert((until, id.to_owned()));
        self.entries
            .insert(id.to_owned(), Entry { loan, key, until });
    }

    pub fn remove(&mut self, id: &str) {
        self.unlink(id);
    }

    /// Re-key every loan whose window ended by `now`.
    fn rekey_due(&mut self, now: u64) {
        while let Some((until, id)) = self.schedule.first().cloned() {
            if until > now {
                break;
            }
            if let Some(entry) = self.unlink(&id) {
                self.upsert(&id, entry.loan, now);
            }
        }
    }

    /// The loans breached at `price` and `now`, in order of liquidation price (most
    /// under water first).
    pub fn breached(&mut self, price: Price, now: u64) -> Vec<String> {
        if price.currency != self.currency {
            return Vec::new();
        }
        self.rekey_due(now);
        let mut out = Vec::new();
        for (_, id) in self
            .by_price
            .range((price.minor_per_btc, String::new())..)
            .rev()
        {
            let entry = &self.entries[id];
            if entry.loan.breached(price, now) {
                out.push(id.clone());
            }
        }
        out
    }

    /// The same answer by checking every loan (for tests and benchmarks).
    pub fn scan(&self, price: Price, now: u64) -> Vec<String> {
        if price.currency != self.currency {
            return Vec::new();
        }
        let mut out: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.loan.breached(price, now))
            .map(|(id, e)| (e.key.unwrap_or(0), id.clone()))
            .collect();
        out.sort();
        out.into_iter().rev().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::new("USD").unwrap()
    }

    fn loan(principal: u64, apr: u32, collateral: u64, threshold: u32) -> IndexedLoan {
        IndexedLoan {
            accrual: Accrual::new(Fiat::new(principal, usd()), Bps(apr), 0),
            collateral: Amount::from_sat(collateral),
            threshold: Bps(threshold),
        }
    }

    #[test]
    fn finds_the_breached_loans_and_follows_interest() {
        let mut idx = LiquidationIndex::new(usd(), 3_600);
        // $50,000 on 1 BTC, liquidation at 80 %: the exact LTV reaches 80 % at
        // $62,500; as the LTV rounds up, it shows 80.00 % up to $62,507.81.
        idx.upsert("a", loan(5_000_000, 1_000, 100_000_000, 8_000), 0);
        idx.upsert("b", loan(1_000_000, 1_000, 100_000_000, 8_000), 0);
        let p = |m| Price::new(m, usd());
        assert_eq!(idx.breached(p(6_250_000), 0), vec!["a".to_owned()]);
        assert_eq!(idx.breached(p(6_250_781), 0), vec!["a".to_owned()]);
        assert!(idx.breached(p(6_250_782), 0).is_empty());
        // A year of 10 % interest later: owed $55,000, breached below $68,750.
        let year = 31_536_000;
        assert_eq!(idx.breached(p(6_875_000), year), vec!["a".to_owned()]);
        idx.remove("a");
        assert!(idx.breached(p(6_875_000), year).is_empty());
        assert!(idx
            .breached(Price::new(1, Currency::new("EUR").unwrap()), 0)
            .is_empty());
    }

    /// A book keyed at once is re-keyed over the second half of the window, a share
    /// per tick, never all by one tick; and each key still ends within the window.
    #[test]
    fn windows_are_staggered_over_the_second_half() {
        let mut idx = LiquidationIndex::new(usd(), 3_600);
        for i in 0..10_000 {
            idx.upsert(
                &format!("loan-{i:07}"),
                loan(5_000_000, 1_000, 100_000_000, 8_000),
                0,
            );
        }
        let due = |idx: &LiquidationIndex, now: u64| {
            idx.schedule
                .iter()
                .take_while(|(until, _)| *until <= now)
                .count()
        };
        assert_eq!(due(&idx, 1_799), 0, "none before half the window");
        assert_eq!(due(&idx, 3_600), 10_000, "all by the end of it");
        for (now, share) in [(2_250, 2_500), (2_700, 5_000), (3_150, 7_500)] {
            let n = due(&idx, now);
            assert!(
                n.abs_diff(share) < 400,
                "{n} due at {now}, about {share} expected"
            );
        }
        // The same id gets the same window every time.
        assert_eq!(window("loan-0000001", 3_600), window("loan-0000001", 3_600));
        assert_eq!(window("x", 1), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// For random books and random price paths (time moving forward), the index
        /// returns exactly the loans a full scan finds.
        #[test]
        fn index_equals_full_scan(
            book in proptest::collection::vec((1u64..1_000_000_000_000, 0u32..5_000, 1u64..2_000_000_000_000, 100u32..9_999, 0u64..10_000_000), 1..60),
            path in proptest::collection::vec((1u64..1_000_000_000, 0u64..5_000_000), 1..20),
            rekey in 1u64..10_000_000,
        ) {
            let mut idx = LiquidationIndex::new(usd(), rekey);
            for (i, (principal, apr, sats, threshold, activated)) in book.iter().enumerate() {
                let mut l = loan(*principal, *apr, *sats, *threshold);
                l.accrual.since = *activated;
                idx.upsert(&i.to_string(), l, 0);
            }
            let mut now = 0u64;
            for (price, step) in path {
                now += step;
                let p = Price::new(price, usd());
                prop_assert_eq!(idx.breached(p, now), idx.scan(p, now));
            }
        }
    }
}
