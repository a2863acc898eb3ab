//! Exact decimal text → integer minor units (cents) per BTC. No floating point.
//!
//! Rounding rule: digits below one cent round the price UP to the next cent. A price
//! never appears lower than the exchange quoted it, so sub-cent noise can never be
//! what pushes a loan over its liquidation threshold (the borrower is the party a
//! liquidation hurts); the lender's exposure to it is under one cent per BTC.

use serde::{Deserialize, Serialize};

/// The largest price accepted: 10^12 minor units (ten billion units per BTC).
pub const MAX_PRICE_MINOR: u64 = 1_000_000_000_000;
/// Longest fractional part accepted.
const MAX_DECIMALS: usize = 18;

/// Why a price text was refused; each carries the text as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "problem", content = "text", rename_all = "snake_case")]
pub enum PriceParseError {
    #[error("empty price")]
    Empty,
    #[error("{0:?} is not a decimal number")]
    NotANumber(String),
    #[error("{0:?} is negative")]
    Negative(String),
    #[error("the price is zero")]
    Zero,
    #[error("{0:?} has more than {MAX_DECIMALS} decimals")]
    TooManyDecimals(String),
    #[error("{0:?} exceeds the maximum of {MAX_PRICE_MINOR} minor units")]
    TooLarge(String),
}

/// Parse a plain decimal (`123`, `123.4`, `0.00001`, optional leading `+`) into minor
/// units with `minor_digits` decimals (2 for cents), sub-unit digits rounded up.
pub fn parse_price(text: &str, minor_digits: u32) -> Result<u64, PriceParseError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(PriceParseError::Empty);
    }
    let unsigned = match t.strip_prefix('-') {
        Some(rest) if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.') => {
            return Err(PriceParseError::Negative(t.to_owned()))
        }
        Some(_) => return Err(PriceParseError::NotANumber(t.to_owned())),
        None => t.strip_prefix('+').unwrap_or(t),
    };
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, f),
        None => (unsigned, ""),
    };
    let digits_only = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits_only(int) || !digits_only(frac) {
        return Err(PriceParseError::NotANumber(t.to_owned()));
    }
    if frac.len() > MAX_DECIMALS {
        return Err(PriceParseError::TooManyDecimals(t.to_owned()));
    }
    let too_large = || PriceParseError::TooLarge(t.to_owned());
    let int_trimmed = int.trim_start_matches('0');
    if int_trimmed.len() > 20 {
        return Err(too_large());
    }
    let mut value: u128 = if int_trimmed.is_empty() {
        0
    } else {
        int_trimmed.parse().map_err(|_| too_large())?
    };
    let minor_digits = minor_digits as usize;
    let (kept, rest) = frac.split_at(frac.len().min(minor_digits));
    for i in 0..minor_digits {
        if value == 0 && i >= kept.len() {
            // Only zeros are left to shift in: nothing changes (and a huge
            // `minor_digits` must not loop for ever).
            break;
        }
        let digit = kept.as_bytes().get(i).map_or(0, |b| u128::from(b - b'0'));
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(digit))
            .ok_or_else(too_large)?;
    }
    // Round up: any non-zero digit below the minor unit adds one.
    if rest.bytes().any(|b| b != b'0') {
        value += 1;
    }
    if value == 0 {
        return Err(PriceParseError::Zero);
    }
    if value > u128::from(MAX_PRICE_MINOR) {
        return Err(too_large());
    }
    Ok(value as u64)
}

/// A JSON value holding a price: a string is parsed as is; a number through its
/// shortest representation, refused when that has more than 15 significant digits
/// (beyond them an IEEE double no longer holds the text the exchange sent).
pub fn price_from_json(
    value: &serde_json::Value,
    minor_digits: u32,
) -> Result<u64, PriceParseError> {
    match value {
        serde_json::Value::String(s) => parse_price(s, minor_digits),
        serde_json::Value::Number(n) => {
            let text = n.to_string();
            if text.contains(['e', 'E']) {
                return Err(PriceParseError::NotANumber(text));
            }
            let significant = text
                .chars()
                .filter(|c| c.is_ascii_digit())
                .collect::<String>();
            if significant.trim_start_matches('0').len() > 15 {
                return Err(PriceParseError::NotANumber(format!(
                    "{text} (too precise for a JSON number)"
                )));
            }
            parse_price(&text, minor_digits)
        }
        other => Err(PriceParseError::NotANumber(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_prices_parse_exactly() {
        assert_eq!(parse_price("37123.45", 2), Ok(3_712_345));
        assert_eq!(parse_price("37123.4", 2), Ok(3_712_340));
        assert_eq!(parse_price("37123", 2), Ok(3_712_300));
        assert_eq!(
            parse_price("37123.40000", 2),
            Ok(3_712_340),
            "trailing zeros are exact"
        );
        assert_eq!(parse_price("+0.01", 2), Ok(1));
        assert_eq!(parse_price(".5", 2), Ok(50));
        assert_eq!(parse_price("10000000000", 2), Ok(MAX_PRICE_MINOR));
    }

    #[test]
    fn sub_cent_digits_round_up_never_down() {
        assert_eq!(parse_price("37123.451", 2), Ok(3_712_346));
        assert_eq!(parse_price("37123.459999", 2), Ok(3_712_346));
        assert_eq!(parse_price("37123.450000000000000001", 2), Ok(3_712_346));
        assert_eq!(
            parse_price("0.001", 2),
            Ok(1),
            "a tiny price rounds up to a cent, not to zero"
        );
    }

    #[test]
    fn bad_prices_are_refused() {
        assert_eq!(parse_price("0", 2), Err(PriceParseError::Zero));
        assert_eq!(parse_price("0.000", 2), Err(PriceParseError::Zero));
        assert!(matches!(
            parse_price("-1.5", 2),
            Err(PriceParseError::Negative(_))
        ));
        for t in [
            "abc", "NaN", "nan", "Infinity", "1e5", "1.2.3", "12,5", "0x10", "--1", "", " ", ".",
        ] {
            assert!(parse_price(t, 2).is_err(), "{t:?} must be refused");
        }
        assert!(matches!(
            parse_price("10000000000.01", 2),
            Err(PriceParseError::TooLarge(_))
        ));
        assert!(matches!(
            parse_price("99999999999999999999999999", 2),
            Err(PriceParseError::TooLarge(_))
        ));
        assert!(matches!(
            parse_price("1.0000000000000000001", 2),
            Err(PriceParseError::TooManyDecimals(_))
        ));
    }

    #[test]
    fn json_numbers_and_strings() {
        use serde_json::json;
        assert_eq!(price_from_json(&json!("37000.5"), 2), Ok(3_700_050));
        assert_eq!(price_from_json(&json!(37000.5), 2), Ok(3_700_050));
        assert_eq!(price_from_json(&json!(37000), 2), Ok(3_700_000));
        assert!(price_from_json(&json!(null), 2).is_err());
        assert!(price_from_json(&json!(-5), 2).is_err());
        assert!(price_from_json(&json!(1e300), 2).is_err());
    }

    proptest! {
        /// Any cents value written with 0..=6 extra decimals parses to exactly that
        /// value when the extra digits are zero, and to that value + 1 otherwise.
        #[test]
        fn parse_is_exact_or_rounds_up(cents in 1u64..=MAX_PRICE_MINOR - 1, extra in 0u32..1_000_000, width in 0usize..=6) {
            let extra = if width == 0 { 0 } else { extra % 10u32.pow(width as u32) };
            let mut text = format!("{}.{:02}", cents / 100, cents % 100);
            if width > 0 {
                text.push_str(&format!("{extra:0width$}"));
            }
            let want = if extra == 0 { cents } else { cents + 1 };
            prop_assert_eq!(parse_price(&text, 2), Ok(want));
        }

        #[test]
        fn never_panics(text in "\\PC{0,40}") {
            let _ = parse_price(&text, 2);
        }
    }
}
