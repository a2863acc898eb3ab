//! Oracle input: decimal price text and JSON price values, and whole HTTP answers of
//! a local fake exchange read by every source adapter.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use btc_escrow::oracle::decimal::{parse_price, price_from_json, MAX_PRICE_MINOR};
use btc_escrow::oracle::sources::{parse_manual_price, SourceKind, MAX_BODY_BYTES};
use btc_escrow::oracle::{Quote, Source, SourceError};
use proptest::prelude::*;

use super::{bounded, config, input, refused_quickly, text, Seeds, JSON_DICT, MAX_INPUT, NOW};

const PRICE_DICT: &[&[u8]] = &[
    b".",
    b"-",
    b"+",
    b"e",
    b"1e3",
    b"0",
    b" ",
    b"\t",
    b"NaN",
    b"inf",
    b"0x10",
    b"000000000000000000000000000000",
    b"999999999999999999999",
    b"18446744073709551616",
    b"10000000000",
    b"10000000000.01",
    b"0.001",
    b"0.009",
    b"1_000",
    b"\xd9\xa3",
];

fn price_bases() -> &'static [Vec<u8>] {
    static B: Seeds = Seeds::new();
    B.get(|| {
        [
            "64250.12",
            "0.01",
            "10000000000",
            "+1.005",
            "37123.400000000000000000",
            ".5",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    })
}

proptest! {
    #![proptest_config(config(1000))]

    /// Decimal price text and JSON price values: an accepted price is within bounds
    /// and prints back (as units and cents) to itself.
    #[test]
    fn oracle_price_text(
        bytes in input(price_bases(), PRICE_DICT, true),
        // Callers pass 2; any count must answer at once (a huge count once looped
        // for billions of passes on a zero).
        minor_digits in prop_oneof![Just(2u32), 0..=19u32, Just(u32::MAX)],
        float in any::<f64>(),
    ) {
        let text = text(&bytes);
        if let Ok(v) = bounded("parse_manual_price", || parse_manual_price(&text))? {
            prop_assert!(v > 0 && v <= MAX_PRICE_MINOR);
            prop_assert_eq!(parse_manual_price(&format!("{}.{:02}", v / 100, v % 100)), Ok(v));
        }
        let _ = bounded("parse_price", || parse_price(&text, minor_digits))?;
        let value = serde_json::from_slice::<serde_json::Value>(&bytes)
            .unwrap_or(serde_json::Value::String(text));
        if let Ok(v) = price_from_json(&value, 2) {
            prop_assert!(v > 0 && v <= MAX_PRICE_MINOR);
        }
        if let Some(n) = serde_json::Number::from_f64(float) {
            let _ = price_from_json(&serde_json::Value::Number(n), minor_digits.min(40));
        }
    }
}

/// A fake exchange: answers every request with the bytes last set, then closes.
struct Fake {
    addr: SocketAddr,
    answer: Arc<Mutex<Vec<u8>>>,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Fake {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        let addr = listener.local_addr().expect("bound");
        let answer = Arc::new(Mutex::new(Vec::new()));
        let shared = answer.clone();
        // Serves until the test process exits.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16_384 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let bytes = shared.lock().map(|a| a.clone()).unwrap_or_default();
                let _ = stream.write_all(&bytes);
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .expect("an HTTP client");
        Self {
            addr,
            answer,
            runtime,
            client,
        }
    }

    /// Answer the next requests with `raw` (status line, headers and body) and fetch
    /// from a source of `kind`.
    fn fetch(&self, kind: SourceKind, raw: Vec<u8>) -> Result<Quote, SourceError> {
        *self.answer.lock().expect("not poisoned") = raw;
        let source = Source {
            name: "fuzz".into(),
            kind,
            url: format!("http://{}/ticker", self.addr),
            timeout: Duration::from_secs(20),
            currency: "USD".into(),
        };
        self.runtime.block_on(source.fetch(&self.client, NOW))
    }
}

thread_local! {
    static FAKE: Fake = Fake::start();
}

fn http(status: u16, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

fn source_kind(i: usize) -> SourceKind {
    match i % 4 {
        0 => SourceKind::Kraken,
        1 => SourceKind::Bitstamp,
        2 => SourceKind::Coinbase,
        _ => SourceKind::Json {
            price_pointer: "/data/price".into(),
            timestamp_pointer: Some("/data/time".into()),
        },
    }
}

fn answer_bases() -> &'static [Vec<u8>] {
    static B: Seeds = Seeds::new();
    B.get(|| {
        let p = "64250.10000";
        [
            serde_json::json!({"error": [], "result": {"XXBTZUSD": {
                "a": [p, "1", "1.000"], "b": [p, "1", "1.000"], "c": [p, "0.00100000"],
                "v": ["10.1", "200.2"], "t": [10, 200], "o": p}}}),
            serde_json::json!({"timestamp": "1800000000", "open": p, "last": p,
                "volume": "123.4", "bid": p, "ask": p, "pair": "BTC/USD"}),
            serde_json::json!({"data": {"amount": p, "base": "BTC", "currency": "USD"}}),
            serde_json::json!({"data": {"price": 64250.1, "time": 1_800_000_000u64}}),
            serde_json::json!({"error": ["EQuery:Unknown asset pair"]}),
            serde_json::json!({"errors": [{"id": "not_found", "message": "Invalid currency"}]}),
            serde_json::json!({"status": "error", "reason": "Invalid pair"}),
        ]
        .iter()
        .map(|v| serde_json::to_vec(v).expect("serializes"))
        .collect()
    })
}

/// The field an adapter error names starts with `/` (a JSON pointer).
fn check_source_error(e: &SourceError) -> Result<(), TestCaseError> {
    match e {
        SourceError::MissingField { source_name, field }
        | SourceError::BadPrice {
            source_name, field, ..
        }
        | SourceError::BadTimestamp {
            source_name, field, ..
        }
        | SourceError::WrongMarket {
            source_name, field, ..
        } => {
            prop_assert_eq!(source_name, "fuzz");
            prop_assert!(field.starts_with('/'), "{}", field);
        }
        SourceError::TooLarge { limit } => prop_assert_eq!(*limit, MAX_BODY_BYTES),
        _ => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// A fake exchange's answers, through `Source::fetch` of every adapter: a quote is
    /// within bounds, every refusal names the source and the field.
    #[test]
    fn oracle_responses(
        kind in 0..4usize,
        status in prop_oneof![4 => Just(200u16), 1 => Just(404), 1 => Just(429), 1 => Just(500)],
        body in input(answer_bases(), JSON_DICT, true),
        raw in prop_oneof![4 => Just(false), 1 => Just(true)],
    ) {
        // `raw`: the body is the whole answer (status line and headers too).
        let answer = if raw { body.clone() } else { http(status, &body) };
        let got = bounded("Source::fetch", || FAKE.with(|f| f.fetch(source_kind(kind), answer)))?;
        match got {
            Ok(q) => {
                prop_assert!(q.price_minor > 0 && q.price_minor <= MAX_PRICE_MINOR);
                prop_assert!(raw || status == 200);
                prop_assert!(body.len() <= MAX_BODY_BYTES);
            }
            Err(e) => check_source_error(&e)?,
        }
    }
}

#[test]
fn oracle_answers_declaring_four_gigabytes_are_refused_without_reading_them() {
    FAKE.with(|f| {
        let declared = b"HTTP/1.1 200 OK\r\nContent-Length: 4294967296\r\n\r\n{\"last\":".to_vec();
        // No length, a megabyte streamed until the connection closes.
        let mut streamed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        streamed.extend(std::iter::repeat_n(b' ', MAX_INPUT));
        for (what, kind, answer) in [
            ("Content-Length 2^32", SourceKind::Bitstamp, declared),
            ("streamed megabyte", SourceKind::Coinbase, streamed),
        ] {
            let e = refused_quickly(what, || f.fetch(kind, answer));
            let limit = MAX_BODY_BYTES;
            assert_eq!(e, SourceError::TooLarge { limit }, "{what}");
        }
        // Nested 65,535 deep, just within the size limit.
        let deep = http(200, "[".repeat(MAX_BODY_BYTES - 1).as_bytes());
        let e = refused_quickly("nested JSON answer", || f.fetch(SourceKind::Kraken, deep));
        assert!(matches!(e, SourceError::Malformed { .. }), "{e:?}");
    });
}

/// The prices parse; the exchanges' answers give the quote or the exchange's error.
pub(crate) fn seeds_are_accepted() {
    for b in price_bases() {
        parse_manual_price(&text(b)).expect("a price");
    }
    FAKE.with(|f| {
        for (i, b) in answer_bases().iter().enumerate() {
            // The error shapes: Kraken's, Coinbase's, Bitstamp's.
            let kind = [0, 1, 2, 3, 0, 2, 1][i];
            let got = f.fetch(source_kind(kind), http(200, b));
            if i < 4 {
                let q = got.expect("a quote");
                assert_eq!(q.price_minor, 6_425_010, "{i}");
            } else {
                assert!(
                    matches!(got, Err(SourceError::Exchange { .. })),
                    "{i}: {got:?}"
                );
            }
        }
    });
}
