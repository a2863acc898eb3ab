//! Bodies that are not what an endpoint reads: broken JSON, an empty body, a JSON
//! array, a valid body under text/plain, at every body endpoint and at the
//! co-signature; and 10 MB bodies, declared and chunked.

use reqwest::Method;
use serde_json::{json, Value};

use crate::breach::Breach;
use crate::http::JSON;
use crate::refusal::want;
use crate::snapshot::Cases;
use crate::Scene;

/// 26: broken JSON, an empty body, a wrong Content-Type, at every body endpoint but
/// the co-signature.
pub fn at_every_endpoint(s: &Scene, cases: &mut Cases) -> anyhow::Result<()> {
    let (m, raw, b, o) = (s.m, &s.raw, &s.b, &s.o);
    let fresh_party = m
        .parties
        .account(&crate::common::escrow::random_key()?)?
        .to_string();
    let return_to = m.borrower_return.to_string();
    let endpoints: Vec<(Method, String, &str, Value)> = vec![
        (
            Method::POST,
            "/parties".into(),
            &m.admin,
            json!({"name": "P", "role": "lender", "account_key": fresh_party}),
        ),
        (Method::POST, "/loans".into(), &m.lender, m.offer_terms()),
        (
            Method::POST,
            format!("/loans/{o}/accept"),
            &m.borrower,
            json!({"borrower_return_address": return_to}),
        ),
        (
            Method::POST,
            format!("/loans/{b}/repayments"),
            &m.lender,
            json!({"amount_minor": 1}),
        ),
        (
            Method::POST,
            "/webhooks".into(),
            &m.lender,
            json!({"url": "http://127.0.0.1:9/hook"}),
        ),
        (
            Method::PUT,
            "/oracle/manual".into(),
            &m.admin,
            json!({"price_minor": 10_000_000}),
        ),
    ];
    let unreadable = want(&[400, 422], None, None);
    let bad_bodies: [(&str, &[u8]); 3] = [
        ("broken JSON", b"{\"psbt\":"),
        ("an empty body", b""),
        ("not an object", b"[1,2]"),
    ];
    for (method, path, token, _) in &endpoints {
        for (what, body) in bad_bodies {
            cases.run(
                &format!("26 {what} at {method} {path}"),
                &unreadable,
                || raw.body(method.clone(), path, token, JSON, body.to_vec()),
            );
        }
    }
    // A valid body under text/plain (the last of phase one: if it is taken, it changes
    // something, which the snapshot names).
    let unsupported = want(&[400, 415], None, None);
    for (method, path, token, body) in &endpoints {
        cases.run(
            &format!("26 text/plain at {method} {path}"),
            &unsupported,
            || {
                raw.body(
                    method.clone(),
                    path,
                    token,
                    "text/plain",
                    serde_json::to_vec(body)?,
                )
            },
        );
    }
    Ok(())
}

/// 12: 10 MB to the co-signature, declared and chunked; 26 at the co-signature:
/// broken, empty, text/plain (with a body refused anyway: a valid one would co-sign).
pub fn at_the_cosignature(s: &Scene, breach: &Breach, cases: &mut Cases) -> anyhow::Result<()> {
    let (m, raw) = (s.m, &s.raw);
    let cosign_path = format!("/loans/{}/psbt", s.a);
    let too_large = want(&[413], Some("body_too_large"), None);
    for chunked in [false, true] {
        let name = format!(
            "12 10 MB to /psbt, {}",
            if chunked { "chunked" } else { "declared" }
        );
        cases.run(&name, &too_large, || {
            raw.flood(&cosign_path, &m.lender, 10 * 1024 * 1024, chunked)
        });
    }
    let refused = want(&[400, 415, 422], None, None);
    for (what, ct, body) in [
        ("broken JSON", JSON, b"{\"psbt\":".to_vec()),
        ("an empty body", JSON, Vec::new()),
        (
            "text/plain",
            "text/plain",
            serde_json::to_vec(&json!({"psbt": breach.pending_a.to_string()}))?,
        ),
    ] {
        cases.run(
            &format!("26 {what} at POST /loans/{{a}}/psbt"),
            &refused,
            || raw.body(Method::POST, &cosign_path, &m.lender, ct, body),
        );
    }
    Ok(())
}
