//! Hostile input through the HTTP API of a real `serve` (bitcoind + electrs), one
//! scenario: loan A (borrower Bob) and loan B (borrower Bea, registered here) are
//! active, an offer O is open. Bad bodies, overflowing amounts, a key without origin,
//! a mainnet address, repayments with and without an Idempotency-Key, broken JSON, an
//! empty body and a wrong Content-Type at every body endpoint are sent; then the price
//! breaches, both loans wait for the lender's co-signature, and loan A's co-signature
//! is tried in every hostile shape (changed outputs, an added input of the lender's
//! own coin, changed scripts and derivations, non-ALL sighashes, signatures over other
//! messages or by other keys, an uncompressed duplicate of a valid key, B's PSBT,
//! truncated PSBTs, 10 MB bodies declared and chunked, a segwit amount lie); B's
//! borrower and another lender act on A. Each case answers 4xx problem+json (never
//! 500) naming its code and field, and changes nothing: the state, pending PSBT,
//! txids, repaid amount and events of every loan are as before. At the end A is
//! co-signed twice concurrently with the same PSBT and B twice concurrently with two
//! different valid co-signatures: each loan broadcasts exactly one transaction, which
//! is mined, and both are `liquidated`.

mod common;

use std::io::{Read, Write};
use std::str::FromStr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use anyhow::{ensure, Context};
use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bitcoin::ecdsa::Signature;
use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, Network, PublicKey, ScriptBuf, TxIn};
use btc_escrow::keys::{account_path, AccountKey, SigningKey};
use common::serve::Market;
use reqwest::Method;
use serde_json::{json, Value};

/// An HTTP answer: status, Content-Type, headers we look at, and the body as JSON.
struct Answer {
    status: u16,
    content_type: String,
    replayed: bool,
    json: Value,
}

/// A request sent as given: any Content-Type, any bytes.
struct Raw {
    base: String,
    client: reqwest::blocking::Client,
}

impl Raw {
    fn new(m: &Market) -> Self {
        Self {
            base: m.api().base.clone(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("a client"),
        }
    }

    fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().with_context(|| format!("{path}: sending"))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let content_type = header("content-type");
        let replayed = header("idempotent-replayed") == "true";
        let text = resp.text()?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer {
            status,
            content_type,
            replayed,
            json,
        })
    }

    fn json(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<Answer> {
        self.send(
            method,
            path,
            token,
            Some("application/json"),
            Some(serde_json::to_vec(body)?),
            &[],
        )
    }

    /// POST `total` bytes of JSON-looking body over a raw socket, declared by
    /// Content-Length or sent chunked; read the answer while still writing (the server
    /// may answer and close before the body ends).
    fn flood(
        &self,
        path: &str,
        token: &str,
        total: usize,
        chunked: bool,
    ) -> anyhow::Result<Answer> {
        let host = self
            .base
            .trim_start_matches("http://")
            .split('/')
            .next()
            .context("host")?
            .to_owned();
        let mut tcp = std::net::TcpStream::connect(&host)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let length = if chunked {
            "Transfer-Encoding: chunked".to_owned()
        } else {
            format!("Content-Length: {total}")
        };
        write!(
            tcp,
            "POST /v1{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\n{length}\r\nConnection: close\r\n\r\n"
        )?;
        let mut reader = tcp.try_clone()?;
        let read = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let mut body = Vec::with_capacity(total);
        body.extend_from_slice(b"{\"psbt\":\"");
        body.resize(total - 2, b'A');
        body.extend_from_slice(b"\"}");
        for piece in body.chunks(64 * 1024) {
            let sent = if chunked {
                write!(tcp, "{:x}\r\n", piece.len())
                    .and_then(|_| tcp.write_all(piece))
                    .and_then(|_| tcp.write_all(b"\r\n"))
            } else {
                tcp.write_all(piece)
            };
            if sent.is_err() {
                break; // the server answered and closed
            }
        }
        if chunked {
            let _ = tcp.write_all(b"0\r\n\r\n");
        }
        let got = read
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?;
        let text = String::from_utf8_lossy(&got).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line: {text:?}"))?;
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        let json = match (rest.find('{'), rest.rfind('}')) {
            (Some(a), Some(b)) if a < b => serde_json::from_str(&rest[a..=b])?,
            _ => Value::String(rest.to_owned()),
        };
        Ok(Answer {
            status,
            content_type,
            replayed: false,
            json,
        })
    }
}

/// What a refusal must look like.
struct Want {
    statuses: &'static [u16],
    code: Option<&'static str>,
    field: Option<&'static str>,
}

const fn want(
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
const fn invalid(field: &'static str) -> Want {
    want(&[422], None, Some(field))
}

/// 422 `invalid_input` naming `psbt`: every refused co-signature.
const PSBT_REFUSED: Want = want(&[422], Some("invalid_input"), Some("psbt"));

fn check(name: &str, a: &Answer, w: &Want) -> anyhow::Result<()> {
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

/// What no refused request may change: per loan its state, pending PSBT (with its
/// bytes), txids, repaid amount and number of events; and the number of loans.
fn snapshot(m: &Market, ids: &[&str]) -> anyhow::Result<Value> {
    let mut loans = Vec::new();
    for id in ids {
        let v = m.api().get(&format!("/loans/{id}"), &m.admin)?;
        let events = m.api().get(&format!("/loans/{id}/events"), &m.admin)?;
        loans.push(json!({
            "id": id,
            "state": v["state"],
            "pending_psbt": v["pending_psbt"],
            "txids": v["txids"],
            "confirmed_txid": v["confirmed_txid"],
            "repaid_minor": v["repaid_minor"],
            "borrower_id": v["borrower_id"],
            "events": events.as_array().context("events")?.len(),
        }));
    }
    let count = m.api().get("/loans", &m.admin)?;
    Ok(json!({ "loans": loans, "count": count.as_array().context("loans")?.len() }))
}

/// Runs cases, each checked against its expectation and the snapshot; collects every
/// failure so one run names them all.
struct Cases<'a> {
    m: &'a Market,
    ids: Vec<&'a str>,
    failures: Vec<String>,
    run: usize,
}

impl Cases<'_> {
    fn run(&mut self, name: &str, w: &Want, send: impl FnOnce() -> anyhow::Result<Answer>) {
        self.run += 1;
        let outcome = (|| {
            let before = snapshot(self.m, &self.ids)?;
            let answer = send()?;
            let checked = check(name, &answer, w);
            let after = snapshot(self.m, &self.ids)?;
            checked?;
            ensure!(
                before == after,
                "{name}: changed the loans\nbefore {before}\nafter  {after}"
            );
            Ok(())
        })();
        if let Err(e) = outcome {
            eprintln!("FAILED {e:#}");
            self.failures.push(format!("{e:#}"));
        }
    }
}

/// The private and public key of `key`'s escrow key on `chain` in `psbt` (input 0's
/// bip32_derivation entry under `key`'s fingerprint whose path ends `chain/index`):
/// chain 0 is the 2-of-3 branch, chain 2 the timelocked single-key branch.
fn escrow_key(
    psbt: &Psbt,
    key: &SigningKey,
    chain: u32,
    secp: &Secp256k1<All>,
) -> anyhow::Result<(SecretKey, PublicKey)> {
    let fingerprint = key.master().fingerprint(secp);
    let path = psbt.inputs[0]
        .bip32_derivation
        .values()
        .find(|(fp, path)| {
            let steps: Vec<_> = path.into_iter().collect();
            *fp == fingerprint
                && steps.len() >= 2
                && *steps[steps.len() - 2] == bitcoin::bip32::ChildNumber::Normal { index: chain }
        })
        .map(|(_, p)| p.clone())
        .with_context(|| format!("no key of chain {chain} in the PSBT"))?;
    derived(key.master(), &path, secp)
}

fn derived(
    master: &Xpriv,
    path: &DerivationPath,
    secp: &Secp256k1<All>,
) -> anyhow::Result<(SecretKey, PublicKey)> {
    let sk = master.derive_priv(secp, path)?.private_key;
    Ok((sk, PublicKey::new(sk.public_key(secp))))
}

/// A SIGHASH_ALL signature of `psbt`'s input `index` with `sk`, over the escrow script
/// and amount given (the PSBT's own by default), with extra nonce data if given.
fn signature(
    psbt: &Psbt,
    index: usize,
    sk: &SecretKey,
    script: Option<&ScriptBuf>,
    amount: Option<Amount>,
    nonce: Option<[u8; 32]>,
    secp: &Secp256k1<All>,
) -> anyhow::Result<Signature> {
    let input = &psbt.inputs[index];
    let script = script
        .or(input.witness_script.as_ref())
        .context("witness_script")?;
    let amount = amount
        .or(input.witness_utxo.as_ref().map(|u| u.value))
        .context("witness_utxo")?;
    let sighash = SighashCache::new(&psbt.unsigned_tx).p2wsh_signature_hash(
        index,
        script,
        amount,
        EcdsaSighashType::All,
    )?;
    let msg = Message::from(sighash);
    let sig = match nonce {
        Some(n) => secp.sign_ecdsa_with_noncedata(&msg, sk, &n),
        None => secp.sign_ecdsa(&msg, sk),
    };
    Ok(Signature::sighash_all(sig))
}

/// Offer the market's terms, accept as `borrower` (the market's price first), fund the
/// escrow from the market's wallet, mine: the active loan's id.
fn activate(m: &mut Market, borrower: &str) -> anyhow::Result<String> {
    let api = m.api().clone();
    let loan = api.expect(
        201,
        Method::POST,
        "/loans",
        &m.lender,
        Some(&m.offer_terms()),
    )?;
    let id = loan["id"].as_str().context("id")?.to_owned();
    m.set_price(10_000_000)?;
    api.wait("/health", &m.admin, "fit to decide", |h| h["ok"] == true)?;
    let loan = api.expect(
        200,
        Method::POST,
        &format!("/loans/{id}/accept"),
        borrower,
        Some(&json!({ "borrower_return_address": m.borrower_return.to_string() })),
    )?;
    let address =
        bitcoin::Address::from_str(loan["escrow"]["address"].as_str().context("address")?)?
            .require_network(Network::Regtest)?;
    let funding = m.wallet.send(
        &address,
        Amount::from_sat(loan["required_collateral_sat"].as_u64().context("sat")?),
        bitcoin::FeeRate::from_sat_per_vb(2).context("rate")?,
    )?;
    m.env
        .wait_for_tx(&address.script_pubkey(), funding.compute_txid())?;
    m.env.mine(1)?;
    api.wait(&format!("/loans/{id}"), borrower, "active", |v| {
        v["state"] == "active"
    })?;
    Ok(id)
}

#[test]
fn hostile_input_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut m = Market::open()?;
    let secp = Secp256k1::new();
    let raw = Raw::new(&m);

    // Bea, B's borrower: her account key, bare (no origin) first (16).
    let bea_key = common::escrow::random_key()?;
    let bea_account =
        AccountKey::from_master(bea_key.master(), &account_path(Network::Regtest, 0)?, &secp)?;
    let bare = Xpub::from_priv(
        &secp,
        &bea_key
            .master()
            .derive_priv(&secp, bea_account.origin_path())?,
    );
    ensure!(bare == *bea_account.xpub());
    let answer = raw.json(
        Method::POST,
        "/parties",
        &m.admin,
        &json!({"name": "Bea", "role": "borrower", "account_key": bare.to_string()}),
    )?;
    let mut early = Vec::new();
    if let Err(e) = check(
        "16 a bare xpub as account_key",
        &answer,
        &invalid("account_key"),
    ) {
        early.push(format!("{e:#}"));
    }
    // Not registered: the same key with its origin is not taken.
    let bea = m.api().expect(
        201,
        Method::POST,
        "/parties",
        &m.admin,
        Some(&json!({"name": "Bea", "role": "borrower", "account_key": bea_account.to_string()})),
    )?;
    let bea = bea["token"].as_str().context("token")?.to_owned();
    let other_lender = m.register("Other Lender", "lender")?;

    // The lender's own wallet, with a coin (3).
    let mut lender_wallet = common::wallet::TestWallet::new(&m.env)?;
    lender_wallet.fund(&m.env, 1)?;

    let a = m.active()?;
    let b = activate(&mut m, &bea)?;
    let offer = m.api().expect(
        201,
        Method::POST,
        "/loans",
        &m.lender,
        Some(&m.offer_terms()),
    )?;
    let o = offer["id"].as_str().context("id")?.to_owned();
    let mut cases = Cases {
        m: &m,
        ids: vec![&a, &b, &o],
        failures: early,
        run: 1,
    };

    // 17: overflowing amounts.
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
        let w = want(&[422], None, Some(field));
        cases.run(name, &w, || {
            raw.send(
                Method::POST,
                "/loans",
                &m.lender,
                Some("application/json"),
                Some(body),
                &[],
            )
        });
    }
    cases.run(
        "17 repayment amount_minor u64::MAX",
        &invalid("amount_minor"),
        || {
            raw.json(
                Method::POST,
                &format!("/loans/{b}/repayments"),
                &m.lender,
                &json!({"amount_minor": u64::MAX}),
            )
        },
    );
    cases.run(
        "17 repayment amount_minor above u64",
        &invalid("amount_minor"),
        || {
            raw.send(
                Method::POST,
                &format!("/loans/{b}/repayments"),
                &m.lender,
                Some("application/json"),
                Some(b"{\"amount_minor\": 18446744073709551616}".to_vec()),
                &[],
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

    // 20: a mainnet return address.
    cases.run(
        "20 accept with a mainnet borrower_return_address",
        &invalid("borrower_return_address"),
        || {
            raw.json(
                Method::POST,
                &format!("/loans/{o}/accept"),
                &m.borrower,
                &json!({"borrower_return_address": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"}),
            )
        },
    );
    let still = m.api().get(&format!("/loans/{o}"), &m.admin)?;
    ensure!(still["state"] == "offered", "{still}");

    // 21: without a key every POST is a repayment; with one, the first answer replays.
    let repaid = |id: &str| -> anyhow::Result<u64> {
        m.api().get(&format!("/loans/{id}"), &m.admin)?["repaid_minor"]
            .as_u64()
            .context("repaid_minor")
    };
    let repay = |headers: &[(&str, &str)]| {
        raw.send(
            Method::POST,
            &format!("/loans/{b}/repayments"),
            &m.lender,
            Some("application/json"),
            Some(b"{\"amount_minor\": 100}".to_vec()),
            headers,
        )
    };
    let at_first = repaid(&b)?;
    for _ in 0..2 {
        let r = repay(&[])?;
        ensure!(r.status == 200 && !r.replayed, "{}", r.json);
    }
    ensure!(
        repaid(&b)? == at_first + 200,
        "two POSTs without a key count twice"
    );
    let first = repay(&[("Idempotency-Key", "hostile-21")])?;
    let second = repay(&[("Idempotency-Key", "hostile-21")])?;
    ensure!(first.status == 200 && !first.replayed, "{}", first.json);
    ensure!(second.status == 200 && second.replayed, "{}", second.json);
    ensure!(first.json == second.json, "the same body replayed");
    ensure!(repaid(&b)? == at_first + 300, "the keyed pair counts once");
    cases.run += 1;

    // 26: broken JSON, an empty body, a wrong Content-Type, at every body endpoint.
    let fresh_party = m
        .parties
        .account(&common::escrow::random_key()?)?
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
    let bad_bodies: [(&str, &[u8], Want); 3] = [
        ("broken JSON", b"{\"psbt\":", want(&[400, 422], None, None)),
        ("an empty body", b"", want(&[400, 422], None, None)),
        ("not an object", b"[1,2]", want(&[400, 422], None, None)),
    ];
    for (method, path, token, _) in &endpoints {
        for (what, body, w) in &bad_bodies {
            cases.run(&format!("26 {what} at {method} {path}"), w, || {
                raw.send(
                    method.clone(),
                    path,
                    token,
                    Some("application/json"),
                    Some(body.to_vec()),
                    &[],
                )
            });
        }
    }
    // A valid body under text/plain (the last of phase one: if it is taken, it changes
    // something, which the snapshot names).
    for (method, path, token, body) in &endpoints {
        let w = want(&[400, 415], None, None);
        cases.run(&format!("26 text/plain at {method} {path}"), &w, || {
            raw.send(
                method.clone(),
                path,
                token,
                Some("text/plain"),
                Some(serde_json::to_vec(body)?),
                &[],
            )
        });
    }

    // The breach: both loans wait for the lender's co-signature.
    m.set_price(7_000_000)?;
    for id in [&a, &b] {
        m.api()
            .wait(&format!("/loans/{id}"), &m.lender, "margin call", |v| {
                v["state"] == "margin_call"
            })?;
    }
    m.set_price(6_000_000)?;
    for id in [&a, &b] {
        m.api()
            .wait(&format!("/loans/{id}"), &m.lender, "liquidating", |v| {
                v["state"] == "liquidating" && v["pending_psbt"].is_object()
            })?;
    }
    let pending_of = |id: &str| -> anyhow::Result<Psbt> {
        let p = m.api().get(&format!("/loans/{id}/psbt"), &m.lender)?;
        Ok(Psbt::from_str(p["psbt"].as_str().context("psbt")?)?)
    };
    let pending_a = pending_of(&a)?;
    let pending_b = pending_of(&b)?;
    let (_, signed_a) = m.lender_signs(&a)?;
    let good = Psbt::from_str(&signed_a)?;
    let (lender_sk, lender_pk) = escrow_key(&pending_a, &m.parties.lender, 0, &secp)?;
    ensure!(
        good.inputs[0].partial_sigs.contains_key(&lender_pk),
        "the lender's key"
    );
    let arbiter_pk = *pending_a.inputs[0]
        .partial_sigs
        .keys()
        .next()
        .context("the arbiter's signature")?;
    // B co-signed by its lender, by hand (B's escrow has Bea's key).
    let (lender_sk_b, lender_pk_b) = escrow_key(&pending_b, &m.parties.lender, 0, &secp)?;
    let mut signed_b = pending_b.clone();
    let sig_b = signature(&pending_b, 0, &lender_sk_b, None, None, None, &secp)?;
    signed_b.inputs[0].partial_sigs.insert(lender_pk_b, sig_b);
    // A stranger's key.
    let (stranger_sk, stranger_pk) = derived(
        common::escrow::random_key()?.master(),
        &DerivationPath::from_str("m/48'/1'/0'/2'/0/0")?,
        &secp,
    )?;
    let lender_path = pending_a.inputs[0].bip32_derivation[&lender_pk.inner].clone();
    // The lender's other key in the escrow: the timelocked default claim's.
    let (claim_sk, claim_pk) = escrow_key(&pending_a, &m.parties.lender, 2, &secp)?;

    type Edit<'a> = Box<dyn Fn(&mut Psbt) -> anyhow::Result<()> + 'a>;
    let edits: Vec<(&str, Want, Edit<'_>)> = vec![
        (
            "1 an output amount changed",
            PSBT_REFUSED,
            Box::new(|p| {
                p.unsigned_tx.output[0].value -= Amount::from_sat(1_000);
                Ok(())
            }),
        ),
        (
            "1 an output amount changed and signed",
            PSBT_REFUSED,
            Box::new(|p| {
                p.unsigned_tx.output[0].value -= Amount::from_sat(1_000);
                let sig = signature(p, 0, &lender_sk, None, None, None, &secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "2 an output added",
            PSBT_REFUSED,
            Box::new(|p| {
                let mut extra = p.unsigned_tx.output[0].clone();
                extra.value = Amount::from_sat(10_000);
                p.unsigned_tx.output[0].value -= Amount::from_sat(10_000);
                p.unsigned_tx.output.push(extra);
                p.outputs.push(Default::default());
                Ok(())
            }),
        ),
        (
            "3 an input of the lender's own wallet added",
            PSBT_REFUSED,
            Box::new(|p| {
                let coin = lender_wallet
                    .wallet
                    .list_unspent()
                    .next()
                    .context("the lender's coin")?;
                let prev = lender_wallet
                    .wallet
                    .get_tx(coin.outpoint.txid)
                    .context("the lender's coin's transaction")?
                    .tx_node
                    .tx
                    .as_ref()
                    .clone();
                p.unsigned_tx.input.push(TxIn {
                    previous_output: coin.outpoint,
                    ..TxIn::default()
                });
                p.unsigned_tx.output[0].value += coin.txout.value;
                p.inputs.push(bitcoin::psbt::Input {
                    witness_utxo: Some(coin.txout.clone()),
                    non_witness_utxo: Some(prev),
                    ..Default::default()
                });
                // The lender's escrow signature over this transaction.
                let sig = signature(p, 0, &lender_sk, None, None, None, &secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "4 a changed witness_script, signed over it",
            PSBT_REFUSED,
            Box::new(|p| {
                let mut script = p.inputs[0]
                    .witness_script
                    .clone()
                    .context("script")?
                    .into_bytes();
                let last = script.len() - 1;
                script.insert(last, 0x75); // OP_DROP before the end: another script
                script.insert(last, 0x51);
                let script = ScriptBuf::from_bytes(script);
                let sig = signature(p, 0, &lender_sk, Some(&script), None, None, &secp)?;
                p.inputs[0].witness_script = Some(script);
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "5 a key not in the escrow added to bip32_derivation, and its signature",
            want(&[422], Some("invalid_input"), Some("psbt")),
            Box::new(|p| {
                let fp = m.parties.lender.master().fingerprint(&secp);
                p.inputs[0].bip32_derivation.insert(
                    stranger_pk.inner,
                    (fp, DerivationPath::from_str("m/48'/1'/0'/2'/0/0")?),
                );
                let sig = signature(p, 0, &stranger_sk, None, None, None, &secp)?;
                p.inputs[0].partial_sigs.insert(stranger_pk, sig);
                Ok(())
            }),
        ),
        (
            "5 the lender's key at a wrong path, signed by the key at that path",
            PSBT_REFUSED,
            Box::new(|p| {
                let wrong = DerivationPath::from_str("m/48'/1'/0'/2'/0/999")?;
                let (sk, pk) = derived(m.parties.lender.master(), &wrong, &secp)?;
                p.inputs[0].bip32_derivation.remove(&lender_pk.inner);
                p.inputs[0]
                    .bip32_derivation
                    .insert(pk.inner, (lender_path.0, wrong));
                let sig = signature(p, 0, &sk, None, None, None, &secp)?;
                p.inputs[0].partial_sigs.insert(pk, sig);
                Ok(())
            }),
        ),
        (
            "6 the lender's signature with sighash byte NONE",
            PSBT_REFUSED,
            Box::new(|p| {
                let mut sig = signature(p, 0, &lender_sk, None, None, None, &secp)?;
                sig.sighash_type = EcdsaSighashType::None;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "6 the lender's signature with sighash byte ALL|ANYONECANPAY",
            PSBT_REFUSED,
            Box::new(|p| {
                let mut sig = signature(p, 0, &lender_sk, None, None, None, &secp)?;
                sig.sighash_type = EcdsaSighashType::AllPlusAnyoneCanPay;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "6 input sighash_type SINGLE",
            PSBT_REFUSED,
            Box::new(|p| {
                let sig = signature(p, 0, &lender_sk, None, None, None, &secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                p.inputs[0].sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::Single));
                Ok(())
            }),
        ),
        (
            "7 the lender's key signing loan B's sighash",
            PSBT_REFUSED,
            Box::new(|p| {
                let sig = signature(&pending_b, 0, &lender_sk, None, None, None, &secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "7 loan B's lender signature moved into A's slot",
            PSBT_REFUSED,
            Box::new(|p| {
                p.inputs[0].partial_sigs.insert(lender_pk_b, sig_b);
                Ok(())
            }),
        ),
        (
            "7 the arbiter's signature moved under the lender's key",
            PSBT_REFUSED,
            Box::new(|p| {
                let sig = p.inputs[0].partial_sigs[&arbiter_pk];
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "8 a valid signature by the lender's timelocked default-claim key",
            PSBT_REFUSED,
            Box::new(|p| {
                let sig = signature(p, 0, &claim_sk, None, None, None, &secp)?;
                p.inputs[0].partial_sigs.insert(claim_pk, sig);
                Ok(())
            }),
        ),
        (
            "8 a signature by a key not in the escrow",
            PSBT_REFUSED,
            Box::new(|p| {
                let sig = signature(p, 0, &stranger_sk, None, None, None, &secp)?;
                p.inputs[0].partial_sigs.insert(stranger_pk, sig);
                Ok(())
            }),
        ),
        (
            "9 the arbiter's signature under its uncompressed key",
            PSBT_REFUSED,
            Box::new(|p| {
                let sig = p.inputs[0].partial_sigs[&arbiter_pk];
                let uncompressed = PublicKey {
                    compressed: false,
                    inner: arbiter_pk.inner,
                };
                p.inputs[0].partial_sigs.insert(uncompressed, sig);
                Ok(())
            }),
        ),
        (
            "9 the lender's signature, and again under its uncompressed key",
            PSBT_REFUSED,
            Box::new(|p| {
                let sig = signature(p, 0, &lender_sk, None, None, None, &secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                let uncompressed = PublicKey {
                    compressed: false,
                    inner: lender_pk.inner,
                };
                p.inputs[0].partial_sigs.insert(uncompressed, sig);
                Ok(())
            }),
        ),
        (
            "13 witness_utxo amount raised, signed over the lie",
            PSBT_REFUSED,
            Box::new(|p| {
                let utxo = p.inputs[0].witness_utxo.as_mut().context("utxo")?;
                utxo.value += Amount::from_sat(1_000_000);
                let value = utxo.value;
                let sig = signature(p, 0, &lender_sk, None, Some(value), None, &secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "13 witness_utxo amount lowered, signed over the lie",
            PSBT_REFUSED,
            Box::new(|p| {
                let utxo = p.inputs[0].witness_utxo.as_mut().context("utxo")?;
                utxo.value -= Amount::from_sat(1_000_000);
                let value = utxo.value;
                let sig = signature(p, 0, &lender_sk, None, Some(value), None, &secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                Ok(())
            }),
        ),
        (
            "13 witness_utxo amount lowered, with the honest signature",
            PSBT_REFUSED,
            Box::new(|p| {
                let sig = signature(p, 0, &lender_sk, None, None, None, &secp)?;
                p.inputs[0].partial_sigs.insert(lender_pk, sig);
                let utxo = p.inputs[0].witness_utxo.as_mut().context("utxo")?;
                utxo.value -= Amount::from_sat(1_000_000);
                Ok(())
            }),
        ),
        (
            "no new signature (the pending PSBT sent back)",
            PSBT_REFUSED,
            Box::new(|_| Ok(())),
        ),
    ];
    let cosign_path = format!("/loans/{a}/psbt");
    for (name, w, edit) in &edits {
        let mut psbt = pending_a.clone();
        if let Err(e) = edit(&mut psbt) {
            cases
                .failures
                .push(format!("{name}: building the case: {e:#}"));
            continue;
        }
        cases.run(name, w, || {
            raw.json(
                Method::POST,
                &cosign_path,
                &m.lender,
                &json!({"psbt": psbt.to_string()}),
            )
        });
    }
    // 10, 11: another loan's PSBT; truncated PSBTs.
    let half = &signed_a[..signed_a.len() / 2];
    let bytes = good.serialize();
    let cut = bitcoin::base64::Engine::encode(
        &bitcoin::base64::engine::general_purpose::STANDARD,
        &bytes[..bytes.len() / 2],
    );
    let cut_last = bitcoin::base64::Engine::encode(
        &bitcoin::base64::engine::general_purpose::STANDARD,
        &bytes[..bytes.len() - 1],
    );
    for (name, text) in [
        (
            "10 loan B's co-signed PSBT posted to A",
            signed_b.to_string(),
        ),
        ("11 a signed PSBT's base64 cut in half", half.to_owned()),
        ("11 a signed PSBT's bytes cut in half", cut),
        ("11 a signed PSBT's last byte cut", cut_last),
        ("11 an empty psbt", String::new()),
        ("11 not base64", "%%%".into()),
    ] {
        cases.run(name, &invalid("psbt"), || {
            raw.json(
                Method::POST,
                &cosign_path,
                &m.lender,
                &json!({ "psbt": text }),
            )
        });
    }
    // 12: 10 MB, declared and chunked.
    let too_large = want(&[413], Some("body_too_large"), None);
    for chunked in [false, true] {
        let name = format!(
            "12 10 MB to /psbt, {}",
            if chunked { "chunked" } else { "declared" }
        );
        cases.run(&name, &too_large, || {
            raw.flood(
                &format!("/loans/{a}/psbt"),
                &m.lender,
                10 * 1024 * 1024,
                chunked,
            )
        });
    }
    // 26 at the co-signature: broken, empty, text/plain (with a body refused anyway:
    // a valid one would co-sign).
    for (what, ct, body) in [
        ("broken JSON", "application/json", b"{\"psbt\":".to_vec()),
        ("an empty body", "application/json", Vec::new()),
        (
            "text/plain",
            "text/plain",
            serde_json::to_vec(&json!({"psbt": pending_a.to_string()}))?,
        ),
    ] {
        cases.run(
            &format!("26 {what} at POST /loans/{{a}}/psbt"),
            &want(&[400, 415, 422], None, None),
            || {
                raw.send(
                    Method::POST,
                    &cosign_path,
                    &m.lender,
                    Some(ct),
                    Some(body),
                    &[],
                )
            },
        );
    }
    // 23: B's borrower and another lender act on A: as for a loan that does not exist.
    let not_found = want(&[404], Some("not_found"), None);
    let forbidden = want(&[403], Some("forbidden"), None);
    let honest = json!({ "psbt": signed_a });
    let acts: Vec<(&str, &str, Method, String, Value, &Want)> = vec![
        (
            "B's borrower",
            &bea,
            Method::POST,
            format!("/loans/{a}/accept"),
            json!({"borrower_return_address": m.borrower_return.to_string()}),
            &not_found,
        ),
        (
            "B's borrower",
            &bea,
            Method::GET,
            format!("/loans/{a}/psbt"),
            Value::Null,
            &not_found,
        ),
        (
            "B's borrower",
            &bea,
            Method::POST,
            format!("/loans/{a}/psbt"),
            honest.clone(),
            &not_found,
        ),
        (
            "B's borrower",
            &bea,
            Method::POST,
            format!("/loans/{a}/repayments"),
            json!({"amount_minor": 1}),
            &forbidden,
        ),
        (
            "another lender",
            &other_lender,
            Method::POST,
            format!("/loans/{a}/repayments"),
            json!({"amount_minor": 1}),
            &not_found,
        ),
        (
            "another lender",
            &other_lender,
            Method::GET,
            format!("/loans/{a}/psbt"),
            Value::Null,
            &not_found,
        ),
        (
            "another lender",
            &other_lender,
            Method::POST,
            format!("/loans/{a}/psbt"),
            honest.clone(),
            &not_found,
        ),
        (
            "another lender",
            &other_lender,
            Method::POST,
            format!("/loans/{a}/accept"),
            json!({"borrower_return_address": m.borrower_return.to_string()}),
            &forbidden,
        ),
    ];
    for (who, token, method, path, body, w) in &acts {
        let name = format!("23 {who}: {method} {}", path.replace(&a, "{a}"));
        cases.run(&name, w, || {
            if body.is_null() {
                raw.send(method.clone(), path, token, None, None, &[])
            } else {
                raw.json(method.clone(), path, token, body)
            }
        });
        // The same answer for an id that does not exist: nothing leaks.
        let ghost = path.replace(&a, "ln_0000000000000000");
        let none = if body.is_null() {
            raw.send(method.clone(), &ghost, token, None, None, &[])?
        } else {
            raw.json(method.clone(), &ghost, token, body)?
        };
        if let Err(e) = check(&format!("{name} (an unknown id)"), &none, w) {
            cases.failures.push(format!("{e:#}"));
        }
    }

    // 22: A co-signed twice at once with the same PSBT.
    let race = |id: &str, bodies: [String; 2]| -> anyhow::Result<Vec<Answer>> {
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = bodies
            .into_iter()
            .map(|psbt| {
                let barrier = barrier.clone();
                let raw = Raw {
                    base: raw.base.clone(),
                    client: raw.client.clone(),
                };
                let path = format!("/loans/{id}/psbt");
                let token = m.lender.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    raw.json(Method::POST, &path, &token, &json!({ "psbt": psbt }))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow::anyhow!("a poster panicked"))?)
            .collect()
    };
    let one_winner = |name: &str, answers: &[Answer]| -> anyhow::Result<String> {
        let won: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
        ensure!(
            !won.is_empty(),
            "{name}: nobody won: {:?}",
            answers.iter().map(|a| &a.json).collect::<Vec<_>>()
        );
        let txid = won[0].json["txid"].as_str().context("txid")?.to_owned();
        for a in answers {
            if a.status == 200 {
                ensure!(
                    a.json["txid"] == txid.as_str(),
                    "{name}: two txids: {}",
                    a.json
                );
            } else {
                ensure!(
                    a.status == 409,
                    "{name}: the loser: {} {}",
                    a.status,
                    a.json
                );
                eprintln!("{name}: the loser's answer: {}", a.json);
            }
        }
        Ok(txid)
    };
    let txid_a = one_winner(
        "22 the same PSBT twice at once",
        &race(&a, [signed_a.clone(), signed_a.clone()])?,
    )?;
    // B co-signed twice at once with two different valid signatures (RFC 6979 with
    // and without extra nonce data): the same transaction, other witnesses.
    let mut resigned_b = pending_b.clone();
    let other_sig = signature(
        &pending_b,
        0,
        &lender_sk_b,
        None,
        None,
        Some([7u8; 32]),
        &secp,
    )?;
    ensure!(other_sig != sig_b, "another valid signature");
    resigned_b.inputs[0]
        .partial_sigs
        .insert(lender_pk_b, other_sig);
    let txid_b = one_winner(
        "22 two different co-signatures at once",
        &race(&b, [signed_b.to_string(), resigned_b.to_string()])?,
    )?;

    for (id, txid) in [(&a, &txid_a), (&b, &txid_b)] {
        let txid = bitcoin::Txid::from_str(txid)?;
        m.api()
            .wait(&format!("/loans/{id}"), &m.admin, "broadcast", |v| {
                v["txids"] == json!([txid.to_string()])
            })?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !m.env.mempool_contains(txid)? {
            ensure!(
                std::time::Instant::now() < deadline,
                "{txid} never in the mempool"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    m.env.mine(1)?;
    for (id, txid) in [(&a, &txid_a), (&b, &txid_b)] {
        let loan = m
            .api()
            .wait(&format!("/loans/{id}"), &m.admin, "liquidated", |v| {
                v["state"] == "liquidated"
            })?;
        ensure!(
            loan["txids"] == json!([txid]),
            "exactly one broadcast: {loan}"
        );
        ensure!(loan["confirmed_txid"] == txid.as_str(), "{loan}");
    }
    eprintln!(
        "{} cases, {} failures, {:.0?}",
        cases.run,
        cases.failures.len(),
        started.elapsed()
    );
    ensure!(
        cases.failures.is_empty(),
        "{} of {} cases failed:\n{}",
        cases.failures.len(),
        cases.run,
        cases.failures.join("\n")
    );
    Ok(())
}
