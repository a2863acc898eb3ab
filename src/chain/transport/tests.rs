use super::*;

fn parse(url: &str) -> Result<Connector, ConnectError> {
    Connector::new(url, &TlsConfig::default())
}

#[test]
fn urls_parse_into_host_port_and_scheme() {
    let c = parse("tcp://127.0.0.1:60401").expect("valid url");
    assert_eq!(
        (c.host.as_str(), c.port, c.is_tls()),
        ("127.0.0.1", 60401, false)
    );
    let c = parse("ssl://electrum.example:50002").expect("valid url");
    assert_eq!(
        (c.host.as_str(), c.port, c.is_tls()),
        ("electrum.example", 50002, true)
    );
    let c = parse("ssl://[::1]:50002").expect("valid url");
    assert_eq!((c.host.as_str(), c.is_tls()), ("::1", true));
    let c = parse("localhost:50001").expect("valid url");
    assert!(!c.is_tls());
}

#[test]
fn bad_urls_are_refused_naming_the_url_and_why() {
    for (url, why) in [
        ("http://a:1", "scheme"),
        ("ssl://a", "port"),
        ("tcp://a:0", "port"),
        ("tcp://a:99999", "port"),
        ("ssl://:50002", "host"),
        ("ssl://bad host!:50002", "DNS name"),
    ] {
        let err = parse(url).expect_err(url).to_string();
        assert!(err.contains(url) && err.contains(why), "{url}: {err}");
    }
}

#[test]
fn ca_file_problems_name_the_file_and_the_url() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = "ssl://127.0.0.1:50002";
    let missing = dir.path().join("missing.pem");
    let tls = |path: &Path| TlsConfig {
        ca_file: Some(path.to_owned()),
        insecure: false,
    };
    let err = Connector::new(url, &tls(&missing)).expect_err("missing file");
    assert!(matches!(err, ConnectError::ReadCaFile { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(url) && text.contains("missing.pem"), "{text}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").expect("writing the test file");
    let err = Connector::new(url, &tls(&empty)).expect_err("no certificate");
    assert!(matches!(err, ConnectError::BadCaFile { .. }), "{err}");
    assert!(err.to_string().contains("empty.pem"), "{err}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("writing the test file");
    let err = Connector::new(url, &tls(&garbage)).expect_err("not a certificate");
    assert!(matches!(err, ConnectError::BadCaFile { .. }), "{err}");

    // The file is only read for ssl:// URLs.
    assert!(Connector::new("tcp://127.0.0.1:50001", &tls(&missing)).is_ok());
}

#[test]
fn insecure_and_a_ca_file_together_are_refused() {
    let tls = TlsConfig {
        ca_file: Some("ca.pem".into()),
        insecure: true,
    };
    let err = Connector::new("ssl://a:1", &tls).expect_err("conflicting settings");
    assert!(
        matches!(err, ConnectError::CaFileAndInsecure { .. }),
        "{err}"
    );
    let ok = TlsConfig {
        ca_file: None,
        insecure: true,
    };
    assert!(Connector::new("ssl://a:1", &ok).is_ok());
}

#[test]
fn clients_and_watchers_move_to_blocking_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<ElectrumClient>();
    send::<crate::chain::Watcher>();
}

#[test]
fn a_closed_port_is_a_transient_error_naming_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let port = listener.local_addr().expect("a bound address").port();
    drop(listener);
    let url = format!("ssl://127.0.0.1:{port}");
    let err = parse(&url)
        .expect("valid url")
        .connect(Duration::from_secs(5))
        .expect_err("nobody listens");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

/// A server that speaks the protocol one request per line and never answers an
/// array (as a server without JSON-RPC batches would): the probe gives up after
/// its timeout, and the connector connects again and speaks in lines.
#[test]
fn a_server_without_batch_arrays_is_spoken_to_in_lines() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let port = listener.local_addr().expect("a bound address").port();
    let server = std::thread::spawn(move || {
        let mut arrays = 0;
        for _ in 0..2 {
            let (socket, _) = listener.accept().expect("a connection");
            let mut out = socket.try_clone().expect("a socket handle");
            for line in BufReader::new(socket).lines() {
                let Ok(line) = line else { break };
                if line.starts_with('[') {
                    arrays += 1;
                    continue;
                }
                let req: serde_json::Value = serde_json::from_str(&line).expect("json");
                let result = match req["method"].as_str() {
                    Some("server.version") => serde_json::json!(["lines only", "1.4"]),
                    _ => serde_json::Value::Null,
                };
                let answer =
                    serde_json::json!({"jsonrpc": "2.0", "id": req["id"], "result": result});
                if writeln!(out, "{answer}").is_err() {
                    break;
                }
            }
        }
        arrays
    });
    let connector = parse(&format!("tcp://127.0.0.1:{port}")).expect("valid url");
    assert_eq!(connector.uses_arrays(), None);
    let client = connector
        .connect(Duration::from_millis(500))
        .expect("connected after the probe");
    assert_eq!(connector.uses_arrays(), Some(false));
    let scripts = [
        bitcoin::ScriptBuf::new(),
        bitcoin::ScriptBuf::from_bytes(vec![0x51]),
    ];
    let statuses = client
        .batch_script_subscribe(scripts.iter().map(|s| s.as_script()))
        .expect("subscribed in lines");
    assert_eq!(statuses, vec![None, None]);
    drop(client);
    assert_eq!(
        server.join().expect("the server"),
        1,
        "one array: the probe"
    );
}

#[test]
fn a_silent_tls_server_times_out_in_the_handshake() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let port = listener.local_addr().expect("a bound address").port();
    // Accepts the connection and never answers the ClientHello.
    let server = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let url = format!("ssl://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = Connector::new(&url, &TlsConfig::default())
        .expect("valid url")
        .connect(Duration::from_millis(500))
        .expect_err("the server never answers");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(err.is_transient(), "{err}");
    assert!(
        matches!(&err, ConnectError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
        "{err:?}"
    );
    drop(server.join());
}
