//! The parties' own tools: `verify-escrow` (before funding), `cosign` (the lender's
//! daemon) and `exit` (leaving with no server). None trusts the server: each re-derives
//! the escrow from the party's own key.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{Address, Amount, FeeRate, Network};
use btc_escrow::chain::TlsConfig;
use btc_escrow::keys::{AccountKey, SigningKey};
use btc_escrow::policy::{EscrowDescriptor, Party, PartyAccounts, PolicyTemplate};
use btc_escrow::tx::FeeCap;
use btc_escrow::verify::{verify_escrow, Expectation};
use clap::Args;
use serde_json::{json, Value};

use super::client::{read_terms, ApiArgs};
use super::loan_ops::own_account;

/// Where a loan's JSON comes from: a file (saved earlier) or the server.
#[derive(Args)]
pub struct LoanSource {
    /// The loan JSON (`btc-escrow loan show ID --json > loan.json`).
    #[arg(long, conflicts_with = "loan")]
    loan_file: Option<PathBuf>,
    /// The loan's id, fetched from --api with --token.
    #[arg(long)]
    loan: Option<String>,
}

impl LoanSource {
    fn read(&self, api: &ApiArgs) -> anyhow::Result<Value> {
        match (&self.loan_file, &self.loan) {
            (Some(f), _) => Ok(serde_json::from_str(
                &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            )
            .with_context(|| format!("{}: loan JSON", f.display()))?),
            (None, Some(id)) => Ok(api.client()?.get(&format!("/loans/{id}"))?),
            (None, None) => bail!("--loan-file or --loan"),
        }
    }
}

/// The party's own key: a key file, or its account key alone.
#[derive(Args)]
pub struct OwnKey {
    /// Key file (mode 0600): master xprv or BIP39 mnemonic.
    #[arg(long)]
    key: Option<PathBuf>,
    /// The BIP48 account of the key file.
    #[arg(long, default_value_t = 0)]
    account: u32,
    /// Or the account key itself, [fingerprint/48'/coin'/account'/2']xpub.
    #[arg(long, conflicts_with = "key")]
    account_key: Option<String>,
}

impl OwnKey {
    pub(super) fn account(&self, network: Network) -> anyhow::Result<AccountKey> {
        match (&self.key, &self.account_key) {
            (Some(f), _) => own_account(&SigningKey::from_file(f, network)?, self.account, network),
            (None, Some(k)) => Ok(AccountKey::parse("--account-key", k, network)?),
            (None, None) => bail!("--key or --account-key"),
        }
    }
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    source: LoanSource,
    #[command(flatten)]
    own: OwnKey,
    /// borrower or lender.
    #[arg(long)]
    role: String,
    /// The terms agreed (TOML or JSON, the API's field names; an offer file).
    #[arg(long)]
    terms: Option<PathBuf>,
    /// The service's arbiter account key, as published by the service.
    #[arg(long)]
    arbiter: Option<String>,
    /// The other party's account key, if known.
    #[arg(long)]
    counterparty: Option<String>,
    /// The chain tip to check the heights at…
    #[arg(long)]
    tip: Option<u32>,
    /// …or your own Electrum server to read it from.
    #[arg(long, env = "BTC_ESCROW_ELECTRUM")]
    electrum: Option<String>,
    /// Blocks the default height may be beyond what the terms give at the tip.
    #[arg(long, default_value_t = 144)]
    max_extra_blocks: u32,
    #[arg(long, env = "BTC_ESCROW_NETWORK", default_value = "regtest")]
    network: Network,
}

pub fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let loan = a.source.read(&a.api)?;
    let party = match a.role.as_str() {
        "borrower" => Party::Borrower,
        "lender" => Party::Lender,
        other => bail!("--role {other}: borrower or lender"),
    };
    let tip = match (a.tip, &a.electrum) {
        (Some(t), _) => t,
        (None, Some(url)) => btc_escrow::chain::lookup::tip(url, &TlsConfig::default(), a.network)?,
        (None, None) => bail!("--tip or --electrum: the heights are checked at the chain tip"),
    };
    let parse = |flag: &str, k: &Option<String>| -> anyhow::Result<Option<AccountKey>> {
        k.as_ref()
            .map(|k| AccountKey::parse(flag, k, a.network))
            .transpose()
            .map_err(Into::into)
    };
    let expectation = Expectation {
        network: a.network,
        party,
        own: a.own.account(a.network)?,
        arbiter: parse("--arbiter", &a.arbiter)?,
        counterparty: parse("--counterparty", &a.counterparty)?,
        agreed_terms: a.terms.as_ref().map(read_terms).transpose()?,
        tip: Some(tip),
        now: btc_escrow::util::unix_now(),
        max_extra_blocks: a.max_extra_blocks,
        template: PolicyTemplate::default(),
    };
    let verified = verify_escrow(&loan, &expectation).context("the escrow does NOT check")?;
    let report = verified.report();
    if a.api.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "OK: {} is your escrow as the {} (index {})",
            report["address"].as_str().unwrap_or(""),
            a.role,
            report["index"]
        );
        for p in report["paths"].as_array().into_iter().flatten() {
            let after = p["after_height"]
                .as_u64()
                .map_or(String::new(), |h| format!(" from height {h}"));
            println!(
                "  {:<20} {}{after}",
                p["name"].as_str().unwrap_or(""),
                p["signers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" + "),
            );
        }
        if let Some(s) = report["required_collateral_sat"].as_u64() {
            println!(
                "the server asks for {s} sats at {} (its figure: check it against the terms and the price)",
                report["address"].as_str().unwrap_or("")
            );
        }
        if !verified.arbiter_pinned {
            println!("(the arbiter's key was not pinned: pass --arbiter with the service's published key)");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct CosignArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The lender's key file (mode 0600).
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value_t = 0)]
    account: u32,
    /// Its limits (TOML: max_fee_sat, max_fee_bps, price_tolerance_bps, poll_secs).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Where it keeps its journal and status.json.
    #[arg(long, default_value = "cosigner")]
    state_dir: PathBuf,
    /// Its own Electrum server, to check the inputs against.
    #[arg(long)]
    electrum: Option<String>,
    /// Its own oracle: a TOML file with an [oracle] section.
    #[arg(long)]
    oracle: Option<PathBuf>,
    /// The service's arbiter account key, pinned.
    #[arg(long)]
    arbiter: Option<String>,
    #[arg(long, env = "BTC_ESCROW_NETWORK", default_value = "regtest")]
    network: Network,
    /// One sweep of the pending PSBTs, then exit (cron; tests).
    #[arg(long)]
    once: bool,
    /// Its own ledger of repayments (`loan repay --ledger`), counted instead of the
    /// server's events.
    #[arg(long)]
    ledger: Option<PathBuf>,
}

pub fn cosign(a: CosignArgs) -> anyhow::Result<()> {
    use btc_escrow::cosigner::{CosignPolicy, Cosigner, Options};
    let key = SigningKey::from_file(&a.key, a.network)?;
    let account = own_account(&key, a.account, a.network)?;
    let policy: CosignPolicy = match &a.policy {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{}", p.display()))?,
        None => CosignPolicy::default(),
    };
    let oracle = match &a.oracle {
        Some(p) => Some(btc_escrow::oracle::OracleConfig::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?),
        None => None,
    };
    let arbiter = a
        .arbiter
        .as_ref()
        .map(|k| AccountKey::parse("--arbiter", k, a.network))
        .transpose()?;
    let mut cosigner = Cosigner::start(Options {
        api: a.api.client()?,
        key,
        account,
        network: a.network,
        policy,
        state_dir: a.state_dir.clone(),
        electrum: a.electrum.map(|u| (u, TlsConfig::default())),
        oracle,
        arbiter,
        ledger: a.ledger.clone(),
    })?;
    if a.once {
        cosigner.sweep_and_record();
        println!("{}", serde_json::to_string_pretty(cosigner.status())?);
        return Ok(());
    }
    eprintln!(
        "co-signing for {} (state in {}); SIGINT or SIGTERM stops it",
        cosigner.status().party_id,
        a.state_dir.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(stop.clone());
    cosigner.run(stop)?;
    Ok(())
}

/// On SIGINT or SIGTERM: set `flag` and leave (the journal is written before every
/// post, so stopping between two sweeps loses nothing).
fn stop_on_signal(flag: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!("stopping");
            std::process::exit(0);
        });
    });
}

#[derive(Args)]
pub struct ExitArgs {
    #[command(flatten)]
    source: ExitEscrow,
    /// The party's key file (mode 0600).
    #[arg(long)]
    key: PathBuf,
    /// Its own Electrum server.
    #[arg(long, env = "BTC_ESCROW_ELECTRUM")]
    electrum: String,
    /// Where the coins go (the solo path), or the rest (cooperative).
    #[arg(long)]
    to: String,
    /// sat/vB.
    #[arg(long)]
    fee_rate: u64,
    /// Also write the signed transaction (hex) here, to broadcast later.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Build a borrower + lender PSBT (no arbiter) instead, signed by this key; the
    /// other party signs it with `psbt sign`, then `psbt finalize` and `chain
    /// broadcast`.
    #[arg(long)]
    cooperative: bool,
    /// ADDRESS:SATS paid before the rest (cooperative).
    #[arg(long = "pay")]
    pays: Vec<String>,
    #[arg(long, default_value_t = FeeCap::default().max_fee.to_sat())]
    max_fee_sat: u64,
    #[arg(long, env = "BTC_ESCROW_NETWORK", default_value = "regtest")]
    network: Network,
}

/// The escrow to leave: a loan JSON, or the descriptor and the three account keys.
#[derive(Args)]
pub struct ExitEscrow {
    /// The loan JSON saved while the service was there.
    #[arg(long, conflicts_with = "descriptor")]
    loan_file: Option<PathBuf>,
    #[arg(long, requires_all = ["borrower", "lender", "arbiter"])]
    descriptor: Option<String>,
    #[arg(long)]
    borrower: Option<String>,
    #[arg(long)]
    lender: Option<String>,
    #[arg(long)]
    arbiter: Option<String>,
}

fn exit_escrow(
    src: &ExitEscrow,
    key: &SigningKey,
    network: Network,
) -> anyhow::Result<EscrowDescriptor> {
    if let Some(desc) = &src.descriptor {
        let k = |f: &str, v: &Option<String>| -> anyhow::Result<AccountKey> {
            Ok(AccountKey::parse(
                f,
                v.as_deref().unwrap_or_default(),
                network,
            )?)
        };
        let accounts = PartyAccounts {
            borrower: k("--borrower", &src.borrower)?,
            lender: k("--lender", &src.lender)?,
            arbiter: k("--arbiter", &src.arbiter)?,
        };
        return EscrowDescriptor::parse(desc, network, &accounts, &PolicyTemplate::default())
            .context("--descriptor: not this escrow of these parties");
    }
    let file = src
        .loan_file
        .as_ref()
        .context("--loan-file, or --descriptor with --borrower --lender --arbiter")?;
    let loan: Value = serde_json::from_str(&std::fs::read_to_string(file)?)
        .with_context(|| format!("{}: loan JSON", file.display()))?;
    // Whose key this is is found by trying both roles: the escrow must check as one.
    let mut last = None;
    for account in 0..4 {
        let own = own_account(key, account, network)?;
        for party in [Party::Borrower, Party::Lender] {
            let exp = Expectation {
                network,
                party,
                own: own.clone(),
                arbiter: None,
                counterparty: None,
                agreed_terms: None,
                tip: None,
                now: 0,
                max_extra_blocks: 0,
                template: PolicyTemplate::default(),
            };
            match verify_escrow(&loan, &exp) {
                Ok(v) => return Ok(v.escrow),
                Err(e) => last = Some(e),
            }
        }
    }
    Err(anyhow::anyhow!(
        "{}: not an escrow of this key ({})",
        file.display(),
        last.map_or(String::new(), |e| e.to_string())
    ))
}

pub fn exit(a: ExitArgs) -> anyhow::Result<()> {
    use btc_escrow::chain::lookup;
    let secp = Secp256k1::new();
    let key = SigningKey::from_file(&a.key, a.network)?;
    let escrow = exit_escrow(&a.source, &key, a.network)?;
    let to = Address::from_str(&a.to)
        .context("--to")?
        .require_network(a.network)
        .context("--to")?;
    let fee_rate = FeeRate::from_sat_per_vb(a.fee_rate).context("--fee-rate")?;
    let cap = FeeCap {
        max_fee: Amount::from_sat(a.max_fee_sat),
        max_fee_bps: 10_000,
    };
    let tls = TlsConfig::default();
    let view = lookup::script_view(&a.electrum, &tls, a.network, &escrow.script_pubkey())?;
    let inputs = view.unspent();
    let held: u64 = inputs
        .iter()
        .filter_map(|i| i.txout())
        .map(|o| o.value.to_sat())
        .sum();
    eprintln!(
        "escrow {}: {} output(s), {held} sats; tip {}",
        escrow.address(),
        inputs.len(),
        view.tip
    );
    if a.cooperative {
        let payments = a
            .pays
            .iter()
            .map(|p| {
                let (addr, amount) = p.rsplit_once(':').context("--pay ADDRESS:SATS")?;
                let addr = Address::from_str(addr)?.require_network(a.network)?;
                Ok((addr.script_pubkey(), Amount::from_sat(amount.parse()?)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (psbt, fee) = btc_escrow::exit::cooperative(
            &escrow,
            &key,
            inputs,
            payments,
            to.script_pubkey(),
            fee_rate,
            view.tip,
            &cap,
            &secp,
        )?;
        eprintln!("cooperative PSBT, fee {fee}; the other party signs it (psbt sign), then psbt finalize and chain broadcast");
        println!("{psbt}");
        return Ok(());
    }
    let exit = btc_escrow::exit::solo(&escrow, &key, inputs, &to, fee_rate, &cap, &secp)?;
    let hex = bitcoin::consensus::encode::serialize_hex(&exit.tx);
    if let Some(path) = &a.write {
        std::fs::write(path, &hex).with_context(|| format!("writing {}", path.display()))?;
    }
    let txid = exit.tx.compute_txid();
    let report = |broadcast: bool| {
        json!({
            "path": exit.path,
            "final_at_height": exit.final_at,
            "tip": view.tip,
            "txid": txid.to_string(),
            "fee_sat": exit.fee.to_sat(),
            "broadcast": broadcast,
            "tx_hex": hex,
        })
    };
    // Final once the tip is at the lock height (nLockTime below the next block's).
    if view.tip < exit.final_at {
        println!("{}", serde_json::to_string_pretty(&report(false))?);
        bail!(
            "not final yet: the {} path opens at height {} (tip {}, {} blocks to wait); the signed transaction is above{}",
            exit.path,
            exit.final_at,
            view.tip,
            exit.final_at - view.tip,
            a.write
                .as_ref()
                .map_or(String::new(), |p| format!(" and in {}", p.display()))
        );
    }
    match lookup::send(&a.electrum, &tls, a.network, &exit.tx) {
        Ok(_) | Err(btc_escrow::chain::BroadcastError::AlreadyKnown { .. }) => {}
        Err(e) => {
            println!("{}", serde_json::to_string_pretty(&report(false))?);
            return Err(e.into());
        }
    }
    println!("{}", serde_json::to_string_pretty(&report(true))?);
    eprintln!("sent {txid} through the {} path", exit.path);
    Ok(())
}

/// `chain broadcast`: a raw transaction (hex, stdin) through one's own Electrum.
pub fn broadcast(electrum: &str, network: Network) -> anyhow::Result<()> {
    let mut hex = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut hex)?;
    let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(hex.trim())
        .context("stdin: a raw transaction in hex")?;
    let txid = btc_escrow::chain::lookup::send(electrum, &TlsConfig::default(), network, &tx)?;
    println!("{txid}");
    Ok(())
}
