//! Hostile values in well-formed requests: a key without origin, overflowing amounts,
//! a mainnet address, repayments with and without an Idempotency-Key, and other
//! parties acting on loan A.

use anyhow::{ensure, Context};
use bitcoin::bip32::Xpub;
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::Network;
use btc_escrow::keys::{account_path, AccountKey};
use reqwest::Method;
use serde_json::{json, Value};

use crate::breach::Breach;
use crate::common::serve::Market;
use crate::http::{Raw, JSON};
use crate::refusal::{check, invalid, want, Want};
use crate::snapshot::Cases;
use crate::Scene;

/// 16: Bea's account key without its origin (a bare xpub) is refused; with it, she is
/// registered. Her token, and how the refusal went.
pub fn register_bea(
    m: &Market,
    raw: &Raw,
    secp: &Secp256k1<All>,
) -> anyhow::Result<(String, anyhow::Result<()>)> {
    let bea_key = crate::common::escrow::random_key()?;
    let bea_account =
        AccountKey::from_master(bea_key.master(), &account_path(Network::Regtest, 0)?, secp)?;
    let bare = Xpub::from_priv(
        secp,
        &bea_key
            .master()
            .derive_priv(secp, bea_account.origin_path())?,
    );
    ensure!(bare == *bea_account.xpub());
    let answer = raw.json(
        Method::POST,
        "/parties",
        &m.admin,
        &json!({"name": "Bea", "role": "borrower", "account_key": bare.to_string()}),
    )?;
    let refused = check(
        "16 a bare xpub as account_key",
        &answer,
        &invalid("account_key"),
    );
    // Not registered: the same key with its origin is not taken.
    let bea = m.api().expect(
        201,
        Method::POST,
        "/parties",
        &m.admin,
        Some(&json!({"name": "Bea", "role": "borrower", "account_key": bea_account.to_string()})),
    )?;
    Ok((bea["token"].as_str().context("token")?.to_owned(), refused))
}

/// 17: amounts beyond their integer types, in an offer, a repayment and the manual
/// price; then the market's price again.
pub fn overflowing_amounts(s: &Scene, cases: &mut Cases) -> anyhow::Result<()> {
    let (m, raw, b) = (s.m, &s.raw, &s.b);
    let offer_with = |field: &str, value: &str| -> anyhow::Result<Vec<u8>> {
        let mut terms = m.offer_terms();
        terms[field] = json!("PLACEHOLDER");
        Ok(serde_json::to_string(&terms)?
            .replace("\"PLACEHOLDER\"", value)
            .into_bytes())
    };
    for (name, field, value) in [
        (
            "17 principal_minor u64::MAX",
            "principal_minor",
            u64::MAX.to_string(),
        ),
        (
            "17 principal_minor above u64",
            "principal_minor",
            "18446744073709551616".into(),
        ),
        ("17 principal_minor 1e30", "principal_minor", "1e30".into()),
        ("17 apr_bps above u32", "apr_bps", "4294967296".into()),
        ("17 apr_bps u32::MAX", "apr_bps", u32::MAX.to_string()),
        ("17 term_secs u64::MAX", "term_secs", u64::MAX.to_string()),
    ] {
        let body = offer_with(field, &value)?;
        cases.run(name, &invalid(field), || {
            raw.body(Method::POST, "/loans", &m.lender, JSON, body)
        });
    }
    let repayments = format!("/loans/{b}/repayments");
    cases.run(
        "17 repayment amount_minor u64::MAX",
        &invalid("amount_minor"),
        || {
            raw.json(
                Method::POST,
                &repayments,
                &m.lender,
                &json!({"amount_minor": u64::MAX}),
            )
        },
    );
    cases.run(
        "17 repayment amount_minor above u64",
        &invalid("amount_minor"),
        || {
            raw.body(
                Method::POST,
                &repayments,
                &m.lender,
                JSON,
                b"{\"amount_minor\": 18446744073709551616}".to_vec(),
            )
        },
    );
    cases.run(
        "17 manual price_minor u64::MAX",
        &invalid("price_minor"),
        || {
            raw.json(
                Method::PUT,
                "/oracle/manual",
                &m.admin,
                &json!({"price_minor": u64::MAX}),
            )
        },
    );
    // Whatever that did, the market's price again, and the engine still deciding.
    m.set_price(10_000_000)?;
    m.api()
        .wait("/health", &m.admin, "fit to decide", |h| h["ok"] == true)?;
    Ok(())
}

/// 20: offer O accepted with a mainnet return address: refused, O still offered.
pub fn mainnet_address(s: &Scene, cases: &mut Cases) -> anyhow::Result<()> {
    let (m, o) = (s.m, &s.o);
    cases.run(
        "20 accept with a mainnet borrower_return_address",
        &invalid("borrower_return_address"),
        || {
            s.raw.json(
                Method::POST,
                &format!("/loans/{o}/accept"),
                &m.borrower,
                &json!({"borrower_return_address": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"}),
            )
        },
    );
    let still = m.api().get(&format!("/loans/{o}"), &m.admin)?;
    ensure!(still["state"] == "offered", "{still}");
    Ok(())
}

/// 21: without a key every POST is a repayment; with one, the first answer replays.
pub fn repayment_replays(s: &Scene, cases: &mut Cases) -> anyhow::Result<()> {
    let (m, b) = (s.m, &s.b);
    let repaid = || -> anyhow::Result<u64> {
        m.api().get(&format!("/loans/{b}"), &m.admin)?["repaid_minor"]
            .as_u64()
            .context("repaid_minor")
    };
    let repay = |headers: &[(&str, &str)]| {
        s.raw.send(
            Method::POST,
            &format!("/loans/{b}/repayments"),
            &m.lender,
            Some(JSON),
            Some(b"{\"amount_minor\": 100}".to_vec()),
            headers,
        )
    };
    let at_first = repaid()?;
    for _ in 0..2 {
        let r = repay(&[])?;
        ensure!(r.status == 200 && !r.replayed, "{}", r.json);
    }
    ensure!(
        repaid()? == at_first + 200,
        "two POSTs without a key count twice"
    );
    let first = repay(&[("Idempotency-Key", "hostile-21")])?;
    let second = repay(&[("Idempotency-Key", "hostile-21")])?;
    ensure!(first.status == 200 && !first.replayed, "{}", first.json);
    ensure!(second.status == 200 && second.replayed, "{}", second.json);
    ensure!(first.json == second.json, "the same body replayed");
    ensure!(repaid()? == at_first + 300, "the keyed pair counts once");
    cases.ran(Ok(()));
    Ok(())
}

/// 23: B's borrower and another lender act on A: answered as for a loan that does not
/// exist (or forbidden to their role, as for any loan), the same for an unknown id.
pub fn other_parties(s: &Scene, breach: &Breach, cases: &mut Cases) -> anyhow::Result<()> {
    let (m, raw, a) = (s.m, &s.raw, &s.a);
    let not_found = want(&[404], Some("not_found"), None);
    let forbidden = want(&[403], Some("forbidden"), None);
    let accept = json!({"borrower_return_address": m.borrower_return.to_string()});
    let repay = json!({"amount_minor": 1});
    let honest = json!({ "psbt": breach.signed_a });
    let (bea, other) = ("B's borrower", "another lender");
    let acts: [(&str, &str, Method, &str, &Value, &Want); 8] = [
        (bea, &s.bea, Method::POST, "accept", &accept, &not_found),
        (bea, &s.bea, Method::GET, "psbt", &Value::Null, &not_found),
        (bea, &s.bea, Method::POST, "psbt", &honest, &not_found),
        (bea, &s.bea, Method::POST, "repayments", &repay, &forbidden),
        (
            other,
            &s.other_lender,
            Method::POST,
            "repayments",
            &repay,
            &not_found,
        ),
        (
            other,
            &s.other_lender,
            Method::GET,
            "psbt",
            &Value::Null,
            &not_found,
        ),
        (
            other,
            &s.other_lender,
            Method::POST,
            "psbt",
            &honest,
            &not_found,
        ),
        (
            other,
            &s.other_lender,
            Method::POST,
            "accept",
            &accept,
            &forbidden,
        ),
    ];
    for (who, token, method, action, body, w) in acts {
        let name = format!("23 {who}: {method} /loans/{{a}}/{action}");
        cases.run(&name, w, || {
            raw.call(method.clone(), &format!("/loans/{a}/{action}"), token, body)
        });
        // The same answer for an id that does not exist: nothing leaks.
        let ghost = format!("/loans/ln_0000000000000000/{action}");
        let none = raw.call(method, &ghost, token, body)?;
        cases.keep(check(&format!("{name} (an unknown id)"), &none, w));
    }
    Ok(())
}
