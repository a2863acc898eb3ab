//! `GET /metrics`: Prometheus text exposition (version 0.0.4) of the loans by state,
//! oracle ticks, the chain view, decisions and broadcasts, and HTTP requests by route
//! and status with their durations. No token: bind the listener to a private address
//! (or scrape through a proxy) if the figures are not to be public.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiState, Problem};
use crate::loan::LoanState;
use crate::service::ChainState;

/// (route template, method, status).
type Key = (String, String, u16);

/// HTTP counters: requests and seconds spent, by [`Key`].
#[derive(Clone, Default)]
pub struct Http(Arc<Mutex<BTreeMap<Key, (u64, f64)>>>);

/// Count every request under its route template (not its path: ids stay out).
pub async fn count(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(mut m) = state.http.0.lock() {
        let e = m
            .entry((route, method, response.status().as_u16()))
            .or_insert((0, 0.0));
        e.0 += 1;
        e.1 += seconds;
    }
    response
}

/// Co-signature latencies: how many, their sum and the largest, in seconds.
#[derive(Clone, Default)]
pub struct Cosign(Arc<Mutex<(u64, u64, u64)>>);

impl Cosign {
    pub fn record(&self, secs: u64) {
        if let Ok(mut c) = self.0.lock() {
            c.0 += 1;
            c.1 += secs;
            c.2 = c.2.max(secs);
        }
    }
}

fn state_name(s: LoanState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{s:?}"))
}

#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<ApiState>) -> Result<Response, Problem> {
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    let mut broadcasts = 0u64;
    for loan in state.store.loans()? {
        *by_state.entry(state_name(loan.state)).or_default() += 1;
        broadcasts += loan.broadcasts.len() as u64;
    }
    let (ticks, connected, tip, fresh, escrows, refused, view_age) = state
        .engine(|ctx| {
            let now = crate::util::unix_now();
            let tip = match ctx.chain {
                ChainState::Connected { tip } => Some(tip),
                _ => None,
            };
            (
                ctx.ticks_seen,
                ctx.tip().is_some(),
                tip,
                ctx.fresh_price(now).is_some(),
                ctx.engine.escrows().len(),
                ctx.refused.len(),
                ctx.view_age(now),
            )
        })
        .await?;
    let decisions = state
        .store
        .decisions::<serde_json::Value>("")
        .map(|d| d.len())?;

    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    gauge("btc_escrow_loans", "Loans by state.", "gauge");
    let mut text = String::new();
    for s in [
        LoanState::Offered,
        LoanState::AwaitingCollateral,
        LoanState::Active,
        LoanState::MarginCall,
        LoanState::Liquidating,
        LoanState::Liquidated,
        LoanState::Releasing,
        LoanState::Closed,
        LoanState::Expired,
        LoanState::ClosedOnChain,
    ] {
        let name = state_name(s);
        let n = by_state.get(&name).copied().unwrap_or(0);
        let _ = writeln!(text, "btc_escrow_loans{{state=\"{name}\"}} {n}");
    }
    out.push_str(&text);
    let mut one = |name: &str, help: &str, kind: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    one(
        "btc_escrow_escrows_watched",
        "Escrows the engine watches.",
        "gauge",
        escrows.to_string(),
    );
    one(
        "btc_escrow_oracle_ticks_total",
        "Oracle results received since start.",
        "counter",
        ticks.to_string(),
    );
    one(
        "btc_escrow_oracle_fresh",
        "1 when the latest aggregate is fresh.",
        "gauge",
        u8::from(fresh).to_string(),
    );
    one(
        "btc_escrow_chain_connected",
        "1 when the chain view is connected and recent enough to decide on.",
        "gauge",
        u8::from(connected).to_string(),
    );
    one(
        "btc_escrow_chain_tip_height",
        "The chain tip the engine last saw.",
        "gauge",
        tip.unwrap_or(0).to_string(),
    );
    one(
        "btc_escrow_chain_view_age_seconds",
        "Seconds since the chain view's last completed sync.",
        "gauge",
        view_age.to_string(),
    );
    one(
        "btc_escrow_broadcasts_refused",
        "Loans whose transaction the network refuses (see /v1/health for why).",
        "gauge",
        refused.to_string(),
    );
    one(
        "btc_escrow_decisions",
        "Decision records stored (each attempt of each decision).",
        "gauge",
        decisions.to_string(),
    );
    one(
        "btc_escrow_broadcasts",
        "Transactions broadcast for the loans' current decisions.",
        "gauge",
        broadcasts.to_string(),
    );
    let (count, sum, max) = state.cosign.0.lock().map(|c| *c).unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP btc_escrow_cosign_latency_seconds From the arbiter's signature to the co-signature.\n\
         # TYPE btc_escrow_cosign_latency_seconds summary\n\
         btc_escrow_cosign_latency_seconds_sum {sum}\n\
         btc_escrow_cosign_latency_seconds_count {count}\n\
         # HELP btc_escrow_cosign_latency_seconds_max The longest since start.\n\
         # TYPE btc_escrow_cosign_latency_seconds_max gauge\n\
         btc_escrow_cosign_latency_seconds_max {max}"
    );
    let _ = writeln!(
        out,
        "# HELP btc_escrow_http_requests_total HTTP requests by route, method and status.\n\
         # TYPE btc_escrow_http_requests_total counter"
    );
    let http = state.http.0.lock().map(|m| m.clone()).unwrap_or_default();
    for ((route, method, status), (n, _)) in &http {
        let _ = writeln!(
            out,
            "btc_escrow_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP btc_escrow_http_request_seconds_sum Time spent answering, by route and method.\n\
         # TYPE btc_escrow_http_request_seconds_sum counter"
    );
    let mut sums: BTreeMap<(String, String), f64> = BTreeMap::new();
    for ((route, method, _), (_, s)) in &http {
        *sums.entry((route.clone(), method.clone())).or_default() += s;
    }
    for ((route, method), s) in sums {
        let _ = writeln!(
            out,
            "btc_escrow_http_request_seconds_sum{{route=\"{route}\",method=\"{method}\"}} {s:.6}"
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
