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

#[path = "../common/mod.rs"]
mod common;

mod body_cases;
mod breach;
mod http;
mod input_cases;
mod psbt_cases;
mod race;
mod refusal;
mod signing;
mod snapshot;

use std::str::FromStr;
use std::time::Instant;

use anyhow::Context;
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{Amount, Network};
use common::serve::Market;
use common::wallet::TestWallet;
use reqwest::Method;
use serde_json::json;

use crate::breach::Breach;
use crate::http::Raw;
use crate::snapshot::Cases;

/// What every phase works on: the market, its parties and its loans.
pub struct Scene<'a> {
    pub m: &'a Market,
    pub raw: Raw,
    pub secp: Secp256k1<All>,
    /// Loan A, borrowed by Bob: active.
    pub a: String,
    /// Loan B, borrowed by Bea: active.
    pub b: String,
    /// Offer O: open.
    pub o: String,
    /// Bea's token.
    pub bea: String,
    /// A lender with no loans.
    pub other_lender: String,
    /// The lender's own wallet, with a coin (case 3).
    pub lender_wallet: TestWallet,
}

#[test]
fn hostile_input_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut m = Market::open()?;
    let secp = Secp256k1::new();
    let raw = Raw::new(&m);

    let (bea, bare_refused) = input_cases::register_bea(&m, &raw, &secp)?;
    let other_lender = m.register("Other Lender", "lender")?;
    let mut lender_wallet = TestWallet::new(&m.env)?;
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
    let s = Scene {
        m: &m,
        raw,
        secp,
        a,
        b,
        o,
        bea,
        other_lender,
        lender_wallet,
    };
    let mut cases = Cases::new(&s);
    cases.ran(bare_refused);

    input_cases::overflowing_amounts(&s, &mut cases)?;
    input_cases::mainnet_address(&s, &mut cases)?;
    input_cases::repayment_replays(&s, &mut cases)?;
    body_cases::at_every_endpoint(&s, &mut cases)?;

    let breach = Breach::reach(&s)?;
    psbt_cases::altered(&s, &breach, &mut cases);
    psbt_cases::unreadable(&s, &breach, &mut cases);
    body_cases::at_the_cosignature(&s, &breach, &mut cases)?;
    input_cases::other_parties(&s, &breach, &mut cases)?;

    race::cosigned_twice_at_once(&s, &breach)?;
    cases.report(started)
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
