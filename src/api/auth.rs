//! Bearer tokens: looked up by their SHA-256; the caller is the party it was issued to.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{ApiState, Problem};
use crate::init::{token_hash, TokenRecord};
use crate::loan::{Loan, LoanState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Lender,
    Borrower,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Role::Admin),
            "lender" => Some(Role::Lender),
            "borrower" => Some(Role::Borrower),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Lender => "lender",
            Role::Borrower => "borrower",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub party_id: String,
    pub role: Role,
}

impl Caller {
    /// Refuse a caller without `role` (403: the route exists, not for this role).
    pub fn must_be(&self, role: Role) -> Result<(), Problem> {
        if self.role == role {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this needs the {} role; the token is a {}'s",
                role.as_str(),
                self.role.as_str()
            )))
        }
    }

    /// May this caller see `loan`? Its lender, its borrower, the admin, and — while it
    /// is an open offer — every borrower.
    pub fn sees(&self, loan: &Loan) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Lender => loan.lender_id == self.party_id,
            Role::Borrower => {
                loan.borrower_id.as_deref() == Some(self.party_id.as_str())
                    || (loan.state == LoanState::Offered && loan.borrower_id.is_none())
            }
        }
    }

    /// Is this caller a party to `loan` (its lender or its borrower)?
    pub fn is_party_to(&self, loan: &Loan) -> bool {
        match self.role {
            Role::Admin => false,
            Role::Lender => loan.lender_id == self.party_id,
            Role::Borrower => loan.borrower_id.as_deref() == Some(self.party_id.as_str()),
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        // The web page's session cookie stands for the token on reads only (a
        // browser's EventSource cannot send a header); writes need the header.
        if parts.headers.get(AUTHORIZATION).is_none() && parts.method == axum::http::Method::GET {
            if let Some(token) = super::web::cookie_token(&parts.headers) {
                return caller_of(state, &token)?
                    .ok_or_else(|| Problem::unauthorized("unknown session"));
            }
        }
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Problem::unauthorized("Authorization must be Bearer <token>"))?;
        caller_of(state, token)?.ok_or_else(|| Problem::unauthorized("unknown token"))
    }
}

/// The party `token` was issued to (`None`: no such token), for the API's header and
/// the web page's cookie alike.
pub fn caller_of(state: &ApiState, token: &str) -> Result<Option<Caller>, Problem> {
    let Some(record) = state.store.token::<TokenRecord>(&token_hash(token))? else {
        return Ok(None);
    };
    let role = Role::parse(&record.role)
        .ok_or_else(|| Problem::internal(format!("stored role {:?}", record.role)))?;
    Ok(Some(Caller {
        party_id: record.party_id,
        role,
    }))
}

/// The loan `id` if the caller may see it; 404 otherwise (ids do not leak).
pub fn visible_loan(state: &ApiState, caller: &Caller, id: &str) -> Result<Loan, Problem> {
    let not_found = || Problem::not_found(&format!("loan {id}"));
    let loan = match state.store.loan(id) {
        Ok(Some(loan)) => loan,
        Ok(None) | Err(crate::store::StoreError::BadId(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if caller.sees(&loan) {
        Ok(loan)
    } else {
        Err(not_found())
    }
}
