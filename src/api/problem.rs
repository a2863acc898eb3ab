//! Errors as `application/problem+json` (RFC 9457): `type`, `title`, `status`,
//! `detail`, a stable `code` and, for bad input, the `field`. Every domain error maps
//! here, in one place ([`From<EngineError>`]), so a client sees the same code for the
//! same cause on every route.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::{EngineError, RecordError, WithdrawalError};
use crate::loan::TransitionError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// A problem answer's body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc {
    /// `urn:btc-escrow:problem:<code>`.
    pub r#type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable: clients may branch on it.
    pub code: String,
    /// The input field at fault, for bad input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A problem answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
        }
    }

    /// Bad input: 422 naming the field.
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", detail)
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what}: not found"),
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// The same problem, naming `field`.
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, detail = %self.detail, "request failed");
        }
        let body = ProblemDoc {
            r#type: format!("urn:btc-escrow:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            field: self.field,
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json,
        )
            .into_response()
    }
}

/// The field a domain message names: our messages start with `field: reason`.
fn field_of(message: &str) -> Option<String> {
    let (head, _) = message.split_once(": ")?;
    let ok = !head.is_empty()
        && head
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    ok.then(|| head.to_owned())
}

/// The API's name of a terms field (`_bps` for ratios, `_minor` for money).
fn api_field(field: &str) -> String {
    match field {
        "principal" => "principal_minor".into(),
        "apr"
        | "initial_ltv"
        | "margin_call_ltv"
        | "liquidation_ltv"
        | "hard_liquidation_ltv"
        | "liquidation_penalty"
        | "hysteresis"
        | "target_ltv"
        | "margin_call_levels" => {
            format!("{field}_bps")
        }
        other => other.into(),
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        let detail = e.to_string();
        match e {
            EngineError::NotFound { id } => Problem::not_found(&format!("loan {id}")),
            EngineError::Terms(t) => {
                let msg = t.to_string();
                let field = field_of(&msg).map(|f| api_field(&f));
                Problem {
                    field,
                    ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_terms", msg)
                }
            }
            EngineError::ConfirmTicks { .. } => Problem::invalid("confirm_ticks", detail),
            EngineError::Heights { .. } => Problem::invalid("term_secs", detail),
            EngineError::Calc { .. } => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unpriceable", detail)
            }
            EngineError::Policy(_) => Problem::invalid("account_key", detail),
            EngineError::NothingToCosign { .. } => Problem::conflict("no_pending_psbt", detail),
            EngineError::NoChainView { .. } => Problem::unavailable("no_chain_view", detail),
            EngineError::Withdrawal {
                source: WithdrawalError::Decision(_),
                ..
            } => Problem::internal(detail),
            EngineError::Withdrawal { source, .. } => Problem {
                field: Some("amount_sat".into()),
                ..Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "withdrawal_refused",
                    source.to_string(),
                )
            },
            EngineError::WithdrawalRefused { reason, .. } => {
                match reason.strip_prefix("amount_sat: ") {
                    Some(why) => Problem {
                        field: Some("amount_sat".into()),
                        ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "withdrawal_refused", why)
                    },
                    None => Problem::conflict("withdrawal_refused", reason),
                }
            }
            // Only verified signatures of escrow keys are merged, so a merged copy that
            // does not finalize is the co-signer's doing (signatures for another path,
            // a timelocked one): bad input, not a server fault.
            EngineError::Record(RecordError::Cosignature(_) | RecordError::Finalize(_)) => {
                Problem::invalid("psbt", detail)
            }
            EngineError::Record(RecordError::NotAwaiting { .. }) => {
                Problem::conflict("no_pending_psbt", detail)
            }
            EngineError::Transition(t) => match t {
                TransitionError::Illegal { .. } => Problem::conflict("wrong_state", detail),
                TransitionError::Overpayment { .. } | TransitionError::ZeroRepayment { .. } => {
                    Problem::invalid("amount_minor", detail)
                }
                TransitionError::RepaymentKeyReused { .. } => Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    detail,
                ),
                _ => Problem::conflict("wrong_state", detail),
            },
            EngineError::Store(StoreError::VersionConflict { .. }) => {
                Problem::conflict("concurrent_change", detail)
            }
            EngineError::Store(StoreError::Exists { .. }) => Problem::conflict("exists", detail),
            EngineError::Store(StoreError::BadId(_)) => Problem::invalid("id", detail),
            EngineError::Store(_)
            | EngineError::Key(_)
            | EngineError::Decision(_)
            | EngineError::Record(_) => Problem::internal(detail),
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e).into()
    }
}

impl From<ServiceError> for Problem {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Engine(e) => e.into(),
            ServiceError::Stopped => Problem::unavailable("stopping", e.to_string()),
            other => Problem::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_is_read_from_the_message_and_named_as_the_api_names_it() {
        assert_eq!(
            field_of("hysteresis: must be below margin_call_ltv - initial_ltv"),
            Some("hysteresis".into())
        );
        assert_eq!(field_of("loan l1: not found"), None);
        assert_eq!(field_of("no colon"), None);
        assert_eq!(api_field("hysteresis"), "hysteresis_bps");
        assert_eq!(api_field("principal"), "principal_minor");
        assert_eq!(api_field("term_secs"), "term_secs");
    }
}
