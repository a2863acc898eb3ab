//! The API's rules through a real socket against a real `serve` (bitcoind + electrs
//! behind it). One scenario per test:
//! - the authorization matrix: every route × {no token, a bad token, the admin, the
//!   loan's lender, its borrower, another lender, another borrower} answers as the
//!   contract says (another party's loan is 404, not 403);
//! - bad input: each offer field invalid in turn, and a co-signed PSBT that is garbage,
//!   of another loan, with an output changed, a non-ALL sighash, a signature by a key
//!   not in the escrow, or an extra input: a 4xx problem naming the field and the
//!   reason, and neither the loans nor the pending PSBT change; a 10 MB body is 413;
//! - idempotency: a repayment repeated with its key counts once, the same key with
//!   another body is 422, and another key is another repayment;
//! - webhooks: a lender's subscription receives every event of its loan once (after
//!   its receiver answered 500 twice to the first), in order, each signature valid.

mod common;

use std::str::FromStr;

use anyhow::{ensure, Context};
use bitcoin::psbt::Psbt;
use common::serve::Market;
use reqwest::Method;
use serde_json::{json, Value};

fn problem_ok(v: &Value, status: u16) -> anyhow::Result<()> {
    ensure!(v["status"] == status, "{v}");
    ensure!(v["code"].is_string() && v["detail"].is_string(), "{v}");
    ensure!(
        v["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:btc-escrow:problem:")),
        "{v}"
    );
    Ok(())
}

#[test]
fn the_authorization_matrix() -> anyhow::Result<()> {
    let m = Market::open()?;
    let other_lender = m.register("Other Lender", "lender")?;
    let other_borrower = m.register("Other Borrower", "borrower")?;
    let loan = m.accepted()?;
    let id = loan["id"].as_str().context("id")?.to_owned();
    let open = m.api().expect(
        201,
        Method::POST,
        "/loans",
        &m.lender,
        Some(&m.offer_terms()),
    )?;
    let open_id = open["id"].as_str().context("id")?.to_owned();

    // Callers, in this order in every row below.
    let callers: [(&str, Option<&str>); 7] = [
        ("none", None),
        ("bad", Some("0000")),
        ("admin", Some(&m.admin)),
        ("lender", Some(&m.lender)),
        ("borrower", Some(&m.borrower)),
        ("other lender", Some(&other_lender)),
        ("other borrower", Some(&other_borrower)),
    ];
    let new_party = || -> anyhow::Result<Value> {
        let key = common::escrow::random_key()?;
        Ok(json!({"name": "P", "role": "borrower",
                  "account_key": m.parties.account(&key)?.to_string()}))
    };
    let loan_path = format!("/loans/{id}");
    let open_path = format!("/loans/{open_id}");
    let hook = json!({"url": "http://127.0.0.1:9/hook"});
    let lenders_hook = m
        .api()
        .expect(201, Method::POST, "/webhooks", &m.lender, Some(&hook))?;
    let deliveries = format!(
        "/webhooks/{}/deliveries",
        lenders_hook["id"].as_str().context("webhook id")?
    );
    let rows: Vec<(Method, String, Option<Value>, [u16; 7])> = vec![
        (
            Method::POST,
            "/parties".into(),
            None,
            [401, 401, 201, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/parties/me".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/loans".into(),
            Some(m.offer_terms()),
            [401, 401, 403, 201, 403, 201, 403],
        ),
        (
            Method::GET,
            "/loans".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/offers".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            loan_path.clone(),
            None,
            [401, 401, 200, 200, 200, 404, 404],
        ),
        // An open offer: every borrower sees it, other lenders do not.
        (
            Method::GET,
            open_path.clone(),
            None,
            [401, 401, 200, 200, 200, 404, 200],
        ),
        (
            Method::POST,
            format!("{loan_path}/accept"),
            Some(json!({"borrower_return_address": m.borrower_return.to_string()})),
            [401, 401, 403, 403, 409, 403, 404],
        ),
        (
            Method::POST,
            format!("{loan_path}/repayments"),
            Some(json!({"amount_minor": 100})),
            [401, 401, 403, 409, 403, 404, 403],
        ),
        // Only the loan's borrower asks for a withdrawal (this loan is not active).
        (
            Method::POST,
            format!("{loan_path}/withdrawals"),
            Some(json!({"amount_sat": 1_000})),
            [401, 401, 403, 403, 409, 403, 404],
        ),
        (
            Method::GET,
            format!("{loan_path}/psbt"),
            None,
            [401, 401, 404, 404, 404, 404, 404],
        ),
        (
            Method::POST,
            format!("{loan_path}/psbt"),
            Some(json!({"psbt": "garbage"})),
            [401, 401, 403, 422, 422, 404, 404],
        ),
        (
            Method::GET,
            format!("{loan_path}/events"),
            None,
            [401, 401, 200, 200, 200, 404, 404],
        ),
        // Every party may follow its own loans' events and register a webhook; a
        // webhook's deliveries are its owner's (and the admin's).
        (
            Method::GET,
            "/events/stream".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/webhooks".into(),
            Some(hook.clone()),
            [401, 401, 201, 201, 201, 201, 201],
        ),
        (
            Method::GET,
            deliveries.clone(),
            None,
            [401, 401, 200, 200, 404, 404, 404],
        ),
        (
            Method::GET,
            "/price".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::PUT,
            "/oracle/manual".into(),
            Some(json!({"price_minor": 10_000_000})),
            [401, 401, 200, 403, 403, 403, 403],
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, want) in &rows {
        for ((who, token), want) in callers.iter().zip(want) {
            let body = match (path.as_str(), body) {
                ("/parties", _) => Some(new_party()?),
                (_, b) => b.clone(),
            };
            let (status, answer) = if path == "/events/stream" {
                let status = m.api().status_only(path, *token)?;
                // A refusal is a problem document like any other.
                if status >= 400 {
                    m.api().call(method.clone(), path, *token, None, &[])?
                } else {
                    (status, Value::Null)
                }
            } else {
                m.api()
                    .call(method.clone(), path, *token, body.as_ref(), &[])?
            };
            if status != *want {
                wrong.push(format!(
                    "{method} {path} as {who}: {status}, want {want}: {answer}"
                ));
            } else if status >= 400 {
                problem_ok(&answer, status)?;
            }
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Lists show one's own loans only.
    let ids = |token: &str| -> anyhow::Result<Vec<String>> {
        Ok(m.api()
            .get("/loans", token)?
            .as_array()
            .context("list")?
            .iter()
            .filter_map(|l| l["id"].as_str().map(str::to_owned))
            .collect())
    };
    ensure!(ids(&m.lender)?.contains(&id) && ids(&m.borrower)?.contains(&id));
    ensure!(!ids(&other_lender)?.contains(&id) && !ids(&other_borrower)?.contains(&id));
    // The OpenAPI document (no token) covers every route, and no other.
    let (status, doc) = m
        .api()
        .call(Method::GET, "/openapi.json", None, None, &[])?;
    ensure!(
        status == 200
            && doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
    );
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("item")?.keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut routes: Vec<String> = [
        "POST /v1/parties",
        "GET /v1/parties/me",
        "POST /v1/loans",
        "GET /v1/loans",
        "GET /v1/offers",
        "GET /v1/loans/{id}",
        "POST /v1/loans/{id}/accept",
        "POST /v1/loans/{id}/repayments",
        "POST /v1/loans/{id}/withdrawals",
        "GET /v1/loans/{id}/psbt",
        "POST /v1/loans/{id}/psbt",
        "GET /v1/loans/{id}/events",
        "GET /v1/events/stream",
        "POST /v1/webhooks",
        "GET /v1/webhooks/{id}/deliveries",
        "GET /v1/price",
        "PUT /v1/oracle/manual",
        "GET /v1/health",
        "GET /metrics",
        "GET /v1/openapi.json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    routes.sort();
    ensure!(documented == routes, "{documented:#?}");
    for schema in [
        "LoanView",
        "Offer",
        "PendingPsbt",
        "Problem",
        "Event",
        "Health",
    ] {
        ensure!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} documented"
        );
    }

    // Health needs no token.
    let (status, health) = m.api().call(Method::GET, "/health", None, None, &[])?;
    ensure!(status == 200 && health["ok"] == true, "{health}");
    Ok(())
}

#[test]
fn bad_input_is_named_and_changes_nothing() -> anyhow::Result<()> {
    let mut m = Market::open()?;

    // Parties: each bad field named; a key already registered (the lender's) or the
    // arbiter's refused; the lender's key stays its own.
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let fresh = m
        .parties
        .account(&common::escrow::random_key()?)?
        .to_string();
    let mainnet = {
        let master = bitcoin::bip32::Xpriv::new_master(bitcoin::Network::Bitcoin, &[9u8; 32])?;
        btc_escrow::keys::AccountKey::from_master(
            &master,
            &btc_escrow::keys::account_path(bitcoin::Network::Bitcoin, 0)?,
            &secp,
        )?
        .to_string()
    };
    let lenders_key = m.parties.account(&m.parties.lender)?.to_string();
    let party_cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"name": "", "role": "borrower", "account_key": fresh}),
            422,
            "name",
        ),
        (
            json!({"name": "P", "role": "admin", "account_key": fresh}),
            422,
            "role",
        ),
        (
            json!({"name": "P", "role": "borrower", "account_key": "xpub-nonsense"}),
            422,
            "account_key",
        ),
        (
            json!({"name": "P", "role": "borrower", "account_key": mainnet}),
            422,
            "account_key",
        ),
        (
            json!({"name": "P", "role": "borrower", "account_key": lenders_key}),
            409,
            "account_key",
        ),
        (
            json!({"name": "P", "role": "borrower", "account_key": m.data.arbiter_account_key}),
            422,
            "account_key",
        ),
        (json!({"name": "P", "role": "borrower"}), 422, "account_key"),
    ];
    for (body, want, field) in &party_cases {
        let (status, answer) =
            m.api()
                .call(Method::POST, "/parties", Some(&m.admin), Some(body), &[])?;
        ensure!(status == *want, "{body}: {status} {answer}");
        problem_ok(&answer, status)?;
        ensure!(answer["field"] == *field, "{body}: {answer}");
    }
    let me = m.api().get("/parties/me", &m.lender)?;
    ensure!(me["account_key"] == lenders_key.as_str(), "{me}");
    // The manual price and the stream position.
    let (status, answer) = m.api().call(
        Method::PUT,
        "/oracle/manual",
        Some(&m.admin),
        Some(&json!({"price_minor": 0})),
        &[],
    )?;
    ensure!(
        status == 422 && answer["field"] == "price_minor",
        "{answer}"
    );
    let (status, answer) = m.api().call(
        Method::GET,
        "/events/stream",
        Some(&m.lender),
        None,
        &[("Last-Event-ID", "yesterday")],
    )?;
    ensure!(
        status == 422 && answer["field"] == "Last-Event-ID",
        "{answer}"
    );
    let past = btc_escrow::util::unix_now() - 10;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("principal_minor", json!(0), "principal_minor"),
        ("currency", json!("EUR"), "currency"),
        ("currency", json!("dollars"), "currency"),
        ("apr_bps", json!(20_000), "apr_bps"),
        ("term_secs", json!(0), "term_secs"),
        ("initial_ltv_bps", json!(0), "initial_ltv_bps"),
        ("margin_call_ltv_bps", json!(4_000), "initial_ltv_bps"),
        ("liquidation_ltv_bps", json!(10_000), "liquidation_ltv_bps"),
        (
            "hard_liquidation_ltv_bps",
            json!(7_500),
            "hard_liquidation_ltv_bps",
        ),
        (
            "liquidation_penalty_bps",
            json!(6_000),
            "liquidation_penalty_bps",
        ),
        ("hysteresis_bps", json!(2_500), "hysteresis_bps"),
        ("confirm_ticks", json!(1), "confirm_ticks"),
        ("grace_blocks", json!(0), "grace_blocks"),
        ("recovery_delay_blocks", json!(0), "recovery_delay_blocks"),
        ("funding_deadline", json!(past), "funding_deadline"),
        (
            "lender_payout_address",
            json!("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
            "lender_payout_address",
        ),
        (
            "lender_payout_address",
            json!("not an address"),
            "lender_payout_address",
        ),
        ("min_confirmations", json!(0), "min_confirmations"),
        ("apr_bps", json!("ten"), "apr_bps"),
        ("principal_minor", json!(-5), "principal_minor"),
        ("surprise", json!(1), "surprise"),
    ];
    let count = |m: &Market| -> anyhow::Result<usize> {
        Ok(m.api()
            .get("/loans", &m.admin)?
            .as_array()
            .context("list")?
            .len())
    };
    let before = count(&m)?;
    for (field, value, named) in &cases {
        let mut offer = m.offer_terms();
        offer[*field] = value.clone();
        let (status, answer) =
            m.api()
                .call(Method::POST, "/loans", Some(&m.lender), Some(&offer), &[])?;
        ensure!(status == 422, "{field}={value}: {status} {answer}");
        problem_ok(&answer, 422)?;
        ensure!(answer["field"] == *named, "{field}={value}: {answer}");
    }
    let mut offer = m.offer_terms();
    offer.as_object_mut().context("object")?.remove("apr_bps");
    let (status, answer) =
        m.api()
            .call(Method::POST, "/loans", Some(&m.lender), Some(&offer), &[])?;
    ensure!(status == 422 && answer["field"] == "apr_bps", "{answer}");
    ensure!(count(&m)? == before, "no loan made by a bad offer");
    // A 10 MB body is refused from its Content-Length, before it is read.
    let answer = {
        use std::io::{Read, Write};
        let host = m.api().base.trim_start_matches("http://");
        let host = host.split('/').next().context("host")?;
        let mut tcp = std::net::TcpStream::connect(host)?;
        write!(
            tcp,
            "POST /v1/loans HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
            m.lender,
            10 * 1024 * 1024
        )?;
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf)?;
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    ensure!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    ensure!(answer.contains("body_too_large"), "{answer}");

    // Two loans breached together; loan A's co-signature tried in every bad shape.
    let a = m.active()?;
    let b = m.active()?;
    m.set_price(6_200_000)?;
    for id in [&a, &b] {
        m.api()
            .wait(&format!("/loans/{id}"), &m.lender, "liquidating", |v| {
                v["pending_psbt"].is_object()
            })?;
    }
    let loan_before = m.api().get(&format!("/loans/{a}"), &m.lender)?;
    let (_, signed_a) = m.lender_signs(&a)?;
    let (_, signed_b) = m.lender_signs(&b)?;
    let good = Psbt::from_str(&signed_a)?;
    let mut changed_output = good.clone();
    changed_output.unsigned_tx.output[0].value -= bitcoin::Amount::from_sat(1_000);
    let mut not_all = good.clone();
    for sig in not_all.inputs[0].partial_sigs.values_mut() {
        sig.sighash_type = bitcoin::EcdsaSighashType::None;
    }
    let mut stranger = Psbt::from_str(
        loan_before["pending_psbt"]["psbt"]
            .as_str()
            .context("psbt")?,
    )?;
    {
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let (sk, pk) = secp.generate_keypair(&mut bitcoin::secp256k1::rand::thread_rng());
        let msg = bitcoin::secp256k1::Message::from_digest([7u8; 32]);
        stranger.inputs[0].partial_sigs.insert(
            bitcoin::PublicKey::new(pk),
            bitcoin::ecdsa::Signature::sighash_all(secp.sign_ecdsa(&msg, &sk)),
        );
    }
    let mut extra_input = good.clone();
    extra_input.unsigned_tx.input.push(bitcoin::TxIn::default());
    extra_input.inputs.push(Default::default());
    let bad: Vec<(&str, String)> = vec![
        ("garbage", "cHNidP8BAHECAAAAAQ==".into()),
        ("not base64", "%%%".into()),
        ("another loan's", signed_b.clone()),
        ("an output changed", changed_output.to_string()),
        ("a non-ALL sighash", not_all.to_string()),
        ("a key not in the escrow", stranger.to_string()),
        ("an extra input", extra_input.to_string()),
    ];
    for (what, psbt) in &bad {
        let (status, answer) = m.api().call(
            Method::POST,
            &format!("/loans/{a}/psbt"),
            Some(&m.lender),
            Some(&json!({ "psbt": psbt })),
            &[],
        )?;
        ensure!((400..500).contains(&status), "{what}: {status} {answer}");
        problem_ok(&answer, status)?;
        ensure!(answer["field"] == "psbt", "{what}: {answer}");
    }
    let loan_after = m.api().get(&format!("/loans/{a}"), &m.lender)?;
    ensure!(
        loan_after["pending_psbt"] == loan_before["pending_psbt"]
            && loan_after["state"] == "liquidating"
            && loan_after["txids"] == json!([]),
        "unchanged: {loan_after}"
    );
    // And the good one still goes through.
    let sent = m.post_psbt(&a, &signed_a)?;
    ensure!(sent["txid"].is_string(), "{sent}");
    Ok(())
}

#[test]
fn a_repayment_repeated_with_its_key_counts_once() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let id = m.active()?;
    let path = format!("/loans/{id}/repayments");
    let pay = |amount: u64, key: Option<&str>| -> anyhow::Result<(u16, Value)> {
        let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        m.api().call(
            Method::POST,
            &path,
            Some(&m.lender),
            Some(&json!({ "amount_minor": amount })),
            &headers,
        )
    };
    let (s1, first) = pay(10_000, Some("wire-1"))?;
    ensure!(s1 == 200 && first["repaid_minor"] == 10_000, "{first}");
    let (s2, again) = pay(10_000, Some("wire-1"))?;
    ensure!(
        s2 == 200 && again == first,
        "replayed as first answered: {again}"
    );
    let (s3, other) = pay(20_000, Some("wire-1"))?;
    ensure!(
        s3 == 422 && other["code"] == "idempotency_key_reused",
        "{other}"
    );
    let (s4, next) = pay(10_000, Some("wire-2"))?;
    ensure!(s4 == 200 && next["repaid_minor"] == 20_000, "{next}");
    let loan = m.api().get(&format!("/loans/{id}"), &m.lender)?;
    ensure!(loan["repaid_minor"] == 20_000, "{loan}");
    let events = m.api().get(&format!("/loans/{id}/events"), &m.lender)?;
    let repayments = events
        .as_array()
        .context("events")?
        .iter()
        .filter(|e| e["event"]["event"] == "repayment_recorded")
        .count();
    ensure!(repayments == 2, "{events}");
    Ok(())
}

/// What the test's webhook receiver saw: (webhook-id, timestamp, signature, body,
/// the status it answered).
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, u64, String, String, u16)>>>;

/// A webhook receiver on a free loopback port that answers 500 to its first `fail`
/// requests and 200 after.
fn receiver(fail: usize) -> anyhow::Result<(String, Seen)> {
    use axum::http::HeaderMap;
    let seen: Seen = Default::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let state = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: HeaderMap, body: String| {
                    let state = state.clone();
                    async move {
                        let h = |k: &str| {
                            headers
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let mut seen = state.lock().expect("seen");
                        let status = if seen.len() < fail { 500 } else { 200 };
                        seen.push((
                            h("webhook-id"),
                            h("webhook-timestamp").parse().unwrap_or(0),
                            h("webhook-signature"),
                            body,
                            status,
                        ));
                        axum::http::StatusCode::from_u16(status).expect("status")
                    }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("receiver");
        });
    });
    Ok((url, seen))
}

#[test]
fn webhooks_are_signed_retried_and_delivered_once_each_in_order() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let (url, seen) = receiver(2)?;
    let (status, bad) = m.api().call(
        Method::POST,
        "/webhooks",
        Some(&m.lender),
        Some(&json!({"url": "ftp://example.com/x"})),
        &[],
    )?;
    ensure!(status == 422 && bad["field"] == "url", "{bad}");
    let hook = m.api().expect(
        201,
        Method::POST,
        "/webhooks",
        &m.lender,
        Some(&json!({ "url": url })),
    )?;
    let hook_id = hook["id"].as_str().context("id")?.to_owned();
    let secret = hook["secret"].as_str().context("secret")?.to_owned();
    ensure!(secret.starts_with("whsec_"), "{hook}");

    let id = m.active()?;
    let events = m.api().get(&format!("/loans/{id}/events"), &m.lender)?;
    let want: Vec<String> = events
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["global_seq"].as_u64().map(|s| format!("evt_{s}")))
        .collect();
    ensure!(want.len() >= 2, "{events}");
    let deliveries_path = format!("/webhooks/{hook_id}/deliveries");
    let deliveries = m
        .api()
        .wait(&deliveries_path, &m.lender, "every event delivered", |d| {
            d.as_array()
                .is_some_and(|d| d.iter().filter(|x| x["delivered"] == true).count() >= want.len())
        })?;
    let deliveries = deliveries.as_array().context("deliveries")?;
    ensure!(
        deliveries[0]["attempts"] == 3,
        "two 500s then a 200: {deliveries:?}"
    );
    ensure!(
        deliveries[1..].iter().all(|d| d["attempts"] == 1),
        "{deliveries:?}"
    );

    let seen = seen.lock().expect("seen").clone();
    let delivered: Vec<&str> = seen
        .iter()
        .filter(|s| s.4 == 200)
        .map(|s| s.0.as_str())
        .collect();
    ensure!(
        delivered == want,
        "once each, in order: {delivered:?} vs {want:?}"
    );
    ensure!(
        seen[0].0 == seen[1].0 && seen[1].0 == seen[2].0,
        "the retries repeat the id"
    );
    for (msg_id, ts, sig, body, _) in &seen {
        let expected =
            btc_escrow::api::webhook_signature(&secret, msg_id, *ts, body).context("signature")?;
        ensure!(*sig == expected, "{msg_id}: {sig} vs {expected}");
        let event: Value = serde_json::from_str(body)?;
        ensure!(format!("evt_{}", event["global_seq"]) == *msg_id, "{body}");
    }
    // Another party's webhook is not found.
    let (status, _) = m
        .api()
        .call(Method::GET, &deliveries_path, Some(&m.borrower), None, &[])?;
    ensure!(status == 404);
    Ok(())
}
