//! The HTTP API (axum), under `/v1`, JSON; the contract is the API issue's (paths and
//! field names are kept exactly). Only this module knows HTTP.
//!
//! - Every request but `/v1/health` carries `Authorization: Bearer <token>`; a token is
//!   looked up by its SHA-256 (tokens are never stored). Roles: `admin`, `lender`,
//!   `borrower`. A party sees and acts on its own loans only: another party's loan
//!   answers 404, so ids do not leak; an open offer is visible to every borrower.
//! - Reads go to the store directly (a clone of the engine's); everything that changes
//!   a loan runs on the engine thread through the [`ServiceHandle`], from a blocking
//!   task so no runtime worker waits on it.
//! - `Idempotency-Key` on a POST replays the first successful answer (see
//!   [`idempotency`]).
//! - Errors are problem+json ([`Problem`]); bodies are limited to [`MAX_BODY`];
//!   requests time out after [`REQUEST_TIMEOUT`]; a panic in a handler answers a 500
//!   problem and is logged, it never reaches the client as a dropped connection.

mod auth;
mod events;
mod idempotency;
mod loans;
mod metrics;
mod openapi;
mod parties;
mod problem;
mod system;
mod view;
mod web;
mod webhooks;
mod withdrawals;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use bitcoin::Network;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use auth::{Caller, Role};
pub use openapi::ApiDoc;
pub use parties::PartyRecord;
pub use problem::Problem;
pub use view::LoanView;
pub use webhooks::{signature as webhook_signature, Delivery, WebhookRecord};

use crate::loan::Currency;
use crate::service::{Ctx, ServiceHandle};
use crate::store::Store;

/// The largest request body: a PSBT of a few hundred inputs fits, 10 MB does not.
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// The longest a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a client may take to send a request's headers, counted from when the
/// connection is ready for the next request: a new connection, or an idle keep-alive
/// one, without a complete request head by then is closed, so a client that dribbles
/// its headers (slow loris) or sends nothing holds no connection for long. A slow body
/// is bounded by [`REQUEST_TIMEOUT`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections open at once; further clients wait in the listen backlog until
/// one closes. Each costs a task and buffers; with [`HEADER_TIMEOUT`], idle ones go
/// within seconds, so this bounds a flood, not ordinary use.
pub const MAX_CONNECTIONS: usize = 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub handle: ServiceHandle,
    pub store: Store,
    pub network: Network,
    /// The oracle's currency: offers in another one could never be priced.
    pub currency: Currency,
    /// The arbiter's account key, which no party may register as its own.
    pub arbiter_account: String,
    /// Serializes party creation (the distinct-key check and the write).
    parties: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Requests running under an idempotency key.
    in_flight: idempotency::InFlight,
    /// HTTP request counters for `/metrics`.
    http: metrics::Http,
    /// Co-signature latencies for `/metrics`.
    cosign: metrics::Cosign,
    /// Set when the server stops: event streams end.
    stop: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// For verifying co-signatures off the engine thread.
    pub secp: std::sync::Arc<bitcoin::secp256k1::Secp256k1<bitcoin::secp256k1::All>>,
}

impl ApiState {
    pub fn new(
        handle: ServiceHandle,
        store: Store,
        network: Network,
        currency: Currency,
        arbiter_account: String,
    ) -> Self {
        Self {
            handle,
            store,
            network,
            currency,
            arbiter_account,
            parties: Default::default(),
            in_flight: Default::default(),
            http: Default::default(),
            cosign: Default::default(),
            stop: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
            secp: Default::default(),
        }
    }

    /// Count a co-signature that came `secs` after the arbiter's signature.
    pub fn cosigned(&self, secs: u64) {
        self.cosign.record(secs);
    }

    /// A receiver that changes to true when the server stops.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Run `f` on the engine thread and await its answer.
    pub async fn engine<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx) -> R + Send + 'static,
    ) -> Result<R, Problem> {
        self.handle.ask(f).await.map_err(Problem::from)
    }

    /// [`ApiState::engine`] answered once what `f` wrote is durable (one flush shared
    /// by every such command the engine thread takes in the same batch).
    pub async fn engine_durable<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx) -> R + Send + 'static,
    ) -> Result<R, Problem> {
        self.handle.ask_durable(f).await.map_err(Problem::from)
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/parties", post(parties::create))
        .route("/v1/parties/me", get(parties::me))
        .route("/v1/loans", post(loans::offer).get(loans::list))
        .route("/v1/offers", get(loans::offers))
        .route("/v1/loans/{id}", get(loans::get))
        .route("/v1/loans/{id}/accept", post(loans::accept))
        .route("/v1/loans/{id}/repayments", post(loans::repay))
        .route("/v1/loans/{id}/withdrawals", post(withdrawals::request))
        .route("/v1/loans/{id}/psbt", get(loans::psbt).post(loans::cosign))
        .route("/v1/loans/{id}/events", get(events::list))
        .route("/v1/events/stream", get(events::stream))
        .route("/v1/webhooks", post(webhooks::create))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/price", get(system::price))
        .route("/v1/oracle/manual", put(system::manual_price))
        .route("/v1/health", get(system::health))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/openapi.json", get(openapi::document))
        .merge(web::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .fallback(|| async { Problem::not_found("route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ))
        .layer(middleware::from_fn(timeout))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .with_state(state)
}

/// Serve HTTP/1.1 on `listener` until `shutdown` completes: then event streams end, no
/// connection is taken any more, and the requests in hand finish before this returns
/// (as do the webhook deliveries).
///
/// hyper's connection builder with a timer rather than `axum::serve`, which sets none,
/// so that hyper's header timeout fires: see [`HEADER_TIMEOUT`] and [`MAX_CONNECTIONS`].
/// A connection still sending its first request's headers at shutdown is closed by
/// [`HEADER_TIMEOUT`]; an idle keep-alive one at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = state.stop.clone();
    let deliveries = tokio::spawn(webhooks::run(state.clone()));
    let service = TowerToHyperService::new(router(state));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, permit) = tokio::select! {
            () = &mut shutdown => break,
            next = accept(&listener, &permits) => next,
        };
        let conn = http.serve_connection(TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            // A header timeout, a client gone mid-answer: nothing the server can act on.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "api: connection closed");
            }
        });
    }
    drop(listener);
    // Long-lived streams end, so the requests in hand can finish. Stored even with no
    // receiver yet (`send` would drop it: a webhook task that subscribes later would
    // never see it, and shutdown would wait on it for ever).
    stop.send_replace(true);
    graceful.shutdown().await;
    let _ = deliveries.await;
    Ok(())
}

/// The next connection, once fewer than [`MAX_CONNECTIONS`] are open, with its permit.
/// Errors of one connection are skipped; others (out of file descriptors, most likely)
/// are logged and retried a second later, as `axum::serve` does.
async fn accept(
    listener: &tokio::net::TcpListener,
    permits: &Arc<Semaphore>,
) -> (tokio::net::TcpStream, OwnedSemaphorePermit) {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return (stream, permit),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                tracing::error!(error = %e, "api: accepting a connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::unavailable(
            "timeout",
            format!("the request took longer than {REQUEST_TIMEOUT:?}"),
        )
        .into_response(),
    }
}

fn on_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    tracing::error!(panic = what, "a handler panicked");
    Problem::internal("internal error").into_response()
}

/// 413 at once for a body whose declared length is over [`MAX_BODY`] (before a byte
/// of it is read).
fn refuse_declared_too_large(req: &Request) -> Result<(), Problem> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY as u64 => Err(Problem::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is {n} bytes, over the {MAX_BODY} allowed"),
        )),
        _ => Ok(()),
    }
}

/// A body declared as anything but JSON (`application/json`, or `application/…+json`)
/// is refused before it is read: 415.
fn refuse_other_than_json(req: &Request) -> Result<(), Problem> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        return Ok(());
    }
    Err(Problem::new(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "Content-Type: the body must be application/json, not {}",
            if declared.is_empty() {
                "absent"
            } else {
                declared
            }
        ),
    )
    .with_field("Content-Type"))
}

/// A JSON body whose errors name the field (`terms.apr_bps: invalid type ...`).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        refuse_declared_too_large(&req)?;
        refuse_other_than_json(&req)?;
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                axum::http::StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
                    e.status(),
                    "body_too_large",
                    format!("the body is over {MAX_BODY} bytes"),
                ),
                status => Problem::new(status, "bad_body", e.body_text()),
            })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de).map(Json).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            // "missing field `x`" and "unknown field `x`" name it in the message.
            let field = if path == "." {
                message
                    .split('`')
                    .nth(1)
                    .map(str::to_owned)
                    .unwrap_or_else(|| "body".to_owned())
            } else {
                path
            };
            Problem::invalid(&field, message)
        })
    }
}
