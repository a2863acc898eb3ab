//! The loan commands that do more than one call: `loan sign` (fetch, check from the
//! party's own key, sign locally, post), `loan events` (the list, then the stream) and
//! `loan export` (the escrow for another wallet, as this party verified it).

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context};
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::Network;
use btc_escrow::client::{ClientError, ErrorKind};
use btc_escrow::cosigner::review::{review, CosignPolicy, Review};
use btc_escrow::keys::{account_path, AccountKey, SigningKey};
use btc_escrow::policy::{Party, PolicyTemplate};
use btc_escrow::verify::{multipath_address, verify_escrow, Expectation, Verified};
use serde_json::{json, Map, Value};

use super::client::{read_terms, ApiArgs};
use super::render::{print, psbt_text};

/// The account key of `key` at BIP48 account `account`.
pub fn own_account(key: &SigningKey, account: u32, network: Network) -> anyhow::Result<AccountKey> {
    let secp = Secp256k1::new();
    Ok(AccountKey::from_master(
        key.master(),
        &account_path(network, account)?,
        &secp,
    )?)
}

/// What a party's command checks the loan's escrow against, without a chain view
/// (heights checked against each other and the terms only): its own account key, in
/// the role the server gives its token (`me`, `GET /parties/me`); the arbiter's key
/// when pinned; the agreed terms when given.
fn expectation(
    me: &Value,
    own: AccountKey,
    arbiter: Option<&str>,
    agreed_terms: Option<Map<String, Value>>,
    network: Network,
) -> anyhow::Result<Expectation> {
    let party = match me["role"].as_str() {
        Some("lender") => Party::Lender,
        Some("borrower") => Party::Borrower,
        other => bail!("a {other:?} has no escrow to check: a borrower's or a lender's token"),
    };
    Ok(Expectation {
        network,
        party,
        own,
        arbiter: arbiter
            .map(|k| AccountKey::parse("--arbiter", k, network))
            .transpose()?,
        counterparty: None,
        agreed_terms,
        tip: None,
        now: btc_escrow::util::unix_now(),
        max_extra_blocks: 0,
        template: PolicyTemplate::default(),
    })
}

/// What `loan sign` checks against.
pub(super) struct SignChecks {
    pub(super) account: u32,
    pub(super) network: Network,
    pub(super) policy: Option<PathBuf>,
    pub(super) terms: Option<PathBuf>,
    pub(super) arbiter: Option<String>,
}

pub(super) fn sign(
    api: &ApiArgs,
    id: &str,
    key_file: &std::path::Path,
    checks: SignChecks,
) -> anyhow::Result<()> {
    let SignChecks {
        account,
        network,
        policy,
        terms,
        arbiter,
    } = checks;
    let client = api.client()?;
    let key = SigningKey::from_file(key_file, network)?;
    let own = own_account(&key, account, network)?;
    let me = client.get("/parties/me")?;
    let loan = client.get(&format!("/loans/{id}"))?;
    if loan["pending_psbt"].is_null() {
        return Err(
            ClientError::new(ErrorKind::NotFound, format!("loan {id}: no pending PSBT")).into(),
        );
    }
    let secp = Secp256k1::new();
    let policy = match &policy {
        Some(p) => toml::from_str(&std::fs::read_to_string(p)?)
            .with_context(|| format!("{}", p.display()))?,
        None => CosignPolicy::default(),
    };
    let agreed_terms = terms.as_ref().map(read_terms).transpose()?;
    let expectation = expectation(&me, own, arbiter.as_deref(), agreed_terms, network)?;
    let party = expectation.party;
    let pending = &loan["pending_psbt"];
    let signed = match party {
        Party::Lender => {
            let events = client.get(&format!("/loans/{id}/events"))?;
            let events = events.as_array().cloned().unwrap_or_default();
            review(
                &Review {
                    loan: &loan,
                    events: &events,
                    own_party_id: me["id"].as_str().unwrap_or_default(),
                    expectation: &expectation,
                    reference_price: None,
                    chain: None,
                    policy: &policy,
                    now: btc_escrow::util::unix_now(),
                    activated_at: None,
                    was_active: true,
                    ledger_repaid: None,
                    own_sales: None,
                },
                &key,
                &secp,
            )
            .map_err(|r| anyhow::anyhow!("refused: {r}"))?
            .psbt
        }
        _ => {
            // A borrower signs a release or a refund to its own return address only.
            let verified = verify_escrow(&loan, &expectation)?;
            let kind = pending["kind"].as_str().unwrap_or_default();
            if kind == "liquidation" || kind == "partial_liquidation" {
                bail!("refused: a liquidation is the lender's to co-sign");
            }
            let mut psbt = Psbt::from_str(pending["psbt"].as_str().unwrap_or_default())?;
            let to = loan["terms"]["borrower_return_address"]
                .as_str()
                .context("the loan has no return address")?;
            let spk = bitcoin::Address::from_str(to)?
                .require_network(network)?
                .script_pubkey();
            // A withdrawal also pays its change back into the escrow this borrower
            // derived itself; what it withdraws is what the loan says was asked.
            let escrow_spk = verified.escrow.script_pubkey();
            let own = |o: &bitcoin::TxOut| {
                o.script_pubkey == spk || (kind == "withdrawal" && o.script_pubkey == escrow_spk)
            };
            if !psbt.unsigned_tx.output.iter().all(own) {
                bail!("refused: the {kind} pays someone other than your return address {to}");
            }
            if kind == "withdrawal" {
                let to_me: u64 = psbt
                    .unsigned_tx
                    .output
                    .iter()
                    .filter(|o| o.script_pubkey == spk)
                    .map(|o| o.value.to_sat())
                    .sum();
                if loan["adjustment"]["paid_sat"].as_u64() != Some(to_me) {
                    bail!(
                        "refused: the withdrawal pays {to_me} sat, not the {} asked",
                        loan["adjustment"]["paid_sat"]
                    );
                }
            }
            btc_escrow::tx::sign(&mut psbt, &key, &verified.escrow, &policy.fee_cap(), &secp)?;
            psbt
        }
    };
    eprintln!("{}", psbt_text(pending));
    let sent = client.post(
        &format!("/loans/{id}/psbt"),
        &json!({ "psbt": signed.to_string() }),
        Some(&format!(
            "sign-{id}-{}-{}",
            pending["decision"].as_u64().unwrap_or(0),
            pending["attempt"]
        )),
    )?;
    print(api.json, &sent, |s| {
        format!(
            "co-signed: {} ({})",
            s["txid"].as_str().unwrap_or(""),
            if s["broadcast"].as_bool() == Some(true) {
                "broadcast"
            } else {
                "the service broadcasts it"
            }
        )
    });
    Ok(())
}

fn event_text(e: &Value) -> String {
    let inner = &e["event"];
    let mut fields: Vec<String> = inner
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "event")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    fields.truncate(6);
    format!(
        "{:>6} {:<14} {:<22} {}",
        e["global_seq"],
        e["loan_id"].as_str().unwrap_or(""),
        inner["event"].as_str().unwrap_or(""),
        fields.join(" ")
    )
}

pub(super) fn events(api: &ApiArgs, id: &str, follow: bool) -> anyhow::Result<()> {
    let client = api.client()?;
    let list = client.get(&format!("/loans/{id}/events"))?;
    let mut last = None;
    for e in list.as_array().into_iter().flatten() {
        last = e["global_seq"].as_u64().or(last);
        if api.json {
            println!("{e}");
        } else {
            println!("{}", event_text(e));
        }
    }
    if !follow {
        return Ok(());
    }
    loop {
        let result = client.follow(last, |seq, e| {
            last = Some(seq);
            if e["loan_id"].as_str() == Some(id) {
                if api.json {
                    println!("{e}");
                } else {
                    println!("{}", event_text(&e));
                }
            }
            true
        });
        match result {
            Err(e) if e.kind == ErrorKind::Network => {
                eprintln!("stream interrupted ({e}); resuming");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            other => return Ok(other?),
        }
    }
}

/// The loan's escrow in `format`: `bip388`, `descriptor` or `bsms`. What a wallet
/// imports is the escrow this party verified from its own account key (`verified`,
/// derived here), never the server's text: a server showing another descriptor is
/// refused by the verification before anything is printed.
pub fn export(
    id: &str,
    verified: &Verified,
    format: &str,
    network: Network,
) -> anyhow::Result<String> {
    let escrow = &verified.escrow;
    let multipath = escrow.multipath_descriptor();
    let index = escrow.index();
    Ok(match format {
        "bip388" => {
            let policy = escrow.wallet_policy();
            serde_json::to_string_pretty(&json!({
                "name": format!("escrow {id}"),
                "template": policy.template,
                "keys": policy.keys,
                "receive_index": index,
                "address": escrow.address().to_string(),
            }))?
        }
        "descriptor" => serde_json::to_string_pretty(&json!([{
            "desc": multipath,
            "active": false,
            "range": [index, index],
            "timestamp": "now",
            "label": format!("escrow {id}"),
        }]))?,
        "bsms" => {
            // BIP-129's descriptor record: version, descriptor, path restrictions (the
            // multipath steps are in the descriptor), the first address.
            let first = multipath_address(&multipath, 0, network).map_err(anyhow::Error::msg)?;
            format!("BSMS 1.0\n{multipath}\nNo path restrictions\n{first}")
        }
        other => bail!("--format {other}: bip388, descriptor or bsms"),
    })
}

/// `loan export`: the loan fetched, its escrow verified from the party's own account
/// key (the role the server gives this token; the arbiter's key when pinned), then
/// exported.
pub(super) fn verified_export(
    api: &ApiArgs,
    id: &str,
    own: AccountKey,
    arbiter: Option<&str>,
    format: &str,
    network: Network,
) -> anyhow::Result<String> {
    let client = api.client()?;
    let me = client.get("/parties/me")?;
    let expectation = expectation(&me, own, arbiter, None, network)?;
    let loan = client.get(&format!("/loans/{id}"))?;
    if !loan["escrow"].is_object() {
        bail!("loan {id} has no escrow yet (not accepted)");
    }
    let verified = verify_escrow(&loan, &expectation)
        .context("the escrow does NOT check; nothing exported")?;
    export(id, &verified, format, network)
}
