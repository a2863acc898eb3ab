//! `Idempotency-Key` on POSTs: the first successful answer to a key is stored (for
//! [`TTL_SECS`]) and replayed to a retry with the same key and body; the same key with
//! another body is refused (422); a retry while the first is still running is refused
//! (409). Keys are scoped to the caller's token and the path, so one client's keys
//! never answer another's requests.
//!
//! The answer is stored after the handler's own write: a crash between the two makes a
//! retry run the request again. Repayments are deduplicated by the engine under the
//! same key as well (forever, not only for a day), so a repayment still counts once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bitcoin::hashes::{sha256, Hash};
use serde::{Deserialize, Serialize};

use super::{ApiState, Problem, MAX_BODY};
use crate::store::Durability;
use crate::util::unix_now;

pub const KEY_HEADER: &str = "idempotency-key";
/// How long an answer is kept for replay.
pub const TTL_SECS: u64 = 24 * 3_600;

/// The requests in flight, by record key.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<BTreeSet<String>>>);

/// Takes a key out of the in-flight set when the request ends (or is dropped).
struct Running {
    set: InFlight,
    key: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.0.lock() {
            s.remove(&self.key);
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    body_sha256: String,
    status: u16,
    content_type: Option<String>,
    body: String,
    at: u64,
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut engine = sha256::Hash::engine();
    for p in parts {
        bitcoin::hashes::HashEngine::input(&mut engine, &(p.len() as u64).to_be_bytes());
        bitcoin::hashes::HashEngine::input(&mut engine, p);
    }
    sha256::Hash::from_engine(engine).to_string()
}

pub async fn layer(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(KEY_HEADER).cloned() else {
        return next.run(request).await;
    };
    match handle(state, key, request, next).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

async fn handle(
    state: ApiState,
    key: HeaderValue,
    request: Request,
    next: Next,
) -> Result<Response, Problem> {
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| Problem::invalid("Idempotency-Key", "1 to 255 visible ASCII characters"))?
        .to_owned();
    super::refuse_declared_too_large(&request)?;
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over {MAX_BODY} bytes"),
        )
    })?;
    let scope = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let record_key = hex_sha256(&[&scope, parts.uri.path().as_bytes(), key.as_bytes()]);
    let body_sha256 = hex_sha256(&[&bytes]);

    if let Some(stored) = state.store.idempotent::<Stored>(&record_key)? {
        if unix_now().saturating_sub(stored.at) < TTL_SECS {
            if stored.body_sha256 != body_sha256 {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with another body",
                )
                .with_field("Idempotency-Key"));
            }
            return Ok(replay(stored));
        }
        state.store.remove_idempotent(&record_key)?;
    }
    let _running = {
        let mut set = state
            .in_flight
            .0
            .lock()
            .map_err(|_| Problem::internal("the in-flight set is poisoned"))?;
        if !set.insert(record_key.clone()) {
            return Err(Problem::conflict(
                "idempotency_key_in_flight",
                "a request with this Idempotency-Key is still running",
            ));
        }
        Running {
            set: state.in_flight.clone(),
            key: record_key.clone(),
        }
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if !response.status().is_success() {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| Problem::internal(format!("reading the answer: {e}")))?;
    let stored = Stored {
        body_sha256,
        status: parts.status.as_u16(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: unix_now(),
    };
    // Durable before it is answered, through the engine thread's shared flush (one
    // fsync for a burst of keyed requests).
    state
        .store
        .put_idempotent(&record_key, &stored, Durability::Buffered)?;
    state.engine_durable(|_| ()).await?;
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn replay(stored: Stored) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    if let Some(ct) = stored
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
