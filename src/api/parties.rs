//! Parties: the admin registers lenders and borrowers, each with its account key
//! (`[fingerprint/48'/coin'/account'/2']xpub`, checked against the network and distinct
//! from every other party's and from the arbiter's) and gets the party's token, once.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::auth::{Caller, Role};
use super::problem::ProblemDoc;
use super::{ApiState, Json, Problem};
use crate::init::{new_token, random_hex, token_hash, TokenRecord};
use crate::keys::AccountKey;
use crate::store::Durability;
use crate::util::unix_now;

/// A party as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    pub account_key: String,
    pub created_at: u64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewParty {
    name: String,
    role: String,
    account_key: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = PartyCreated)]
pub struct Created {
    id: String,
    name: String,
    role: String,
    account_key: String,
    token: String,
}

/// The longest party name.
const MAX_NAME: usize = 100;

#[utoipa::path(post, path = "/v1/parties", tag = "parties", request_body = NewParty, responses((status = 201, body = Created), (status = 401, body = ProblemDoc), (status = 403, body = ProblemDoc), (status = 409, body = ProblemDoc), (status = 422, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    Json(body): Json<NewParty>,
) -> Result<(StatusCode, axum::Json<Created>), Problem> {
    caller.must_be(Role::Admin)?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Problem::invalid(
            "name",
            format!("1 to {MAX_NAME} printable characters"),
        ));
    }
    let role = match Role::parse(&body.role) {
        Some(r @ (Role::Lender | Role::Borrower)) => r,
        _ => {
            return Err(Problem::invalid(
                "role",
                "must be \"lender\" or \"borrower\"",
            ))
        }
    };
    let key = AccountKey::parse("account_key", &body.account_key, state.network)
        .map_err(|e| Problem::invalid("account_key", e.to_string()))?;

    let _one_at_a_time = state.parties.lock().await;
    let arbiter = AccountKey::parse("arbiter", &state.arbiter_account, state.network)
        .map_err(|e| Problem::internal(e.to_string()))?;
    if key.xpub() == arbiter.xpub() {
        return Err(Problem::invalid(
            "account_key",
            "this is the service's arbiter key",
        ));
    }
    for other in state.store.parties::<PartyRecord>()? {
        let theirs = AccountKey::parse("account_key", &other.account_key, state.network)
            .map_err(|e| Problem::internal(format!("party {}: {e}", other.id)))?;
        if theirs.xpub() == key.xpub() {
            return Err(Problem::conflict(
                "account_key_taken",
                format!("account_key: already registered by party {}", other.id),
            )
            .with_field("account_key"));
        }
    }
    let record = PartyRecord {
        id: format!("p_{}", random_hex(8)),
        name: name.to_owned(),
        role: role.as_str().to_owned(),
        account_key: key.to_string(),
        created_at: unix_now(),
    };
    let token = new_token();
    let token_record = TokenRecord {
        party_id: record.id.clone(),
        role: record.role.clone(),
        created_at: record.created_at,
    };
    state.store.put_party_with_token(
        &record.id,
        &record,
        &token_hash(&token),
        &token_record,
        Durability::Durable,
    )?;
    tracing::info!(party = %record.id, role = %record.role, "party created");
    Ok((
        StatusCode::CREATED,
        axum::Json(Created {
            id: record.id,
            name: record.name,
            role: record.role,
            account_key: record.account_key,
            token,
        }),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Party)]
pub struct Me {
    id: String,
    name: String,
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_key: Option<String>,
}

#[utoipa::path(get, path = "/v1/parties/me", tag = "parties", responses((status = 200, body = Me), (status = 401, body = ProblemDoc)), security(("bearer" = [])))]
pub async fn me(State(state): State<ApiState>, caller: Caller) -> Result<axum::Json<Me>, Problem> {
    if caller.role == Role::Admin {
        return Ok(axum::Json(Me {
            id: caller.party_id,
            name: "admin".into(),
            role: "admin".into(),
            account_key: None,
        }));
    }
    let party: PartyRecord = state
        .store
        .party(&caller.party_id)?
        .ok_or_else(|| Problem::unauthorized("the token's party is gone"))?;
    Ok(axum::Json(Me {
        id: party.id,
        name: party.name,
        role: party.role,
        account_key: Some(party.account_key),
    }))
}

/// A party's account key.
pub fn account_key(state: &ApiState, party_id: &str) -> Result<AccountKey, Problem> {
    let party: PartyRecord = state
        .store
        .party(party_id)?
        .ok_or_else(|| Problem::internal(format!("party {party_id}: not found")))?;
    AccountKey::parse("account_key", &party.account_key, state.network)
        .map_err(|e| Problem::internal(format!("party {party_id}: {e}")))
}
