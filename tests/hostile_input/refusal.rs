//! What a refusal must look like: a 4xx problem+json answer naming its code and field.

use anyhow::ensure;

use crate::http::Answer;

/// The statuses a refusal may have, and the code and field it must name (any, if none).
pub struct Want {
    statuses: &'static [u16],
    code: Option<&'static str>,
    field: Option<&'static str>,
}

pub const fn want(
    statuses: &'static [u16],
    code: Option<&'static str>,
    field: Option<&'static str>,
) -> Want {
    Want {
        statuses,
        code,
        field,
    }
}

/// 422 naming `field`.
pub const fn invalid(field: &'static str) -> Want {
    want(&[422], None, Some(field))
}

/// 422 `invalid_input` naming `psbt`: every refused co-signature.
pub const PSBT_REFUSED: Want = want(&[422], Some("invalid_input"), Some("psbt"));

/// `a` is the refusal `w` describes: never 500, problem+json with status, detail and a
/// code.
pub fn check(name: &str, a: &Answer, w: &Want) -> anyhow::Result<()> {
    ensure!(
        a.status < 500 && w.statuses.contains(&a.status),
        "{name}: {} (expected {:?}): {}",
        a.status,
        w.statuses,
        a.json
    );
    ensure!(
        a.content_type.starts_with("application/problem+json"),
        "{name}: Content-Type {:?}: {}",
        a.content_type,
        a.json
    );
    ensure!(
        a.json["status"] == a.status && a.json["detail"].is_string(),
        "{name}: {}",
        a.json
    );
    let code = a.json["code"].as_str().unwrap_or("");
    ensure!(!code.is_empty(), "{name}: no code: {}", a.json);
    if let Some(c) = w.code {
        ensure!(code == c, "{name}: code {code}, expected {c}: {}", a.json);
    }
    if let Some(f) = w.field {
        ensure!(
            a.json["field"] == f,
            "{name}: field {}, expected {f}: {}",
            a.json["field"],
            a.json
        );
    }
    Ok(())
}
