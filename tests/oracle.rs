//! The price oracle against local HTTP servers that answer in the exchanges' real
//! formats (Kraken Ticker, Bitstamp ticker, Coinbase spot, a generic JSON feed), and
//! in every way a feed fails: timeouts, 500s, malformed, empty and huge bodies, error
//! shapes, stale and future timestamps, bad prices, and a source that hangs forever.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use btc_escrow::oracle::sources::SourceKind;
use btc_escrow::oracle::ticker::poll_once;
use btc_escrow::oracle::{AggregationRules, DropReason, OracleResult, Source, SourceError, Ticker};
use serde_json::json;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How a fake exchange answers.
#[derive(Clone, Debug)]
enum Answer {
    /// A price as decimal text, with the timestamp `offset` seconds from now.
    Price {
        price: String,
        offset: i64,
    },
    Status500,
    Malformed,
    Empty,
    Huge,
    Hang,
    ExchangeError,
    /// A good price, but for another market: Kraken answers for XETHZUSD, Bitstamp
    /// for BTC/EUR.
    OtherPair,
    /// Kraken's result holds two pairs (ours and another).
    SeveralPairs,
    /// This exact JSON body, with status 200.
    Body(serde_json::Value),
}

fn price(p: &str) -> Answer {
    Answer::Price {
        price: p.to_owned(),
        offset: 0,
    }
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Kraken,
    Bitstamp,
    Coinbase,
    Json,
}

type Shared = Arc<Mutex<Answer>>;

/// One pair's entry in Kraken's public Ticker `result`.
fn kraken_ticker(p: &str) -> serde_json::Value {
    json!({"a": [p, "1", "1.000"], "b": [p, "1", "1.000"], "c": [p, "0.00100000"],
        "v": ["10.1", "200.2"], "p": [p, p], "t": [10, 200], "l": [p, p], "h": [p, p], "o": p})
}

/// Bitstamp's v2 ticker for one pair.
fn bitstamp_ticker(p: &str, ts: i64, pair: &str) -> serde_json::Value {
    json!({"timestamp": ts.to_string(), "open": p, "high": p, "low": p, "last": p,
        "volume": "123.4", "vwap": p, "bid": p, "ask": p, "side": "0", "open_24": p,
        "percent_change_24": "0.10", "pair": pair})
}

async fn answer(format: Format, State(state): State<Shared>) -> Response {
    let a = state.lock().map(|a| a.clone()).unwrap_or(Answer::Status500);
    match a {
        Answer::Price { price: p, offset } => {
            let ts = now() + offset;
            let body = match format {
                Format::Kraken => json!({"error": [], "result": {"XXBTZUSD": kraken_ticker(&p)}}),
                Format::Bitstamp => bitstamp_ticker(&p, ts, "BTC/USD"),
                Format::Coinbase => {
                    json!({"data": {"amount": p, "base": "BTC", "currency": "USD"}})
                }
                Format::Json => json!({"ticker": {"price": p, "time": ts}}),
            };
            axum::Json(body).into_response()
        }
        Answer::OtherPair => match format {
            Format::Kraken => {
                axum::Json(json!({"error": [], "result": {"XETHZUSD": kraken_ticker("3400.10")}}))
                    .into_response()
            }
            Format::Bitstamp => {
                axum::Json(bitstamp_ticker("59000.00", now(), "BTC/EUR")).into_response()
            }
            _ => StatusCode::NOT_FOUND.into_response(),
        },
        Answer::SeveralPairs => axum::Json(json!({"error": [], "result": {
            "XXBTZUSD": kraken_ticker("64000.00"), "XETHZUSD": kraken_ticker("3400.10")}}))
        .into_response(),
        Answer::Body(body) => axum::Json(body).into_response(),
        Answer::Status500 => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
        Answer::Malformed => (StatusCode::OK, "{\"result\": {\"XXBTZUSD\": ").into_response(),
        Answer::Empty => (StatusCode::OK, "").into_response(),
        Answer::Huge => (
            StatusCode::OK,
            format!("{{\"pad\": \"{}\"}}", "x".repeat(1 << 20)),
        )
            .into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Answer::ExchangeError => match format {
            Format::Kraken => {
                axum::Json(json!({"error": ["EService:Unavailable"], "result": {}})).into_response()
            }
            Format::Bitstamp => (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"status": "error", "reason": "Not Found", "code": "404"})),
            )
                .into_response(),
            Format::Coinbase => (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"errors": [{"id": "not_found", "message": "Invalid currency"}]})),
            )
                .into_response(),
            Format::Json => (StatusCode::BAD_REQUEST, "bad request").into_response(),
        },
    }
}

/// A fake exchange on 127.0.0.1; its answer can be changed while it runs.
struct Fake {
    addr: SocketAddr,
    state: Shared,
    format: Format,
}

impl Fake {
    async fn start(format: Format, initial: Answer) -> anyhow::Result<Self> {
        let state: Shared = Arc::new(Mutex::new(initial));
        let path = match format {
            Format::Kraken => "/0/public/Ticker",
            Format::Bitstamp => "/api/v2/ticker/btcusd/",
            Format::Coinbase => "/v2/prices/BTC-USD/spot",
            Format::Json => "/feed",
        };
        let app = Router::new()
            .route(path, get(move |s: State<Shared>| answer(format, s)))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            state,
            format,
        })
    }

    fn set(&self, a: Answer) {
        if let Ok(mut s) = self.state.lock() {
            *s = a;
        }
    }

    fn source(&self, name: &str) -> Source {
        let (kind, path) = match self.format {
            Format::Kraken => (SourceKind::Kraken, "/0/public/Ticker?pair=XBTUSD"),
            Format::Bitstamp => (SourceKind::Bitstamp, "/api/v2/ticker/btcusd/"),
            Format::Coinbase => (SourceKind::Coinbase, "/v2/prices/BTC-USD/spot"),
            Format::Json => (
                SourceKind::Json {
                    price_pointer: "/ticker/price".into(),
                    timestamp_pointer: Some("/ticker/time".into()),
                },
                "/feed",
            ),
        };
        Source {
            name: name.to_owned(),
            kind,
            url: format!("http://{}{path}", self.addr),
            timeout: Duration::from_millis(500),
            currency: "USD".into(),
        }
    }
}

fn rules(quorum: usize) -> AggregationRules {
    AggregationRules {
        quorum,
        staleness_secs: 60,
        max_future_skew_secs: 5,
        max_deviation_bps: 500,
    }
}

async fn three_exchanges(k: &str, b: &str, c: &str) -> anyhow::Result<(Fake, Fake, Fake)> {
    Ok((
        Fake::start(Format::Kraken, price(k)).await?,
        Fake::start(Format::Bitstamp, price(b)).await?,
        Fake::start(Format::Coinbase, price(c)).await?,
    ))
}

fn dropped_reason<'a>(r: &'a OracleResult, source: &str) -> Option<&'a DropReason> {
    let dropped = match r {
        Ok(p) => &p.dropped,
        Err(n) => &n.dropped,
    };
    dropped
        .iter()
        .find(|d| d.source == source)
        .map(|d| &d.reason)
}

/// Scenario: Kraken, Bitstamp and Coinbase agree; the median is the price and every
/// quote is kept as evidence.
#[tokio::test]
async fn three_sources_agree() -> anyhow::Result<()> {
    let (k, b, c) = three_exchanges("64000.10000", "64010.00", "64005.55").await?;
    let sources = vec![
        k.source("kraken"),
        b.source("bitstamp"),
        c.source("coinbase"),
    ];
    let r = poll_once(&reqwest::Client::new(), &sources, "USD", &rules(2)).await;
    let p = r.map_err(|n| anyhow::anyhow!("no price: {n:?}"))?;
    ensure!(p.price_minor == 6_400_555, "{p:?}");
    ensure!(p.used.len() == 3 && p.dropped.is_empty());
    let names: Vec<_> = p.used.iter().map(|q| q.source.as_str()).collect();
    ensure!(names == ["kraken", "bitstamp", "coinbase"]);
    Ok(())
}

/// Scenario: one source is 30% off: it is dropped as an outlier and named; the price is
/// the median of the others.
#[tokio::test]
async fn an_outlier_is_dropped_and_named() -> anyhow::Result<()> {
    let (k, b, c) = three_exchanges("64000.00", "64010.00", "44800.00").await?;
    let sources = vec![
        k.source("kraken"),
        b.source("bitstamp"),
        c.source("coinbase"),
    ];
    let r = poll_once(&reqwest::Client::new(), &sources, "USD", &rules(2)).await;
    ensure!(
        matches!(
            dropped_reason(&r, "coinbase"),
            Some(DropReason::Outlier { .. })
        ),
        "{r:?}"
    );
    let p = r.map_err(|n| anyhow::anyhow!("no price: {n:?}"))?;
    // Median of 6_400_000 and 6_401_000: their mean, rounded up.
    ensure!(p.price_minor == 6_400_500, "{}", p.price_minor);
    Ok(())
}

/// Scenario: a timeout, a 500, malformed JSON, an empty body and a huge body: each is
/// dropped with its own reason; two good sources still meet a quorum of 2, not of 3.
#[tokio::test]
async fn each_failure_has_its_reason_and_the_quorum_decides() -> anyhow::Result<()> {
    let good1 = Fake::start(Format::Kraken, price("64000")).await?;
    let good2 = Fake::start(Format::Coinbase, price("64001")).await?;
    let hang = Fake::start(Format::Bitstamp, Answer::Hang).await?;
    let e500 = Fake::start(Format::Bitstamp, Answer::Status500).await?;
    let bad = Fake::start(Format::Kraken, Answer::Malformed).await?;
    let empty = Fake::start(Format::Coinbase, Answer::Empty).await?;
    let huge = Fake::start(Format::Json, Answer::Huge).await?;
    let sources = vec![
        good1.source("good1"),
        good2.source("good2"),
        hang.source("hang"),
        e500.source("e500"),
        bad.source("malformed"),
        empty.source("empty"),
        huge.source("huge"),
    ];
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let r = poll_once(&client, &sources, "USD", &rules(2)).await;
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "a hanging source is cut at its timeout"
    );
    let failed = |name: &str| match dropped_reason(&r, name) {
        Some(DropReason::Failed { error }) => Some(error.clone()),
        _ => None,
    };
    ensure!(
        matches!(failed("hang"), Some(SourceError::Timeout { .. })),
        "{r:?}"
    );
    ensure!(
        matches!(failed("e500"), Some(SourceError::Http { status: 500 })),
        "{r:?}"
    );
    ensure!(
        matches!(failed("malformed"), Some(SourceError::Malformed { .. })),
        "{r:?}"
    );
    ensure!(matches!(failed("empty"), Some(SourceError::Empty)), "{r:?}");
    ensure!(
        matches!(failed("huge"), Some(SourceError::TooLarge { .. })),
        "{r:?}"
    );
    ensure!(r.as_ref().map(|p| p.used.len()).ok() == Some(2), "{r:?}");

    let r = poll_once(&client, &sources, "USD", &rules(3)).await;
    let n = r.err().context("a quorum of 3 cannot be met")?;
    ensure!(n.used.len() == 2 && n.dropped.len() == 5, "{n:?}");
    Ok(())
}

/// Scenario: the exchanges' own error shapes (Kraken's error array, Bitstamp's and
/// Coinbase's error objects) are read and reported as exchange errors.
#[tokio::test]
async fn exchange_error_shapes_are_understood() -> anyhow::Result<()> {
    let (k, b, c) = three_exchanges("1", "1", "1").await?;
    for f in [&k, &b, &c] {
        f.set(Answer::ExchangeError);
    }
    let sources = vec![
        k.source("kraken"),
        b.source("bitstamp"),
        c.source("coinbase"),
    ];
    let r = poll_once(&reqwest::Client::new(), &sources, "USD", &rules(1)).await;
    for (name, text) in [
        ("kraken", "EService:Unavailable"),
        ("bitstamp", "Not Found"),
        ("coinbase", "Invalid currency"),
    ] {
        match dropped_reason(&r, name) {
            Some(DropReason::Failed {
                error: SourceError::Exchange { message },
            }) if message.contains(text) => {}
            other => anyhow::bail!("{name}: {other:?}"),
        }
    }
    ensure!(r.is_err());
    Ok(())
}

/// Scenario: Kraken answers for ETH/USD, then with two pairs at once, and Bitstamp for
/// BTC/EUR while the oracle is configured for USD: each answer is refused with an error
/// naming the source and the market it found, never used as a BTC/USD price.
#[tokio::test]
async fn an_answer_for_another_market_is_refused() -> anyhow::Result<()> {
    let k = Fake::start(Format::Kraken, Answer::OtherPair).await?;
    let b = Fake::start(Format::Bitstamp, Answer::OtherPair).await?;
    let c = Fake::start(Format::Coinbase, price("64000")).await?;
    let sources = vec![
        k.source("kraken"),
        b.source("bitstamp"),
        c.source("coinbase"),
    ];
    let client = reqwest::Client::new();
    let refused = |r: &OracleResult, name: &str, found: &str| -> anyhow::Result<()> {
        match dropped_reason(r, name) {
            Some(DropReason::Failed {
                error:
                    error @ SourceError::WrongMarket {
                        source_name,
                        found: f,
                        ..
                    },
            }) if source_name == name && f.contains(found) => {
                let text = error.to_string();
                ensure!(text.contains(name) && text.contains(found), "{text}");
                Ok(())
            }
            other => anyhow::bail!("{name}: expected WrongMarket({found}), got {other:?}"),
        }
    };
    let r = poll_once(&client, &sources, "USD", &rules(1)).await;
    refused(&r, "kraken", "XETHZUSD")?;
    refused(&r, "bitstamp", "BTC/EUR")?;
    let p = r.map_err(|n| anyhow::anyhow!("{n:?}"))?;
    ensure!(p.used.len() == 1 && p.price_minor == 6_400_000, "{p:?}");

    k.set(Answer::SeveralPairs);
    let r = poll_once(&client, &sources, "USD", &rules(1)).await;
    refused(&r, "kraken", "XETHZUSD")?;

    // The real answers for the configured market are used.
    k.set(price("64000"));
    b.set(price("64000"));
    let r = poll_once(&client, &sources, "USD", &rules(3)).await;
    ensure!(r.as_ref().map(|p| p.used.len()).ok() == Some(3), "{r:?}");
    Ok(())
}

/// Scenario: the operator's manual price is dated when it was set. A config price set an
/// hour ago (`price_set_at`) is stale at start, not made fresh by loading the config;
/// `set(price)` dates a new price now, and it is used.
#[tokio::test]
async fn a_manual_price_is_dated_when_it_was_set() -> anyhow::Result<()> {
    let set_at = now() - 3600;
    let config = btc_escrow::oracle::OracleConfig::from_toml(&format!(
        "[oracle]\nquorum = 1\nstaleness_secs = 120\n\
         [[oracle.sources]]\nname = \"operator\"\nkind = \"manual\"\n\
         price = \"64000.00\"\nprice_set_at = {set_at}\n"
    ))?;
    let (sources, manual) = config.build(u64::try_from(now())?);
    let client = reqwest::Client::new();
    let r = poll_once(&client, &sources, "USD", &config.rules()).await;
    match dropped_reason(&r, "operator") {
        Some(DropReason::Stale { age_secs, .. }) if *age_secs >= 3600 => {}
        other => anyhow::bail!("an hour-old manual price must be stale: {other:?}"),
    }

    let (name, handle) = manual.first().context("one manual handle")?;
    ensure!(name == "operator");
    let before = u64::try_from(now())?;
    handle.set(6_500_000);
    let p = poll_once(&client, &sources, "USD", &config.rules())
        .await
        .map_err(|n| anyhow::anyhow!("a price set now is fresh: {n:?}"))?;
    ensure!(p.price_minor == 6_500_000, "{p:?}");
    ensure!(p.used[0].at >= before, "dated when set: {p:?}");
    Ok(())
}

/// Scenario: all quotes stale gives no price; a quote from beyond the future skew is
/// dropped while fresh ones are used.
#[tokio::test]
async fn stale_and_future_quotes() -> anyhow::Result<()> {
    let stale = |p: &str| Answer::Price {
        price: p.into(),
        offset: -3600,
    };
    let b = Fake::start(Format::Bitstamp, stale("64000")).await?;
    let j1 = Fake::start(Format::Json, stale("64000")).await?;
    let j2 = Fake::start(Format::Json, stale("64000")).await?;
    let sources = vec![b.source("bitstamp"), j1.source("j1"), j2.source("j2")];
    let client = reqwest::Client::new();
    let r = poll_once(&client, &sources, "USD", &rules(1)).await;
    let n = r.as_ref().err().context("all stale: no price")?;
    ensure!(
        n.dropped
            .iter()
            .all(|d| matches!(d.reason, DropReason::Stale { .. })),
        "{n:?}"
    );

    b.set(price("64000"));
    j1.set(price("64010"));
    j2.set(Answer::Price {
        price: "64000".into(),
        offset: 600,
    });
    let r = poll_once(&client, &sources, "USD", &rules(2)).await;
    ensure!(
        matches!(
            dropped_reason(&r, "j2"),
            Some(DropReason::FromTheFuture { .. })
        ),
        "{r:?}"
    );
    ensure!(r.is_ok(), "{r:?}");
    Ok(())
}

/// Scenario: zero, negative and non-numeric prices are refused with the source named;
/// many decimals round up to the next cent, never down; very large prices are refused.
#[tokio::test]
async fn prices_are_parsed_exactly_or_refused() -> anyhow::Result<()> {
    let feed = Fake::start(Format::Json, price("0")).await?;
    let client = reqwest::Client::new();
    let one = |name: &str| vec![feed.source(name)];
    for bad in [
        "0",
        "-64000",
        "sixty-four thousand",
        "NaN",
        "1e5",
        "100000000000.00",
    ] {
        feed.set(price(bad));
        let r = poll_once(&client, &one("feed"), "USD", &rules(1)).await;
        match dropped_reason(&r, "feed") {
            Some(DropReason::Failed {
                error:
                    error @ SourceError::BadPrice {
                        source_name, field, ..
                    },
            }) if source_name == "feed" && field == "/ticker/price" => {
                let text = error.to_string();
                ensure!(text.starts_with("feed: /ticker/price: "), "{text}");
            }
            other => anyhow::bail!("{bad:?} should be a bad price, got {other:?}"),
        }
    }
    for (text, cents) in [
        ("64000.129", 6_400_013u64),
        ("64000.12000000", 6_400_012),
        ("64000.1200000001", 6_400_013),
        ("9999999999.99", 999_999_999_999),
    ] {
        feed.set(price(text));
        let p = poll_once(&client, &one("feed"), "USD", &rules(1))
            .await
            .map_err(|n| anyhow::anyhow!("{n:?}"))?;
        ensure!(p.price_minor == cents, "{text} -> {}", p.price_minor);
    }
    Ok(())
}

/// Scenario: a feed whose timestamp is not a unix time, and a Kraken answer without
/// its last-trade field: each is refused with an error naming the source and the field
/// (with what was found), not a bare message.
#[tokio::test]
async fn parse_errors_name_the_source_and_the_field() -> anyhow::Result<()> {
    let feed = Fake::start(
        Format::Json,
        Answer::Body(json!({"ticker": {"price": "64000", "time": "yesterday"}})),
    )
    .await?;
    let kraken = Fake::start(
        Format::Kraken,
        Answer::Body(json!({"error": [], "result": {"XXBTZUSD": {"a": ["64000", "1", "1.000"]}}})),
    )
    .await?;
    let sources = vec![feed.source("feed"), kraken.source("kraken")];
    let r = poll_once(&reqwest::Client::new(), &sources, "USD", &rules(1)).await;
    match dropped_reason(&r, "feed") {
        Some(DropReason::Failed {
            error:
                error @ SourceError::BadTimestamp {
                    source_name,
                    field,
                    found,
                },
        }) if source_name == "feed" && field == "/ticker/time" && found.contains("yesterday") => {
            ensure!(
                error.to_string().starts_with("feed: /ticker/time: "),
                "{error}"
            );
        }
        other => anyhow::bail!("feed: {other:?}"),
    }
    match dropped_reason(&r, "kraken") {
        Some(DropReason::Failed {
            error:
                error @ SourceError::MissingField {
                    source_name, field, ..
                },
        }) if source_name == "kraken" && field == "/result/XXBTZUSD/c/0" => {
            ensure!(error.to_string().starts_with("kraken: "), "{error}");
        }
        other => anyhow::bail!("kraken: {other:?}"),
    }
    Ok(())
}

/// Scenario: with one source hanging forever the ticker still ticks on schedule (each
/// tick bounded by that source's timeout), keeps the last N results, and shuts down.
#[tokio::test]
async fn the_ticker_keeps_ticking_past_a_hanging_source() -> anyhow::Result<()> {
    let (k, b, c) = three_exchanges("64000", "64001", "64002").await?;
    b.set(Answer::Hang);
    let ticker = Ticker::new(
        vec![
            k.source("kraken"),
            b.source("bitstamp"),
            c.source("coinbase"),
        ],
        "USD",
        rules(2),
        Duration::from_millis(100),
        3,
    )?;
    let mut handle = ticker.spawn(reqwest::Client::new());
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), handle.wait_for_ticks(5))
        .await
        .context("five ticks within 30 s")?;
    // Five ticks each bounded by the 0.5 s timeout (+0.1 s margin) and the interval.
    ensure!(
        started.elapsed() < Duration::from_secs(15),
        "ticks were delayed: {:?}",
        started.elapsed()
    );
    let history = handle.history();
    ensure!(
        history.len() == 3,
        "keeps the last 3, has {}",
        history.len()
    );
    for r in &history {
        ensure!(matches!(
            dropped_reason(r, "bitstamp"),
            Some(DropReason::Failed {
                error: SourceError::Timeout { .. }
            })
        ));
        ensure!(r.as_ref().map(|p| p.price_minor).ok() == Some(6_400_100));
    }
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .context("shutdown")?;
    Ok(())
}

/// Scenario: `btc-escrow oracle price --config FILE` prints the aggregate as JSON and
/// exits 0; with the quorum unmet it exits 1 saying why.
#[tokio::test]
async fn the_cli_prints_the_aggregate() -> anyhow::Result<()> {
    let (k, b, c) = three_exchanges("64000", "64001", "64002").await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("btc-escrow.toml");
    let write = |quorum: usize| {
        std::fs::write(
            &config,
            format!(
                "[oracle]\nquorum = {quorum}\n\
                 [[oracle.sources]]\nname = \"kraken\"\nkind = \"kraken\"\nurl = \"http://{}/0/public/Ticker?pair=XBTUSD\"\n\
                 [[oracle.sources]]\nname = \"bitstamp\"\nkind = \"bitstamp\"\nurl = \"http://{}/api/v2/ticker/btcusd/\"\n\
                 [[oracle.sources]]\nname = \"coinbase\"\nkind = \"coinbase\"\nurl = \"http://{}/v2/prices/BTC-USD/spot\"\n",
                k.addr, b.addr, c.addr
            ),
        )
    };
    write(3)?;
    let run = |path: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_btc-escrow"))
                .args(["oracle", "price", "--config"])
                .arg(path)
                .output()
        })
    };
    let out = run(config.clone()).await??;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(json["price"]["price_minor"] == 6_400_100, "{json}");
    ensure!(
        json["price"]["used"].as_array().map(Vec::len) == Some(3),
        "{json}"
    );
    c.set(Answer::Status500);
    let out = run(config.clone()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("no price"),
        "{stderr}"
    );
    Ok(())
}
