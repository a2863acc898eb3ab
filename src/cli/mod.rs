//! The key, policy and psbt subcommands: parse arguments into domain types, call the
//! library, print JSON (or base64 / hex) on stdout and human messages on stderr.

pub mod client;
pub mod loan_ops;
pub mod plan;
mod render;
pub mod tools;

use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};
use bitcoin::bip32::Xpriv;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{Address, Amount, FeeRate, Network, OutPoint, Transaction};
use btc_escrow::keys::{account_path, AccountKey, SigningKey};
use btc_escrow::policy::{
    example_keys, EscrowDescriptor, EscrowHeights, EscrowKeys, PartyAccounts, PathName,
    PolicyTemplate,
};
use btc_escrow::tx::{self, EscrowInput, FeeCap, SpendRequest};
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand)]
pub enum KeyCmd {
    /// A new BIP39 mnemonic with its master xprv and BIP48 P2WSH account xpub.
    New {
        #[arg(long)]
        network: Network,
    },
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Compile the escrow policy for three account keys and an escrow index.
    Compile {
        /// Policy template file (default: the built-in policies/escrow.policy).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        borrower: String,
        #[arg(long)]
        lender: String,
        #[arg(long)]
        arbiter: String,
        /// The escrow's index: keys are <account>/0/N (2-of-3) and <account>/2/N
        /// (timelocked), receive index N of the BIP-388 wallet policy.
        #[arg(long)]
        index: u32,
        #[arg(long)]
        default_height: u32,
        #[arg(long)]
        recovery_height: u32,
        #[arg(long)]
        network: Network,
    },
    /// Check a template's guarantees and show its spending paths (exit 1 if broken).
    Check {
        /// Template file (default: the built-in one).
        file: Option<PathBuf>,
    },
}

/// The escrow a PSBT spends: its descriptor, checked against the parties' own account
/// keys (roles come from whose key is where, never from the descriptor's shape).
#[derive(clap::Args)]
pub struct EscrowArgs {
    /// The escrow's concrete descriptor (`policy compile` prints it).
    #[arg(long)]
    descriptor: String,
    /// The borrower's account key, [fingerprint/48'/coin'/account'/2']xpub.
    #[arg(long)]
    borrower: String,
    /// The lender's account key.
    #[arg(long)]
    lender: String,
    /// The arbiter's account key.
    #[arg(long)]
    arbiter: String,
}

impl EscrowArgs {
    fn escrow(&self, network: Network) -> anyhow::Result<EscrowDescriptor> {
        let accounts = PartyAccounts {
            borrower: AccountKey::parse("--borrower", &self.borrower, network)?,
            lender: AccountKey::parse("--lender", &self.lender, network)?,
            arbiter: AccountKey::parse("--arbiter", &self.arbiter, network)?,
        };
        EscrowDescriptor::parse(
            &self.descriptor,
            network,
            &accounts,
            &PolicyTemplate::default(),
        )
        .context("--descriptor: not this escrow of these parties")
    }
}

#[derive(Subcommand)]
pub enum PsbtCmd {
    /// Build an unsigned PSBT spending the escrow by one path; base64 on stdout.
    Build {
        #[command(flatten)]
        escrow: EscrowArgs,
        #[arg(long)]
        network: Network,
        #[arg(long)]
        path: PathName,
        /// TXID:VOUT:PREV_TX_HEX, once per escrow UTXO.
        #[arg(long = "input", required = true)]
        inputs: Vec<String>,
        /// ADDRESS:SATS, once per fixed payment.
        #[arg(long = "pay")]
        pays: Vec<String>,
        /// Receives the remainder after payments and fee.
        #[arg(long)]
        rest_to: String,
        /// Fee rate in sat/vB.
        #[arg(long)]
        fee_rate: u64,
        /// The chain tip (nLockTime of untimelocked paths).
        #[arg(long)]
        tip: u32,
    },
    /// Sign a PSBT (stdin) with a key file (mode 0600) holding a master xprv or a
    /// BIP39 mnemonic: only inputs of this escrow, only this key's escrow keys, only
    /// under the fee cap.
    Sign {
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        escrow: EscrowArgs,
        /// Network of the keys and addresses.
        #[arg(long, default_value = "regtest")]
        network: Network,
        /// Refuse a fee above this many satoshis.
        #[arg(long, default_value_t = FeeCap::default().max_fee.to_sat())]
        max_fee_sat: u64,
        /// Refuse a fee above this share of the inputs, in basis points.
        #[arg(long, default_value_t = FeeCap::default().max_fee_bps)]
        max_fee_bps: u32,
    },
    /// Finalize a PSBT (stdin) and print the raw transaction hex.
    Finalize,
}

#[derive(Subcommand)]
pub enum OracleCmd {
    /// Query the configured sources once: every quote, what was dropped and why, and
    /// the aggregate (exit 1 when there is no price).
    Price {
        /// TOML file with an [oracle] section (default: Kraken, Bitstamp, Coinbase).
        #[arg(long, env = "BTC_ESCROW_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub fn oracle(cmd: OracleCmd) -> anyhow::Result<()> {
    use btc_escrow::oracle::{ticker::poll_once, OracleConfig};
    let OracleCmd::Price { config } = cmd;
    let text = match &config {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => btc_escrow::config::DEFAULT_ORACLE.to_owned(),
    };
    let config = OracleConfig::from_toml(&text)?;
    let (sources, _) = config.build(btc_escrow::util::unix_now());
    let client = reqwest::Client::builder()
        .user_agent(concat!("btc-escrow/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(poll_once(
        &client,
        &sources,
        &config.currency,
        &config.rules(),
    ));
    let (used, dropped) = match &result {
        Ok(p) => (&p.used, &p.dropped),
        Err(n) => (&n.used, &n.dropped),
    };
    for q in used {
        eprintln!(
            "used     {:<12} {} {}.{:02}",
            q.source,
            q.currency,
            q.price_minor / 100,
            q.price_minor % 100
        );
    }
    for d in dropped {
        eprintln!(
            "dropped  {:<12} {}",
            d.source,
            serde_json::to_string(&d.reason)?
        );
    }
    let json = match &result {
        Ok(p) => json!({ "price": p }),
        Err(n) => json!({ "no_price": n }),
    };
    println!("{}", serde_json::to_string_pretty(&json)?);
    match result {
        Ok(p) => {
            eprintln!(
                "price: {} {}.{:02} per BTC",
                p.currency,
                p.price_minor / 100,
                p.price_minor % 100
            );
            Ok(())
        }
        Err(n) => bail!("no price: {}", n.reason),
    }
}

pub fn key(cmd: KeyCmd) -> anyhow::Result<()> {
    let KeyCmd::New { network } = cmd;
    let secp = Secp256k1::new();
    let mnemonic = bip39::Mnemonic::generate(24).context("generating a mnemonic")?;
    let master = Xpriv::new_master(network, &mnemonic.to_seed(""))?;
    let path = account_path(network, 0)?;
    let account = AccountKey::from_master(&master, &path, &secp)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "mnemonic": mnemonic.to_string(),
            "fingerprint": master.fingerprint(&secp).to_string(),
            "account_path": format!("m/{}", path.to_string().trim_start_matches("m/")),
            "xprv": master.to_string(),
            "xpub": account.to_string(),
        }))?
    );
    eprintln!("keep the mnemonic and xprv secret; register the xpub");
    Ok(())
}

fn read_template(file: Option<&PathBuf>) -> anyhow::Result<PolicyTemplate> {
    Ok(match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            PolicyTemplate::new(&text)?
        }
        None => PolicyTemplate::default(),
    })
}

fn paths_json(escrow: &EscrowDescriptor) -> serde_json::Value {
    escrow
        .paths()
        .iter()
        .map(|p| json!({"name": p.name, "signers": p.signers, "after_height": p.after_height}))
        .collect()
}

pub fn policy(cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Compile {
            policy,
            borrower,
            lender,
            arbiter,
            index,
            default_height,
            recovery_height,
            network,
        } => {
            let template = read_template(policy.as_ref())?;
            let keys = EscrowKeys {
                borrower: AccountKey::parse("borrower", &borrower, network)?,
                lender: AccountKey::parse("lender", &lender, network)?,
                arbiter: AccountKey::parse("arbiter", &arbiter, network)?,
                index,
            };
            let heights = EscrowHeights::new(default_height, recovery_height, 0)?;
            let escrow = template.instantiate(&keys, heights, network)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "descriptor": escrow.to_string(),
                    "multipath_descriptor": escrow.multipath_descriptor(),
                    "wallet_policy": escrow.wallet_policy(),
                    "index": escrow.index(),
                    "address": escrow.address().to_string(),
                    "script_pubkey": escrow.script_pubkey().to_hex_string(),
                    "paths": paths_json(&escrow),
                }))?
            );
            Ok(())
        }
        PolicyCmd::Check { file } => {
            let template = read_template(file.as_ref())?;
            let heights = EscrowHeights::new(1_000, 2_000, 100)?;
            eprintln!(
                "checking with example keys, default_height {} and recovery_height {}",
                heights.default_height, heights.recovery_height
            );
            let escrow =
                template.instantiate(&example_keys(Network::Regtest), heights, Network::Regtest)?;
            println!("{:<20} {:<32} valid from", "path", "signers");
            for p in escrow.paths() {
                let signers: Vec<&str> = p.signers.iter().map(|r| r.as_str()).collect();
                let from = p
                    .after_height
                    .map_or("funding".to_owned(), |h| format!("height {h}"));
                println!("{:<20} {:<32} {from}", p.name.as_str(), signers.join(" + "));
            }
            eprintln!("all guarantees hold");
            Ok(())
        }
    }
}

fn parse_address(field: &str, text: &str, network: Network) -> anyhow::Result<Address> {
    Ok(btc_escrow::util::parse_address(field, text, network)?)
}

fn parse_input(text: &str) -> anyhow::Result<EscrowInput> {
    let mut parts = text.splitn(3, ':');
    let (Some(txid), Some(vout), Some(hex)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("--input: expected TXID:VOUT:PREV_TX_HEX, got {text:?}");
    };
    let outpoint = OutPoint::new(
        txid.parse()
            .with_context(|| format!("--input: bad txid {txid:?}"))?,
        vout.parse()
            .with_context(|| format!("--input: bad vout {vout:?}"))?,
    );
    let prev_tx: Transaction = bitcoin::consensus::encode::deserialize_hex(hex)
        .with_context(|| format!("--input {txid}:{vout}: bad previous transaction hex"))?;
    Ok(EscrowInput { outpoint, prev_tx })
}

fn read_psbt_stdin() -> anyhow::Result<Psbt> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the PSBT from stdin")?;
    Psbt::from_str(text.trim()).context("stdin: not a base64 PSBT")
}

pub fn psbt(cmd: PsbtCmd) -> anyhow::Result<()> {
    let secp = Secp256k1::new();
    match cmd {
        PsbtCmd::Build {
            escrow,
            network,
            path,
            inputs,
            pays,
            rest_to,
            fee_rate,
            tip,
        } => {
            let escrow = escrow.escrow(network)?;
            let inputs = inputs
                .iter()
                .map(|i| parse_input(i))
                .collect::<anyhow::Result<_>>()?;
            let payments = pays
                .iter()
                .map(|p| {
                    let (addr, sats) = p
                        .rsplit_once(':')
                        .ok_or_else(|| anyhow!("--pay: expected ADDRESS:SATS, got {p:?}"))?;
                    let sats: u64 = sats
                        .parse()
                        .with_context(|| format!("--pay: bad amount {sats:?}"))?;
                    Ok((
                        parse_address("--pay", addr, network)?.script_pubkey(),
                        Amount::from_sat(sats),
                    ))
                })
                .collect::<anyhow::Result<_>>()?;
            let req = SpendRequest {
                path,
                inputs,
                payments,
                rest_to: parse_address("--rest-to", &rest_to, network)?.script_pubkey(),
                fee_rate: FeeRate::from_sat_per_vb(fee_rate)
                    .ok_or_else(|| anyhow!("--fee-rate: {fee_rate} sat/vB is too large"))?,
                tip,
            };
            let built = tx::build(&escrow, &req)?;
            eprint!("{}", tx::describe(&built.psbt, network));
            eprintln!(
                "  fee {} for at most {} vB signed",
                built.fee,
                built.max_weight.to_vbytes_ceil()
            );
            println!("{}", built.psbt);
            Ok(())
        }
        PsbtCmd::Sign {
            key,
            escrow,
            network,
            max_fee_sat,
            max_fee_bps,
        } => {
            let key = SigningKey::from_file(&key, network)?;
            let escrow = escrow.escrow(network)?;
            let cap = FeeCap {
                max_fee: Amount::from_sat(max_fee_sat),
                max_fee_bps,
            };
            let mut psbt = read_psbt_stdin()?;
            tx::check_inputs(&psbt)?;
            eprintln!("signing with key {}:", key.fingerprint(&secp));
            eprint!("{}", tx::describe(&psbt, network));
            let n = tx::sign(&mut psbt, &key, &escrow, &cap, &secp)?;
            eprintln!("added {n} signature(s)");
            println!("{psbt}");
            Ok(())
        }
        PsbtCmd::Finalize => {
            let psbt = read_psbt_stdin()?;
            let tx = tx::finalize(&psbt, &secp)?;
            println!("{}", bitcoin::consensus::encode::serialize_hex(&tx));
            Ok(())
        }
    }
}
