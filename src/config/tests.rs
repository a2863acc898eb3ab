use super::*;

fn dir() -> PathBuf {
    PathBuf::from("/var/lib/btc-escrow")
}

const MINIMAL: &str = r#"
network = "regtest"
electrum_url = "tcp://127.0.0.1:60401"
"#;

#[test]
fn a_minimal_file_takes_the_defaults() {
    let s = Settings::from_parts(&dir(), MINIMAL, &Overrides::default()).unwrap();
    assert_eq!(s.network, Network::Regtest);
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.tick_interval, Duration::from_secs(5));
    assert_eq!(s.min_confirmations, 1);
    assert_eq!(s.fees, FeePolicy::default());
    assert_eq!(s.fee_cap, FeeCap::default());
    assert_eq!(s.oracle.sources.len(), 3);
    assert!(s.webhooks.secret.is_none());
}

#[test]
fn the_environment_and_flags_win_over_the_file() {
    let file = format!("{MINIMAL}listen = \"127.0.0.1:1\"\n[engine]\ntick_secs = 9\n");
    let overrides = Overrides {
        network: Some("signet".into()),
        electrum: Some("ssl://electrum.example:50002".into()),
        listen: Some("0.0.0.0:9000".into()),
        tick_secs: Some(2),
        min_confirmations: Some(3),
        ..Overrides::default()
    };
    let s = Settings::from_parts(&dir(), &file, &overrides).unwrap();
    assert_eq!(s.network, Network::Signet);
    assert_eq!(s.electrum_url, "ssl://electrum.example:50002");
    assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(s.tick_interval, Duration::from_secs(2));
    assert_eq!(s.min_confirmations, 3);
}

#[test]
fn each_invalid_field_is_named() {
    let cases: &[(&str, &str)] = &[
        ("network = \"moon\"\nelectrum_url = \"tcp://a:1\"", "network"),
        ("electrum_url = \"tcp://a:1\"", "network"),
        ("network = \"regtest\"", "electrum_url"),
        ("network = \"regtest\"\nelectrum_url = \"http://a:1\"", "electrum_url"),
        ("network = \"regtest\"\nelectrum_url = \"tcp://a:0\"", "electrum_url"),
        (&format!("{MINIMAL}listen = \"localhost\""), "listen"),
        (&format!("{MINIMAL}[engine]\ntick_secs = 0"), "engine.tick_secs"),
        (&format!("{MINIMAL}[engine]\nmin_confirmations = 101"), "engine.min_confirmations"),
        (&format!("{MINIMAL}[engine]\nconfirm_ticks = 0"), "engine.confirm_ticks"),
        (&format!("{MINIMAL}[engine]\nrebroadcast_after_blocks = 0"), "engine.rebroadcast_after_blocks"),
        (&format!("{MINIMAL}[engine]\nmax_chain_view_age_secs = 0"), "engine.max_chain_view_age_secs"),
        (&format!("{MINIMAL}[fees]\nmin_sat_per_kvb = 0"), "fees.min_sat_per_kvb"),
        (&format!("{MINIMAL}[fees]\nmin_sat_per_kvb = 9000\nmax_sat_per_kvb = 8000"), "fees.max_sat_per_kvb"),
        (&format!("{MINIMAL}[fees]\nfallback_sat_per_kvb = 999999999"), "fees.fallback_sat_per_kvb"),
        (&format!("{MINIMAL}[fees]\nmax_fee_sat = 0"), "fees.max_fee_sat"),
        (&format!("{MINIMAL}[fees]\nmax_fee_bps = 5001"), "fees.max_fee_bps"),
        (&format!("{MINIMAL}[webhooks]\nsecret = \"short\""), "webhooks.secret"),
        (&format!("{MINIMAL}[webhooks]\ntimeout_ms = 0"), "webhooks.timeout_ms"),
        (&format!("{MINIMAL}[webhooks]\nmax_attempts = 0"), "webhooks.max_attempts"),
        (&format!("{MINIMAL}[oracle]\nquorum = 0\n[[oracle.sources]]\nname = \"m\"\nkind = \"manual\""), "oracle.quorum"),
    ];
    for (text, want) in cases {
        let err = Settings::from_parts(&dir(), text, &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().starts_with(want),
            "{text:?}: {err} (want {want})"
        );
    }
    // Unknown keys are refused, naming them.
    let err = Settings::from_parts(&dir(), &format!("{MINIMAL}tick = 3"), &Overrides::default())
        .unwrap_err();
    assert!(err.to_string().contains("tick"), "{err}");
}

#[test]
fn secrets_are_redacted() {
    let secret = "a-webhook-secret-of-some-length";
    let file = format!("{MINIMAL}[webhooks]\nsecret = \"{secret}\"\n");
    let s = Settings::from_parts(&dir(), &file, &Overrides::default()).unwrap();
    assert_eq!(s.webhooks.secret.as_ref().map(Secret::expose), Some(secret));
    let debug = format!("{s:?}");
    assert!(
        !debug.contains(secret) && debug.contains("<redacted>"),
        "{debug}"
    );
    let shown = serde_json::to_string(&s.show()).unwrap();
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("\"webhook_secret_set\":true"), "{shown}");
}

#[test]
fn the_example_file_loads_with_every_key_it_shows() {
    let text = include_str!("../../btc-escrow.example.toml");
    let s = Settings::from_parts(&dir(), text, &Overrides::default()).unwrap();
    assert_eq!(s.network, Network::Regtest);
    assert_eq!(s.fees, FeePolicy::default());
    assert_eq!(s.fee_cap, FeeCap::default());
    assert_eq!(s.rebroadcast_after_blocks, 6);
    assert_eq!(s.max_chain_view_age, std::time::Duration::from_secs(60));
    // The commented webhook secret, uncommented, is accepted too.
    let uncommented = text.replace("# secret = ", "secret = ");
    let s = Settings::from_parts(&dir(), &uncommented, &Overrides::default()).unwrap();
    assert!(s.webhooks.secret.is_some());
}

#[test]
fn electrum_tls_settings_are_layered_and_checked() {
    let file = format!("{MINIMAL}electrum_insecure = true\n");
    let s = Settings::from_parts(&dir(), &file, &Overrides::default()).unwrap();
    assert!(s.electrum_tls.insecure);
    // A CA file that does not exist stops the service, naming the field.
    let ssl = Some("ssl://electrum.example:50002".to_owned());
    let overrides = Overrides {
        electrum: ssl.clone(),
        electrum_ca_file: Some("/nonexistent/ca.pem".into()),
        ..Overrides::default()
    };
    let err = Settings::from_parts(&dir(), MINIMAL, &overrides).unwrap_err();
    assert!(err.to_string().starts_with("electrum_ca_file"), "{err}");
    // Both a CA file and insecure: refused.
    let ca = tempfile::NamedTempFile::new().unwrap();
    let overrides = Overrides {
        electrum: ssl,
        electrum_ca_file: Some(ca.path().to_owned()),
        electrum_insecure: true,
        ..Overrides::default()
    };
    assert!(Settings::from_parts(&dir(), MINIMAL, &overrides).is_err());
}
