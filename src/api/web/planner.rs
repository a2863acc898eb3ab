//! `/planner`: the loan planner's page (no sign-in), over `loan::plan`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde_json::{Map, Value};

use super::{html, pages, FormError};
use crate::api::ApiState;

/// `/planner`: no sign-in; the query is the planner's input (defaults filled in, the
/// price from the oracle when it has a fresh one).
pub(super) async fn page(
    State(state): State<ApiState>,
    axum::extract::Query(query): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    let price = state
        .engine(|ctx| {
            ctx.fresh_price(crate::util::unix_now())
                .map(|p| p.price.minor_per_btc)
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(10_000_000);
    let mut fields: BTreeMap<String, String> = [
        ("collateral_sat", "20000000".to_owned()),
        ("price_minor", price.to_string()),
        ("currency", state.currency.to_string()),
        ("ltv_bps", "5000".to_owned()),
        ("apr_bps", "1000".to_owned()),
        ("term_secs", (90 * 86_400).to_string()),
        ("margin_call_ltv_bps", "7000".to_owned()),
        ("liquidation_ltv_bps", "8000".to_owned()),
        ("liquidation_penalty_bps", "500".to_owned()),
        ("liquidation_fee_sat", "1000".to_owned()),
        ("asic_cost_minor", String::new()),
        ("mined_sat_per_day", String::new()),
        ("power_cost_minor_per_day", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in query {
        if fields.contains_key(&k) {
            fields.insert(k, v.trim().to_owned());
        }
    }
    let mut input = Map::new();
    let mut miner = Map::new();
    for (k, v) in &fields {
        if v.is_empty() {
            continue;
        }
        let value = match v.parse::<u64>() {
            Ok(n) if k != "currency" => Value::from(n),
            _ => Value::from(v.clone()),
        };
        match k.as_str() {
            "asic_cost_minor" | "mined_sat_per_day" | "power_cost_minor_per_day" => {
                miner.insert(k.clone(), value)
            }
            _ => input.insert(k.clone(), value),
        };
    }
    if miner.len() == 3 {
        input.insert("miner".into(), Value::Object(miner));
    }
    let result =
        serde_path_to_error::deserialize::<_, crate::loan::plan::PlanInput>(Value::Object(input))
            .map_err(|e| FormError {
                detail: e.inner().to_string(),
                field: Some(e.path().to_string()),
            })
            .and_then(|i| {
                crate::loan::plan::plan(&i).map_err(|e| FormError {
                    field: e.field().map(str::to_owned),
                    detail: e.to_string(),
                })
            });
    html(pages::planner(&fields, result.as_ref()))
}
