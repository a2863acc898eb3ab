//! `btc-escrow party …` and `btc-escrow loan …`: a party's commands against a running
//! server. JSON on stdout with `--json`, a readable summary otherwise; a server error
//! shows its problem `detail` and `field`, and the exit code says what kind it was
//! (see `btc_escrow::client::ErrorKind`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use bitcoin::Network;
use btc_escrow::client::{ApiClient, ClientError};

use super::loan_ops;
use super::tools::OwnKey;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

/// Where the server is and who is asking.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// The server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "BTC_ESCROW_API", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// The party's token (`init` prints the admin's; `party create` the others').
    #[arg(long, env = "BTC_ESCROW_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// JSON on stdout instead of a readable summary.
    #[arg(long)]
    pub json: bool,
}

impl ApiArgs {
    pub fn client(&self) -> Result<ApiClient, ClientError> {
        ApiClient::new(&self.api, self.token.clone())
    }
}

#[derive(Subcommand)]
pub enum PartyCmd {
    /// Register a lender or a borrower (admin): prints its token, shown once.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        name: String,
        /// lender or borrower.
        #[arg(long)]
        role: String,
        /// [fingerprint/48'/coin'/account'/2']xpub (`btc-escrow key new` prints one).
        #[arg(long)]
        account_key: String,
    },
    /// Who this token is.
    Me {
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// An offer's terms: a file (TOML or JSON, the API's field names), each flag given
/// overriding it.
#[derive(Args)]
pub struct OfferTerms {
    /// TOML or JSON file of the terms.
    #[arg(long)]
    terms: Option<PathBuf>,
    #[arg(long)]
    principal_minor: Option<u64>,
    #[arg(long)]
    currency: Option<String>,
    #[arg(long)]
    apr_bps: Option<u32>,
    #[arg(long)]
    term_secs: Option<u64>,
    #[arg(long)]
    initial_ltv_bps: Option<u32>,
    #[arg(long)]
    margin_call_ltv_bps: Option<u32>,
    #[arg(long)]
    liquidation_ltv_bps: Option<u32>,
    #[arg(long)]
    hard_liquidation_ltv_bps: Option<u32>,
    #[arg(long)]
    liquidation_penalty_bps: Option<u32>,
    #[arg(long)]
    hysteresis_bps: Option<u32>,
    #[arg(long)]
    confirm_ticks: Option<u32>,
    #[arg(long)]
    grace_blocks: Option<u32>,
    #[arg(long)]
    recovery_delay_blocks: Option<u32>,
    /// Unix seconds; `+SECS` is that many seconds from now.
    #[arg(long)]
    funding_deadline: Option<String>,
    #[arg(long)]
    lender_payout_address: Option<String>,
    #[arg(long)]
    min_confirmations: Option<u32>,
    /// On a confirmed breach, sell only what brings the loan back to
    /// --target-ltv-bps.
    #[arg(long)]
    partial_liquidation: bool,
    #[arg(long)]
    target_ltv_bps: Option<u32>,
    /// Margin-call levels, rising, the first the margin-call LTV (e.g. 7000,7500,7900).
    #[arg(long, value_delimiter = ',')]
    margin_call_levels_bps: Option<Vec<u32>>,
}

impl OfferTerms {
    fn body(&self) -> anyhow::Result<Value> {
        let mut map = match &self.terms {
            Some(path) => read_terms(path)?,
            None => Map::new(),
        };
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                map.insert(k.to_owned(), v);
            }
        };
        set("principal_minor", self.principal_minor.map(Value::from));
        set("currency", self.currency.clone().map(Value::from));
        set("apr_bps", self.apr_bps.map(Value::from));
        set("term_secs", self.term_secs.map(Value::from));
        set("initial_ltv_bps", self.initial_ltv_bps.map(Value::from));
        set(
            "margin_call_ltv_bps",
            self.margin_call_ltv_bps.map(Value::from),
        );
        set(
            "liquidation_ltv_bps",
            self.liquidation_ltv_bps.map(Value::from),
        );
        set(
            "hard_liquidation_ltv_bps",
            self.hard_liquidation_ltv_bps.map(Value::from),
        );
        set(
            "liquidation_penalty_bps",
            self.liquidation_penalty_bps.map(Value::from),
        );
        set("hysteresis_bps", self.hysteresis_bps.map(Value::from));
        set("confirm_ticks", self.confirm_ticks.map(Value::from));
        set("grace_blocks", self.grace_blocks.map(Value::from));
        set(
            "recovery_delay_blocks",
            self.recovery_delay_blocks.map(Value::from),
        );
        set(
            "lender_payout_address",
            self.lender_payout_address.clone().map(Value::from),
        );
        set("min_confirmations", self.min_confirmations.map(Value::from));
        set(
            "partial_liquidation",
            self.partial_liquidation.then_some(Value::Bool(true)),
        );
        set("target_ltv_bps", self.target_ltv_bps.map(Value::from));
        set(
            "margin_call_levels_bps",
            self.margin_call_levels_bps.clone().map(Value::from),
        );
        if let Some(d) = &self.funding_deadline {
            let at = match d.strip_prefix('+') {
                Some(secs) => {
                    btc_escrow::util::unix_now()
                        + secs.parse::<u64>().context("--funding-deadline +SECS")?
                }
                None => d
                    .parse()
                    .context("--funding-deadline: unix seconds or +SECS")?,
            };
            map.insert("funding_deadline".into(), Value::from(at));
        }
        Ok(Value::Object(map))
    }
}

/// A terms file: TOML or JSON (by its first character), the API's field names.
pub fn read_terms(path: &PathBuf) -> anyhow::Result<Map<String, Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).with_context(|| format!("{}: JSON", path.display()))?
    } else {
        let t: toml::Value =
            toml::from_str(&text).with_context(|| format!("{}: TOML", path.display()))?;
        serde_json::to_value(t)?
    };
    match value {
        Value::Object(m) => Ok(m),
        _ => bail!("{}: a table of terms", path.display()),
    }
}

#[derive(Subcommand)]
pub enum LoanCmd {
    /// Offer a loan (lender).
    Offer {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        terms: OfferTerms,
    },
    /// This party's loans (and, for a borrower, the open offers with --offers).
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        offers: bool,
    },
    Show {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// Accept an offer (borrower): the escrow is made for it.
    Accept {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        #[arg(long)]
        return_address: String,
        /// Another account key than the party's own for this loan.
        #[arg(long)]
        account_key: Option<String>,
    },
    /// Record a repayment (lender); a full one starts the release.
    Repay {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        #[arg(long)]
        amount_minor: u64,
        /// Makes a retried command count once: give the key a failed attempt printed
        /// (default: a new random key each time).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// The lender's own ledger of repayments (JSON lines), appended once the
        /// server accepted it: what `cosign --ledger` counts.
        #[arg(long)]
        ledger: Option<PathBuf>,
    },
    /// Ask to withdraw collateral above the initial LTV (borrower): the withdrawal
    /// becomes the pending PSBT; `loan sign` signs it, and the service signs last.
    Withdraw {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        #[arg(long)]
        amount_sat: u64,
    },
    /// The pending PSBT with what it pays.
    Psbt {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// Fetch the pending PSBT, check it from this party's own key and the loan's
    /// terms, sign it locally and post it.
    Sign {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        #[arg(long)]
        key: PathBuf,
        /// The BIP48 account of the key (its registered account key).
        #[arg(long, default_value_t = 0)]
        account: u32,
        #[arg(long, env = "BTC_ESCROW_NETWORK", default_value = "regtest")]
        network: Network,
        /// The co-signer limits (as `cosign --policy`) for a lender's checks.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The terms agreed (an offer file): the loan's must be these, addresses
        /// included.
        #[arg(long)]
        terms: Option<PathBuf>,
        /// The service's arbiter account key, pinned.
        #[arg(long)]
        arbiter: Option<String>,
    },
    /// The loan's events, in order; --follow keeps reading the stream.
    Events {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        #[arg(long)]
        follow: bool,
    },
    /// The escrow for another wallet: a BIP-388 wallet policy (hardware wallets), the
    /// multipath descriptor with checksum (Bitcoin Core's importdescriptors), or a
    /// BIP-129 descriptor record. The escrow is verified from your own key first (as
    /// verify-escrow, without the tip and terms checks) and exported as derived here.
    Export {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        #[arg(long, value_parser = ["bip388", "descriptor", "bsms"])]
        format: String,
        /// Your key: the escrow is verified from it before anything is exported.
        #[command(flatten)]
        own: OwnKey,
        /// The service's arbiter account key, pinned.
        #[arg(long)]
        arbiter: Option<String>,
        #[arg(long, env = "BTC_ESCROW_NETWORK", default_value = "regtest")]
        network: Network,
    },
}

use super::render::{loan_row, loan_text, print, psbt_text};

pub fn party(cmd: PartyCmd) -> anyhow::Result<()> {
    match cmd {
        PartyCmd::Create {
            api,
            name,
            role,
            account_key,
        } => {
            let body = json!({"name": name, "role": role, "account_key": account_key});
            let key = format!("party-{}", account_key);
            let created = api.client()?.post("/parties", &body, Some(&key))?;
            print(api.json, &created, |p| {
                format!(
                    "{} {} ({})\ntoken {}\nkeep the token: it is shown once",
                    p["role"].as_str().unwrap_or(""),
                    p["id"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    p["token"].as_str().unwrap_or("")
                )
            });
        }
        PartyCmd::Me { api } => {
            let me = api.client()?.get("/parties/me")?;
            print(api.json, &me, |p| {
                format!(
                    "{} {} ({}) {}",
                    p["role"].as_str().unwrap_or(""),
                    p["id"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    p["account_key"].as_str().unwrap_or("")
                )
            });
        }
    }
    Ok(())
}

pub fn loan(cmd: LoanCmd) -> anyhow::Result<()> {
    match cmd {
        LoanCmd::Offer { api, terms } => {
            let loan = api.client()?.post("/loans", &terms.body()?, None)?;
            print(api.json, &loan, loan_text);
        }
        LoanCmd::List { api, offers } => {
            let path = if offers { "/offers" } else { "/loans" };
            let loans = api.client()?.get(path)?;
            print(api.json, &loans, |ls| {
                let mut rows = vec![format!(
                    "{:<14} {:<20} {:>18} {:>18} {:>9}",
                    "ID", "STATE", "PRINCIPAL", "COLLATERAL", "LTV"
                )];
                rows.extend(ls.as_array().into_iter().flatten().map(loan_row));
                rows.join("\n")
            });
        }
        LoanCmd::Show { api, id } => {
            let loan = api.client()?.get(&format!("/loans/{id}"))?;
            print(api.json, &loan, loan_text);
        }
        LoanCmd::Accept {
            api,
            id,
            return_address,
            account_key,
        } => {
            let mut body = json!({"borrower_return_address": return_address});
            if let Some(k) = account_key {
                body["account_key"] = Value::from(k);
            }
            let key = format!("accept-{id}");
            let loan = api
                .client()?
                .post(&format!("/loans/{id}/accept"), &body, Some(&key))?;
            print(api.json, &loan, |l| {
                format!(
                    "{}\nverify the escrow before sending: btc-escrow verify-escrow --loan {id} …",
                    loan_text(l)
                )
            });
        }
        LoanCmd::Repay {
            api,
            id,
            amount_minor,
            idempotency_key,
            ledger,
        } => {
            let key = idempotency_key
                .unwrap_or_else(|| format!("repay-{}", btc_escrow::init::random_hex(16)));
            eprintln!("idempotency key {key} (give it with --idempotency-key to retry)");
            let loan = api.client()?.post(
                &format!("/loans/{id}/repayments"),
                &json!({ "amount_minor": amount_minor }),
                Some(&key),
            )?;
            if let Some(path) = ledger {
                btc_escrow::cosigner::ledger::append(
                    &path,
                    &btc_escrow::cosigner::ledger::Entry {
                        loan: id.clone(),
                        amount_minor,
                        at: btc_escrow::util::unix_now(),
                    },
                )
                .with_context(|| {
                    format!(
                        "the repayment was recorded; appending it to {}",
                        path.display()
                    )
                })?;
            }
            print(api.json, &loan, loan_text);
        }
        LoanCmd::Withdraw {
            api,
            id,
            amount_sat,
        } => {
            let loan = api.client()?.post(
                &format!("/loans/{id}/withdrawals"),
                &json!({ "amount_sat": amount_sat }),
                None,
            )?;
            print(api.json, &loan, |l| {
                format!(
                    "{}\nsign it with `btc-escrow loan sign {id} --key …`: the service checks the limit again and signs last",
                    loan_text(l)
                )
            });
        }
        LoanCmd::Psbt { api, id } => {
            let p = api.client()?.get(&format!("/loans/{id}/psbt"))?;
            print(api.json, &p, psbt_text);
        }
        LoanCmd::Sign {
            api,
            id,
            key,
            account,
            network,
            policy,
            terms,
            arbiter,
        } => loan_ops::sign(
            &api,
            &id,
            &key,
            loan_ops::SignChecks {
                account,
                network,
                policy,
                terms,
                arbiter,
            },
        )?,
        LoanCmd::Events { api, id, follow } => loan_ops::events(&api, &id, follow)?,
        LoanCmd::Export {
            api,
            id,
            format,
            own,
            arbiter,
            network,
        } => {
            let own = own.account(network)?;
            let text =
                loan_ops::verified_export(&api, &id, own, arbiter.as_deref(), &format, network)?;
            println!("{text}");
        }
    }
    Ok(())
}
