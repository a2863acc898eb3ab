//! The arithmetic of adjusting a loan without closing it: a **partial liquidation**
//! (sell just enough collateral to bring the loan back to its target LTV) and a
//! **withdrawal** of collateral above the initial LTV. Integers only; every rounding
//! says whom it protects. No I/O.
//!
//! Partial liquidation (terms `partial_liquidation`, `target_ltv`): the sale repays `x`
//! minor units of the debt; the lender's output is `x × (1 + penalty)` in sats at the
//! decision price, rounded UP to the next sat exactly as a full liquidation pays
//! (the lender is never short of `x` plus its penalty); the fee is paid from the change,
//! which goes back into the escrow. `x` is the **smallest** whole number of minor units
//! for which the LTV after the sale, `ltv(owed − x, collateral − lender − fee, price)`
//! (rounded up, as every LTV), is at or below the target. A full liquidation is taken
//! instead when no `x` below what is owed reaches the target (each sale raises the LTV
//! when `target × (1 + penalty) ≥ 100 %`, and a collateral worth less than the debt
//! plus its penalty cannot be restored), or when the change or the lender's output
//! would be dust.

use bitcoin::Amount;
use serde::{Deserialize, Serialize};

use super::calc::{self, lender_sats, CalcError};
use super::money::{Bps, Fiat, MoneyError, Price, BPS_DENOM, SATS_PER_BTC};

/// A partial sale, every number of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialSale {
    /// The debt the sale repays: the smallest amount that restores the target.
    pub repay: Fiat,
    /// The lender's output: `repay × (1 + penalty)` at the price, rounded up.
    pub lender: Amount,
    /// What goes back into the escrow: collateral − lender − fee.
    pub change: Amount,
    pub fee: Amount,
    /// The LTV before the sale and after it, at the decision price.
    pub ltv_before: Bps,
    pub ltv_after: Bps,
}

/// What a confirmed breach sells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sale {
    Partial(PartialSale),
    /// The whole collateral, with why a partial sale cannot be made.
    Full {
        why: &'static str,
    },
}

/// Does a sale repaying `x` restore `target`? Its numbers when it does.
fn sale_of(
    x: u64,
    owed: Fiat,
    collateral: Amount,
    price: Price,
    target: Bps,
    penalty: Bps,
    fee: Amount,
) -> Result<Option<(Amount, Amount, Bps)>, CalcError> {
    let lender = Amount::from_sat(lender_sats(x, penalty, price)?);
    let Some(change) = collateral
        .checked_sub(fee)
        .and_then(|c| c.checked_sub(lender))
    else {
        return Ok(None);
    };
    let after = calc::ltv(Fiat::new(owed.minor - x, owed.currency), change, price)?;
    Ok((after <= target).then_some((lender, change, after)))
}

/// The most steps [`Range::smallest`] takes (each an LTV computed exactly).
const MAX_STEPS: u128 = 100_000;

enum Search {
    Found(u64, (Amount, Amount, Bps)),
    None,
    TooLong,
}

/// One sale's fixed numbers: the search for its smallest `x`.
struct Range {
    owed: Fiat,
    collateral: Amount,
    price: Price,
    target: Bps,
    penalty: Bps,
    fee: Amount,
}

impl Range {
    fn sale(&self, x: u64) -> Result<Option<(Amount, Amount, Bps)>, CalcError> {
        sale_of(
            x,
            self.owed,
            self.collateral,
            self.price,
            self.target,
            self.penalty,
            self.fee,
        )
    }

    /// The smallest `x` in `[lo, hi]` whose sale restores the target, found exactly:
    /// by `x` when that range is short; else by the lender's sats `y = ceil(x·a/b)`
    /// (a minor unit worth less than a sat: runs of `x` share one `y`, and within a
    /// run the LTV after falls as `x` grows, so the first `y` whose run holds an `x`
    /// that restores the target gives the answer: the smallest such `x` of that run).
    /// [`Search::TooLong`] past [`MAX_STEPS`] either way.
    fn smallest(&self, lo: u128, hi: u128) -> Result<Search, CalcError> {
        let to_u64 = |v: u128| u64::try_from(v).map_err(|_| CalcError::Overflow);
        let a = BPS_DENOM + u128::from(self.penalty.0);
        let a = a * SATS_PER_BTC;
        let b = BPS_DENOM * u128::from(self.price.minor_per_btc);
        let sats = |x: u128| x.checked_mul(a).map(|v| v.div_ceil(b));
        let (Some(y_lo), Some(y_hi)) = (sats(lo), sats(hi)) else {
            return Err(CalcError::Overflow);
        };
        if hi - lo < MAX_STEPS {
            for x in lo..=hi {
                if let Some(s) = self.sale(to_u64(x)?)? {
                    return Ok(Search::Found(to_u64(x)?, s));
                }
            }
            return Ok(Search::None);
        }
        if y_hi - y_lo >= MAX_STEPS {
            return Ok(Search::TooLong);
        }
        let avail = u128::from(
            self.collateral
                .checked_sub(self.fee)
                .unwrap_or(Amount::ZERO)
                .to_sat(),
        );
        let tp = u128::from(self.target.0) * u128::from(self.price.minor_per_btc);
        let d = u128::from(self.owed.minor) * BPS_DENOM * SATS_PER_BTC;
        for y in y_lo..=y_hi {
            if y > avail {
                break;
            }
            // The run of x paying y sats, and the least x that restores the target
            // with y sats paid: (owed − x)·10^12 ≤ target·price·(avail − y).
            let first = if y == 0 { 0 } else { (y - 1) * b / a + 1 };
            let last = (y * b / a).min(hi);
            let rhs = tp.checked_mul(avail - y).ok_or(CalcError::Overflow)?;
            let need = d.saturating_sub(rhs).div_ceil(BPS_DENOM * SATS_PER_BTC);
            let x = first.max(lo).max(need);
            if x <= last {
                if let Some(s) = self.sale(to_u64(x)?)? {
                    return Ok(Search::Found(to_u64(x)?, s));
                }
            }
        }
        Ok(Search::None)
    }
}

/// The partial sale that brings a loan owing `owed` on `collateral` back to `target`
/// at `price` (see the module doc), or why the whole collateral must be sold. `fee` is
/// the transaction's fee, paid from the change; `dust` bounds both outputs.
pub fn partial_sale(
    owed: Fiat,
    collateral: Amount,
    price: Price,
    target: Bps,
    penalty: Bps,
    fee: Amount,
    dust: Amount,
) -> Result<Sale, CalcError> {
    if owed.currency != price.currency {
        return Err(MoneyError::CurrencyMismatch(owed.currency, price.currency).into());
    }
    if price.minor_per_btc == 0 {
        return Err(CalcError::ZeroPrice);
    }
    let ltv_before = calc::ltv(owed, collateral, price)?;
    if owed.minor == 0 || ltv_before <= target {
        return Ok(Sale::Full {
            why: "the loan is not above its target LTV",
        });
    }
    // Each minor unit repaid lowers the debt by 1 and the collateral's value by
    // (1 + penalty): in units of 10^-12 minor·BTC, the gap `owed·10^12 − target·price·
    // (collateral − fee)` closes by k = 10^4·(10^8 − target·(10^4 + penalty)) per unit.
    let per_unit = u128::from(target.0) * (BPS_DENOM + u128::from(penalty.0));
    if per_unit >= 100_000_000 {
        return Ok(Sale::Full {
            why: "at this target and penalty every sale raises the LTV",
        });
    }
    let k = BPS_DENOM * (100_000_000 - per_unit);
    let Some(available) = collateral.checked_sub(fee) else {
        return Ok(Sale::Full {
            why: "the fee exceeds the collateral",
        });
    };
    let tp = u128::from(target.0) * u128::from(price.minor_per_btc);
    let a = u128::from(owed.minor) * BPS_DENOM * SATS_PER_BTC;
    let b = tp
        .checked_mul(u128::from(available.to_sat()))
        .ok_or(CalcError::Overflow)?;
    let gap = a.saturating_sub(b);
    // The lender's sats are rounded up by less than one sat: worth less than `tp` in
    // the same units. So the smallest x lies in [gap/k, (gap + tp)/k], both rounded up
    // (a few units wide at the oracle's prices).
    let lo = gap.div_ceil(k).max(1);
    let hi = (gap + tp).div_ceil(k).max(lo);
    if lo >= u128::from(owed.minor) {
        return Ok(Sale::Full {
            why: "the collateral cannot cover the debt plus its penalty",
        });
    }
    let hi = hi.min(u128::from(owed.minor) - 1);
    let range = Range {
        owed,
        collateral,
        price,
        target,
        penalty,
        fee,
    };
    let found = match range.smallest(lo, hi)? {
        Search::Found(x, s) => Some((x, s)),
        Search::None => None,
        Search::TooLong => {
            return Ok(Sale::Full {
                why: "at this target and penalty a sale barely lowers the LTV",
            })
        }
    };
    let Some((x, (lender, change, ltv_after))) = found else {
        return Ok(Sale::Full {
            why: "no sale smaller than the debt restores the target",
        });
    };
    if change < dust {
        return Ok(Sale::Full {
            why: "the change back into the escrow would be dust",
        });
    }
    if lender < dust {
        return Ok(Sale::Full {
            why: "the lender's output would be dust",
        });
    }
    Ok(Sale::Partial(PartialSale {
        repay: Fiat::new(x, owed.currency),
        lender,
        change,
        fee,
        ltv_before,
        ltv_after,
    }))
}

/// The most a borrower may withdraw from `collateral` (the fee paid from what stays)
/// while the LTV after it, at `price`, stays at or below `limit`: collateral − fee −
/// the collateral `limit` requires (rounded up, so the limit is never passed). Zero
/// when there is no excess.
pub fn max_withdrawal(
    owed: Fiat,
    collateral: Amount,
    price: Price,
    limit: Bps,
    fee: Amount,
) -> Result<Amount, CalcError> {
    let needed = calc::required_collateral(owed, limit, price)?;
    Ok(collateral
        .checked_sub(fee)
        .and_then(|c| c.checked_sub(needed))
        .unwrap_or(Amount::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loan::money::Currency;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::new("USD").unwrap()
    }

    fn sale(owed: u64, sats: u64, price: u64, target: u32, penalty: u32, fee: u64) -> Sale {
        partial_sale(
            Fiat::new(owed, usd()),
            Amount::from_sat(sats),
            Price::new(price, usd()),
            Bps(target),
            Bps(penalty),
            Amount::from_sat(fee),
            Amount::from_sat(330),
        )
        .unwrap()
    }

    #[test]
    fn a_loan_just_over_the_line_sells_what_restores_the_target() {
        // $80,100 owed on 1 BTC at $100,000 (80.1 %), target 50 %, penalty 5 %,
        // fee 1,000 sats. Selling x: (80,100 − x) ≤ 0.5 × (100,000 × (0.99999 −
        // 1.05x/100,000)) ⇔ x ≥ (80,100 − 49,999.5) / 0.475 = 63,369.47… → $63,369.48.
        let Sale::Partial(s) = sale(8_010_000, 100_000_000, 10_000_000, 5_000, 500, 1_000) else {
            panic!("a partial sale")
        };
        assert_eq!(s.repay.minor, 6_336_948);
        // 63,369.48 × 1.05 = 66,537.954 dollars = 66,537,954 sats at $100,000: exact.
        assert_eq!(s.lender, Amount::from_sat(66_537_954));
        assert_eq!(s.change, Amount::from_sat(100_000_000 - 66_537_954 - 1_000));
        assert_eq!(s.ltv_before, Bps(8_010));
        assert_eq!(s.ltv_after, Bps(5_000));
        // A cent less does not restore it.
        assert!(sale_of(
            6_336_947,
            Fiat::new(8_010_000, usd()),
            Amount::ONE_BTC,
            Price::new(10_000_000, usd()),
            Bps(5_000),
            Bps(500),
            Amount::from_sat(1_000)
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn unreachable_targets_and_dust_fall_back_to_full() {
        // Under water: 1 BTC worth $100,000 owes $99,000 (+5 % penalty > value).
        assert!(matches!(
            sale(9_900_000, 100_000_000, 10_000_000, 5_000, 500, 1_000),
            Sale::Full { .. }
        ));
        // Target 9,600 bps × 1.05 ≥ 100 %: every sale raises the LTV.
        assert!(matches!(
            sale(9_700_000, 100_000_000, 10_000_000, 9_600, 500, 1_000),
            Sale::Full { why } if why.contains("raises")
        ));
        // Tiny collateral: the change would be dust.
        assert!(matches!(
            sale(72, 900, 10_000_000, 5_000, 500, 0),
            Sale::Full { why } if why.contains("dust")
        ));
    }

    #[test]
    fn a_wide_range_is_searched_by_the_lenders_sats() {
        // $1bn per BTC (a minor unit worth 0.1 sat), target 90 %, penalty 11 %: each
        // minor unit sold barely lowers the LTV, so x spans ~10^6 candidates and the
        // search runs over the lender's sats instead.
        let (owed, sats, price) = (90_050_000_000u64, 100_000_000u64, 100_000_000_000u64);
        let s = partial_sale(
            Fiat::new(owed, usd()),
            Amount::from_sat(sats),
            Price::new(price, usd()),
            Bps(9_000),
            Bps(1_100),
            Amount::from_sat(1_000),
            Amount::from_sat(330),
        )
        .unwrap();
        let Sale::Partial(s) = s else { panic!("{s:?}") };
        let x = s.repay.minor;
        assert!(s.ltv_after <= Bps(9_000));
        let f = |x| {
            sale_of(
                x,
                Fiat::new(owed, usd()),
                Amount::from_sat(sats),
                Price::new(price, usd()),
                Bps(9_000),
                Bps(1_100),
                Amount::from_sat(1_000),
            )
            .unwrap()
        };
        assert!(f(x).is_some() && f(x - 1).is_none());
        // Closer still to break-even the search gives up: a full liquidation.
        assert!(matches!(
            partial_sale(
                Fiat::new(owed, usd()),
                Amount::from_sat(sats),
                Price::new(price, usd()),
                Bps(9_000),
                Bps(1_111),
                Amount::from_sat(1_000),
                Amount::from_sat(330),
            )
            .unwrap(),
            Sale::Full { .. }
        ));
    }

    #[test]
    fn withdrawals_keep_the_limit() {
        let owed = Fiat::new(5_000_000, usd());
        let price = Price::new(10_000_000, usd());
        // $50,000 at 50 % needs 1 BTC; 2 BTC less a 1,000-sat fee leaves 0.99999 BTC.
        let max = max_withdrawal(
            owed,
            Amount::from_sat(200_000_000),
            price,
            Bps(5_000),
            Amount::from_sat(1_000),
        )
        .unwrap();
        assert_eq!(max, Amount::from_sat(99_999_000));
        let after = calc::ltv(owed, Amount::from_sat(200_000_000 - 1_000) - max, price).unwrap();
        assert_eq!(after, Bps(5_000));
        assert_eq!(
            max_withdrawal(owed, Amount::ONE_BTC, price, Bps(5_000), Amount::ONE_SAT).unwrap(),
            Amount::ZERO
        );
    }

    proptest! {
        /// For random loans and prices: the partial sale restores the target, one
        /// minor unit less would not, it never sells more than the full liquidation
        /// would, and the lender gets at least `x` plus the penalty at the price.
        #[test]
        fn the_sale_is_the_smallest_that_restores_the_target(
            owed in 1u64..=100_000_000_000,
            sats in 1_000u64..=2_000_000_000_000,
            price in 1_000u64..=1_000_000_000_000,
            target in 1u32..=9_000,
            penalty in 0u32..=5_000,
            fee in 0u64..=100_000,
        ) {
            let (o, c, p) = (Fiat::new(owed, usd()), Amount::from_sat(sats), Price::new(price, usd()));
            let f = Amount::from_sat(fee);
            let s = partial_sale(o, c, p, Bps(target), Bps(penalty), f, Amount::from_sat(330)).unwrap();
            if let Sale::Partial(s) = s {
                let x = s.repay.minor;
                prop_assert!(x > 0 && x < owed);
                // Restores the target, computed here from the outputs.
                prop_assert_eq!(s.lender + s.change + s.fee, c);
                let after = calc::ltv(Fiat::new(owed - x, usd()), s.change, p).unwrap();
                prop_assert_eq!(after, s.ltv_after);
                prop_assert!(after <= Bps(target));
                // Smallest: one minor unit less leaves it above the target.
                prop_assert!(sale_of(x - 1, o, c, p, Bps(target), Bps(penalty), f).unwrap().is_none());
                // The lender: at least x × (1 + penalty) at the price, less one more sat.
                let claim = u128::from(x) * (10_000 + u128::from(penalty)) * SATS_PER_BTC;
                let paid = u128::from(s.lender.to_sat()) * 10_000 * u128::from(price);
                prop_assert!(paid >= claim);
                prop_assert!(paid - claim < 10_000 * u128::from(price));
                // Never more than the full liquidation sells.
                let full = calc::liquidation_split(o, Bps(penalty), p, c, f, Amount::ZERO).unwrap();
                prop_assert!(s.lender <= full.lender);
            }
        }
    }
}
