//! Oracle faults during a breach, through the running service: three local feeds
//! in the exchanges' real formats (Kraken, Bitstamp, a JSON feed with a timestamp),
//! two of which must agree within 2 %. A loan at $100,000 is breached at $60,000
//! (liquidation at 80 % LTV, confirmed over 6 ticks); while its breach is being
//! confirmed the oracle fails in each way in turn: every source down, the quorum
//! lost, sources disagreeing beyond the deviation limit, stale timestamps. Each time
//! no liquidation is decided, `/v1/health` answers 503 with the oracle's reason, and
//! the loan gets a `breach_held` event saying why, its breach count starting over.
//! One source wicking −40 % for a tick is dropped as an outlier and counts no breach.
//! Finally the three agree on $60,000 for six ticks: the loan is liquidated at that
//! price, with the evidence.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::serve::Market;
use serde_json::{json, Value};

/// What a feed answers: a price in cents dated `age` seconds ago, or an error.
#[derive(Clone, Copy)]
enum Feed {
    Price { minor: u64, age: u64 },
    Down,
}

#[derive(Clone, Copy)]
enum Format {
    Kraken,
    Bitstamp,
    Json,
}

fn decimal(minor: u64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

fn body(format: Format, feed: Feed) -> axum::response::Response {
    let Feed::Price { minor, age } = feed else {
        return (StatusCode::BAD_GATEWAY, "upstream down").into_response();
    };
    let p = decimal(minor);
    let ts = btc_escrow::util::unix_now() - age;
    axum::Json(match format {
        Format::Kraken => json!({"error": [], "result": {"XXBTZUSD": {
            "a": [p, "1", "1.000"], "b": [p, "1", "1.000"], "c": [p, "0.001"],
            "v": ["1", "1"], "p": [p, p], "t": [1, 1], "l": [p, p], "h": [p, p], "o": p}}}),
        Format::Bitstamp => json!({"timestamp": ts.to_string(), "open": p, "high": p,
            "low": p, "last": p, "volume": "1", "vwap": p, "bid": p, "ask": p, "side": "0",
            "open_24": p, "percent_change_24": "0", "pair": "BTC/USD"}),
        Format::Json => json!({"ticker": {"price": p, "time": ts}}),
    })
    .into_response()
}

/// The three feeds on loopback, each answering what its slot holds.
struct Feeds {
    _rt: tokio::runtime::Runtime,
    slots: [Arc<Mutex<Feed>>; 3],
    config: String,
}

impl Feeds {
    fn start() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let slots = [(); 3].map(|_| {
            Arc::new(Mutex::new(Feed::Price {
                minor: 10_000_000,
                age: 0,
            }))
        });
        let mut config = String::new();
        for (slot, (format, name, path)) in slots.iter().zip([
            (Format::Kraken, "kraken", "/0/public/Ticker"),
            (Format::Bitstamp, "bitstamp", "/api/v2/ticker/btcusd/"),
            (Format::Json, "feed", "/feed"),
        ]) {
            let slot = slot.clone();
            let app = axum::Router::new().route(
                path,
                axum::routing::get(move || {
                    let feed = *slot.lock().expect("feed");
                    async move { body(format, feed) }
                }),
            );
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
            let url = format!("http://{}{path}", listener.local_addr()?);
            rt.spawn(async move { axum::serve(listener, app).await });
            config.push_str(&match format {
                Format::Kraken => {
                    format!("\n[[oracle.sources]]\nname = \"{name}\"\nkind = \"kraken\"\nurl = \"{url}?pair=XBTUSD\"\n")
                }
                Format::Bitstamp => {
                    format!("\n[[oracle.sources]]\nname = \"{name}\"\nkind = \"bitstamp\"\nurl = \"{url}\"\n")
                }
                Format::Json => format!(
                    "\n[[oracle.sources]]\nname = \"{name}\"\nkind = \"json\"\nurl = \"{url}\"\n\
                     price_pointer = \"/ticker/price\"\ntimestamp_pointer = \"/ticker/time\"\n"
                ),
            });
        }
        Ok(Self {
            _rt: rt,
            slots,
            config,
        })
    }

    fn set(&self, feeds: [Feed; 3]) {
        for (slot, feed) in self.slots.iter().zip(feeds) {
            *slot.lock().expect("feed") = feed;
        }
    }

    fn all(&self, minor: u64) {
        self.set([Feed::Price { minor, age: 0 }; 3]);
    }
}

fn at(minor: u64) -> Feed {
    Feed::Price { minor, age: 0 }
}

/// Replace init's manual source with the three feeds, two of which must agree
/// within 2 %.
fn configure(data: &std::path::Path, feeds: &Feeds) -> anyhow::Result<()> {
    let path = data.join("btc-escrow.toml");
    let text = std::fs::read_to_string(&path)?;
    let manual = "[oracle]\nquorum = 1\ninterval_secs = 1\n\n[[oracle.sources]]\nname = \"operator\"\nkind = \"manual\"\n";
    ensure!(text.contains(manual), "not the file init writes: {text}");
    let oracle = format!(
        "[oracle]\nquorum = 2\ninterval_secs = 1\nstaleness_secs = 60\nmax_deviation_bps = 200\n{}",
        feeds.config
    );
    std::fs::write(&path, text.replace(manual, &oracle))?;
    Ok(())
}

fn events(m: &Market, id: &str) -> anyhow::Result<Vec<Value>> {
    let all = m.api().get(&format!("/loans/{id}/events"), &m.admin)?;
    Ok(all.as_array().context("events")?.clone())
}

fn held(m: &Market, id: &str) -> anyhow::Result<Vec<String>> {
    Ok(events(m, id)?
        .iter()
        .filter(|e| e["event"]["event"] == "breach_held")
        .filter_map(|e| e["event"]["reason"].as_str().map(str::to_owned))
        .collect())
}

/// The loan after `secs` seconds, checked on every poll: never liquidating.
fn holds_for(m: &Market, id: &str, secs: u64) -> anyhow::Result<Value> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let loan = m.api().get(&format!("/loans/{id}"), &m.admin)?;
        ensure!(
            loan["state"] == "margin_call" || loan["state"] == "active",
            "liquidated without a confirmed aggregate: {loan}"
        );
        if Instant::now() > until {
            return Ok(loan);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The oracle fails with `fault` while a breach is being confirmed: the breach is
/// held, with a reason containing `why`, and health says so.
fn fault_during_a_breach(
    m: &Market,
    feeds: &Feeds,
    id: &str,
    name: &str,
    fault: [Feed; 3],
    why: &str,
) -> anyhow::Result<()> {
    let before = held(m, id)?.len();
    feeds.all(6_000_000);
    m.api()
        .wait(&format!("/loans/{id}"), &m.admin, "a breach tick", |l| {
            l["breach_ticks"]
                .as_u64()
                .is_some_and(|n| (1..6).contains(&n))
        })
        .with_context(|| format!("{name}: breach"))?;
    feeds.set(fault);
    let (status, health) = wait_health(m, |h| h["oracle"]["fresh"] == false)?;
    ensure!(status == 503, "{name}: health {status}: {health}");
    let reason = health["oracle"]["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains(why),
        "{name}: health says {reason:?}, not {why:?}"
    );
    let loan = holds_for(m, id, 4)?;
    ensure!(
        loan["breach_ticks"] == 0,
        "{name}: the breach count stays: {loan}"
    );
    let reasons = held(m, id)?;
    ensure!(
        reasons.len() == before + 1 && reasons[before].contains(why),
        "{name}: breach_held events {reasons:?}"
    );
    Ok(())
}

fn wait_health(m: &Market, ok: impl Fn(&Value) -> bool) -> anyhow::Result<(u16, Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = m
            .api()
            .call(reqwest::Method::GET, "/health", None, None, &[])?;
        if ok(&got.1) {
            return Ok(got);
        }
        ensure!(Instant::now() < deadline, "health never: {}", got.1);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn no_liquidation_without_a_confirmed_aggregate() -> anyhow::Result<()> {
    let feeds = Feeds::start()?;
    let mut m = Market::open_with(|data| configure(data, &feeds))?;
    let mut terms = m.offer_terms();
    terms["confirm_ticks"] = json!(6);
    let id = m.active_with(&terms)?;

    fault_during_a_breach(
        &m,
        &feeds,
        &id,
        "all sources down",
        [Feed::Down; 3],
        "0 usable",
    )?;
    fault_during_a_breach(
        &m,
        &feeds,
        &id,
        "quorum lost",
        [Feed::Down, Feed::Down, at(6_000_000)],
        "1 usable quote(s), the quorum is 2",
    )?;
    // $60,000 with one at $55,000 and one at $65,000: each 8 % from the median.
    fault_during_a_breach(
        &m,
        &feeds,
        &id,
        "sources disagreeing",
        [at(5_500_000), at(6_000_000), at(6_500_000)],
        "outlier",
    )?;
    // Kraken dates its quote at fetch: it is down; the two others are an hour old.
    let stale = Feed::Price {
        minor: 6_000_000,
        age: 3_600,
    };
    fault_during_a_breach(
        &m,
        &feeds,
        &id,
        "stale timestamps",
        [Feed::Down, stale, stale],
        "stale",
    )?;

    // Back above the line, then one source wicks −40 % for a tick: an outlier.
    feeds.all(10_000_000);
    wait_health(&m, |h| h["ok"] == true)?;
    m.api()
        .wait(&format!("/loans/{id}"), &m.admin, "no breach", |l| {
            l["breach_ticks"] == 0
        })?;
    feeds.set([at(6_000_000), at(10_000_000), at(10_000_000)]);
    let mut saw_wick = false;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let price = m.api().get("/price", &m.admin)?;
        let dropped =
            price["latest"]["Ok"]["dropped"].to_string() + &price["latest"]["dropped"].to_string();
        saw_wick |= dropped.contains("kraken") && dropped.contains("utlier");
        let loan = m.api().get(&format!("/loans/{id}"), &m.admin)?;
        ensure!(
            loan["breach_ticks"] == 0,
            "a wick counted as a breach: {loan}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(saw_wick, "the wicking source was never named as an outlier");
    feeds.all(10_000_000);

    // A confirmed aggregate liquidates.
    feeds.all(6_000_000);
    let loan = m
        .api()
        .wait(&format!("/loans/{id}"), &m.admin, "liquidating", |l| {
            l["state"] == "liquidating" && l["pending_psbt"].is_object()
        })?;
    ensure!(loan["pending_psbt"]["price_minor"] == 6_000_000, "{loan}");
    let decided = events(&m, &id)?
        .into_iter()
        .find(|e| e["event"]["event"] == "liquidation_decided")
        .context("liquidation_decided")?;
    let used = decided["event"]["evidence"]["quotes"]
        .as_array()
        .map(|q| q.iter().filter(|q| q["dropped"].is_null()).count())
        .unwrap_or_default();
    ensure!(used >= 2, "decided on {used} quotes: {decided}");
    Ok(())
}
