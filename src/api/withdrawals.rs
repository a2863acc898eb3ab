//! Withdrawals of excess collateral (borrower): the request, checked against the limit
//! at the current aggregate, gives an unsigned PSBT; the party's signature of it (posted
//! to `/v1/loans/{id}/psbt` like any co-signature) is checked, the limit checked again,
//! and only then does the arbiter sign and the transaction go out (see
//! `engine::adjust`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use bitcoin::psbt::Psbt;
use bitcoin::Amount;
use serde::Deserialize;

use super::auth::{visible_loan, Caller, Role};
use super::problem::ProblemDoc;
use super::view::LoanView;
use super::{ApiState, Json, Problem};
use crate::util::unix_now;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalRequest {
    /// Sats to the borrower's return address; the fee is paid from what stays.
    amount_sat: u64,
}

fn no_price(ctx: &crate::service::Ctx) -> Problem {
    Problem::unavailable(
        "no_price",
        format!(
            "the oracle has no fresh aggregate ({}): a withdrawal is checked at the current price",
            ctx.no_price.as_deref().unwrap_or("none yet")
        ),
    )
}

#[utoipa::path(post, path = "/v1/loans/{id}/withdrawals", tag = "loans", params(("id" = String, Path)), request_body = WithdrawalRequest, responses((status = 201, body = LoanView, description = "the unsigned withdrawal PSBT is the loan's pending_psbt: sign it and post it to /v1/loans/{id}/psbt"), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc), (status = 422, body = ProblemDoc), (status = 503, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn request(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<WithdrawalRequest>,
) -> Result<(StatusCode, axum::Json<LoanView>), Problem> {
    caller.must_be(Role::Borrower)?;
    let loan = visible_loan(&state, &caller, &id)?;
    if !caller.is_party_to(&loan) {
        return Err(Problem::forbidden("only the loan's borrower withdraws"));
    }
    if body.amount_sat == 0 || body.amount_sat > 21_000_000 * 100_000_000 {
        return Err(Problem::invalid(
            "amount_sat",
            "above zero and at most 21 million BTC",
        ));
    }
    let amount = Amount::from_sat(body.amount_sat);
    let loan = state
        .engine(move |ctx| {
            let now = unix_now();
            let tip = ctx.tip().ok_or_else(|| {
                Problem::unavailable("no_chain_view", format!("chain: {:?}", ctx.chain))
            })?;
            let evidence = ctx.fresh_price(now).cloned().ok_or_else(|| no_price(ctx))?;
            let fee = ctx.fee_sat_per_kvb;
            ctx.engine
                .request_withdrawal(&id, amount, &evidence, now, tip, fee)
                .map_err(Problem::from)
        })
        .await??;
    tracing::info!(loan = %loan.id, amount = %amount, "withdrawal requested");
    let view = super::loans::view(&state, loan).await?;
    Ok((StatusCode::CREATED, view))
}

/// A party's signature of the pending withdrawal (from `POST /v1/loans/{id}/psbt`):
/// the arbiter signs last, on the engine thread, at the current aggregate.
pub async fn cosign(state: &ApiState, id: &str, psbt: Psbt) -> Result<bitcoin::Txid, Problem> {
    let id = id.to_owned();
    let tx = state
        .engine_durable(move |ctx| {
            let now = unix_now();
            let evidence = ctx.fresh_price(now).cloned().ok_or_else(|| no_price(ctx))?;
            ctx.engine
                .cosign_withdrawal(&id, &psbt, &evidence, now)
                .map_err(Problem::from)
        })
        .await??;
    Ok(tx.compute_txid())
}
