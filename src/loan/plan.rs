//! The loan planner (`btc-escrow plan`, the web page's `/planner`): what a loan on a
//! given collateral looks like before anyone offers it — the principal, the interest,
//! the margin-call and liquidation prices, a stress table of price falls, and for a
//! miner, how many days of mining repay it and the LTV path while it does. Every number
//! comes from [`super::calc`], the functions the engine decides with. No I/O.

use bitcoin::Amount;
use serde::{Deserialize, Serialize};

use super::calc::{self, Accrual, CalcError};
use super::money::{Bps, Currency, Fiat, Price};

/// What the planner is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanInput {
    pub collateral_sat: u64,
    /// Minor units per BTC.
    pub price_minor: u64,
    pub currency: String,
    pub ltv_bps: u32,
    pub apr_bps: u32,
    pub term_secs: u64,
    #[serde(default = "default_margin_call")]
    pub margin_call_ltv_bps: u32,
    #[serde(default = "default_liquidation")]
    pub liquidation_ltv_bps: u32,
    #[serde(default = "default_penalty")]
    pub liquidation_penalty_bps: u32,
    /// The fee a liquidation would pay, in sats.
    #[serde(default = "default_fee")]
    pub liquidation_fee_sat: u64,
    /// A miner's numbers (all three, or none).
    #[serde(default)]
    pub miner: Option<MinerInput>,
}

fn default_margin_call() -> u32 {
    7_000
}
fn default_liquidation() -> u32 {
    8_000
}
fn default_penalty() -> u32 {
    500
}
fn default_fee() -> u64 {
    1_000
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinerInput {
    /// What the ASICs cost (minor units): what the loan pays for.
    pub asic_cost_minor: u64,
    /// Expected BTC mined per day, in sats.
    pub mined_sat_per_day: u64,
    /// Power cost per day (minor units).
    pub power_cost_minor_per_day: u64,
}

/// One row of the stress table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StressRow {
    /// The price fall, in per cent.
    pub fall_pct: u32,
    pub price_minor: u64,
    pub ltv_bps: u32,
    /// `active`, `margin_call` or `liquidation`.
    pub state: &'static str,
    /// What a liquidation at this price would pay the lender and return to the
    /// borrower (sats), after `liquidation_fee_sat`.
    pub lender_sat: u64,
    pub borrower_sat: u64,
}

/// A day of the miner's path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MinerDay {
    pub day: u64,
    /// Still owed after repaying that day's net mining income.
    pub owed_minor: u64,
    pub ltv_bps: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MinerPlan {
    /// Net income per day at the price: mined × price − power (minor units; 0 if the
    /// power costs more).
    pub net_minor_per_day: u64,
    /// Days of net income that repay the loan (principal and interest at term),
    /// rounded up; `None` when mining earns nothing net.
    pub days_to_repay: Option<u64>,
    /// Whether the ASICs' cost fits in the principal.
    pub principal_covers_asics: bool,
    /// The LTV path at a constant price, every 30 days, repaying from net income.
    pub path: Vec<MinerDay>,
}

/// Why the planner cannot plan: the field at fault and the reason.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Calc(#[from] CalcError),
}

impl PlanError {
    /// The input field at fault, if one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            PlanError::Invalid { field, .. } => Some(field),
            PlanError::Calc(_) => None,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The input checked as an offer's terms are: a positive collateral and price, and
/// `0 < ltv < margin call < liquidation < 100 %`.
fn check(input: &PlanInput) -> Result<Currency, PlanError> {
    let currency =
        Currency::new(&input.currency).map_err(|e| invalid("currency", e.to_string()))?;
    if input.collateral_sat == 0 || input.collateral_sat > 21_000_000 * 100_000_000 {
        return Err(invalid(
            "collateral_sat",
            "above zero and at most 21 million BTC",
        ));
    }
    if input.price_minor == 0 {
        return Err(invalid("price_minor", "above zero"));
    }
    if input.ltv_bps == 0 || input.ltv_bps >= input.margin_call_ltv_bps {
        return Err(invalid(
            "ltv_bps",
            "above zero and below margin_call_ltv_bps",
        ));
    }
    if input.margin_call_ltv_bps >= input.liquidation_ltv_bps {
        return Err(invalid("margin_call_ltv_bps", "below liquidation_ltv_bps"));
    }
    if input.liquidation_ltv_bps >= 10_000 {
        return Err(invalid("liquidation_ltv_bps", "below 10000 bps"));
    }
    Ok(currency)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub principal_minor: u64,
    /// Interest if repaid at the end of the term.
    pub interest_minor: u64,
    pub owed_at_term_minor: u64,
    /// The highest prices at which the loan is in margin call / liquidated (at the
    /// principal).
    pub margin_call_price_minor: Option<u64>,
    pub liquidation_price_minor: Option<u64>,
    pub stress: Vec<StressRow>,
    pub miner: Option<MinerPlan>,
}

/// The price falls of the stress table, in per cent.
pub const FALLS: [u32; 6] = [10, 20, 30, 40, 50, 60];

/// Plan `input`; bad input is refused naming its field.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    let currency = check(input)?;
    let price = Price::new(input.price_minor, currency);
    let collateral = Amount::from_sat(input.collateral_sat);
    // The principal: the LTV of the collateral's value, rounded down (the loan is never
    // above the LTV asked).
    let value = calc::collateral_value(collateral, price);
    let principal =
        u64::try_from(u128::from(value) * u128::from(input.ltv_bps) / 10_000).unwrap_or(u64::MAX);
    let owed_at_term = Accrual::new(Fiat::new(principal, currency), Bps(input.apr_bps), 0)
        .owed(input.term_secs)?;
    let mut stress = Vec::new();
    for fall in FALLS {
        // The fallen price, rounded down (u128: no overflow for any u64 price).
        let p = u64::try_from(u128::from(input.price_minor) * u128::from(100 - fall) / 100)
            .map_err(|_| CalcError::Overflow)?;
        let at = Price::new(p, currency);
        let ltv = calc::ltv(Fiat::new(principal, currency), collateral, at)?;
        let state = if ltv.0 >= input.liquidation_ltv_bps {
            "liquidation"
        } else if ltv.0 >= input.margin_call_ltv_bps {
            "margin_call"
        } else {
            "active"
        };
        let split = calc::liquidation_split(
            Fiat::new(principal, currency),
            Bps(input.liquidation_penalty_bps),
            at,
            collateral,
            Amount::from_sat(input.liquidation_fee_sat.min(input.collateral_sat)),
            Amount::from_sat(294),
        )?;
        stress.push(StressRow {
            fall_pct: fall,
            price_minor: p,
            ltv_bps: ltv.0,
            state,
            lender_sat: split.lender.to_sat(),
            borrower_sat: split.borrower.to_sat(),
        });
    }
    let miner = input
        .miner
        .as_ref()
        .map(|m| miner_plan(m, principal, owed_at_term.minor, collateral, price))
        .transpose()?;
    Ok(Plan {
        principal_minor: principal,
        interest_minor: owed_at_term.minor.saturating_sub(principal),
        owed_at_term_minor: owed_at_term.minor,
        margin_call_price_minor: calc::liquidation_price(
            principal,
            collateral,
            Bps(input.margin_call_ltv_bps),
        ),
        liquidation_price_minor: calc::liquidation_price(
            principal,
            collateral,
            Bps(input.liquidation_ltv_bps),
        ),
        stress,
        miner,
    })
}

fn miner_plan(
    m: &MinerInput,
    principal: u64,
    owed_at_term: u64,
    collateral: Amount,
    price: Price,
) -> Result<MinerPlan, CalcError> {
    let gross = calc::collateral_value(Amount::from_sat(m.mined_sat_per_day), price);
    let net = gross.saturating_sub(m.power_cost_minor_per_day);
    let days_to_repay = (net > 0).then(|| owed_at_term.div_ceil(net));
    let mut path = Vec::new();
    let mut day = 0;
    loop {
        let owed = owed_at_term.saturating_sub(net.saturating_mul(day));
        let ltv = calc::ltv(Fiat::new(owed, price.currency), collateral, price)?;
        path.push(MinerDay {
            day,
            owed_minor: owed,
            ltv_bps: ltv.0,
        });
        if owed == 0 || day >= 3_650 || net == 0 {
            break;
        }
        day += 30;
    }
    Ok(MinerPlan {
        net_minor_per_day: net,
        days_to_repay,
        principal_covers_asics: principal >= m.asic_cost_minor,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PlanInput {
        PlanInput {
            collateral_sat: 20_000_000,
            price_minor: 10_000_000,
            currency: "USD".into(),
            ltv_bps: 5_000,
            apr_bps: 1_000,
            term_secs: 365 * 86_400,
            margin_call_ltv_bps: 7_000,
            liquidation_ltv_bps: 8_000,
            liquidation_penalty_bps: 500,
            liquidation_fee_sat: 1_000,
            miner: None,
        }
    }

    #[test]
    fn the_plan_of_a_loan_is_the_engines_arithmetic() {
        let p = plan(&input()).unwrap();
        // 0.2 BTC at 100,000.00: 20,000.00 of value, half of it lent, 10 % a year.
        assert_eq!(p.principal_minor, 1_000_000);
        assert_eq!(p.interest_minor, 100_000);
        let usd = Currency::new("USD").unwrap();
        let c = Amount::from_sat(20_000_000);
        assert_eq!(
            p.liquidation_price_minor,
            calc::liquidation_price(1_000_000, c, Bps(8_000))
        );
        // The −40 % row: 60,000.00, LTV 83.34 % (rounded up), liquidated; the lender
        // gets 10,000.00 × 1.05 at 60,000.00 in sats, rounded up.
        let row = &p.stress[3];
        assert_eq!((row.fall_pct, row.price_minor), (40, 6_000_000));
        assert_eq!(row.state, "liquidation");
        assert_eq!(
            row.ltv_bps,
            calc::ltv(Fiat::new(1_000_000, usd), c, Price::new(6_000_000, usd))
                .unwrap()
                .0
        );
        assert_eq!(row.ltv_bps, 8_334);
        assert_eq!(row.lender_sat, 17_500_000);
        assert_eq!(row.borrower_sat, 20_000_000 - 17_500_000 - 1_000);
        assert_eq!(p.stress[0].state, "active");
        assert_eq!(p.stress[2].state, "margin_call");
    }

    #[test]
    fn bad_input_is_refused_naming_its_field() {
        type Spoil = fn(&mut PlanInput);
        let cases: [(Spoil, &str); 6] = [
            (|i| i.collateral_sat = 0, "collateral_sat"),
            (|i| i.price_minor = 0, "price_minor"),
            (|i| i.ltv_bps = 7_500, "ltv_bps"),
            (|i| i.margin_call_ltv_bps = 9_000, "margin_call_ltv_bps"),
            (|i| i.liquidation_ltv_bps = 10_000, "liquidation_ltv_bps"),
            (|i| i.currency = "usd".into(), "currency"),
        ];
        for (spoil, field) in cases {
            let mut i = input();
            spoil(&mut i);
            assert_eq!(plan(&i).unwrap_err().field(), Some(field));
        }
        // The largest price plans (or overflows cleanly), never panics.
        let mut huge = input();
        huge.price_minor = u64::MAX;
        let _ = plan(&huge);
    }

    #[test]
    fn a_miner_repays_from_net_income() {
        let mut i = input();
        i.miner = Some(MinerInput {
            asic_cost_minor: 800_000,
            mined_sat_per_day: 10_000,
            power_cost_minor_per_day: 400,
        });
        let m = plan(&i).unwrap().miner.unwrap();
        // 10,000 sats a day at 100,000.00 = 10.00 a day, less 4.00 of power.
        assert_eq!(m.net_minor_per_day, 600);
        assert_eq!(m.days_to_repay, Some(1_100_000u64.div_ceil(600)));
        assert!(m.principal_covers_asics);
        assert_eq!(m.path[0].owed_minor, 1_100_000);
        assert_eq!(m.path[1].owed_minor, 1_100_000 - 30 * 600);
        assert!(m.path.windows(2).all(|w| w[1].ltv_bps <= w[0].ltv_bps));
        assert_eq!(m.path.last().unwrap().owed_minor, 0);
    }
}
