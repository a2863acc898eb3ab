//! 22: co-signatures posted twice at once: A with the same PSBT, B with two different
//! valid signatures. One wins each race; each loan broadcasts exactly one transaction,
//! which is mined, and both loans are liquidated.

use std::str::FromStr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use reqwest::Method;
use serde_json::json;

use crate::breach::Breach;
use crate::http::Answer;
use crate::signing::{signature, Over};
use crate::Scene;

pub fn cosigned_twice_at_once(s: &Scene, x: &Breach) -> anyhow::Result<()> {
    let m = s.m;
    let txid_a = one_winner(
        "22 the same PSBT twice at once",
        &race(s, &s.a, [x.signed_a.clone(), x.signed_a.clone()])?,
    )?;
    // B co-signed twice at once with two different valid signatures (RFC 6979 with
    // and without extra nonce data): the same transaction, other witnesses.
    let mut resigned_b = x.pending_b.clone();
    let over = Over {
        nonce: Some([7u8; 32]),
        ..Over::default()
    };
    let other_sig = signature(&x.pending_b, &x.lender_b, over, &s.secp)?;
    ensure!(other_sig != x.sig_b, "another valid signature");
    resigned_b.inputs[0]
        .partial_sigs
        .insert(x.lender_b.pk, other_sig);
    let txid_b = one_winner(
        "22 two different co-signatures at once",
        &race(s, &s.b, [x.signed_b.to_string(), resigned_b.to_string()])?,
    )?;

    for (id, txid) in [(&s.a, &txid_a), (&s.b, &txid_b)] {
        let txid = bitcoin::Txid::from_str(txid)?;
        m.api()
            .wait(&format!("/loans/{id}"), &m.admin, "broadcast", |v| {
                v["txids"] == json!([txid.to_string()])
            })?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !m.env.mempool_contains(txid)? {
            ensure!(Instant::now() < deadline, "{txid} never in the mempool");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    m.env.mine(1)?;
    for (id, txid) in [(&s.a, &txid_a), (&s.b, &txid_b)] {
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
    Ok(())
}

/// Post loan `id`'s co-signature twice at once, one per body: both answers.
fn race(s: &Scene, id: &str, bodies: [String; 2]) -> anyhow::Result<Vec<Answer>> {
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|psbt| {
            let barrier = barrier.clone();
            let raw = s.raw.clone();
            let path = format!("/loans/{id}/psbt");
            let token = s.m.lender.clone();
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
}

/// At least one answer won (200), all winners name the same txid and every loser is a
/// 409: that txid.
fn one_winner(name: &str, answers: &[Answer]) -> anyhow::Result<String> {
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
}
