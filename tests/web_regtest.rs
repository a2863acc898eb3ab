//! The web page of `serve`, through a real socket against real bitcoind + electrs (the
//! HTML as a browser receives it; the browser-driven tests come with Chromium):
//! - sign-in: the sign-in form without a session, a bad token refused, a good one
//!   exchanged for an HttpOnly, SameSite=Strict cookie that also opens the event
//!   stream (reads only);
//! - a lender's offer form refuses an invalid field beside it, then takes a valid one;
//! - a borrower sees the offer in plain words, accepts it, and sees the escrow address
//!   with its QR code and the amount to send;
//! - funded, the loan page shows the LTV gauge and the price chart, and its live part
//!   follows the price into a margin call;
//! - the lender records the full repayment in a form; the borrower downloads the
//!   release PSBT, signs it with its own key outside, uploads it: broadcast, mined,
//!   closed; the page carries the exit kit;
//! - the planner (no sign-in) shows the library's own numbers for three cases, a
//!   stress row and a miner's days to repay among them, and names a bad field.

mod common;

use std::str::FromStr;

use anyhow::{ensure, Context};
use bitcoin::psbt::Psbt;
use common::serve::Market;
use common::web::Browser;

#[test]
fn a_loan_lived_through_the_web_page() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let mut lender = Browser::new(&m);
    let (status, page) = lender.get("/")?;
    ensure!(status == 200 && page.contains("Sign in"), "{page}");
    let (status, _, _) = lender.post("/signin", &[("token", "not-a-token")])?;
    ensure!(status == 401);
    lender.sign_in(&m.lender)?;

    // The offer form: an invalid field is shown beside it, then a valid offer.
    m.set_price(10_000_000)?;
    m.api()
        .wait("/health", &m.admin, "fit to decide", |h| h["ok"] == true)?;
    let terms = m.offer_terms();
    let field = |k: &str| terms[k].to_string().trim_matches('"').to_owned();
    let keys = [
        "principal_minor",
        "currency",
        "apr_bps",
        "term_secs",
        "initial_ltv_bps",
        "margin_call_ltv_bps",
        "liquidation_ltv_bps",
        "liquidation_penalty_bps",
        "confirm_ticks",
        "grace_blocks",
        "recovery_delay_blocks",
        "funding_deadline",
        "lender_payout_address",
        "min_confirmations",
    ];
    let values: Vec<(String, String)> = keys.iter().map(|k| (k.to_string(), field(k))).collect();
    let mut bad: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for kv in bad.iter_mut() {
        if kv.0 == "initial_ltv_bps" {
            kv.1 = "9000";
        }
    }
    let (status, _, page) = lender.post("/offers", &bad)?;
    ensure!(
        status == 200 && page.contains(r#"data-field="initial_ltv_bps""#),
        "the invalid field is not shown: {status} {page}"
    );
    let good: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, location, _) = lender.post("/offers", &good)?;
    ensure!(
        status == 303 && location.starts_with("/loans/"),
        "{status} {location}"
    );
    let id = location.trim_start_matches("/loans/").to_owned();

    // The borrower: the offer in plain words, accepted; the escrow and its QR code.
    let mut borrower = Browser::new(&m);
    borrower.sign_in(&m.borrower)?;
    let (_, home) = borrower.get("/")?;
    ensure!(
        home.contains(&id) && home.contains("You get") && home.contains("10,000.00 USD"),
        "{home}"
    );
    // The breach price in plain words is the library's: 0.2 BTC locked at 100,000.00.
    let liq = btc_escrow::loan::calc::liquidation_price(
        1_000_000,
        bitcoin::Amount::from_sat(20_000_000),
        btc_escrow::loan::Bps(8_000),
    )
    .context("a liquidation price")?;
    ensure!(
        home.contains(&format!(
            "liquidated at <strong>{} USD",
            btc_escrow::util::grouped_minor(liq)
        )) && home.contains("you lock <strong>0.20000000 BTC"),
        "{home}"
    );
    let ret = m.borrower_return.to_string();
    let (status, location, _) = borrower.post(
        &format!("/loans/{id}/accept"),
        &[("borrower_return_address", &ret)],
    )?;
    ensure!(
        status == 303 && location == format!("/loans/{id}"),
        "{status} {location}"
    );
    let (_, page) = borrower.get(&location)?;
    let loan = m.api().get(&format!("/loans/{id}"), &m.borrower)?;
    let address = loan["escrow"]["address"].as_str().context("address")?;
    ensure!(
        page.contains(address) && page.contains("<svg"),
        "no escrow or QR code"
    );
    ensure!(page.contains("0.20000000 BTC"), "no amount to send");
    ensure!(page.contains("btc-escrow exit --loan-file"), "no exit kit");

    // The event stream opens with the session cookie alone.
    let (status, _) = {
        let mut r = borrower
            .http
            .get(format!("{}/v1/events/stream", borrower.root));
        r = r.header("cookie", borrower.cookie.clone().unwrap_or_default());
        let resp = r.send()?;
        (resp.status().as_u16(), ())
    };
    ensure!(status == 200, "the stream with the cookie: {status}");

    // Funded: the gauge and the chart; the live part follows the price.
    let escrow = m.escrow_of(&loan)?;
    let tx = m.wallet.send(
        &escrow.address(),
        bitcoin::Amount::from_sat(loan["required_collateral_sat"].as_u64().context("sat")?),
        bitcoin::FeeRate::from_sat_per_vb(2).context("rate")?,
    )?;
    m.env
        .wait_for_tx(&escrow.address().script_pubkey(), tx.compute_txid())?;
    m.env.mine(1)?;
    m.api()
        .wait(&format!("/loans/{id}"), &m.borrower, "active", |v| {
            v["state"] == "active"
        })?;
    let (_, page) = borrower.get(&format!("/loans/{id}"))?;
    ensure!(page.contains("class=\"gauge\"") && page.contains("class=\"chart\""));
    m.set_price(7_000_000)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, live) = borrower.get(&format!("/loans/{id}/live"))?;
        if live.contains(r#"data-state="margin_call""#) && live.contains("LTV 71.") {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no margin call: {live}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    m.set_price(10_000_000)?;

    // The lender records a part in the form, sent twice (a double click): counted
    // once. Then the rest.
    let owed = m.api().get(&format!("/loans/{id}"), &m.lender)?["owed_minor"]
        .as_u64()
        .context("owed")?;
    let (_, form) = lender.get(&format!("/loans/{id}"))?;
    let key = form
        .split(r#"name="key" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("the repayment form's key")?
        .to_owned();
    for _ in 0..2 {
        let (status, _, _) = lender.post(
            &format!("/loans/{id}/repay"),
            &[("amount_minor", "100000"), ("key", &key)],
        )?;
        ensure!(status == 303, "repay: {status}");
    }
    let after = m.api().get(&format!("/loans/{id}"), &m.lender)?;
    ensure!(after["repaid_minor"] == 100_000, "{after}");
    let rest = after["owed_minor"].as_u64().context("owed")?;
    ensure!(rest < owed && rest + 100_000 >= owed, "{after}");
    // The rest, again if a cent of interest accrued meanwhile.
    for _ in 0..3 {
        let loan = m.api().get(&format!("/loans/{id}"), &m.lender)?;
        let rest = loan["owed_minor"].as_u64().context("owed")?;
        if loan["state"] == "releasing" || rest == 0 {
            break;
        }
        let (status, _, _) = lender.post(
            &format!("/loans/{id}/repay"),
            &[("amount_minor", &rest.to_string())],
        )?;
        ensure!(status == 303, "repay: {status}");
    }
    m.api()
        .wait(&format!("/loans/{id}"), &m.borrower, "releasing", |v| {
            v["state"] == "releasing" && v["pending_psbt"].is_object()
        })?;

    // The borrower downloads the release, signs it outside, uploads it.
    let (status, text) = borrower.get(&format!("/loans/{id}/pending.psbt"))?;
    ensure!(status == 200);
    let mut psbt = Psbt::from_str(text.trim())?;
    btc_escrow::tx::sign(
        &mut psbt,
        &m.parties.borrower,
        &escrow,
        &btc_escrow::tx::FeeCap::default(),
        &m.parties.secp,
    )?;
    let signed = psbt.to_string();
    let (status, location, page) =
        borrower.post(&format!("/loans/{id}/psbt"), &[("psbt", &signed)])?;
    ensure!(status == 303, "upload: {status} {page}");
    ensure!(location == format!("/loans/{id}"));
    let sent = m
        .api()
        .wait(&format!("/loans/{id}"), &m.borrower, "broadcast", |v| {
            v["txids"].as_array().is_some_and(|t| !t.is_empty())
        })?;
    let txid = bitcoin::Txid::from_str(sent["txids"][0].as_str().context("txid")?)?;
    m.env
        .wait_for_tx(&m.borrower_return.script_pubkey(), txid)?;
    m.env.mine(1)?;
    m.api()
        .wait(&format!("/loans/{id}"), &m.borrower, "closed", |v| {
            v["state"] == "closed"
        })?;
    let (_, page) = borrower.get(&format!("/loans/{id}"))?;
    ensure!(page.contains(r#"data-state="closed""#), "{page}");
    Ok(())
}

#[test]
fn the_planner_shows_the_librarys_numbers() -> anyhow::Result<()> {
    use btc_escrow::loan::plan::{plan, MinerInput, PlanInput};
    use btc_escrow::util::grouped_minor as money;
    let m = Market::open()?;
    let page = Browser::new(&m);
    let base = PlanInput {
        collateral_sat: 20_000_000,
        price_minor: 10_000_000,
        currency: "USD".into(),
        ltv_bps: 5_000,
        apr_bps: 1_000,
        term_secs: 90 * 86_400,
        margin_call_ltv_bps: 7_000,
        liquidation_ltv_bps: 8_000,
        liquidation_penalty_bps: 500,
        liquidation_fee_sat: 1_000,
        miner: None,
    };
    let mut big = base.clone();
    big.collateral_sat = 150_000_000;
    big.price_minor = 6_543_210;
    big.ltv_bps = 3_000;
    big.apr_bps = 1_250;
    let mut miner = base.clone();
    miner.miner = Some(MinerInput {
        asic_cost_minor: 800_000,
        mined_sat_per_day: 12_345,
        power_cost_minor_per_day: 450,
    });
    for input in [base, big, miner] {
        let want = plan(&input)?;
        let mut query = format!(
            "collateral_sat={}&price_minor={}&currency=USD&ltv_bps={}&apr_bps={}&term_secs={}",
            input.collateral_sat, input.price_minor, input.ltv_bps, input.apr_bps, input.term_secs
        );
        if let Some(mi) = &input.miner {
            query.push_str(&format!(
                "&asic_cost_minor={}&mined_sat_per_day={}&power_cost_minor_per_day={}",
                mi.asic_cost_minor, mi.mined_sat_per_day, mi.power_cost_minor_per_day
            ));
        }
        let (status, html) = page.get(&format!("/planner?{query}"))?;
        ensure!(status == 200, "{status}");
        let shown = |id: &str| -> String {
            html.split(&format!("id=\"{id}\">"))
                .nth(1)
                .and_then(|r| r.split('<').next())
                .unwrap_or("")
                .to_owned()
        };
        ensure!(
            shown("principal") == format!("{} USD", money(want.principal_minor)),
            "{html}"
        );
        ensure!(shown("interest") == format!("{} USD", money(want.interest_minor)));
        let liq = want
            .liquidation_price_minor
            .context("a liquidation price")?;
        ensure!(shown("liquidation") == format!("{} USD", money(liq)));
        // The -40 % row, as the library computes it.
        let row = &want.stress[3];
        let tr = html
            .split("data-fall=\"40\"")
            .nth(1)
            .and_then(|r| r.split("</tr>").next())
            .context("the -40 % row")?;
        let lender = format!(
            "{}.{:08} BTC",
            row.lender_sat / 100_000_000,
            row.lender_sat % 100_000_000
        );
        ensure!(
            tr.contains(&money(row.price_minor))
                && tr.contains(row.state.replace('_', " ").as_str())
                && tr.contains(&lender),
            "{tr}"
        );
        if let Some(mp) = &want.miner {
            let days = mp.days_to_repay.context("days")?;
            ensure!(shown("days-to-repay") == days.to_string(), "{html}");
        }
    }
    // A bad field is named beside it.
    let (status, html) = page.get("/planner?ltv_bps=lots")?;
    ensure!(
        status == 200 && html.contains("data-field=\"ltv_bps\""),
        "{html}"
    );
    // Out of range, not only unparsable: named too.
    let (status, html) = page.get("/planner?ltv_bps=9000")?;
    ensure!(
        status == 200 && html.contains("data-field=\"ltv_bps\""),
        "{html}"
    );
    Ok(())
}
