//! A loan's events, and the Server-Sent Events stream of the caller's loans: each
//! event's `id:` is its global sequence number, a client resumes with `Last-Event-ID`
//! (no gap, no repeat), and a comment line keeps idle connections alive. The stream
//! reads the store (events are committed in sequence order by the engine thread alone)
//! and ends when the server stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use super::auth::{visible_loan, Caller, Role};
use super::problem::ProblemDoc;
use super::{ApiState, Problem};
use crate::store::StoredEvent;

/// An event as the API lists it (the OpenAPI document's view of `StoredEvent`).
#[derive(utoipa::ToSchema)]
#[schema(as = Event)]
#[allow(dead_code)]
pub struct EventDoc {
    pub loan_id: String,
    /// The event's place in its loan's log, from 0.
    pub loan_seq: u64,
    /// Its place in the service's log (the SSE `id`).
    pub global_seq: u64,
    /// `{"event": "<snake_case name>", ...its numbers and evidence}`.
    #[schema(value_type = Object)]
    pub event: (),
}

/// How often the stream looks for new events.
const POLL: Duration = Duration::from_millis(200);

#[utoipa::path(get, path = "/v1/loans/{id}/events", tag = "events", params(("id" = String, Path)), responses((status = 200, body = [EventDoc]), (status = 404, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Vec<StoredEvent>>, Problem> {
    let loan = visible_loan(&state, &caller, &id)?;
    let events = state.store.events(&loan.id)?;
    settle(&state).await?;
    Ok(axum::Json(events))
}

/// Make what was just read from the store durable before it is shown (see
/// [`crate::store::Store::settle`]): a flush on the blocking pool, unless every write
/// is on disk already.
pub(super) async fn settle(state: &ApiState) -> Result<(), Problem> {
    if state.store.is_settled() {
        return Ok(());
    }
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.settle())
        .await
        .map_err(|e| Problem::internal(format!("flushing the store: {e}")))??;
    Ok(())
}

/// The caller's events after global sequence `after`, in order.
pub(super) fn since(
    state: &ApiState,
    caller: &Caller,
    after: u64,
) -> Result<Vec<StoredEvent>, Problem> {
    let mut out = Vec::new();
    for loan in state.store.loans()? {
        if caller.role == Role::Admin || caller.is_party_to(&loan) {
            out.extend(
                state
                    .store
                    .events(&loan.id)?
                    .into_iter()
                    .filter(|e| e.global_seq > after),
            );
        }
    }
    out.sort_by_key(|e| e.global_seq);
    // Streamed and delivered events must survive a crash (a consumer deduplicates
    // by id: an id must never come back with another event). Usually a no-op.
    state.store.settle()?;
    Ok(out)
}

fn sse_event(e: &StoredEvent) -> Event {
    let name = serde_json::to_value(&e.event)
        .ok()
        .and_then(|v| v["event"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "event".into());
    Event::default()
        .id(e.global_seq.to_string())
        .event(name)
        .json_data(e)
        .unwrap_or_else(|_| Event::default().comment("unencodable event"))
}

struct Cursor {
    state: ApiState,
    caller: Caller,
    last: u64,
    queue: VecDeque<StoredEvent>,
    stop: tokio::sync::watch::Receiver<bool>,
}

#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(("Last-Event-ID" = Option<u64>, Header, description = "resume after this global sequence")), responses((status = 200, description = "text/event-stream of the caller's loans' events", content_type = "text/event-stream", body = String)), security(("bearer" = [])))]
pub async fn stream(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let last = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .ok_or_else(|| Problem::invalid("Last-Event-ID", "a global event sequence number"))?,
    };
    let cursor = Cursor {
        stop: state.stopping(),
        state,
        caller,
        last,
        queue: VecDeque::new(),
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if *c.stop.borrow() {
                return None;
            }
            if let Some(e) = c.queue.pop_front() {
                c.last = e.global_seq;
                return Some((Ok(sse_event(&e)), c));
            }
            match since(&c.state, &c.caller, c.last) {
                Ok(found) if !found.is_empty() => c.queue.extend(found),
                Ok(_) => {}
                Err(p) => tracing::warn!(detail = %p.detail, "event stream: reading the store"),
            }
            if c.queue.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = c.stop.changed() => {}
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
