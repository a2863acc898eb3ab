//! Loans: offers (lender), acceptance (borrower), the loan and its events, repayments
//! (lender), and the pending PSBT and its co-signature.

use std::str::FromStr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use bitcoin::psbt::Psbt;
use serde::{Deserialize, Serialize};

use super::auth::{visible_loan, Caller, Role};
use super::parties::account_key;
use super::problem::ProblemDoc;
use super::view::{pending, LoanView, PendingPsbt};
use super::{ApiState, Json, Problem};
use crate::engine::{latest_decision, Acceptance, DecisionKind, EngineError, Progress};
use crate::init::random_hex;
use crate::keys::{check_distinct, AccountKey};
use crate::loan::{Bps, Currency, Fiat, Loan, LoanState, TermsInput};
use crate::service::Ctx;
use crate::store::Durability;
use crate::util::unix_now;

type JsonOut<T> = axum::Json<T>;

/// An offer, as a lender posts it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    principal_minor: u64,
    currency: String,
    apr_bps: u32,
    term_secs: u64,
    initial_ltv_bps: u32,
    margin_call_ltv_bps: u32,
    liquidation_ltv_bps: u32,
    #[serde(default)]
    hard_liquidation_ltv_bps: Option<u32>,
    liquidation_penalty_bps: u32,
    #[serde(default)]
    hysteresis_bps: Option<u32>,
    confirm_ticks: u32,
    grace_blocks: u32,
    recovery_delay_blocks: u32,
    funding_deadline: u64,
    lender_payout_address: String,
    min_confirmations: u32,
    /// Sell only what brings the loan back to `target_ltv_bps` on a breach.
    #[serde(default)]
    partial_liquidation: bool,
    #[serde(default)]
    target_ltv_bps: Option<u32>,
    /// Margin-call levels (bps, rising; the first is `margin_call_ltv_bps`).
    #[serde(default)]
    margin_call_levels_bps: Vec<u32>,
}

/// The hysteresis when the offer gives none: 2 %.
const DEFAULT_HYSTERESIS_BPS: u32 = 200;

/// The views of `loans`, each read again with its decision as one consistent pair:
/// never a loan from before a tick with a decision from after it (the loan is read
/// again after the decision, and both again if its version moved).
async fn views(state: &ApiState, loans: Vec<Loan>) -> Result<Vec<LoanView>, Problem> {
    let network = state.network;
    let ids: Vec<String> = loans.into_iter().map(|l| l.id).collect();
    // Only what the engine thread alone holds is taken there (cloned): the rest is
    // read from the store and built on the blocking pool.
    let (price, escrows) = {
        let ids = ids.clone();
        state
            .engine(move |ctx| {
                let price = ctx.fresh_price(unix_now()).cloned();
                let escrows: Vec<_> = ids
                    .iter()
                    .map(|id| ctx.engine.escrows().get(id).cloned())
                    .collect();
                (price, escrows)
            })
            .await?
    };
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let now = unix_now();
        ids.iter()
            .zip(&escrows)
            .map(|(id, escrow)| {
                let read = || {
                    store
                        .loan(id)?
                        .ok_or_else(|| Problem::not_found(&format!("loan {id}")))
                };
                let mut loan = read()?;
                let record = loop {
                    let record = latest_decision(&store, id)?;
                    let again = read()?;
                    if again.version == loan.version {
                        break record;
                    }
                    loan = again;
                };
                LoanView::build(
                    &loan,
                    escrow.as_ref(),
                    price.as_ref(),
                    record.as_ref(),
                    now,
                    network,
                )
            })
            .collect::<Result<Vec<_>, Problem>>()
            // A tick's buffered decision must be on disk before its arbiter-signed
            // PSBT or its state is shown.
            .and_then(|views| Ok(store.settle().map(|()| views)?))
    })
    .await
    .map_err(|e| Problem::internal(format!("building views: {e}")))?
}

pub(super) async fn view(state: &ApiState, loan: Loan) -> Result<JsonOut<LoanView>, Problem> {
    let mut v = views(state, vec![loan]).await?;
    v.pop()
        .map(axum::Json)
        .ok_or_else(|| Problem::internal("no view"))
}

#[utoipa::path(post, path = "/v1/loans", tag = "loans", request_body = Offer, params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer")), responses((status = 201, body = LoanView), (status = 401, body = ProblemDoc), (status = 403, body = ProblemDoc), (status = 422, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn offer(
    State(state): State<ApiState>,
    caller: Caller,
    Json(o): Json<Offer>,
) -> Result<(StatusCode, JsonOut<LoanView>), Problem> {
    caller.must_be(Role::Lender)?;
    let currency =
        Currency::new(&o.currency).map_err(|e| Problem::invalid("currency", e.to_string()))?;
    if currency != state.currency {
        return Err(Problem::invalid(
            "currency",
            format!("the oracle prices {}, not {currency}", state.currency),
        ));
    }
    let terms = TermsInput {
        principal: Fiat::new(o.principal_minor, currency),
        apr: Bps(o.apr_bps),
        term_secs: o.term_secs,
        initial_ltv: Bps(o.initial_ltv_bps),
        margin_call_ltv: Bps(o.margin_call_ltv_bps),
        liquidation_ltv: Bps(o.liquidation_ltv_bps),
        hard_liquidation_ltv: o.hard_liquidation_ltv_bps.map(Bps),
        liquidation_penalty: Bps(o.liquidation_penalty_bps),
        hysteresis: Bps(o.hysteresis_bps.unwrap_or(DEFAULT_HYSTERESIS_BPS)),
        confirm_ticks: o.confirm_ticks,
        grace_blocks: o.grace_blocks,
        recovery_delay_blocks: o.recovery_delay_blocks,
        funding_deadline: o.funding_deadline,
        borrower_return_address: String::new(),
        lender_payout_address: o.lender_payout_address,
        min_confirmations: o.min_confirmations,
        partial_liquidation: o.partial_liquidation,
        target_ltv: o.target_ltv_bps.map(Bps),
        margin_call_levels: o.margin_call_levels_bps.into_iter().map(Bps).collect(),
    };
    let id = format!("ln_{}", random_hex(8));
    let lender = caller.party_id.clone();
    let loan = state
        .engine(move |ctx| ctx.engine.offer(&id, &lender, terms, unix_now()))
        .await??;
    tracing::info!(loan = %loan.id, lender = %loan.lender_id, "offer");
    Ok((StatusCode::CREATED, view(&state, loan).await?))
}

#[utoipa::path(get, path = "/v1/loans", tag = "loans", responses((status = 200, body = [LoanView]), (status = 401, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<JsonOut<Vec<LoanView>>, Problem> {
    let loans = state
        .store
        .loans()?
        .into_iter()
        .filter(|l| caller.role == Role::Admin || caller.is_party_to(l))
        .collect();
    Ok(axum::Json(views(&state, loans).await?))
}

#[utoipa::path(get, path = "/v1/offers", tag = "loans", responses((status = 200, body = [LoanView]), (status = 401, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn offers(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<JsonOut<Vec<LoanView>>, Problem> {
    let now = unix_now();
    let loans = state
        .store
        .loans()?
        .into_iter()
        .filter(|l| {
            l.state == LoanState::Offered && l.terms.get().funding_deadline > now && caller.sees(l)
        })
        .collect();
    Ok(axum::Json(views(&state, loans).await?))
}

#[utoipa::path(get, path = "/v1/loans/{id}", tag = "loans", params(("id" = String, Path)), responses((status = 200, body = LoanView), (status = 401, body = ProblemDoc), (status = 404, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<JsonOut<LoanView>, Problem> {
    let loan = visible_loan(&state, &caller, &id)?;
    view(&state, loan).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Accept {
    borrower_return_address: String,
    #[serde(default)]
    account_key: Option<String>,
}

#[utoipa::path(post, path = "/v1/loans/{id}/accept", tag = "loans", params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)), request_body = Accept, responses((status = 200, body = LoanView), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc), (status = 422, body = ProblemDoc), (status = 503, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn accept(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Accept>,
) -> Result<JsonOut<LoanView>, Problem> {
    caller.must_be(Role::Borrower)?;
    let loan = visible_loan(&state, &caller, &id)?;
    let lender = account_key(&state, &loan.lender_id)?;
    let borrower = match &body.account_key {
        Some(text) => AccountKey::parse("account_key", text, state.network)
            .map_err(|e| Problem::invalid("account_key", e.to_string()))?,
        None => account_key(&state, &caller.party_id)?,
    };
    check_distinct(&[("account_key", &borrower), ("the lender's key", &lender)])
        .map_err(|e| Problem::invalid("account_key", e.to_string()))?;
    crate::util::parse_address(
        "borrower_return_address",
        &body.borrower_return_address,
        state.network,
    )
    .map_err(|e| Problem::invalid("borrower_return_address", e.to_string()))?;
    let borrower_id = caller.party_id.clone();
    let loan = state
        .engine(move |ctx| {
            let now = unix_now();
            let price = ctx
                .fresh_price(now)
                .map(|p| p.price)
                .ok_or_else(|| no_price(ctx))?;
            let tip = ctx.tip().ok_or_else(|| no_chain(ctx))?;
            ctx.engine
                .accept(
                    &id,
                    Acceptance {
                        borrower_id: &borrower_id,
                        borrower: &borrower,
                        lender: &lender,
                        price,
                        return_address: Some(&body.borrower_return_address),
                    },
                    tip,
                    now,
                )
                .map_err(Problem::from)
        })
        .await??;
    tracing::info!(loan = %loan.id, borrower = ?loan.borrower_id, "accepted");
    view(&state, loan).await
}

fn no_price(ctx: &Ctx) -> Problem {
    Problem::unavailable(
        "no_price",
        format!(
            "no fresh aggregated price: {}",
            ctx.no_price.as_deref().unwrap_or("the latest is stale")
        ),
    )
}

fn no_chain(ctx: &Ctx) -> Problem {
    Problem::unavailable("no_chain_view", format!("chain: {:?}", ctx.chain))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Repayment {
    amount_minor: u64,
}

#[utoipa::path(post, path = "/v1/loans/{id}/repayments", tag = "loans", params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "the repayment counts once per key")), request_body = Repayment, responses((status = 200, body = LoanView), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc), (status = 422, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn repay(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Repayment>,
) -> Result<JsonOut<LoanView>, Problem> {
    caller.must_be(Role::Lender)?;
    let loan = visible_loan(&state, &caller, &id)?;
    // The engine counts a repayment once per key: the client's Idempotency-Key, else
    // a fresh one (each request is then a new repayment).
    let key = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    Problem::invalid("Idempotency-Key", "1 to 255 visible ASCII characters")
                })?;
            format!("key:{k}")
        }
        None => format!("auto:{}", random_hex(16)),
    };
    let currency = loan.terms.get().principal.currency;
    let loan = state
        .engine(move |ctx| {
            let tip = ctx.tip().ok_or_else(|| no_chain(ctx))?;
            let fee = ctx.fee_sat_per_kvb;
            ctx.engine
                .repay(
                    &id,
                    Fiat::new(body.amount_minor, currency),
                    &key,
                    unix_now(),
                    tip,
                    fee,
                )
                .map_err(Problem::from)
        })
        .await??;
    view(&state, loan).await
}

#[utoipa::path(get, path = "/v1/loans/{id}/psbt", tag = "loans", params(("id" = String, Path)), responses((status = 200, body = PendingPsbt), (status = 404, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn psbt(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<JsonOut<PendingPsbt>, Problem> {
    let loan = visible_loan(&state, &caller, &id)?;
    let network = state.network;
    let pending = state
        .engine(move |ctx| match ctx.engine.decision(&loan.id)? {
            Some(record) => pending(&record, &ctx.engine.loan(&loan.id)?, network),
            None => Ok(None),
        })
        .await??;
    super::events::settle(&state).await?;
    pending
        .map(axum::Json)
        .ok_or_else(|| Problem::not_found(&format!("loan {id}: pending PSBT")))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cosigned {
    psbt: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Sent {
    txid: String,
    /// Whether the broadcast is done (else the service keeps trying; see the loan).
    broadcast: bool,
}

/// How long a co-signature waits for its broadcast before answering anyway.
const BROADCAST_WAIT: Duration = Duration::from_secs(10);

#[utoipa::path(post, path = "/v1/loans/{id}/psbt", tag = "loans", params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header), ("Prefer" = Option<String>, Header, description = "respond-async: 202 once stored, without waiting for the broadcast")), request_body = Cosigned, responses((status = 200, body = Sent), (status = 202, body = Sent), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc), (status = 422, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn cosign(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Cosigned>,
) -> Result<(StatusCode, JsonOut<Sent>), Problem> {
    // RFC 7240: a client that asks not to wait gets 202 once the co-signature is
    // stored; the service broadcasts it all the same.
    let respond_async = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "respond-async"));
    let loan = visible_loan(&state, &caller, &id)?;
    if !caller.is_party_to(&loan) {
        return Err(Problem::forbidden("only the loan's parties co-sign"));
    }
    let psbt = Psbt::from_str(body.psbt.trim())
        .map_err(|e| Problem::invalid("psbt", format!("not a base64 PSBT: {e}")))?;
    // Read, checked, verified and merged off the engine thread (the CPU-bound part,
    // on the blocking pool); stored by the engine thread only if the pending decision
    // is still the one merged with, and acknowledged once flushed.
    let record = latest_decision(&state.store, &id)?
        .ok_or_else(|| Problem::not_found(&format!("loan {id}: pending PSBT")))?;
    if matches!(
        record.decision.kind,
        DecisionKind::Liquidation { .. } | DecisionKind::PartialLiquidation { .. }
    ) && caller.role != Role::Lender
    {
        return Err(Problem::forbidden(
            "a liquidation is co-signed by the lender",
        ));
    }
    let (txid, waited) = match record.progress.txid() {
        // The same co-signature posted again: answer as the first time.
        Some(txid) if psbt.unsigned_tx.compute_txid() == txid => (txid, None),
        Some(_) => {
            return Err(EngineError::NothingToCosign { id: id.clone() }.into());
        }
        // The arbiter signs a withdrawal last, at the current price.
        None if matches!(record.decision.kind, DecisionKind::Withdrawal { .. }) => {
            (super::withdrawals::cosign(&state, &id, psbt).await?, None)
        }
        None => {
            let secp = state.secp.clone();
            let before = record.clone();
            let (next, tx) = tokio::task::spawn_blocking(move || before.cosign(&psbt, &secp))
                .await
                .map_err(|e| Problem::internal(format!("co-signing: {e}")))?
                .map_err(EngineError::from)?;
            let loan_id = id.clone();
            let signed_at = record.signed_at;
            state
                .engine_durable(move |ctx| {
                    ctx.engine
                        .store_cosigned(&loan_id, &record, &next, Durability::Buffered)
                })
                .await??;
            // From the arbiter's signature to the co-signature (records written before
            // the time was kept have none).
            let waited = (signed_at > 0).then(|| unix_now().saturating_sub(signed_at));
            (tx.compute_txid(), waited)
        }
    };
    if let Some(secs) = waited {
        state.cosigned(secs);
    }
    tracing::info!(loan = %id, %txid, waited_secs = ?waited, "co-signed");
    if respond_async {
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(Sent {
                txid: txid.to_string(),
                broadcast: false,
            }),
        ));
    }
    let deadline = tokio::time::Instant::now() + BROADCAST_WAIT;
    loop {
        let loan_id = id.clone();
        let sent = state
            .engine(move |ctx| {
                ctx.engine
                    .decision(&loan_id)
                    .map(|r| r.is_some_and(|r| matches!(r.progress, Progress::Broadcast { .. })))
            })
            .await??;
        if sent || tokio::time::Instant::now() >= deadline {
            return Ok((
                StatusCode::OK,
                axum::Json(Sent {
                    txid: txid.to_string(),
                    broadcast: sent,
                }),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
