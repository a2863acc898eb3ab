//! The price, the operator's manual price, and health.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::auth::{Caller, Role};
use super::problem::ProblemDoc;
use super::{ApiState, Json, Problem};
use crate::oracle::OracleResult;
use crate::service::ChainState;
use crate::util::unix_now;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PriceView {
    /// Whether the latest tick gave a price and it is still fresh.
    pub fresh: bool,
    /// The latest tick's result: the aggregate with every quote used and dropped, or
    /// why there is none. Null before the first tick.
    #[schema(value_type = Option<Object>)]
    pub latest: Option<OracleResult>,
    pub ticks: u64,
}

#[utoipa::path(get, path = "/v1/price", tag = "system", responses((status = 200, body = PriceView)), security(("bearer" = [])))]
pub async fn price(
    State(state): State<ApiState>,
    _caller: Caller,
) -> Result<axum::Json<PriceView>, Problem> {
    let view = state
        .engine(|ctx| PriceView {
            fresh: ctx.fresh_price(unix_now()).is_some(),
            latest: ctx.last_oracle.clone(),
            ticks: ctx.ticks_seen,
        })
        .await?;
    Ok(axum::Json(view))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manual {
    price_minor: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ManualSet {
    price_minor: u64,
    /// When it was set (unix seconds): the quote's date.
    at: u64,
    sources: Vec<String>,
}

/// Set every manual source (regtest, emergencies) and start an oracle tick at once.
#[utoipa::path(put, path = "/v1/oracle/manual", tag = "system", request_body = Manual, responses((status = 200, body = ManualSet), (status = 403, body = ProblemDoc), (status = 409, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn manual_price(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<Manual>,
) -> Result<axum::Json<ManualSet>, Problem> {
    caller.must_be(Role::Admin)?;
    if body.price_minor == 0 || body.price_minor > crate::oracle::decimal::MAX_PRICE_MINOR {
        return Err(Problem::invalid(
            "price_minor",
            format!(
                "must be above zero and at most {} minor units",
                crate::oracle::decimal::MAX_PRICE_MINOR
            ),
        ));
    }
    let set = state
        .engine(move |ctx| {
            if ctx.manual.is_empty() {
                return Err(Problem::conflict(
                    "no_manual_source",
                    "the oracle has no manual source (see [[oracle.sources]] kind = \"manual\")",
                ));
            }
            let mut at = 0;
            for (_, source) in &ctx.manual {
                at = source.set(body.price_minor);
            }
            if let Some(t) = &ctx.tick_now {
                t.tick();
            }
            Ok(ManualSet {
                price_minor: body.price_minor,
                at,
                sources: ctx.manual.iter().map(|(n, _)| n.clone()).collect(),
            })
        })
        .await??;
    tracing::warn!(
        price_minor = set.price_minor,
        "manual price set by the operator"
    );
    Ok(axum::Json(set))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Fit to decide: the chain view is connected and the oracle has a fresh price.
    pub ok: bool,
    pub chain: ChainHealth,
    pub oracle: OracleHealth,
    pub engine: EngineHealth,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChainHealth {
    pub connected: bool,
    pub tip_height: Option<u32>,
    /// Since when it has been connected (or not), unix seconds.
    pub since: Option<u64>,
    /// Seconds since the last sync completed (over `engine.max_chain_view_age_secs`,
    /// the view is too old to decide on: `connected` is false and `reason` says so).
    pub view_age_secs: Option<u64>,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OracleHealth {
    pub fresh: bool,
    /// Seconds since the latest aggregate.
    pub age_secs: Option<u64>,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EngineHealth {
    pub running: bool,
    /// Escrows the engine watches.
    pub escrows: usize,
    pub fee_sat_per_kvb: Option<u64>,
    /// Transactions the network refused, by loan, with the class and reason, until one
    /// is accepted or the loan no longer waits for it.
    pub refused_broadcasts: std::collections::BTreeMap<String, crate::service::RefusedBroadcast>,
}

/// 200 when fit to decide, 503 otherwise (with why); no token needed.
#[utoipa::path(get, path = "/v1/health", tag = "system", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn health(State(state): State<ApiState>) -> (StatusCode, axum::Json<Health>) {
    let answer = state
        .engine(|ctx| {
            let now = unix_now();
            let (connected, tip_height, reason) = match &ctx.chain {
                ChainState::Connected { tip } => match ctx.stale_view(now) {
                    Some(stale) => (false, Some(*tip), Some(stale)),
                    None => (true, Some(*tip), None),
                },
                ChainState::NotSynced => (false, None, Some("not synced yet".to_owned())),
                ChainState::Disconnected { reason } => (false, None, Some(reason.clone())),
            };
            let fresh = ctx.fresh_price(now).is_some();
            let age_secs = ctx.price.as_ref().map(|(at, _)| now.saturating_sub(*at));
            let oracle_reason = if fresh {
                None
            } else {
                Some(
                    ctx.no_price
                        .clone()
                        .unwrap_or_else(|| "the latest aggregate is stale".into()),
                )
            };
            Health {
                ok: connected && fresh,
                chain: ChainHealth {
                    connected,
                    tip_height,
                    since: Some(ctx.chain_since),
                    view_age_secs: Some(ctx.view_age(now)),
                    reason,
                },
                oracle: OracleHealth {
                    fresh,
                    age_secs,
                    reason: oracle_reason,
                },
                engine: EngineHealth {
                    running: true,
                    escrows: ctx.engine.escrows().len(),
                    fee_sat_per_kvb: Some(ctx.fee_sat_per_kvb),
                    refused_broadcasts: ctx.refused.clone(),
                },
            }
        })
        .await;
    match answer {
        Ok(h) if h.ok => (StatusCode::OK, axum::Json(h)),
        Ok(h) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(h)),
        Err(p) => {
            tracing::warn!(detail = %p.detail, "health: the engine does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(Health {
                    ok: false,
                    chain: ChainHealth {
                        connected: false,
                        tip_height: None,
                        since: None,
                        view_age_secs: None,
                        reason: None,
                    },
                    oracle: OracleHealth {
                        fresh: false,
                        age_secs: None,
                        reason: None,
                    },
                    engine: EngineHealth {
                        running: false,
                        escrows: 0,
                        fee_sat_per_kvb: None,
                        refused_broadcasts: Default::default(),
                    },
                }),
            )
        }
    }
}
