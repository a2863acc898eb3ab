//! The web page in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, Debian's `chromium` + `chromium-driver`, which `.ci/run` installs;
//! the test fails saying so when they are missing), against `serve`, bitcoind and
//! electrs:
//! - a lender creates an offer with an invalid field and sees the error beside it, then
//!   a valid one;
//! - a borrower (a 390 px wide phone) signs in, accepts the offer, sees the escrow
//!   address and its QR code; the loan page then updates live, without a reload, as
//!   the collateral arrives and the test moves the price: active, margin call,
//!   liquidation;
//! - on a second loan the lender records the repayment in the page, and the borrower
//!   uploads the release PSBT signed outside the server through the page: closed.
//!
//! Screenshots at 390 px and 1280 px go to `target/screenshots/`.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bitcoin::psbt::Psbt;
use common::serve::Market;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

struct Chromedriver {
    child: Child,
    port: u16,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exe(var: &str, default: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    ensure!(
        path.is_file(),
        "{} not found: install Debian's chromium and chromium-driver (.ci/run does), or set {var}",
        path.display()
    );
    Ok(path)
}

fn chromedriver() -> anyhow::Result<Chromedriver> {
    let driver = exe("CHROMEDRIVER", "/usr/bin/chromedriver")?;
    exe("CHROMIUM", "/usr/bin/chromium")?;
    let port = common::free_port()?;
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let d = Chromedriver { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(d)
}

async fn browser(d: &Chromedriver, width: u32, height: u32) -> anyhow::Result<Client> {
    let chromium = exe("CHROMIUM", "/usr/bin/chromium")?;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--window-size={width},{height}")],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .context("starting headless chromium")?;
    client.set_window_size(width, height).await?;
    Ok(client)
}

async fn shot(c: &Client, name: &str) -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.png")), c.screenshot().await?)?;
    Ok(())
}

async fn sign_in(c: &Client, root: &str, token: &str) -> anyhow::Result<()> {
    c.goto(&format!("{root}/")).await?;
    c.find(Locator::Css("#token"))
        .await?
        .send_keys(token)
        .await?;
    c.find(Locator::Css("form[action='/signin'] button"))
        .await?
        .click()
        .await?;
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("header .who"))
        .await?;
    Ok(())
}

async fn set_field(c: &Client, name: &str, value: &str) -> anyhow::Result<()> {
    let field = c
        .find(Locator::Css(&format!("#offer input[name='{name}']")))
        .await?;
    field.clear().await?;
    field.send_keys(value).await?;
    Ok(())
}

/// Wait (without navigating) until the live part shows `state`.
async fn shows_state(c: &Client, state: &str) -> anyhow::Result<()> {
    c.wait()
        .at_most(Duration::from_secs(30))
        .every(Duration::from_millis(250))
        .for_element(Locator::Css(&format!(
            "#live strong.state[data-state='{state}']"
        )))
        .await
        .with_context(|| format!("the page never showed {state}"))?;
    Ok(())
}

#[test]
fn borrower_and_lender_in_a_browser() -> anyhow::Result<()> {
    let d = chromedriver()?;
    let mut m = Market::open()?;
    let root = m.api().base.trim_end_matches("/v1").to_owned();
    let rt = tokio::runtime::Runtime::new()?;
    m.set_price(10_000_000)?;
    m.api()
        .wait("/health", &m.admin, "fit to decide", |h| h["ok"] == true)?;

    // The lender: an invalid field, shown beside it; then a valid offer.
    let lender = rt.block_on(browser(&d, 1280, 900))?;
    let id = rt.block_on(async {
        sign_in(&lender, &root, &m.lender).await?;
        set_field(
            &lender,
            "lender_payout_address",
            &m.lender_payout.to_string(),
        )
        .await?;
        set_field(&lender, "initial_ltv_bps", "9000").await?;
        lender
            .find(Locator::Css("#offer button"))
            .await?
            .click()
            .await?;
        let error = lender
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("span.error[data-field='initial_ltv_bps']"))
            .await?;
        ensure!(!error.text().await?.is_empty());
        shot(&lender, "lender-offer-error-1280").await?;
        set_field(&lender, "initial_ltv_bps", "5000").await?;
        lender
            .find(Locator::Css("#offer button"))
            .await?
            .click()
            .await?;
        lender
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#live"))
            .await?;
        let url = lender.current_url().await?;
        Ok::<_, anyhow::Error>(url.path().trim_start_matches("/loans/").to_owned())
    })?;

    // The borrower, on a phone: accept; the escrow and its QR code.
    let borrower = rt.block_on(browser(&d, 390, 844))?;
    rt.block_on(async {
        sign_in(&borrower, &root, &m.borrower).await?;
        let form = format!("section.offer[data-loan='{id}']");
        borrower
            .find(Locator::Css(&format!(
                "{form} input[name='borrower_return_address']"
            )))
            .await?
            .send_keys(&m.borrower_return.to_string())
            .await?;
        borrower
            .find(Locator::Css(&format!("{form} button")))
            .await?
            .click()
            .await?;
        borrower
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(".qr svg"))
            .await?;
        shot(&borrower, "borrower-fund-390").await?;
        Ok::<_, anyhow::Error>(())
    })?;
    let loan = m.api().get(&format!("/loans/{id}"), &m.borrower)?;
    let address = loan["escrow"]["address"]
        .as_str()
        .context("address")?
        .to_owned();
    let shown = rt.block_on(async {
        Ok::<_, anyhow::Error>(
            borrower
                .find(Locator::Css("code.address"))
                .await?
                .text()
                .await?,
        )
    })?;
    ensure!(
        shown == address,
        "the page shows {shown}, the loan {address}"
    );

    // Live, without a reload: a marker set in the page must survive every update.
    rt.block_on(borrower.execute("window.__same_page = 42; return null;", vec![]))?;
    let escrow = m.escrow_of(&loan)?;
    let tx = m.wallet.send(
        &escrow.address(),
        bitcoin::Amount::from_sat(loan["required_collateral_sat"].as_u64().context("sat")?),
        bitcoin::FeeRate::from_sat_per_vb(2).context("rate")?,
    )?;
    m.env
        .wait_for_tx(&escrow.address().script_pubkey(), tx.compute_txid())?;
    m.env.mine(1)?;
    rt.block_on(shows_state(&borrower, "active"))?;
    m.set_price(7_000_000)?;
    rt.block_on(shows_state(&borrower, "margin_call"))?;
    rt.block_on(shot(&borrower, "loan-margin-call-390"))?;
    m.set_price(6_200_000)?;
    rt.block_on(shows_state(&borrower, "liquidating"))?;
    let marker = rt.block_on(borrower.execute("return window.__same_page || null;", vec![]))?;
    ensure!(marker == json!(42), "the page was reloaded: {marker}");
    rt.block_on(async {
        shot(&borrower, "loan-liquidating-390").await?;
        borrower.set_window_size(1280, 900).await?;
        shot(&borrower, "loan-liquidating-1280").await
    })?;

    // A second loan, repaid in the lender's page, released by the borrower's upload.
    m.set_price(10_000_000)?;
    let second = m.active()?;
    // What is owed grows by the second (rounded up to the cent): pay what the page
    // shows, and again if a cent accrued meanwhile.
    for _ in 0..3 {
        let loan = m.api().get(&format!("/loans/{second}"), &m.lender)?;
        let owed = loan["owed_minor"].as_u64().context("owed")?;
        if loan["state"] == "releasing" || owed == 0 {
            break;
        }
        rt.block_on(async {
            lender.goto(&format!("{root}/loans/{second}")).await?;
            lender
                .find(Locator::Css(
                    "form[action$='/repay'] input[name='amount_minor']",
                ))
                .await?
                .send_keys(&owed.to_string())
                .await?;
            lender
                .find(Locator::Css("form[action$='/repay'] button"))
                .await?
                .click()
                .await?;
            lender
                .wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css("#live"))
                .await?;
            Ok::<_, anyhow::Error>(())
        })?;
        // The click returns before the server has the form: wait for the repayment
        // (else the next round may load the page of a loan already releasing).
        m.api().wait(
            &format!("/loans/{second}"),
            &m.lender,
            "repayment recorded",
            |v| v["state"] == "releasing" || v["owed_minor"].as_u64().is_some_and(|o| o < owed),
        )?;
    }
    let releasing = m
        .api()
        .wait(&format!("/loans/{second}"), &m.borrower, "releasing", |v| {
            v["state"] == "releasing" && v["pending_psbt"].is_object()
        })?;
    let mut psbt = Psbt::from_str(releasing["pending_psbt"]["psbt"].as_str().context("psbt")?)?;
    btc_escrow::tx::sign(
        &mut psbt,
        &m.parties.borrower,
        &m.escrow_of(&releasing)?,
        &btc_escrow::tx::FeeCap::default(),
        &m.parties.secp,
    )?;
    rt.block_on(async {
        borrower.goto(&format!("{root}/loans/{second}")).await?;
        borrower
            .find(Locator::Css("textarea[name='psbt']"))
            .await?
            .send_keys(&psbt.to_string())
            .await?;
        borrower
            .find(Locator::Css("form[action$='/psbt'] button"))
            .await?
            .click()
            .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    let sent = m
        .api()
        .wait(&format!("/loans/{second}"), &m.borrower, "broadcast", |v| {
            v["txids"].as_array().is_some_and(|t| !t.is_empty())
        })?;
    let txid = bitcoin::Txid::from_str(sent["txids"][0].as_str().context("txid")?)?;
    m.env
        .wait_for_tx(&m.borrower_return.script_pubkey(), txid)?;
    m.env.mine(1)?;
    rt.block_on(async {
        shows_state(&borrower, "closed").await?;
        shot(&borrower, "loan-closed-1280").await
    })?;
    for c in [lender, borrower] {
        let _ = rt.block_on(c.close());
    }
    Ok(())
}
