//! Webhooks: a party subscribes a URL and receives every later event of its loans
//! (the admin: of every loan), in order, at least once, signed as Standard Webhooks
//! specify: `webhook-id` (stable across retries: `evt_<global sequence>`),
//! `webhook-timestamp`, and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">` with the subscription's secret (`whsec_<base64 key>`).
//!
//! The outbox is the event log itself: each subscription keeps a cursor (the last
//! event delivered, stored durably after the receiver's 2xx), so a crash redelivers at
//! most the event in hand, never skips one. A failed delivery is retried with
//! exponential backoff (1 s doubling to 5 min), and later events wait behind it. Each
//! attempt's outcome is stored and listed at `GET /v1/webhooks/{id}/deliveries`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use bitcoin::base64::Engine as _;
use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use serde::{Deserialize, Serialize};

use super::auth::{Caller, Role};
use super::problem::ProblemDoc;
use super::{ApiState, Json, Problem};
use crate::init::random_hex;
use crate::store::StoredEvent;
use crate::util::unix_now;

const B64: bitcoin::base64::engine::GeneralPurpose =
    bitcoin::base64::engine::general_purpose::STANDARD;

/// A subscription as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: String,
    pub party_id: String,
    pub role: String,
    pub url: String,
    /// `whsec_` + base64 of the HMAC key.
    pub secret: String,
    pub created_at: u64,
    /// The last event delivered (global sequence).
    pub cursor: u64,
}

/// One event's delivery to one subscription.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub webhook_id: String,
    pub event_seq: u64,
    pub message_id: String,
    pub attempts: u32,
    pub delivered: bool,
    /// The receiver's last status, or why there was none.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_attempt_at: u64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    url: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WebhookCreated)]
pub struct Created {
    id: String,
    url: String,
    secret: String,
}

#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = NewWebhook, responses((status = 201, body = Created), (status = 422, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<NewWebhook>,
) -> Result<(StatusCode, axum::Json<Created>), Problem> {
    let url = reqwest::Url::parse(body.url.trim())
        .map_err(|e| Problem::invalid("url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Problem::invalid(
            "url",
            "an http:// or https:// URL with a host",
        ));
    }
    let mut key = [0u8; 24];
    bitcoin::secp256k1::rand::RngCore::fill_bytes(
        &mut bitcoin::secp256k1::rand::thread_rng(),
        &mut key,
    );
    let record = WebhookRecord {
        id: format!("wh_{}", random_hex(8)),
        party_id: caller.party_id.clone(),
        role: caller.role.as_str().to_owned(),
        url: url.to_string(),
        secret: format!("whsec_{}", B64.encode(key)),
        created_at: unix_now(),
        cursor: state.store.last_event_seq()?,
    };
    state.store.put_webhook(&record.id, &record)?;
    tracing::info!(webhook = %record.id, party = %record.party_id, url = %record.url, "webhook");
    Ok((
        StatusCode::CREATED,
        axum::Json(Created {
            id: record.id,
            url: record.url,
            secret: record.secret,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path)), responses((status = 200, body = [Delivery]), (status = 404, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn deliveries(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Vec<Delivery>>, Problem> {
    let not_found = || Problem::not_found(&format!("webhook {id}"));
    let record: WebhookRecord = match state.store.webhook(&id) {
        Ok(Some(r)) => r,
        Ok(None) | Err(crate::store::StoreError::BadId(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if record.party_id != caller.party_id && caller.role != Role::Admin {
        return Err(not_found());
    }
    Ok(axum::Json(state.store.deliveries(&id)?))
}

/// The Standard Webhooks signature of `body` sent as `id` at `timestamp`.
pub fn signature(secret: &str, id: &str, timestamp: u64, body: &str) -> Option<String> {
    let key = B64.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut engine = hmac::HmacEngine::<sha256::Hash>::new(&key);
    engine.input(format!("{id}.{timestamp}.{body}").as_bytes());
    let mac = hmac::Hmac::<sha256::Hash>::from_engine(engine);
    Some(format!("v1,{}", B64.encode(mac.to_byte_array())))
}

/// When each subscription may be tried again, and the current backoff.
#[derive(Default)]
struct Backoff(BTreeMap<String, (std::time::Instant, Duration)>);

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(250);

/// Deliver until the server stops.
pub async fn run(state: ApiState) {
    let client = match reqwest::Client::builder().timeout(SEND_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: no HTTP client; nothing is delivered");
            return;
        }
    };
    let mut stop = state.stopping();
    let mut backoff = Backoff::default();
    while !*stop.borrow() {
        let hooks: Vec<WebhookRecord> = match state.store.webhooks() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "webhooks: reading subscriptions");
                Vec::new()
            }
        };
        for hook in hooks {
            if backoff
                .0
                .get(&hook.id)
                .is_some_and(|(at, _)| std::time::Instant::now() < *at)
            {
                continue;
            }
            if let Err(e) = deliver_pending(&state, &client, hook, &mut backoff).await {
                tracing::error!(detail = %e.detail, "webhooks: delivering");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Deliver `hook`'s events after its cursor, in order, until one fails.
async fn deliver_pending(
    state: &ApiState,
    client: &reqwest::Client,
    mut hook: WebhookRecord,
    backoff: &mut Backoff,
) -> Result<(), Problem> {
    let caller = Caller {
        party_id: hook.party_id.clone(),
        role: Role::parse(&hook.role).unwrap_or(Role::Borrower),
    };
    for event in super::events::since(state, &caller, hook.cursor)? {
        let mut delivery = state
            .store
            .deliveries::<Delivery>(&hook.id)?
            .into_iter()
            .rev()
            .find(|d| d.event_seq == event.global_seq)
            .unwrap_or(Delivery {
                webhook_id: hook.id.clone(),
                event_seq: event.global_seq,
                message_id: format!("evt_{}", event.global_seq),
                attempts: 0,
                delivered: false,
                last_status: None,
                last_error: None,
                last_attempt_at: 0,
            });
        let outcome = send(client, &hook, &delivery.message_id, &event).await;
        delivery.attempts += 1;
        delivery.last_attempt_at = unix_now();
        match outcome {
            Ok(status) => {
                delivery.last_status = Some(status);
                delivery.delivered = (200..300).contains(&status);
                delivery.last_error = None;
            }
            Err(e) => {
                delivery.last_status = None;
                delivery.last_error = Some(e);
            }
        }
        state
            .store
            .put_delivery(&hook.id, event.global_seq, &delivery)?;
        if !delivery.delivered {
            let next = backoff
                .0
                .get(&hook.id)
                .map(|(_, d)| (*d * 2).min(MAX_RETRY))
                .unwrap_or(FIRST_RETRY);
            backoff
                .0
                .insert(hook.id.clone(), (std::time::Instant::now() + next, next));
            tracing::warn!(webhook = %hook.id, event = event.global_seq, retry_in = ?next, "webhook delivery failed");
            return Ok(());
        }
        backoff.0.remove(&hook.id);
        hook.cursor = event.global_seq;
        state.store.put_webhook(&hook.id, &hook)?;
    }
    Ok(())
}

async fn send(
    client: &reqwest::Client,
    hook: &WebhookRecord,
    id: &str,
    event: &StoredEvent,
) -> Result<u16, String> {
    let body = serde_json::to_string(event).map_err(|e| e.to_string())?;
    let timestamp = unix_now();
    let signature =
        signature(&hook.secret, id, timestamp, &body).ok_or("the stored secret is unreadable")?;
    let response = client
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn the_signature_is_standard_webhooks() {
        let sig = signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }
}
