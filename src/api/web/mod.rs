//! The web page `serve` shows at `/`: server-rendered HTML (maud), server-drawn SVG,
//! and a little plain JavaScript for live updates. A party signs in with its token,
//! which becomes an HttpOnly, SameSite=Strict cookie; every action goes through the
//! same handlers as the JSON API (the same checks, the same errors, shown beside the
//! field at fault).

mod pages;
mod planner;
pub mod svg;

use axum::extract::{Form, FromRequestParts, Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

use super::auth::{caller_of, visible_loan, Caller, Role};
use super::loans;
use super::{ApiState, Json as Body, Problem};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "btc_escrow_session";

/// The page's routes (merged into the API's router).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(home))
        .route("/signin", post(sign_in))
        .route("/signout", post(sign_out))
        .route("/offers", post(new_offer))
        .route("/loans/{id}", get(loan_page))
        .route("/loans/{id}/live", get(loan_live))
        .route("/loans/{id}/accept", post(accept))
        .route("/loans/{id}/repay", post(repay))
        .route("/loans/{id}/withdraw", post(withdraw))
        .route("/loans/{id}/psbt", post(upload_psbt))
        .route("/loans/{id}/pending.psbt", get(download_psbt))
        .route("/planner", get(planner::page))
        .route("/assets/style.css", get(style))
        .route("/assets/live.js", get(live_js))
}

/// The token in the request's session cookie, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// A signed-in visitor; anyone else is sent to the sign-in page.
pub struct Visitor(pub Caller);

impl FromRequestParts<ApiState> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let caller = cookie_token(&parts.headers)
            .map(|t| caller_of(state, &t))
            .transpose()
            .map_err(IntoResponse::into_response)?
            .flatten();
        caller
            .map(Visitor)
            .ok_or_else(|| Redirect::to("/").into_response())
    }
}

fn html(markup: maud::Markup) -> Response {
    let mut r = Html(markup.into_string()).into_response();
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// What a form failed with: the message, and the field it names.
#[derive(Debug, Default, Clone)]
pub struct FormError {
    pub detail: String,
    pub field: Option<String>,
}

impl From<Problem> for FormError {
    fn from(p: Problem) -> Self {
        Self {
            detail: p.detail,
            field: p.field,
        }
    }
}

async fn home(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let caller = match cookie_token(&headers).map(|t| caller_of(&state, &t)) {
        Some(Ok(Some(c))) => c,
        Some(Err(p)) => return p.into_response(),
        _ => return html(pages::sign_in(None)),
    };
    dashboard(&state, &caller, None, None).await
}

async fn dashboard(
    state: &ApiState,
    caller: &Caller,
    error: Option<FormError>,
    form: Option<BTreeMap<String, String>>,
) -> Response {
    let loans = match loans::list(State(state.clone()), caller.clone()).await {
        Ok(Json(l)) => l,
        Err(p) => return p.into_response(),
    };
    let offers = if caller.role == Role::Borrower {
        match loans::offers(State(state.clone()), caller.clone()).await {
            Ok(Json(o)) => o,
            Err(p) => return p.into_response(),
        }
    } else {
        Vec::new()
    };
    let payout_hint = loans.first().map(|l| l.terms.lender_payout_address.clone());
    let price = state
        .engine(|ctx| {
            ctx.fresh_price(crate::util::unix_now())
                .map(|p| p.price.minor_per_btc)
        })
        .await
        .ok()
        .flatten();
    html(pages::dashboard(
        caller,
        &loans,
        &offers,
        error.as_ref(),
        form.as_ref(),
        payout_hint,
        price,
    ))
}

#[derive(serde::Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(State(state): State<ApiState>, Form(f): Form<SignIn>) -> Response {
    let token = f.token.trim();
    match caller_of(&state, token) {
        Ok(Some(_)) => {
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/"
            )) {
                r.headers_mut().insert(SET_COOKIE, v);
            }
            r
        }
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            Html(pages::sign_in(Some("unknown token")).into_string()),
        )
            .into_response(),
        Err(p) => p.into_response(),
    }
}

async fn sign_out() -> Response {
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static(
            "btc_escrow_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    r
}

/// The offer form → the API's offer, each field as the API reads it.
async fn new_offer(
    State(state): State<ApiState>,
    Visitor(caller): Visitor,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let mut body = Map::new();
    for (k, v) in &form {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let value = match v.parse::<u64>() {
            Ok(n) if k != "currency" && k != "lender_payout_address" => Value::from(n),
            _ => Value::from(v),
        };
        body.insert(k.clone(), value);
    }
    let offer = match serde_path_to_error::deserialize::<_, loans::Offer>(Value::Object(body)) {
        Ok(o) => o,
        Err(e) => {
            let field = e.path().to_string();
            let error = FormError {
                detail: e.inner().to_string(),
                field: (field != ".").then_some(field),
            };
            return dashboard(&state, &caller, Some(error), Some(form)).await;
        }
    };
    match loans::offer(State(state.clone()), caller.clone(), Body(offer)).await {
        Ok((_, Json(loan))) => Redirect::to(&format!("/loans/{}", loan.id)).into_response(),
        Err(p) => dashboard(&state, &caller, Some(p.into()), Some(form)).await,
    }
}

async fn loan_page(
    State(state): State<ApiState>,
    Visitor(caller): Visitor,
    Path(id): Path<String>,
) -> Response {
    loan_response(&state, &caller, &id, None, false).await
}

async fn loan_live(
    State(state): State<ApiState>,
    Visitor(caller): Visitor,
    Path(id): Path<String>,
) -> Response {
    loan_response(&state, &caller, &id, None, true).await
}

async fn loan_response(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    error: Option<FormError>,
    fragment: bool,
) -> Response {
    let loan = match loans::get(State(state.clone()), caller.clone(), Path(id.to_owned())).await {
        Ok(Json(l)) => l,
        Err(p) => return p.into_response(),
    };
    let events =
        match visible_loan(state, caller, id).and_then(|l| Ok(state.store.events(&l.id)?)) {
            Ok(e) => e,
            Err(p) => return p.into_response(),
        };
    if let Err(p) = super::events::settle(state).await {
        return p.into_response();
    }
    let (history, tip) = match state
        .engine(|ctx| {
            (
                ctx.price_history.iter().copied().collect::<Vec<_>>(),
                ctx.tip(),
            )
        })
        .await
    {
        Ok(v) => v,
        Err(p) => return p.into_response(),
    };
    let view = pages::LoanPage {
        caller,
        loan: &loan,
        events: &events,
        history: &history,
        tip,
        error: error.as_ref(),
    };
    if fragment {
        html(pages::loan_live(&view))
    } else {
        html(pages::loan(&view))
    }
}

/// After a form: back to the loan page, or the page with the error.
async fn after(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    result: Result<(), Problem>,
) -> Response {
    match result {
        Ok(()) => Redirect::to(&format!("/loans/{id}")).into_response(),
        Err(p) => loan_response(state, caller, id, Some(p.into()), false).await,
    }
}

fn body<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| Problem::invalid(&e.path().to_string(), e.inner().to_string()))
}

#[derive(serde::Deserialize)]
struct AcceptForm {
    borrower_return_address: String,
}

async fn accept(
    State(state): State<ApiState>,
    Visitor(caller): Visitor,
    Path(id): Path<String>,
    Form(f): Form<AcceptForm>,
) -> Response {
    let result = async {
        let b: loans::Accept = body(
            serde_json::json!({ "borrower_return_address": f.borrower_return_address.trim() }),
        )?;
        let _loan = loans::accept(
            State(state.clone()),
            caller.clone(),
            Path(id.clone()),
            Body(b),
        )
        .await?;
        Ok(())
    }
    .await;
    after(&state, &caller, &id, result).await
}

#[derive(serde::Deserialize)]
struct RepayForm {
    amount_minor: String,
    /// Drawn when the form was rendered: the same form sent twice (a double click, a
    /// resubmission) records one repayment.
    #[serde(default)]
    key: String,
}

async fn repay(
    State(state): State<ApiState>,
    Visitor(caller): Visitor,
    Path(id): Path<String>,
    Form(f): Form<RepayForm>,
) -> Response {
    let result = async {
        let amount: u64 = f.amount_minor.trim().parse().map_err(|_| {
            Problem::invalid("amount_minor", "a whole number of minor units (cents)")
        })?;
        let b: loans::Repayment = body(serde_json::json!({ "amount_minor": amount }))?;
        let mut headers = HeaderMap::new();
        // One repayment per rendered form.
        let key = match f.key.trim() {
            k if !k.is_empty() && k.len() <= 64 && k.chars().all(|c| c.is_ascii_hexdigit()) => {
                k.to_owned()
            }
            _ => crate::init::random_hex(16),
        };
        if let Ok(v) = HeaderValue::from_str(&format!("web-{key}")) {
            headers.insert("idempotency-key", v);
        }
        let _loan = loans::repay(
            State(state.clone()),
            caller.clone(),
            Path(id.clone()),
            headers,
            Body(b),
        )
        .await?;
        Ok(())
    }
    .await;
    after(&state, &caller, &id, result).await
}

#[derive(serde::Deserialize)]
struct WithdrawForm {
    amount_sat: String,
}

/// The borrower asks to withdraw collateral: the withdrawal becomes the pending PSBT,
/// to sign and upload like any other (the service signs last).
async fn withdraw(
    State(state): State<ApiState>,
    Visitor(caller): Visitor,
    Path(id): Path<String>,
    Form(f): Form<WithdrawForm>,
) -> Response {
    let result = async {
        let amount: u64 = f
            .amount_sat
            .trim()
            .parse()
            .map_err(|_| Problem::invalid("amount_sat", "a whole number of sats"))?;
        let b: super::withdrawals::WithdrawalRequest =
            body(serde_json::json!({ "amount_sat": amount }))?;
        let _loan = super::withdrawals::request(
            State(state.clone()),
            caller.clone(),
            Path(id.clone()),
            Body(b),
        )
        .await?;
        Ok(())
    }
    .await;
    after(&state, &caller, &id, result).await
}

#[derive(serde::Deserialize)]
struct PsbtForm {
    psbt: String,
}

async fn upload_psbt(
    State(state): State<ApiState>,
    Visitor(caller): Visitor,
    Path(id): Path<String>,
    Form(f): Form<PsbtForm>,
) -> Response {
    let result = async {
        let b: loans::Cosigned = body(serde_json::json!({ "psbt": f.psbt.trim() }))?;
        let mut headers = HeaderMap::new();
        headers.insert("prefer", HeaderValue::from_static("respond-async"));
        let _sent = loans::cosign(
            State(state.clone()),
            caller.clone(),
            Path(id.clone()),
            headers,
            Body(b),
        )
        .await?;
        Ok(())
    }
    .await;
    after(&state, &caller, &id, result).await
}

async fn download_psbt(
    State(state): State<ApiState>,
    Visitor(caller): Visitor,
    Path(id): Path<String>,
) -> Response {
    match loans::psbt(State(state), caller, Path(id.clone())).await {
        Ok(Json(p)) => (
            [
                (CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (
                    CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{id}-{}.psbt.txt\"", p.kind),
                ),
            ],
            p.psbt,
        )
            .into_response(),
        Err(p) => p.into_response(),
    }
}

async fn style() -> Response {
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
        .into_response()
}

async fn live_js() -> Response {
    (
        [(CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("live.js"),
    )
        .into_response()
}
