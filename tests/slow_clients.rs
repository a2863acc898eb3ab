//! Slow and idle clients against a real `serve` (no chain behind it: the data directory
//! names an Electrum server that refuses connections, which the API does not need for
//! what is asked here). One scenario, its clients at the same time so that the whole
//! takes about one header timeout:
//! - a slow loris sends `GET /v1/health HTTP/1.1\r\nHo` and then one byte a second,
//!   never ending its headers: the server closes the connection after
//!   [`HEADER_TIMEOUT`] (asserted before twice that, never sooner than it);
//! - 200 connections that send nothing do not keep a normal client from its answer to
//!   `/v1/health` meanwhile, and are all closed before twice the timeout; so is a
//!   keep-alive connection left idle after one answered request;
//! - the admin's event stream `/v1/events/stream` is a body, not headers: it is still
//!   open two seconds after the timeout;
//! - SIGTERM with that stream still connected: `serve` exits 0 and the stream ends.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use btc_escrow::api::HEADER_TIMEOUT;
use common::serve::{command, Serve};
use reqwest::Method;
use serde_json::Value;

/// Idle connections opened at once.
const IDLE: usize = 200;

/// A data directory made by `init` (regtest, the manual oracle) whose Electrum server
/// refuses connections; with the admin token.
fn data_dir() -> anyhow::Result<(tempfile::TempDir, PathBuf, String)> {
    let parent = tempfile::tempdir()?;
    let path = parent.path().join("data");
    let refused = format!("tcp://127.0.0.1:{}", common::free_port()?);
    let out = command()
        .args(["init", "--network", "regtest", "--manual-oracle"])
        .arg("--data-dir")
        .arg(&path)
        .args(["--electrum", &refused])
        .output()?;
    ensure!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: Value = serde_json::from_slice(&out.stdout)?;
    let admin = done["admin_token"]
        .as_str()
        .context("admin_token")?
        .to_owned();
    Ok((parent, path, admin))
}

/// `host:port` of an API base such as `http://127.0.0.1:1234/v1`.
fn socket_addr(base: &str) -> anyhow::Result<String> {
    let rest = base.strip_prefix("http://").context("an http:// base")?;
    Ok(rest.split('/').next().context("host:port")?.to_owned())
}

/// Whether a read says the server closed the connection (EOF or a reset); `None` while
/// it is open and silent (the read timed out).
fn closed(read: std::io::Result<usize>) -> Option<bool> {
    match read {
        Ok(0) => Some(true),
        Ok(_) => Some(false),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(_) => Some(true),
    }
}

/// Read (and drop) what the server sends until it closes `stream`; how long after
/// `since` that was. Fails if it is still open at `since + within`.
fn wait_closed(
    stream: &mut TcpStream,
    since: Instant,
    within: Duration,
) -> anyhow::Result<Duration> {
    let deadline = since + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "still open after {within:?}");
        stream.set_read_timeout(Some(left))?;
        if closed(stream.read(&mut buf)) == Some(true) {
            return Ok(since.elapsed());
        }
    }
}

/// The slow loris: a request line, then its headers one byte a second, never finished.
/// How long the server kept the connection.
fn slow_loris(addr: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(b"GET /v1/health HTTP/1.1\r\nHo")?;
    let mut drip = b"st: x\r\n".iter().chain(std::iter::repeat(&b'a'));
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 4096];
    loop {
        ensure!(
            start.elapsed() < 2 * HEADER_TIMEOUT,
            "the slow loris still holds its connection after {:?}",
            start.elapsed()
        );
        let byte = drip.next().expect("an endless drip");
        if stream.write_all(&[*byte]).is_err() {
            return Ok(start.elapsed());
        }
        match closed(stream.read(&mut buf)) {
            Some(true) => return Ok(start.elapsed()),
            Some(false) => bail!(
                "the server answered headers never finished: {}",
                String::from_utf8_lossy(&buf)
            ),
            None => {}
        }
    }
}

/// The head of a response on `stream` (through the blank line) and what of its body
/// came with it.
fn read_head(stream: &mut TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            return Ok((head, got[end + 4..].to_vec()));
        }
        let n = stream.read(&mut buf)?;
        ensure!(
            n > 0,
            "closed before a full head: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// One request answered on a keep-alive connection, then nothing: closed when idle for
/// the header timeout. How long it stayed open after its answer.
fn idle_keep_alive(addr: &str) -> anyhow::Result<Duration> {
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let (head, mut body) = read_head(&mut stream)?;
    ensure!(head.starts_with("HTTP/1.1 "), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .with_context(|| format!("no content-length: {head}"))?;
    while body.len() < length {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf)?;
        ensure!(n > 0, "closed mid-body");
        body.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    wait_closed(&mut stream, answered, 2 * HEADER_TIMEOUT).context("an idle keep-alive connection")
}

/// The admin's event stream, its answer's head read: 200.
fn event_stream(addr: &str, admin: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET /v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n"
    )?;
    let (head, _) = read_head(&mut stream)?;
    ensure!(head.starts_with("HTTP/1.1 200"), "the stream: {head}");
    ensure!(
        head.to_ascii_lowercase().contains("text/event-stream"),
        "the stream: {head}"
    );
    Ok(stream)
}

#[test]
fn slow_and_idle_clients_are_dropped_streams_are_not() -> anyhow::Result<()> {
    let (_parent, data, admin) = data_dir()?;
    let serve = Serve::start(&data)?;
    let addr = socket_addr(&serve.api.base)?;
    let started = Instant::now();

    let (mut stream, stream_opened) = std::thread::scope(|s| -> anyhow::Result<_> {
        let loris = s.spawn(|| slow_loris(&addr));
        let keep_alive = s.spawn(|| idle_keep_alive(&addr));
        let stream = s.spawn(|| -> anyhow::Result<_> {
            let stream = event_stream(&addr, &admin)?;
            Ok((stream, Instant::now()))
        });

        let idle_since = Instant::now();
        let mut idle = (0..IDLE)
            .map(|_| TcpStream::connect(&addr))
            .collect::<Result<Vec<_>, _>>()
            .context("opening the idle connections")?;
        // A normal client is answered meanwhile (503: no chain behind this server, but
        // an answer from the engine).
        let (status, health) = serve.api.call(Method::GET, "/health", None, None, &[])?;
        ensure!(
            (status == 200 || status == 503) && health["engine"]["running"] == true,
            "health with {IDLE} idle connections: {status} {health}"
        );
        ensure!(
            idle_since.elapsed() < HEADER_TIMEOUT,
            "health took {:?}",
            idle_since.elapsed()
        );
        for (i, conn) in idle.iter_mut().enumerate() {
            wait_closed(conn, idle_since, 2 * HEADER_TIMEOUT)
                .with_context(|| format!("idle connection {i}"))?;
        }

        let held = loris.join().expect("the slow loris thread")?;
        ensure!(
            held >= HEADER_TIMEOUT - Duration::from_secs(1),
            "the slow loris was dropped after {held:?}, before the header timeout"
        );
        let kept = keep_alive.join().expect("the keep-alive thread")?;
        ensure!(
            kept >= HEADER_TIMEOUT - Duration::from_secs(1),
            "an idle keep-alive connection was closed after {kept:?}"
        );
        stream.join().expect("the stream thread")
    })?;

    // The stream lives past the header timeout: a read finds it open (a keep-alive or
    // an event would do too).
    let open_until = stream_opened + HEADER_TIMEOUT + Duration::from_secs(2);
    std::thread::sleep(open_until.saturating_duration_since(Instant::now()));
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 4096];
    ensure!(
        closed(stream.read(&mut buf)) != Some(true),
        "the event stream ended after {:?}",
        stream_opened.elapsed()
    );

    // SIGTERM with the stream connected: exit 0 (Serve::stop checks), and it ends.
    serve.stop()?;
    let ended = Instant::now();
    wait_closed(&mut stream, ended, Duration::from_secs(5)).context("the stream at shutdown")?;
    eprintln!("the scenario took {:?}", started.elapsed());
    Ok(())
}
