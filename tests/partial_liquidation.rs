//! Partial liquidation, withdrawals and margin-call levels through the running
//! service, against a real bitcoind and electrs. Every amount is computed again here,
//! independently of the service (a brute-force search for the smallest sale), and
//! checked on chain.
//!
//! - A loan with `partial_liquidation` (target 50 %) and margin-call levels 70 % and
//!   75 % gaps to 81 %: both levels fire, in order; the engine sells the smallest part
//!   that restores 50 %; the lender's co-signer check signs it and refuses a copy that
//!   sells more; on chain the lender gets exactly the sale and the change is back in
//!   the escrow; the loan is `active` at the target. A second breach sells again, from
//!   the new output. A small loan whose change would be dust is liquidated in full, and
//!   so is the first loan once a gap leaves it under water.
//! - A withdrawal is refused past the limit (problem+json naming `amount_sat` and the
//!   limit), refused again when the price falls between request and signature (the
//!   arbiter signs last), and settles on chain once safe.

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bitcoin::{Amount, Transaction, Txid};
use common::serve::Market;
use reqwest::Method;
use serde_json::{json, Value};

/// LTV in bps, rounded up: `owed / (sats × price)`.
fn ltv(owed: u64, sats: u64, price: u64) -> u64 {
    let num = u128::from(owed) * 10_000 * 100_000_000;
    let den = u128::from(sats) * u128::from(price);
    u64::try_from(num.div_ceil(den)).expect("small")
}

/// The smallest sale (by brute force): `(repay, lender sats, change)`.
fn smallest_sale(
    owed: u64,
    sats: u64,
    price: u64,
    target: u64,
    penalty: u64,
    fee: u64,
) -> Option<(u64, u64, u64)> {
    (1..owed).find_map(|x| {
        let lender = (u128::from(x) * (10_000 + u128::from(penalty)) * 100_000_000)
            .div_ceil(10_000 * u128::from(price));
        let lender = u64::try_from(lender).ok()?;
        let change = sats.checked_sub(fee)?.checked_sub(lender)?;
        (ltv(owed - x, change, price) <= target).then_some((x, lender, change))
    })
}

/// The price (cents per BTC) at which `owed` on `sats` is at `bps`, rounded down (so
/// the LTV is at least `bps`).
fn price_at(owed: u64, sats: u64, bps: u64) -> u64 {
    u64::try_from(u128::from(owed) * 100_000_000 * 10_000 / (u128::from(sats) * u128::from(bps)))
        .expect("small")
}

fn u(v: &Value, k: &str) -> anyhow::Result<u64> {
    v[k].as_u64().with_context(|| format!("{k} in {v}"))
}

fn output<'a>(pending: &'a Value, role: &str) -> anyhow::Result<&'a Value> {
    pending["outputs"]
        .as_array()
        .context("outputs")?
        .iter()
        .find(|o| o["role"] == role)
        .with_context(|| format!("a {role} output in {pending}"))
}

/// The transaction `txid` once in the mempool.
fn in_mempool(m: &Market, txid: Txid) -> anyhow::Result<Transaction> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !m.env.mempool_contains(txid)? {
        ensure!(Instant::now() < deadline, "{txid} never broadcast");
        std::thread::sleep(Duration::from_millis(100));
    }
    let hex = m
        .env
        .rpc
        .call("getrawtransaction", json!([txid.to_string()]))?;
    Ok(bitcoin::consensus::encode::deserialize_hex(
        hex.as_str().context("hex")?,
    )?)
}

fn paid_to(tx: &Transaction, script: &bitcoin::Script) -> u64 {
    tx.output
        .iter()
        .filter(|o| o.script_pubkey.as_script() == script)
        .map(|o| o.value.to_sat())
        .sum()
}

fn event_names(m: &Market, id: &str) -> anyhow::Result<Vec<Value>> {
    let events = m.api().get(&format!("/loans/{id}/events"), &m.lender)?;
    Ok(events
        .as_array()
        .context("events")?
        .iter()
        .map(|e| e["event"].clone())
        .collect())
}

/// Wait for the loan's liquidation decision; its pending PSBT.
fn decided(m: &Market, id: &str, kind: &str) -> anyhow::Result<(Value, Value)> {
    let loan = m
        .api()
        .wait(&format!("/loans/{id}"), &m.lender, kind, |v| {
            v["state"] == "liquidating" && v["pending_psbt"]["kind"] == kind
        })
        .with_context(|| {
            format!(
                "{:?}",
                m.api().call(
                    Method::GET,
                    &format!("/loans/{id}"),
                    Some(&m.lender),
                    None,
                    &[]
                )
            )
        })?;
    Ok((loan.clone(), loan["pending_psbt"].clone()))
}

/// The lender co-signs the pending PSBT; the transaction, once in the mempool.
fn lender_cosigns(m: &Market, id: &str) -> anyhow::Result<Transaction> {
    let (_, signed) = m.lender_signs(id)?;
    let sent = m.post_psbt(id, &signed)?;
    in_mempool(m, Txid::from_str(sent["txid"].as_str().context("txid")?)?)
}

/// What the lender's co-signer decides about the loan's pending PSBT, as shown or with
/// `edit` applied to its transaction.
fn cosigner_review(
    m: &Market,
    loan: &Value,
    edit: impl FnOnce(&mut bitcoin::psbt::Psbt),
) -> Result<(), String> {
    use btc_escrow::cosigner::review::{review, CosignPolicy, Review};
    use btc_escrow::policy::{Party, PolicyTemplate};
    use btc_escrow::verify::Expectation;
    let id = loan["id"].as_str().unwrap_or_default();
    let events = m
        .api()
        .get(&format!("/loans/{id}/events"), &m.lender)
        .map_err(|e| e.to_string())?;
    let mut loan = loan.clone();
    let mut psbt =
        bitcoin::psbt::Psbt::from_str(loan["pending_psbt"]["psbt"].as_str().unwrap_or(""))
            .map_err(|e| e.to_string())?;
    edit(&mut psbt);
    loan["pending_psbt"]["psbt"] = json!(psbt.to_string());
    let me = m
        .api()
        .get("/parties/me", &m.lender)
        .map_err(|e| e.to_string())?;
    let account = m
        .parties
        .account(&m.parties.lender)
        .map_err(|e| e.to_string())?;
    let expectation = Expectation {
        network: bitcoin::Network::Regtest,
        party: Party::Lender,
        own: account,
        arbiter: None,
        counterparty: None,
        agreed_terms: None,
        tip: None,
        now: btc_escrow::util::unix_now(),
        max_extra_blocks: u32::MAX / 2,
        template: PolicyTemplate::default(),
    };
    review(
        &Review {
            loan: &loan,
            events: events.as_array().map(Vec::as_slice).unwrap_or(&[]),
            own_party_id: me["id"].as_str().unwrap_or_default(),
            expectation: &expectation,
            reference_price: None,
            chain: None,
            policy: &CosignPolicy::default(),
            now: btc_escrow::util::unix_now(),
            activated_at: None,
            was_active: true,
            ledger_repaid: None,
            own_sales: None,
        },
        &m.parties.lender,
        &m.parties.secp,
    )
    .map(|_| ())
    .map_err(|r| r.0)
}

/// One partial sale of loan `id` (decision `number`) at `price`: checked against the
/// independent search, by the co-signer (and a copy selling more refused), on chain,
/// and in the loan once mined. Returns the loan afterwards and the sale.
fn partial_sale(
    m: &Market,
    id: &str,
    number: u64,
    collateral: u64,
) -> anyhow::Result<(Value, Transaction)> {
    let (loan, pending) = decided(m, id, "partial_liquidation")?;
    ensure!(u(&pending, "decision")? == number, "{pending}");
    let (owed, price, fee) = (
        u(&pending, "owed_minor")?,
        u(&pending, "price_minor")?,
        u(&pending, "fee_sat")?,
    );
    let (x, lender, change) =
        smallest_sale(owed, collateral, price, 5_000, 500, fee).context("a partial sale")?;
    ensure!(u(&pending, "repay_minor")? == x, "repays {x}: {pending}");
    ensure!(
        u(output(&pending, "lender")?, "amount_sat")? == lender,
        "{pending}"
    );
    ensure!(
        u(output(&pending, "escrow")?, "amount_sat")? == change,
        "{pending}"
    );
    ensure!(u(&pending, "target_ltv_bps")? == 5_000);

    // The lender's own checks: the sale signs; a copy selling 10,000 sats more does not.
    cosigner_review(m, &loan, |_| {}).map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    let more = cosigner_review(m, &loan, |p| {
        for o in &mut p.unsigned_tx.output {
            if o.value.to_sat() == lender {
                o.value += Amount::from_sat(10_000);
            } else {
                o.value -= Amount::from_sat(10_000);
            }
        }
    })
    .expect_err("a sale of more than needed is refused");
    ensure!(more.contains("more than needed"), "{more}");

    let tx = lender_cosigns(m, id)?;
    ensure!(
        paid_to(&tx, &m.lender_payout.script_pubkey()) == lender,
        "{tx:?}"
    );
    let escrow = m.escrow_of(&loan)?.script_pubkey();
    ensure!(paid_to(&tx, &escrow) == change, "{tx:?}");
    m.env.mine(1)?;
    let after = m
        .api()
        .wait(&format!("/loans/{id}"), &m.borrower, "active again", |v| {
            v["state"] == "active"
                && v["adjustments"].as_array().map(Vec::len) == Some(number as usize + 1)
        })?;
    let adj = &after["adjustments"][number as usize];
    ensure!(adj["kind"] == "partial_liquidation", "{adj}");
    ensure!(
        adj["txid"] == tx.compute_txid().to_string().as_str(),
        "{adj}"
    );
    ensure!(u(adj, "repay_minor")? == x && u(adj, "paid_sat")? == lender);
    ensure!(u(&after, "collateral_sat")? == change, "{after}");
    // At the target: computed here from what was owed and the change.
    ensure!(ltv(owed - x, change, price) <= 5_000);
    ensure!(
        u(adj, "ltv_after_bps")? == ltv(owed - x, change, price),
        "{adj}"
    );
    ensure!(
        after["pending_psbt"].is_null() && after["breach_ticks"] == 0,
        "{after}"
    );
    Ok((after, tx))
}

#[test]
fn partial_liquidations_restore_the_target_and_gaps_liquidate_in_full() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let mut terms = m.offer_terms();
    terms["partial_liquidation"] = json!(true);
    terms["target_ltv_bps"] = json!(5_000);
    terms["margin_call_levels_bps"] = json!([7_000, 7_500]);
    // Bad terms are refused naming the API's field.
    for (edit, field) in [
        (json!({"partial_liquidation": true}), "target_ltv_bps"),
        (
            json!({"partial_liquidation": true, "target_ltv_bps": 6_000}),
            "target_ltv_bps",
        ),
        (
            json!({"margin_call_levels_bps": [7_500]}),
            "margin_call_levels_bps",
        ),
    ] {
        let mut bad = m.offer_terms();
        for (k, v) in edit.as_object().context("edit")? {
            bad[k] = v.clone();
        }
        let (status, problem) =
            m.api()
                .call(Method::POST, "/loans", Some(&m.lender), Some(&bad), &[])?;
        ensure!(
            status == 422 && problem["field"] == field,
            "{status} {problem}"
        );
    }
    let id = m.active_with(&terms)?;
    let path = format!("/loans/{id}");
    let mut web = common::web::Browser::new(&m);
    web.sign_in(&m.lender)?;
    let (_, page) = web.get(&path)?;
    ensure!(
        page.contains("margin-call levels 70.00 %, 75.00 %")
            && page.contains("sells only what brings it back to 50.00 %"),
        "{page}"
    );
    let loan = m.api().get(&path, &m.lender)?;
    ensure!(
        loan["terms"]["partial_liquidation"] == true
            && loan["terms"]["target_ltv_bps"] == 5_000
            && loan["terms"]["margin_call_levels_bps"] == json!([7_000, 7_500]),
        "{loan}"
    );

    // A gap to 81 %: both levels fire, in order, then the breach is confirmed.
    m.set_price(price_at(u(&loan, "owed_minor")?, 20_000_000, 8_100))?;
    let (first, tx1) = partial_sale(&m, &id, 0, 20_000_000)?;
    let txid1 = tx1.compute_txid();
    let levels: Vec<u64> = event_names(&m, &id)?
        .iter()
        .filter(|e| e["event"] == "margin_call_level")
        .filter_map(|e| e["level"].as_u64())
        .collect();
    ensure!(levels == [1, 2], "{levels:?}");

    // A second breach sells again, from the change.
    let collateral = u(&first, "collateral_sat")?;
    m.set_price(price_at(u(&first, "owed_minor")?, collateral, 8_100))?;
    let (second, tx2) = partial_sale(&m, &id, 1, collateral)?;
    let txid2 = tx2.compute_txid();
    // The sale cleared the levels; the second breach crossed each again, once.
    let levels: Vec<u64> = event_names(&m, &id)?
        .iter()
        .filter(|e| e["event"] == "margin_call_level")
        .filter_map(|e| e["level"].as_u64())
        .collect();
    ensure!(levels == [1, 2, 1, 2], "{levels:?}");
    ensure!(
        tx2.input.iter().all(|i| i.previous_output.txid == txid1),
        "the second sale spends the first one's change: {tx2:?}"
    );

    // A small loan ($20 on 40,000 sats) breached just short of where no sale can
    // restore the target (1 / 1.05): a sale would leave the change under the dust
    // limit, so it is liquidated in full, saying why. The LTV is chosen from the fee
    // of the same transaction shape: the change of the smallest sale is about
    // (C·(1 − 1.05·LTV) − fee) / 0.475, aimed here at ~160 sats.
    let fee = u(&second["adjustments"][1], "fee_sat")?;
    let mut small = m.offer_terms();
    small["partial_liquidation"] = json!(true);
    small["target_ltv_bps"] = json!(5_000);
    small["principal_minor"] = json!(2_000);
    let small_id = m.active_with(&small)?;
    let small_loan = m.api().get(&format!("/loans/{small_id}"), &m.lender)?;
    let sats = u(&small_loan, "collateral_sat")?;
    ensure!(sats == 40_000, "{small_loan}");
    // LTV = (1 − (fee + 76) / C) / 1.05, in bps, rounded down (integers).
    let bps = (sats - fee - 76) * 100_000_000 / (10_500 * sats);
    m.set_price(price_at(u(&small_loan, "owed_minor")?, sats, bps))?;
    decided(&m, &small_id, "liquidation")?;
    let why: Vec<String> = event_names(&m, &small_id)?
        .iter()
        .filter(|e| e["event"] == "full_liquidation_instead")
        .filter_map(|e| e["why"].as_str().map(str::to_owned))
        .collect();
    ensure!(why.len() == 1 && why[0].contains("dust"), "{why:?}");
    let tx = lender_cosigns(&m, &small_id)?;
    ensure!(paid_to(&tx, &m.lender_payout.script_pubkey()) > 0);
    m.env.mine(1)?;
    m.api().wait(
        &format!("/loans/{small_id}"),
        &m.lender,
        "liquidated",
        |v| v["state"] == "liquidated",
    )?;

    // A gap far below the line (LTV 97 %: the collateral no longer covers the debt
    // and its penalty): the first loan is liquidated in full.
    let loan = m.api().get(&path, &m.lender)?;
    let collateral = u(&loan, "collateral_sat")?;
    m.set_price(price_at(u(&loan, "owed_minor")?, collateral, 9_700))?;
    let (_, pending) = decided(&m, &id, "liquidation")?;
    ensure!(u(&pending, "decision")? == 2, "{pending}");
    let why: Vec<String> = event_names(&m, &id)?
        .iter()
        .filter(|e| e["event"] == "full_liquidation_instead")
        .filter_map(|e| e["why"].as_str().map(str::to_owned))
        .collect();
    ensure!(why.len() == 1 && why[0].contains("cannot cover"), "{why:?}");
    let tx = lender_cosigns(&m, &id)?;
    ensure!(
        tx.input.iter().all(|i| i.previous_output.txid == txid2),
        "{tx:?}"
    );
    m.env.mine(1)?;
    let done = m.api().wait(&path, &m.lender, "liquidated", |v| {
        v["state"] == "liquidated"
    })?;
    ensure!(
        done["adjustments"].as_array().map(Vec::len) == Some(2),
        "{done}"
    );
    Ok(())
}

#[test]
fn withdrawals_settle_when_safe_and_are_refused_past_the_limit() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let id = m.active()?;
    let path = format!("/loans/{id}");
    let withdrawals = format!("{path}/withdrawals");
    m.set_price(20_000_000)?;
    m.api().wait(&path, &m.borrower, "LTV 25 %", |v| {
        v["ltv_bps"].as_u64().is_some_and(|l| l <= 2_600)
    })?;
    let before = m.api().get(&path, &m.borrower)?;

    // 0.15 of 0.2 BTC would leave $10,000 on 0.05 BTC: refused, naming the limit
    // (initial LTV 50 % less the 1 % margin).
    let (status, problem) = m.api().call(
        Method::POST,
        &withdrawals,
        Some(&m.borrower),
        Some(&json!({ "amount_sat": 15_000_000 })),
        &[],
    )?;
    ensure!(status == 422, "{status} {problem}");
    ensure!(problem["field"] == "amount_sat", "{problem}");
    ensure!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("49.00%")),
        "{problem}"
    );
    let unchanged = m.api().get(&path, &m.borrower)?;
    ensure!(unchanged["adjustment"].is_null() && unchanged["pending_psbt"].is_null());
    ensure!(unchanged["collateral_sat"] == before["collateral_sat"]);
    // Bad bodies: a zero amount, an unknown field. Each names its field; nothing moves.
    for (body, field) in [
        (json!({ "amount_sat": 0 }), "amount_sat"),
        (json!({ "amount": 1_000_000 }), "amount"),
    ] {
        let (status, problem) = m.api().call(
            Method::POST,
            &withdrawals,
            Some(&m.borrower),
            Some(&body),
            &[],
        )?;
        ensure!(status == 422, "{status} {problem}");
        ensure!(
            problem["field"] == field
                || problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(field)),
            "{problem}"
        );
    }
    ensure!(m.api().get(&path, &m.borrower)?["adjustment"].is_null());
    // Only the borrower asks.
    let (status, _) = m.api().call(
        Method::POST,
        &withdrawals,
        Some(&m.lender),
        Some(&json!({ "amount_sat": 1_000_000 })),
        &[],
    )?;
    ensure!(status == 403, "{status}");

    // 0.08 BTC leaves 0.12 BTC at $200,000 (LTV ~42 %): an unsigned PSBT, asked
    // for from the command line.
    let dir = tempfile::tempdir()?;
    let base = m.api().base.clone();
    let as_borrower = |args: &[&str]| -> anyhow::Result<common::tools::Ran> {
        let mut all = args.to_vec();
        all.extend(["--api", &base, "--token", &m.borrower]);
        common::tools::run(&all)
    };
    let loan = as_borrower(&["loan", "withdraw", &id, "--json", "--amount-sat", "8000000"])?
        .ok()?
        .json()?;
    ensure!(
        loan["state"] == "active" && loan["adjustment"]["kind"] == "withdrawal",
        "{loan}"
    );
    let pending = &loan["pending_psbt"];
    ensure!(
        pending["kind"] == "withdrawal" && u(pending, "decision")? == 0,
        "{pending}"
    );
    let unsigned = bitcoin::psbt::Psbt::from_str(pending["psbt"].as_str().context("psbt")?)?;
    ensure!(
        unsigned.inputs.iter().all(|i| i.partial_sigs.is_empty()),
        "the arbiter signs last"
    );
    ensure!(u(output(pending, "borrower")?, "amount_sat")? == 8_000_000);
    let fee = u(pending, "fee_sat")?;
    let change = 20_000_000 - 8_000_000 - fee;
    ensure!(u(output(pending, "escrow")?, "amount_sat")? == change);
    let (_, signed) = m.borrower_signs(&id)?;

    // The price falls before the borrower's signature arrives: at $120,000 the loan
    // is still fine (~42 %) but would be at ~69 % after it. The arbiter refuses.
    m.set_price(12_000_000)?;
    m.api().wait(&path, &m.borrower, "LTV ~42 %", |v| {
        v["ltv_bps"]
            .as_u64()
            .is_some_and(|l| (4_100..4_300).contains(&l))
    })?;
    let post = |token: &str| {
        m.api().call(
            Method::POST,
            &format!("{path}/psbt"),
            Some(token),
            Some(&json!({ "psbt": signed })),
            &[],
        )
    };
    let (status, problem) = post(&m.borrower)?;
    ensure!(
        status == 422 && problem["code"] == "withdrawal_refused",
        "{status} {problem}"
    );
    ensure!(problem["field"] == "amount_sat", "{problem}");
    ensure!(
        m.api().get(&path, &m.borrower)?["state"] == "active",
        "nothing moved"
    );

    // Back at $200,000: the same signature goes through, signed by the arbiter last.
    m.set_price(20_000_000)?;
    m.api().wait(&path, &m.borrower, "LTV 25 % again", |v| {
        v["ltv_bps"].as_u64().is_some_and(|l| l <= 2_600)
    })?;
    // The borrower's own tool checks it (its return address, its escrow, the amount
    // asked), signs and posts it.
    let key = common::tools::key_file(dir.path(), "borrower.key", &m.parties.borrower)?;
    let sent = as_borrower(&[
        "loan",
        "sign",
        &id,
        "--json",
        "--key",
        key.to_str().context("path")?,
    ])?
    .ok()?
    .json()?;
    let tx = in_mempool(&m, Txid::from_str(sent["txid"].as_str().context("txid")?)?)?;
    ensure!(paid_to(&tx, &m.borrower_return.script_pubkey()) == 8_000_000);
    let escrow = m.escrow_of(&loan)?.script_pubkey();
    ensure!(paid_to(&tx, &escrow) == change);
    ensure!(
        m.api().get(&path, &m.borrower)?["state"] == "withdrawing",
        "withdrawing until it confirms"
    );
    m.env.mine(1)?;
    let after = m.api().wait(&path, &m.borrower, "active again", |v| {
        v["state"] == "active" && v["adjustments"].as_array().map(Vec::len) == Some(1)
    })?;
    ensure!(u(&after, "collateral_sat")? == change, "{after}");
    let adj = &after["adjustments"][0];
    ensure!(
        adj["kind"] == "withdrawal" && u(adj, "paid_sat")? == 8_000_000,
        "{adj}"
    );
    ensure!(
        adj["txid"] == tx.compute_txid().to_string().as_str(),
        "{adj}"
    );
    // The web page: the borrower sees the settled withdrawal and a form to ask again;
    // an amount past the limit comes back beside its field, and nothing moves.
    let mut web = common::web::Browser::new(&m);
    web.sign_in(&m.borrower)?;
    let (status, page) = web.get(&path)?;
    ensure!(
        status == 200
            && page.contains("Partial liquidations and withdrawals")
            && page.contains("settled")
            && page.contains("Ask to withdraw")
            && page.contains("49.00 %"),
        "{page}"
    );
    let (_, _, page) = web.post(&format!("{path}/withdraw"), &[("amount_sat", "11000000")])?;
    ensure!(
        page.contains("data-field=\"amount_sat\"") && page.contains("most that can be withdrawn"),
        "{page}"
    );
    ensure!(m.api().get(&path, &m.borrower)?["adjustment"].is_null());
    // Still watched on its new output: a later block changes nothing.
    m.env.mine(1)?;
    std::thread::sleep(Duration::from_secs(2));
    let later = m.api().get(&path, &m.borrower)?;
    ensure!(
        later["state"] == "active" && later["collateral_sat"] == after["collateral_sat"],
        "{later}"
    );
    Ok(())
}
