//! Loan arithmetic in integers (u128 intermediates, checked). Every rounding site says
//! its direction and whom it protects.

use bitcoin::Amount;
use serde::{Deserialize, Serialize};

use super::money::{Bps, Fiat, MoneyError, Price, BPS_DENOM, SATS_PER_BTC};

/// Seconds in the 365-day year that APRs are quoted over.
pub const SECS_PER_YEAR: u128 = 365 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalcError {
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error("the fee {fee} exceeds the collateral {collateral}")]
    FeeExceedsCollateral { fee: Amount, collateral: Amount },
    #[error("the price is zero")]
    ZeroPrice,
    #[error("arithmetic overflow")]
    Overflow,
}

fn to_u64(v: u128) -> Result<u64, CalcError> {
    u64::try_from(v).map_err(|_| CalcError::Overflow)
}

/// Interest accrues in exact sub-minor units: one minor unit is `INTEREST_DENOM` of
/// them, so a year of APR `r` bps on `p` minor units is exactly `p × r × secs` of them.
pub const INTEREST_DENOM: u128 = BPS_DENOM * SECS_PER_YEAR;

/// What a loan owes, and the one place that computes it.
///
/// Convention: **simple interest on the outstanding principal**, accrued exactly (in
/// sub-minor units, no rounding while it accrues); **repayments go to accrued interest
/// first, then to principal**. What is owed is rounded UP to the next minor unit only
/// when it is read (the lender is never short-changed by a fraction of a cent). A
/// repayment reduces the exact amount owed by exactly what was paid, so the total paid
/// over a loan's life is `ceil(principal + exact interest)`, and paying early (which
/// shrinks the principal that interest runs on) never increases it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accrual {
    pub currency: super::money::Currency,
    /// Principal still owed, in minor units.
    pub principal: u64,
    /// Interest accrued up to `since` and not yet paid, in sub-minor units (see
    /// [`INTEREST_DENOM`]).
    pub interest: u128,
    /// Unix seconds up to which interest has been accrued into `interest`.
    pub since: u64,
    pub apr: Bps,
}

impl Accrual {
    /// A loan of `principal` at `apr`, accruing from `since`.
    pub fn new(principal: Fiat, apr: Bps, since: u64) -> Self {
        Self {
            currency: principal.currency,
            principal: principal.minor,
            interest: 0,
            since,
            apr,
        }
    }

    /// Exact interest (sub-minor units) owed at `now`; before `since` nothing accrues.
    fn interest_at(&self, now: u64) -> Result<u128, CalcError> {
        let secs = now.saturating_sub(self.since);
        u128::from(self.principal)
            .checked_mul(u128::from(self.apr.0))
            .and_then(|v| v.checked_mul(u128::from(secs)))
            .and_then(|v| v.checked_add(self.interest))
            .ok_or(CalcError::Overflow)
    }

    /// What is owed at `now`, rounded UP to the minor unit (protects the lender).
    pub fn owed(&self, now: u64) -> Result<Fiat, CalcError> {
        let interest = to_u64(self.interest_at(now)?.div_ceil(INTEREST_DENOM))?;
        let owed = self
            .principal
            .checked_add(interest)
            .ok_or(CalcError::Overflow)?;
        Ok(Fiat::new(owed, self.currency))
    }

    /// Apply a repayment of `amount` at `now`: interest first, then principal. The
    /// caller refuses amounts above [`Accrual::owed`]; paying exactly that clears it.
    pub fn repay(&self, amount: u64, now: u64) -> Result<Self, CalcError> {
        let interest = self.interest_at(now)?;
        let paid = u128::from(amount)
            .checked_mul(INTEREST_DENOM)
            .ok_or(CalcError::Overflow)?;
        let mut next = Self {
            interest,
            since: now.max(self.since),
            ..*self
        };
        if paid <= interest {
            next.interest = interest - paid;
            return Ok(next);
        }
        // What is left after the interest goes to principal. Rounding: principal is
        // reduced by the leftover rounded UP to a whole minor unit, and the fraction
        // credited beyond what was paid is owed back as interest — so the exact amount
        // owed falls by exactly what was paid. Capped at the principal: the final
        // payment's rounding up (of a fraction of a cent) is the lender's.
        let leftover = paid - interest;
        let reduce = leftover.div_ceil(INTEREST_DENOM);
        if reduce >= u128::from(self.principal) {
            // The whole principal: what the leftover does not cover (less than a minor
            // unit) stays owed; a leftover above it is the final payment's rounding.
            next.principal = 0;
            next.interest = (u128::from(self.principal) * INTEREST_DENOM).saturating_sub(leftover);
        } else {
            next.principal = self.principal - to_u64(reduce)?;
            next.interest = reduce * INTEREST_DENOM - leftover;
        }
        Ok(next)
    }

    pub fn is_repaid(&self) -> bool {
        self.principal == 0 && self.interest == 0
    }
}

/// Value of `collateral` at `price`, in minor units. Rounds DOWN: collateral is never
/// counted as worth more than it is (protects the lender).
pub fn collateral_value(collateral: Amount, price: Price) -> u64 {
    let v = u128::from(collateral.to_sat()) * u128::from(price.minor_per_btc) / SATS_PER_BTC;
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// LTV = owed / (collateral × price), in basis points. Rounds UP: a loan is never shown
/// safer than it is. No collateral or a zero price gives [`Bps::MAX`].
pub fn ltv(owed: Fiat, collateral: Amount, price: Price) -> Result<Bps, CalcError> {
    if owed.currency != price.currency {
        return Err(MoneyError::CurrencyMismatch(owed.currency, price.currency).into());
    }
    if owed.minor == 0 {
        return Ok(Bps(0));
    }
    let denom = u128::from(collateral.to_sat()) * u128::from(price.minor_per_btc);
    if denom == 0 {
        return Ok(Bps::MAX);
    }
    // owed ≤ 2^64, × 10^12 < 2^104: no overflow.
    let num = u128::from(owed.minor) * BPS_DENOM * SATS_PER_BTC;
    Ok(Bps(u32::try_from(num.div_ceil(denom)).unwrap_or(u32::MAX)))
}

/// Collateral needed so that LTV ≤ `max_ltv` at `price`. Rounds UP (protects the
/// lender: never a satoshi too little).
pub fn required_collateral(owed: Fiat, max_ltv: Bps, price: Price) -> Result<Amount, CalcError> {
    if owed.currency != price.currency {
        return Err(MoneyError::CurrencyMismatch(owed.currency, price.currency).into());
    }
    let denom = u128::from(max_ltv.0) * u128::from(price.minor_per_btc);
    if denom == 0 {
        return Err(CalcError::ZeroPrice);
    }
    let sats = (u128::from(owed.minor) * BPS_DENOM * SATS_PER_BTC).div_ceil(denom);
    Ok(Amount::from_sat(to_u64(sats)?))
}

/// The highest price (minor units per BTC) at which [`ltv`] reaches `threshold`: the
/// loan is breached exactly when `price <= liquidation_price(..)`. `None` when no
/// positive price breaches it (nothing owed), `Some(u64::MAX)` when every price does
/// (no collateral).
///
/// Derivation: ltv = ceil(owed·10^12 / (sats·p)) ≥ T ⟺ owed·10^12 / (sats·p) > T−1
/// ⟺ p < owed·10^12 / ((T−1)·sats) ⟺ p ≤ floor((owed·10^12 − 1) / ((T−1)·sats)).
pub fn liquidation_price(owed_minor: u64, collateral: Amount, threshold: Bps) -> Option<u64> {
    if owed_minor == 0 {
        return None;
    }
    if collateral == Amount::ZERO || threshold.0 <= 1 {
        return Some(u64::MAX);
    }
    let num = u128::from(owed_minor) * BPS_DENOM * SATS_PER_BTC - 1;
    let den = u128::from(threshold.0 - 1) * u128::from(collateral.to_sat());
    let p = num / den;
    (p > 0).then(|| u64::try_from(p).unwrap_or(u64::MAX))
}

/// The lender's sats for repaying `repay_minor` of the debt with `penalty` at `price`:
/// `repay × (1 + penalty)` at the price, rounded UP (the lender is made whole). What a
/// full liquidation and a partial sale both pay.
pub fn lender_sats(repay_minor: u64, penalty: Bps, price: Price) -> Result<u64, CalcError> {
    if price.minor_per_btc == 0 {
        return Err(CalcError::ZeroPrice);
    }
    let claim_minor = u128::from(repay_minor) * (BPS_DENOM + u128::from(penalty.0));
    let sats = (claim_minor * SATS_PER_BTC).div_ceil(BPS_DENOM * u128::from(price.minor_per_btc));
    u64::try_from(sats).map_err(|_| CalcError::Overflow)
}

/// How the collateral is divided by a liquidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub lender: Amount,
    pub borrower: Amount,
    pub fee: Amount,
}

/// Liquidation split: the lender gets owed × (1 + penalty) in sats at `price`
/// (rounded UP: the lender is made whole), capped at collateral − fee; the borrower
/// gets the rest, which pays the fee first; a borrower share below `dust` goes to the
/// lender rather than being unspendable. Always `lender + borrower + fee == collateral`.
pub fn liquidation_split(
    owed: Fiat,
    penalty: Bps,
    price: Price,
    collateral: Amount,
    fee: Amount,
    dust: Amount,
) -> Result<Split, CalcError> {
    if owed.currency != price.currency {
        return Err(MoneyError::CurrencyMismatch(owed.currency, price.currency).into());
    }
    if price.minor_per_btc == 0 {
        return Err(CalcError::ZeroPrice);
    }
    let available = collateral
        .checked_sub(fee)
        .ok_or(CalcError::FeeExceedsCollateral { fee, collateral })?;
    // A claim beyond u64 sats is capped at what is available anyway.
    let claim = lender_sats(owed.minor, penalty, price).unwrap_or(u64::MAX);
    let lender = Amount::from_sat(claim).min(available);
    let mut borrower = available - lender;
    let mut lender = lender;
    if borrower < dust {
        lender += borrower;
        borrower = Amount::ZERO;
    }
    Ok(Split {
        lender,
        borrower,
        fee,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loan::money::Currency;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::new("USD").unwrap()
    }
    fn fiat(m: u64) -> Fiat {
        Fiat::new(m, usd())
    }
    fn price(p: u64) -> Price {
        Price::new(p, usd())
    }

    /// What is owed on `principal` at `apr` after `secs`, nothing repaid.
    fn owed(principal: u64, apr: u32, secs: u64) -> Result<u64, CalcError> {
        Ok(Accrual::new(fiat(principal), Bps(apr), 0).owed(secs)?.minor)
    }

    #[test]
    fn interest_rounds_up() {
        // $100 at 10 % for one second: 100_00 × 1000 / (10^4 × 31_536_000) cents = tiny → 1 cent.
        assert_eq!(owed(10_000, 1_000, 1).map(|o| o - 10_000), Ok(1));
        assert_eq!(owed(10_000, 1_000, 0).map(|o| o - 10_000), Ok(0));
        // Exactly one year at 10 % of $100 = $10.
        assert_eq!(
            owed(10_000, 1_000, 31_536_000).map(|o| o - 10_000),
            Ok(1_000)
        );
        assert_eq!(owed(10_000, 1_000, 31_536_000).unwrap(), 11_000);
    }

    #[test]
    fn ltv_rounds_up_and_handles_the_edges() {
        // $50,000 owed on 1 BTC at $100,000: exactly 50 %.
        assert_eq!(
            ltv(fiat(5_000_000), Amount::ONE_BTC, price(10_000_000)),
            Ok(Bps(5_000))
        );
        // One cent more: 50.00001 % → rounds up to 5001 bps.
        assert_eq!(
            ltv(fiat(5_000_001), Amount::ONE_BTC, price(10_000_000)),
            Ok(Bps(5_001))
        );
        assert_eq!(ltv(fiat(1), Amount::ZERO, price(10_000_000)), Ok(Bps::MAX));
        assert_eq!(ltv(fiat(0), Amount::ZERO, price(0)), Ok(Bps(0)));
        let eur = Price::new(1, Currency::new("EUR").unwrap());
        assert!(ltv(fiat(1), Amount::ONE_BTC, eur).is_err());
    }

    #[test]
    fn collateral_value_rounds_down_and_required_collateral_up() {
        assert_eq!(collateral_value(Amount::from_sat(1), price(99_999_999)), 0);
        assert_eq!(
            collateral_value(Amount::ONE_BTC, price(6_400_000)),
            6_400_000
        );
        // $50,000 at 50 % max LTV and $100,000/BTC: exactly 1 BTC.
        assert_eq!(
            required_collateral(fiat(5_000_000), Bps(5_000), price(10_000_000)),
            Ok(Amount::ONE_BTC)
        );
        // One cent more needs two cents more collateral: 20 sats, exactly.
        assert_eq!(
            required_collateral(fiat(5_000_001), Bps(5_000), price(10_000_000)),
            Ok(Amount::from_sat(100_000_020))
        );
        // 1 cent at 50 % and 3 cents/BTC: 66_666_666.67 sats, rounded up.
        assert_eq!(
            required_collateral(fiat(1), Bps(5_000), price(3)),
            Ok(Amount::from_sat(66_666_667))
        );
    }

    #[test]
    fn liquidation_price_is_the_exact_boundary() {
        let owed = 5_000_000;
        let sats = Amount::ONE_BTC;
        let t = Bps(8_000);
        let p = liquidation_price(owed, sats, t).unwrap();
        assert!(ltv(fiat(owed), sats, price(p)).unwrap() >= t);
        assert!(ltv(fiat(owed), sats, price(p + 1)).unwrap() < t);
        assert_eq!(liquidation_price(0, sats, t), None);
        assert_eq!(liquidation_price(1, Amount::ZERO, t), Some(u64::MAX));
    }

    #[test]
    fn split_pays_the_lender_first_and_the_fee_from_the_borrower() {
        // Owed $50,000 + 5 % = $52,500 at $100,000/BTC = 0.525 BTC.
        let s = liquidation_split(
            fiat(5_000_000),
            Bps(500),
            price(10_000_000),
            Amount::ONE_BTC,
            Amount::from_sat(1_000),
            Amount::from_sat(330),
        )
        .unwrap();
        assert_eq!(s.lender, Amount::from_sat(52_500_000));
        assert_eq!(
            s.borrower,
            Amount::from_sat(100_000_000 - 52_500_000 - 1_000)
        );
        // Underwater: the lender gets everything but the fee.
        let s = liquidation_split(
            fiat(20_000_000),
            Bps(500),
            price(10_000_000),
            Amount::ONE_BTC,
            Amount::from_sat(1_000),
            Amount::from_sat(330),
        )
        .unwrap();
        assert_eq!(
            (s.lender, s.borrower),
            (Amount::from_sat(99_999_000), Amount::ZERO)
        );
        // A borrower share below dust goes to the lender.
        // Lender 99_998_800 sats leaves the borrower 200 sats, below a 330-sat dust limit.
        let s = liquidation_split(
            fiat(9_999_880),
            Bps(0),
            price(10_000_000),
            Amount::ONE_BTC,
            Amount::from_sat(1_000),
            Amount::from_sat(330),
        )
        .unwrap();
        assert_eq!(s.borrower, Amount::ZERO);
        assert_eq!(s.lender + s.fee, Amount::ONE_BTC);
        assert!(liquidation_split(
            fiat(1),
            Bps(0),
            price(1),
            Amount::from_sat(10),
            Amount::from_sat(11),
            Amount::ZERO
        )
        .is_err());
    }

    #[test]
    fn repayments_pay_interest_first_then_principal() {
        const YEAR: u64 = 31_536_000;
        // $100 at 10 %: a year accrues $10.
        let a = Accrual::new(fiat(10_000), Bps(1_000), 0);
        assert_eq!(a.owed(YEAR).unwrap().minor, 11_000);
        // $5 pays half the interest; the principal still bears interest in full.
        let half = a.repay(500, YEAR).unwrap();
        assert_eq!(
            (half.principal, half.owed(YEAR).unwrap().minor),
            (10_000, 10_500)
        );
        assert_eq!(half.owed(2 * YEAR).unwrap().minor, 10_000 + 500 + 1_000);
        // $20 pays the $10 of interest and $10 of principal: interest runs on $90 after.
        let big = a.repay(2_000, YEAR).unwrap();
        assert_eq!((big.principal, big.interest), (9_000, 0));
        assert_eq!(big.owed(2 * YEAR).unwrap().minor, 9_000 + 900);
        // A payment a fraction of a cent short of the exact amount leaves a cent owed.
        let day = a.repay(0, 0).unwrap();
        let owed_day = day.owed(86_400).unwrap().minor;
        let short = day.repay(owed_day - 1, 86_400).unwrap();
        assert!(!short.is_repaid());
        assert_eq!(short.owed(86_400).unwrap().minor, 1);
        // Paying what is owed clears it, fractions included.
        let one_sec = a.owed(1).unwrap();
        assert_eq!(
            one_sec.minor, 10_001,
            "a second's interest rounds up to a cent"
        );
        assert!(a.repay(one_sec.minor, 1).unwrap().is_repaid());
    }

    proptest! {
        #[test]
        fn repaying_early_never_increases_the_total_paid(
            principal in 1u64..=1_000_000_000_000,
            apr in 0u32..=10_000,
            end in 1u64..=315_360_000,
            steps in proptest::collection::vec((0u64..=1_000_000, 1u64..=1_000_000_000), 0..5),
        ) {
            let a = Accrual::new(fiat(principal), Bps(apr), 0);
            let all_at_end = a.owed(end).unwrap().minor;
            // Early partial repayments at increasing times, each at most what is owed.
            let mut b = a;
            let mut paid = 0u64;
            let mut t = 0u64;
            for (dt_ppm, amount) in steps {
                t = (t + end * dt_ppm / 1_000_000).min(end);
                let owed = b.owed(t).unwrap().minor;
                let amount = amount.min(owed);
                if amount == 0 { continue; }
                let next = b.repay(amount, t).unwrap();
                // The exact amount owed falls by what was paid, never more.
                prop_assert!(next.owed(t).unwrap().minor + amount >= owed);
                b = next;
                paid += amount;
            }
            paid += b.owed(end).unwrap().minor;
            prop_assert!(paid <= all_at_end, "paid {} early vs {} at the end", paid, all_at_end);
            prop_assert!(b.repay(b.owed(end).unwrap().minor, end).unwrap().is_repaid());
        }

        #[test]
        fn ltv_is_monotonic(owed in 1u64..=1_000_000_000_000_000, sats in 1u64..=2_100_000_000_000_000, p in 1u64..=1_000_000_000_000, d in 1u64..1_000_000) {
            let base = ltv(fiat(owed), Amount::from_sat(sats), price(p)).unwrap();
            prop_assert!(ltv(fiat(owed.saturating_add(d)), Amount::from_sat(sats), price(p)).unwrap() >= base);
            prop_assert!(ltv(fiat(owed), Amount::from_sat(sats), price(p.saturating_add(d))).unwrap() <= base);
            prop_assert!(ltv(fiat(owed), Amount::from_sat(sats.saturating_add(d)), price(p)).unwrap() <= base);
        }

        #[test]
        fn split_always_sums_to_the_collateral(owed in 0u64..=1_000_000_000_000_000, penalty in 0u32..=5_000, p in 1u64..=1_000_000_000_000, sats in 0u64..=2_100_000_000_000_000, fee in 0u64..100_000, dust in 0u64..1_000) {
            let collateral = Amount::from_sat(sats);
            match liquidation_split(fiat(owed), Bps(penalty), price(p), collateral, Amount::from_sat(fee), Amount::from_sat(dust)) {
                Ok(s) => {
                    prop_assert_eq!(s.lender + s.borrower + s.fee, collateral);
                    prop_assert!(s.lender <= collateral);
                }
                Err(_) => prop_assert!(fee > sats),
            }
        }

        #[test]
        fn liquidation_price_matches_ltv(owed in 1u64..=1_000_000_000_000_000, sats in 1u64..=2_100_000_000_000_000, t in 2u32..10_000, p in 1u64..=1_000_000_000_000) {
            let breached = ltv(fiat(owed), Amount::from_sat(sats), price(p)).unwrap() >= Bps(t);
            let by_price = liquidation_price(owed, Amount::from_sat(sats), Bps(t)).is_some_and(|lp| p <= lp);
            prop_assert_eq!(breached, by_price);
        }

        #[test]
        fn no_overflow_on_extremes(owed in 0u64..=u64::MAX, sats in 0u64..=2_100_000_000_000_000, p in 0u64..=1_000_000_000_000, secs in 0u64..=10_000_000_000) {
            let _ = ltv(fiat(owed), Amount::from_sat(sats), price(p));
            let _ = required_collateral(fiat(owed), Bps(5_000), price(p));
            let _ = Accrual::new(fiat(owed), Bps(10_000), 0).owed(secs);
        }
    }
}
