//! The configuration file: `Settings::from_parts` (the whole file, with its
//! `[oracle]` section) and `OracleConfig::from_toml`.

use btc_escrow::config::{ConfigError, Overrides, Settings};
use btc_escrow::oracle::OracleConfig;
use proptest::prelude::*;

use super::{bounded, config, input, refused_quickly, text, Seeds, MAX_INPUT, NOW};

const TOML_DICT: &[&[u8]] = &[
    b"-1",
    b"0",
    b"18446744073709551615",
    b"9223372036854775808",
    b"4294967296",
    b"inf",
    b"nan",
    b"1.5",
    b"true",
    b"\"\"",
    b"[]",
    b"{}",
    b"[x]",
    b"[[oracle.sources]]",
    b"[oracle]",
    b"1979-05-27T07:32:00Z",
    b"'",
    b"\"\"\"",
    b"\n",
    b"#",
    b"=",
    b"\"ssl://\"",
    b"\"tcp://:0\"",
    b"regtest",
    b"json",
    b"manual",
    b"price = \"1.00\"",
    b"price_set_at = 1",
    b"price_pointer = \"/p\"",
    b"url = \"http://[::1\"",
    b"secret = \"0123456789abcdef\"",
];

/// The file's settings with no flags or environment, relative to a directory that does
/// not exist.
fn settings(text: &str) -> Result<Settings, ConfigError> {
    let dir = std::path::Path::new("/nonexistent/btc-escrow-fuzz");
    Settings::from_parts(dir, text, &Overrides::default())
}

const EXAMPLE_CONFIG: &str = include_str!("../../btc-escrow.example.toml");

fn config_bases() -> &'static [Vec<u8>] {
    static B: Seeds = Seeds::new();
    B.get(|| {
        vec![
            EXAMPLE_CONFIG.as_bytes().to_vec(),
            b"network = \"regtest\"\nelectrum_url = \"tcp://127.0.0.1:60401\"\n".to_vec(),
            concat!(
                "network = \"signet\"\nelectrum_url = \"ssl://electrum.example:50002\"\n",
                "electrum_insecure = true\n[webhooks]\nsecret = \"0123456789abcdef0123\"\n",
                "[oracle]\ncurrency = \"EUR\"\nquorum = 1\n",
                "[[oracle.sources]]\nname = \"feed\"\nkind = \"json\"\n",
                "url = \"https://prices.example/btc\"\nprice_pointer = \"/data/price\"\n",
                "timestamp_pointer = \"/data/time\"\n",
                "[[oracle.sources]]\nname = \"operator\"\nkind = \"manual\"\n",
                "price = \"64000.00\"\nprice_set_at = 1700000000\n",
            )
            .as_bytes()
            .to_vec(),
        ]
    })
}

proptest! {
    #![proptest_config(config(1000))]

    /// The configuration file: every refusal names its field (as written in the file),
    /// and a secret in accepted settings never shows in `Debug` or `show()`.
    #[test]
    fn config_toml(bytes in input(config_bases(), TOML_DICT, true)) {
        let text = text(&bytes);
        let loaded = bounded("Settings::from_parts", || settings(&text))?;
        match loaded {
            Ok(settings) => {
                let shown = serde_json::to_string(&settings.show()).expect("serializes");
                if let Some(secret) = &settings.webhooks.secret {
                    let mut without = settings.clone();
                    without.webhooks.secret = None;
                    let plain = format!("{without:?}{}", serde_json::to_string(&without.show()).expect("serializes"));
                    // A secret that happens to be a piece of the other settings proves nothing.
                    if !plain.contains(secret.expose()) {
                        let debug = format!("{settings:?}");
                        prop_assert!(!debug.contains(secret.expose()), "the secret shows in Debug");
                        prop_assert!(!shown.contains(secret.expose()), "the secret shows in show()");
                    }
                }
            }
            Err(e) => {
                let shown = e.to_string();
                if let Some(field) = e.field() {
                    prop_assert!(!field.is_empty());
                    prop_assert!(shown.starts_with(&field), "{} does not start with {}", shown, field);
                }
            }
        }
        match bounded("OracleConfig::from_toml", || OracleConfig::from_toml(&text))? {
            Ok(oracle) => {
                let (sources, _) = oracle.build(NOW);
                prop_assert_eq!(sources.len(), oracle.sources.len());
            }
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.starts_with("oracle"), "{}", shown);
            }
        }
    }
}

#[test]
fn config_nested_a_million_deep_is_refused_without_overflowing_the_stack() {
    let arrays = format!("network = {}", "[".repeat(MAX_INPUT));
    refused_quickly("nested arrays", || settings(&arrays));
    let tables = format!("oracle = {}", "{a = ".repeat(MAX_INPUT / 5));
    refused_quickly("nested inline tables", || settings(&tables));
    refused_quickly("nested inline tables (oracle)", || {
        OracleConfig::from_toml(&tables)
    });
    let long_key = format!("{} = 1", "k".repeat(MAX_INPUT));
    refused_quickly("a megabyte key", || settings(&long_key));
}

/// The example file and the other seeds load, with their `[oracle]` sections.
pub(crate) fn seeds_are_accepted() {
    for b in config_bases() {
        let text = text(b);
        settings(&text).expect("settings");
        if text.contains("[oracle]") {
            OracleConfig::from_toml(&text).expect("oracle config");
        }
    }
}
