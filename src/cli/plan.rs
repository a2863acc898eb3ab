//! `btc-escrow plan`: the loan planner on the command line (the same numbers as the web
//! page's `/planner`, from `btc_escrow::loan::plan`).

use btc_escrow::loan::plan::{plan, MinerInput, PlanInput};
use clap::Args;

#[derive(Args)]
pub struct PlanArgs {
    /// Collateral, in sats.
    #[arg(long)]
    collateral_sat: u64,
    /// BTC price, minor units (cents) per BTC.
    #[arg(long)]
    price_minor: u64,
    #[arg(long, default_value = "USD")]
    currency: String,
    #[arg(long, default_value_t = 5_000)]
    ltv_bps: u32,
    #[arg(long, default_value_t = 1_000)]
    apr_bps: u32,
    #[arg(long, default_value_t = 90 * 86_400)]
    term_secs: u64,
    #[arg(long, default_value_t = 7_000)]
    margin_call_ltv_bps: u32,
    #[arg(long, default_value_t = 8_000)]
    liquidation_ltv_bps: u32,
    #[arg(long, default_value_t = 500)]
    liquidation_penalty_bps: u32,
    #[arg(long, default_value_t = 1_000)]
    liquidation_fee_sat: u64,
    /// A miner: the ASICs' cost (minor units)…
    #[arg(long, requires_all = ["mined_sat_per_day", "power_cost_minor_per_day"])]
    asic_cost_minor: Option<u64>,
    /// …expected sats mined per day…
    #[arg(long)]
    mined_sat_per_day: Option<u64>,
    /// …and the power cost per day (minor units).
    #[arg(long)]
    power_cost_minor_per_day: Option<u64>,
}

pub fn run(a: PlanArgs) -> anyhow::Result<()> {
    let input = PlanInput {
        collateral_sat: a.collateral_sat,
        price_minor: a.price_minor,
        currency: a.currency,
        ltv_bps: a.ltv_bps,
        apr_bps: a.apr_bps,
        term_secs: a.term_secs,
        margin_call_ltv_bps: a.margin_call_ltv_bps,
        liquidation_ltv_bps: a.liquidation_ltv_bps,
        liquidation_penalty_bps: a.liquidation_penalty_bps,
        liquidation_fee_sat: a.liquidation_fee_sat,
        miner: match (
            a.asic_cost_minor,
            a.mined_sat_per_day,
            a.power_cost_minor_per_day,
        ) {
            (Some(asic), Some(mined), Some(power)) => Some(MinerInput {
                asic_cost_minor: asic,
                mined_sat_per_day: mined,
                power_cost_minor_per_day: power,
            }),
            _ => None,
        },
    };
    let out = plan(&input)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
