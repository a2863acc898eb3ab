//! The parties' commands against a real `serve` (real bitcoind + electrs), run as the
//! `btc-escrow` binary the way a party runs it:
//! - the client commands drive a loan from the offer to its release: party create,
//!   loan offer (a TOML terms file), list, show, accept, verify-escrow by id, repay,
//!   psbt, sign (the borrower co-signs the release locally), events; each kind of
//!   server refusal exits with its own code and shows the problem's detail and field;
//! - verify-escrow passes the honest escrow and refuses, naming it, a loan JSON with
//!   another borrower key, an extra arbiter-alone branch, other heights (shifted with
//!   a matching descriptor, or only the shown field), and terms other than agreed;
//! - the exports, verified from the party's own key first (the wrong key exports
//!   nothing): the multipath descriptor parsed back by rust-miniscript derives the
//!   escrow's address at its index; the BIP-388 policy keeps the BIP's rules; the
//!   BIP-129 record names the first address.

mod common;

use std::str::FromStr;

use anyhow::{ensure, Context};
use bitcoin::Network;
use common::serve::Market;
use common::tools::{json_file, key_file, run};
use miniscript::descriptor::{Descriptor, DescriptorPublicKey};
use serde_json::{json, Value};

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["state"] == want
}

#[test]
fn client_commands_drive_a_loan_and_exit_by_kind() -> anyhow::Result<()> {
    let mut m = Market::open()?;
    let dir = tempfile::tempdir()?;
    let api = m.api().base.clone();
    let admin = m.admin.clone();
    let as_ = |token: &str, args: &[&str]| -> anyhow::Result<common::tools::Ran> {
        let mut all = args.to_vec();
        all.extend(["--api", &api, "--token", token]);
        run(&all)
    };

    // The admin registers a second lender from the command line.
    let lender_key = common::escrow::random_key()?;
    let lender_account = m.parties.account(&lender_key)?.to_string();
    let made = as_(
        &admin,
        &[
            "party",
            "create",
            "--json",
            "--name",
            "CLI Lender",
            "--role",
            "lender",
            "--account-key",
            &lender_account,
        ],
    )?
    .json()?;
    let lender = made["token"].as_str().context("token")?.to_owned();
    let me = as_(&lender, &["party", "me", "--json"])?.json()?;
    ensure!(me["role"] == "lender" && me["account_key"] == lender_account.as_str());

    // An offer from a TOML file with one flag over it.
    let mut terms = m.offer_terms();
    let toml_terms: String = terms
        .as_object()
        .context("terms")?
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    let terms_file = dir.path().join("offer.toml");
    std::fs::write(&terms_file, toml_terms)?;
    let offered = as_(
        &lender,
        &[
            "loan",
            "offer",
            "--json",
            "--terms",
            terms_file.to_str().context("path")?,
            "--apr-bps",
            "900",
        ],
    )?
    .json()?;
    ensure!(offered["state"] == "offered" && offered["terms"]["apr_bps"] == 900);
    terms["apr_bps"] = json!(900);
    let id = offered["id"].as_str().context("id")?.to_owned();
    let offers = as_(&m.borrower, &["loan", "list", "--offers", "--json"])?.json()?;
    ensure!(offers
        .as_array()
        .is_some_and(|o| o.iter().any(|l| l["id"] == id.as_str())));
    let table = as_(&m.borrower, &["loan", "list", "--offers"])?;
    ensure!(
        table.ok()?.stdout.contains(&id) && table.stdout.contains("10000.00 USD"),
        "{}",
        table.stdout
    );

    // Accept, then check the escrow from the borrower's own key before funding.
    m.set_price(10_000_000)?;
    m.api()
        .wait("/health", &admin, "fit to decide", |h| h["ok"] == true)?;
    let ret = m.borrower_return.to_string();
    let accepted = as_(
        &m.borrower,
        &["loan", "accept", &id, "--json", "--return-address", &ret],
    )?
    .json()?;
    ensure!(accepted["state"] == "awaiting_collateral");
    let borrower_key = key_file(dir.path(), "borrower.key", &m.parties.borrower)?;
    let agreed = json_file(dir.path(), "agreed.json", &terms)?;
    let verified = as_(
        &m.borrower,
        &[
            "verify-escrow",
            "--json",
            "--loan",
            &id,
            "--key",
            borrower_key.to_str().context("path")?,
            "--role",
            "borrower",
            "--terms",
            agreed.to_str().context("path")?,
            "--arbiter",
            &m.data.arbiter_account_key,
            "--electrum",
            &m.env.electrum_url,
        ],
    )?
    .json()?;
    ensure!(
        verified["address"] == accepted["escrow"]["address"],
        "{verified}"
    );

    // Errors, each of its kind: not found 4, auth 3, invalid 6 (naming the field),
    // conflict 5, network 8.
    let missing = as_(&m.borrower, &["loan", "show", "nope"])?;
    ensure!(missing.code == 4, "{missing:?}");
    let bad = as_("0000", &["loan", "list"])?;
    ensure!(bad.code == 3, "{bad:?}");
    let invalid = as_(
        &lender,
        &[
            "loan",
            "offer",
            "--terms",
            terms_file.to_str().context("path")?,
            "--initial-ltv-bps",
            "9000",
        ],
    )?;
    ensure!(
        invalid.code == 6 && invalid.stderr.contains("initial_ltv_bps"),
        "{invalid:?}"
    );
    let early = as_(&lender, &["loan", "repay", &id, "--amount-minor", "100"])?;
    ensure!(early.code == 5, "{early:?}");
    let nobody = run(&[
        "loan",
        "list",
        "--api",
        "http://127.0.0.1:9",
        "--token",
        "x",
    ])?;
    ensure!(nobody.code == 8, "{nobody:?}");

    // Fund it; repay in full from the command line; the borrower co-signs the
    // release locally; it is broadcast, mined, closed.
    // The address verify-escrow derived itself.
    let address = bitcoin::Address::from_str(verified["address"].as_str().context("address")?)?
        .require_network(Network::Regtest)?;
    let funding = m.wallet.send(
        &address,
        bitcoin::Amount::from_sat(
            accepted["required_collateral_sat"]
                .as_u64()
                .context("sat")?,
        ),
        bitcoin::FeeRate::from_sat_per_vb(2).context("rate")?,
    )?;
    m.env
        .wait_for_tx(&address.script_pubkey(), funding.compute_txid())?;
    m.env.mine(1)?;
    let path = format!("/loans/{id}");
    m.api()
        .wait(&path, &m.borrower, "active", state_is("active"))?;
    let owed = m.api().get(&path, &lender)?["owed_minor"]
        .as_u64()
        .context("owed")?;
    // Pay what the server says is owed (interest runs by the second: again if a
    // remainder is left).
    let mut owed = owed;
    for _ in 0..3 {
        let repaid = as_(
            &lender,
            &[
                "loan",
                "repay",
                &id,
                "--json",
                "--amount-minor",
                &owed.to_string(),
            ],
        )?
        .json()?;
        owed = repaid["owed_minor"].as_u64().unwrap_or(0);
        if repaid["state"] == "releasing" {
            break;
        }
    }
    m.api().wait(&path, &m.borrower, "releasing", |v| {
        v["state"] == "releasing" && v["pending_psbt"].is_object()
    })?;
    let summary = as_(&m.borrower, &["loan", "psbt", &id])?;
    ensure!(
        summary.ok()?.stdout.contains("pending release") && summary.stdout.contains(&ret),
        "{}",
        summary.stdout
    );
    let signed = as_(
        &m.borrower,
        &[
            "loan",
            "sign",
            &id,
            "--json",
            "--key",
            borrower_key.to_str().context("path")?,
        ],
    )?
    .json()?;
    ensure!(signed["txid"].is_string(), "{signed}");
    let txid = bitcoin::Txid::from_str(signed["txid"].as_str().context("txid")?)?;
    m.env
        .wait_for_tx(&m.borrower_return.script_pubkey(), txid)?;
    m.env.mine(1)?;
    m.api()
        .wait(&path, &m.borrower, "closed", state_is("closed"))?;

    // The events, in order, as JSON lines.
    let events = as_(&m.borrower, &["loan", "events", &id, "--json"])?;
    let kinds: Vec<String> = events
        .ok()?
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).map(|e| e["event"]["event"].to_string()))
        .collect::<Result<_, _>>()?;
    for want in [
        "\"accepted\"",
        "\"activated\"",
        "\"repaid\"",
        "\"tx_confirmed\"",
    ] {
        ensure!(kinds.iter().any(|k| k == want), "{want} not in {kinds:?}");
    }
    Ok(())
}

/// Replace `from` by `to` everywhere in the loan's escrow (descriptor and keys).
fn swap_in_escrow(loan: &Value, from: &str, to: &str) -> Value {
    serde_json::from_str(&loan.to_string().replace(from, to)).expect("still JSON")
}

#[test]
fn verify_escrow_accepts_the_honest_escrow_and_names_each_tampering() -> anyhow::Result<()> {
    let m = Market::open()?;
    let dir = tempfile::tempdir()?;
    let loan = m.accepted()?;
    let id = loan["id"].as_str().context("id")?.to_owned();
    let tip = m.env.height()?.to_string();
    let borrower_key = key_file(dir.path(), "borrower.key", &m.parties.borrower)?;
    let lender_key = key_file(dir.path(), "lender.key", &m.parties.lender)?;
    let mut terms = m.offer_terms();
    terms["funding_deadline"] = loan["terms"]["funding_deadline"].clone();
    let agreed = json_file(dir.path(), "agreed.json", &terms)?;
    let verify = |loan: &Value, key: &std::path::Path, role: &str, agreed: &std::path::Path| {
        let file = json_file(dir.path(), "loan.json", loan)?;
        run(&[
            "verify-escrow",
            "--json",
            "--loan-file",
            file.to_str().context("path")?,
            "--key",
            key.to_str().context("path")?,
            "--role",
            role,
            "--terms",
            agreed.to_str().context("path")?,
            "--arbiter",
            &m.data.arbiter_account_key,
            "--tip",
            &tip,
        ])
    };
    // Honest: OK for both parties, with the five paths.
    let report = verify(&loan, &borrower_key, "borrower", &agreed)?.json()?;
    ensure!(report["address"] == loan["escrow"]["address"], "{report}");
    ensure!(
        report["paths"].as_array().map(Vec::len) == Some(5),
        "{report}"
    );
    verify(&loan, &lender_key, "lender", &agreed)?.json()?;
    let refused = |tampered: &Value, words: &[&str]| -> anyhow::Result<()> {
        let ran = verify(tampered, &borrower_key, "borrower", &agreed)?;
        ensure!(ran.code != 0, "accepted a tampered loan: {}", ran.stdout);
        for w in words {
            ensure!(ran.stderr.contains(w), "{w:?} not in: {}", ran.stderr);
        }
        Ok(())
    };

    // Another borrower key swapped in (the server's own, say).
    let own = m.parties.account(&m.parties.borrower)?.to_string();
    let other_key = common::escrow::random_key()?;
    let other = m.parties.account(&other_key)?.to_string();
    let strip = |k: &str| k.split(']').nth(1).unwrap_or(k).to_owned();
    let swapped = swap_in_escrow(&loan, &strip(&own), &strip(&other));
    let swapped = swap_in_escrow(&swapped, &own[1..9], &other[1..9]);
    refused(&swapped, &["not among the escrow's keys"])?;

    // An extra branch the arbiter alone can spend (address made to match).
    let descriptor = loan["escrow"]["descriptor"].as_str().context("d")?;
    let body = descriptor.split('#').next().unwrap_or(descriptor);
    let inner = body
        .strip_prefix("wsh(")
        .and_then(|b| b.strip_suffix(')'))
        .context("wsh")?;
    let arbiter_key = m
        .escrow_of(&loan)?
        .key_origins()
        .into_iter()
        .find(|k| k.role == btc_escrow::policy::Role::Arbiter);
    ensure!(arbiter_key.is_some());
    let arbiter_text = body
        .split(['(', ',', ')'])
        .find(|k| k.contains(&m.data.arbiter_account_key[1..9]))
        .context("the arbiter's key in the descriptor")?;
    let hostile = Descriptor::<DescriptorPublicKey>::from_str(&format!(
        "wsh(or_d(pk({arbiter_text}),{inner}))"
    ))?;
    let mut tampered = loan.clone();
    tampered["escrow"]["descriptor"] = json!(hostile.to_string());
    tampered["escrow"]["address"] = json!(hostile
        .at_derivation_index(0)?
        .address(Network::Regtest)?
        .to_string());
    refused(&tampered, &["not the escrow of these keys"])?;

    // Other heights: the descriptor's timelocks moved 1,000 blocks later (address to
    // match) — later than the terms allow; or moved earlier — the lender's path opens
    // before a full term; or only the shown field changed.
    let h = |k: &str| loan["escrow"][k].as_u64().unwrap_or(0);
    let (d, r) = (h("default_height"), h("recovery_height"));
    for (shift, words) in [
        (1_000i64, "later than the terms allow"),
        (-300, "too early"),
    ] {
        let (d2, r2) = ((d as i64 + shift) as u64, (r as i64 + shift) as u64);
        let moved = body
            .replace(&format!("after({d})"), "after(D)")
            .replace(&format!("after({r})"), "after(R)")
            .replace("after(D)", &format!("after({d2})"))
            .replace("after(R)", &format!("after({r2})"));
        let moved = Descriptor::<DescriptorPublicKey>::from_str(&moved)?;
        let mut tampered = loan.clone();
        tampered["escrow"]["descriptor"] = json!(moved.to_string());
        tampered["escrow"]["default_height"] = json!(d2);
        tampered["escrow"]["recovery_height"] = json!(r2);
        tampered["escrow"]["address"] = json!(moved
            .at_derivation_index(0)?
            .address(Network::Regtest)?
            .to_string());
        // (What a wallet imports would not match either: left out, the heights
        // are what is checked here.)
        tampered["escrow"]["multipath_descriptor"] = Value::Null;
        tampered["escrow"]["wallet_policy"]["template"] = Value::Null;
        refused(&tampered, &[words])?;
    }
    let mut shown = loan.clone();
    shown["escrow"]["default_height"] = json!(d + 1);
    refused(&shown, &["escrow.default_height"])?;
    // An export that is not this escrow's: the multipath descriptor of another
    // index's range (the change branch swapped) is refused.
    let mut export = loan.clone();
    let multipath = loan["escrow"]["multipath_descriptor"]
        .as_str()
        .context("mp")?;
    let swapped = Descriptor::<DescriptorPublicKey>::from_str(
        &multipath
            .split('#')
            .next()
            .unwrap_or(multipath)
            .replace("<0;1>", "<1;0>"),
    )?;
    export["escrow"]["multipath_descriptor"] = json!(swapped.to_string());
    refused(&export, &["escrow.multipath_descriptor"])?;

    // Terms other than agreed.
    let mut richer = terms.clone();
    richer["apr_bps"] = json!(500);
    let richer = json_file(dir.path(), "richer.json", &richer)?;
    let ran = verify(&loan, &borrower_key, "borrower", &richer)?;
    ensure!(
        ran.code != 0 && ran.stderr.contains("term `apr_bps`"),
        "{ran:?}"
    );

    // The exports: each verified from the party's own key first.
    let api = m.api().base.clone();
    let export_as = |format: &str, key: &std::path::Path| {
        run(&[
            "loan",
            "export",
            &id,
            "--format",
            format,
            "--key",
            key.to_str().context("path")?,
            "--arbiter",
            &m.data.arbiter_account_key,
            "--api",
            &api,
            "--token",
            &m.borrower,
        ])
    };
    let export = |format: &str| export_as(format, &borrower_key);
    // The borrower's token with the lender's key: the escrow's borrower key is not
    // this key's, so nothing is exported.
    let wrong = export_as("descriptor", &lender_key)?;
    ensure!(
        wrong.code != 0 && wrong.stdout.is_empty() && wrong.stderr.contains("does NOT check"),
        "{wrong:?}"
    );
    let index = loan["escrow"]["index"].as_u64().context("index")? as u32;
    let core: Value = serde_json::from_str(&export("descriptor")?.ok()?.stdout)?;
    let multipath = core[0]["desc"].as_str().context("desc")?;
    let parsed = Descriptor::<DescriptorPublicKey>::from_str(multipath)?;
    ensure!(parsed.is_multipath());
    let receive = parsed
        .into_single_descriptors()?
        .into_iter()
        .next()
        .context("receive")?;
    ensure!(
        receive
            .at_derivation_index(index)?
            .address(Network::Regtest)?
            .to_string()
            == loan["escrow"]["address"].as_str().context("address")?
    );
    let policy: Value = serde_json::from_str(&export("bip388")?.ok()?.stdout)?;
    bip388_rules(&policy)?;
    let bsms = export("bsms")?;
    let lines: Vec<&str> = bsms.ok()?.stdout.lines().collect();
    ensure!(
        lines.len() == 4 && lines[0] == "BSMS 1.0" && lines[1] == multipath,
        "{lines:?}"
    );
    let first = receive
        .at_derivation_index(0)?
        .address(Network::Regtest)?
        .to_string();
    ensure!(lines[3] == first);
    Ok(())
}

/// BIP-388: keys with origin, each listed once (distinct xpubs); placeholders `@i`
/// numbered from 0 in order of first appearance, each followed by `/<M;N>/*`; one key's
/// placeholders use disjoint derivation steps.
fn bip388_rules(policy: &Value) -> anyhow::Result<()> {
    let keys: Vec<&str> = policy["keys"]
        .as_array()
        .context("keys")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(keys.len() == 3, "{policy}");
    let xpubs: std::collections::BTreeSet<&str> = keys
        .iter()
        .map(|k| k.split(']').nth(1).unwrap_or(""))
        .collect();
    ensure!(xpubs.len() == 3, "the xpubs are not distinct: {keys:?}");
    ensure!(
        keys.iter().all(|k| k.starts_with('[')),
        "keys without origin"
    );
    let template = policy["template"].as_str().context("template")?;
    let mut seen: Vec<usize> = Vec::new();
    let mut steps: std::collections::BTreeMap<usize, Vec<(u32, u32)>> = Default::default();
    for part in template.split('@').skip(1) {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        let k: usize = digits.parse()?;
        if !seen.contains(&k) {
            ensure!(k == seen.len(), "@{k} appears before @{}", seen.len());
            seen.push(k);
        }
        let rest = &part[digits.len()..];
        let inner = rest
            .strip_prefix("/<")
            .and_then(|r| r.split_once(">/*"))
            .context("a placeholder is @i/<M;N>/*")?
            .0;
        let (a, b) = inner.split_once(';').context("M;N")?;
        let pair = (a.parse::<u32>()?, b.parse::<u32>()?);
        ensure!(pair.0 != pair.1);
        let used = steps.entry(k).or_default();
        for other in used.iter() {
            let overlap = [pair.0, pair.1]
                .iter()
                .any(|s| *s == other.0 || *s == other.1);
            ensure!(*other == pair || !overlap, "@{k}: overlapping paths");
        }
        if !used.contains(&pair) {
            used.push(pair);
        }
    }
    ensure!(seen.len() == 3);
    Ok(())
}
