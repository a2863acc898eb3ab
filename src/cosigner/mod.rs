//! `btc-escrow cosign`: the lender's co-signer, run unattended. It follows the event
//! stream of its loans (falling back to polling while the stream is down) and, for each
//! pending PSBT of a loan it lends, reviews it from its own knowledge ([`review`]) and
//! signs only then. Every refusal is logged with its reason and kept in `status.json`;
//! one decision attempt is never signed with two transactions ([`journal`]); a restart
//! resumes from the journal (posting again a signature it gave but may not have
//! delivered).

mod bump;
pub mod journal;
pub mod ledger;
pub mod review;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{Address, Network};
use serde_json::{json, Map, Value};

use crate::chain::TlsConfig;
use crate::client::{ApiClient, ClientError, ErrorKind};
use crate::keys::{AccountKey, SigningKey};
use crate::oracle::OracleConfig;
use crate::policy::{Party, PolicyTemplate};
use crate::util::unix_now;
use crate::verify::Expectation;
use bump::is_bump_of;
use journal::{Journal, Refused, SignedEntry, Status};
pub use review::{CosignPolicy, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum CosignerError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("the state directory {dir}: {source}")]
    State {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("this token is a {role}'s: the co-signer runs for a lender")]
    NotALender { role: String },
    #[error("the key file's account key {derived} is not this party's ({registered})")]
    WrongKey { derived: String, registered: String },
    #[error("another co-signer runs on {dir} (its lock is held)")]
    Locked { dir: PathBuf },
    #[error("{0}")]
    Loans(String),
}

/// How to run.
pub struct Options {
    pub api: ApiClient,
    pub key: SigningKey,
    /// The lender's account key (derived from the key file at the account it uses).
    pub account: AccountKey,
    pub network: Network,
    pub policy: CosignPolicy,
    pub state_dir: PathBuf,
    /// Its own Electrum server, to see the escrow's outputs itself.
    pub electrum: Option<(String, TlsConfig)>,
    /// Its own oracle (an `[oracle]` TOML section), for its reference price.
    pub oracle: Option<OracleConfig>,
    /// The service's arbiter account key, pinned.
    pub arbiter: Option<AccountKey>,
    /// The lender's own record of repayments (`loan repay --ledger`), instead of the
    /// server's events.
    pub ledger: Option<PathBuf>,
}

pub struct Cosigner {
    opts: Options,
    party_id: String,
    journal: Journal,
    status: Status,
    secp: Secp256k1<All>,
    /// Held while it runs (an exclusive lock on `STATE_DIR/lock`).
    _lock: std::fs::File,
}

impl Cosigner {
    /// Check the token and the key against the server's record of the party, and load
    /// the journal.
    pub fn start(opts: Options) -> Result<Self, CosignerError> {
        let me = opts.api.get("/parties/me")?;
        let role = me["role"].as_str().unwrap_or_default().to_owned();
        if role != "lender" {
            return Err(CosignerError::NotALender { role });
        }
        let registered = me["account_key"].as_str().unwrap_or_default().to_owned();
        if registered != opts.account.to_string() {
            return Err(CosignerError::WrongKey {
                derived: opts.account.to_string(),
                registered,
            });
        }
        let state = |source| CosignerError::State {
            dir: opts.state_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&opts.state_dir).map_err(state)?;
        // One co-signer per state directory: two would each sign from their own copy.
        let lock = std::fs::File::create(opts.state_dir.join("lock")).map_err(state)?;
        fs2::FileExt::try_lock_exclusive(&lock).map_err(|_| CosignerError::Locked {
            dir: opts.state_dir.clone(),
        })?;
        let journal = Journal::load(&opts.state_dir).map_err(state)?;
        let party_id = me["id"].as_str().unwrap_or_default().to_owned();
        let status = Status {
            party_id: party_id.clone(),
            mode: "starting".into(),
            last_seq: journal.last_seq,
            signed: journal.signed.len(),
            ..Status::default()
        };
        Ok(Self {
            opts,
            party_id,
            journal,
            status,
            secp: Secp256k1::new(),
            _lock: lock,
        })
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Follow the stream (a thread) and sweep on every event, or every `poll_secs`
    /// while the stream is down, until `stop`.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<(), CosignerError> {
        let (wake, woken) = mpsc::channel::<Option<u64>>();
        let (mode_tx, mode_rx) = mpsc::channel::<&'static str>();
        {
            let api = self.opts.api.clone();
            let stop = stop.clone();
            let mut after = self.journal.last_seq;
            std::thread::Builder::new()
                .name("cosign-stream".into())
                .spawn(move || {
                    let mut backoff = Duration::from_millis(500);
                    while !stop.load(Ordering::SeqCst) {
                        let _ = mode_tx.send("stream");
                        let mut heard = false;
                        let result = api.follow(after, |seq, _event| {
                            after = Some(seq);
                            heard = true;
                            wake.send(Some(seq)).is_ok() && !stop.load(Ordering::SeqCst)
                        });
                        if heard {
                            backoff = Duration::from_millis(500);
                        }
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let _ = mode_tx.send("polling");
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "event stream down; polling");
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                })
                .map_err(|source| CosignerError::State {
                    dir: self.opts.state_dir.clone(),
                    source,
                })?;
        }
        let poll = Duration::from_secs(self.opts.policy.poll_secs.max(1));
        while !stop.load(Ordering::SeqCst) {
            self.sweep_and_record();
            match woken.recv_timeout(poll) {
                Ok(Some(seq)) => self.journal.last_seq = Some(seq),
                // The stream thread is gone: poll.
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(poll),
                _ => {}
            }
            while let Ok(Some(seq)) = woken.try_recv() {
                self.journal.last_seq = Some(seq);
            }
            while let Ok(mode) = mode_rx.try_recv() {
                self.status.mode = mode.into();
            }
        }
        Ok(())
    }

    /// One sweep, its outcome kept in the status file.
    pub fn sweep_and_record(&mut self) {
        match self.sweep() {
            Ok(()) => self.status.last_error = None,
            Err(e) => {
                tracing::warn!(error = %e, "sweep");
                self.status.last_error = Some(e.to_string());
            }
        }
        self.status.updated_at = unix_now();
        self.status.last_seq = self.journal.last_seq;
        self.status.signed = self.journal.signed.len();
        if let Err(e) = journal::save_status(&self.opts.state_dir, &self.status) {
            tracing::error!(error = %e, "writing status.json");
        }
    }

    /// Review every loan of this lender with a pending PSBT.
    pub fn sweep(&mut self) -> Result<(), CosignerError> {
        let loans = self.opts.api.get("/loans")?;
        let loans = loans.as_array().cloned().unwrap_or_default();
        let mut pending_loans = Vec::new();
        let mut failures = Vec::new();
        for loan in &loans {
            let Some(id) = loan["id"].as_str() else {
                continue;
            };
            if loan["lender_id"].as_str() != Some(&self.party_id) {
                continue;
            }
            self.remember(id, loan)?;
            if !loan["pending_psbt"].is_null() {
                pending_loans.push(id.to_owned());
                // One loan's failure (a post refused, the server down for it) holds no
                // other back.
                if let Err(e) = self.handle(id, loan) {
                    tracing::warn!(loan = %id, error = %e, "co-signing");
                    failures.push(format!("loan {id}: {e}"));
                }
            }
        }
        self.status
            .refused
            .retain(|id, _| pending_loans.contains(id));
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CosignerError::Loans(failures.join("; ")))
        }
    }

    /// Keep the terms first seen (the borrower's return address is added once, when
    /// the loan is accepted), the activation time first seen, and whether the loan was
    /// ever seen active (no refund then).
    fn remember(&mut self, id: &str, loan: &Value) -> Result<(), CosignerError> {
        let terms = &loan["terms"];
        let mut changed = match self.journal.terms.get(id) {
            None => true,
            Some(first) => {
                first["borrower_return_address"].is_null()
                    && !terms["borrower_return_address"].is_null()
                    && without_return_address(first) == without_return_address(terms)
            }
        };
        if changed {
            self.journal.terms.insert(id.to_owned(), terms.clone());
        }
        if let Some(at) = loan["activated_at"].as_u64() {
            if !self.journal.activated_at.contains_key(id) {
                self.journal.activated_at.insert(id.to_owned(), at);
                changed = true;
            }
        }
        let live = [
            "active",
            "margin_call",
            "liquidating",
            "releasing",
            "liquidated",
            "closed",
        ];
        if live.iter().any(|s| loan["state"] == *s) && self.journal.was_active.insert(id.to_owned())
        {
            changed = true;
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), CosignerError> {
        self.journal
            .save(&self.opts.state_dir)
            .map_err(|source| CosignerError::State {
                dir: self.opts.state_dir.clone(),
                source,
            })
    }

    fn refuse(&mut self, id: &str, attempt: u32, reason: String) {
        let known = self
            .status
            .refused
            .get(id)
            .is_some_and(|r| r.attempt == attempt && r.reason == reason);
        if !known {
            tracing::warn!(loan = %id, attempt, %reason, "refused to co-sign");
            self.status.refused.insert(
                id.to_owned(),
                Refused {
                    attempt,
                    reason,
                    at: unix_now(),
                },
            );
        }
    }

    fn handle(&mut self, id: &str, loan: &Value) -> Result<(), CosignerError> {
        let pending = &loan["pending_psbt"];
        let attempt = pending["attempt"]
            .as_u64()
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(u32::MAX);
        let shown_txid = bitcoin::psbt::Psbt::from_str(pending["psbt"].as_str().unwrap_or(""))
            .map(|p| p.unsigned_tx.compute_txid().to_string())
            .unwrap_or_default();
        let decision = pending["decision"]
            .as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(0);
        let key = journal::key(id, decision, attempt);
        if let Some(entry) = self.journal.signed.get(&key).cloned() {
            if entry.txid != shown_txid {
                self.refuse(
                    id,
                    attempt,
                    format!(
                        "attempt {attempt} was already signed as {}; another transaction ({shown_txid}) for it is refused",
                        entry.txid
                    ),
                );
                return Ok(());
            }
            // Signed before (a restart, or the post was lost): deliver it again.
            return self.post(id, &key, &entry.psbt);
        }
        // A later attempt is a fee bump of the one signed before: same inputs, same
        // output scripts, the lender's amount not lower.
        if let Some(prev) = attempt
            .checked_sub(1)
            .and_then(|a| self.journal.signed.get(&journal::key(id, decision, a)))
        {
            if let Err(reason) = is_bump_of(&prev.psbt, pending["psbt"].as_str().unwrap_or("")) {
                self.refuse(id, attempt, reason);
                return Ok(());
            }
        }
        let first_terms = self.journal.terms.get(id).cloned().unwrap_or(Value::Null);
        if without_return_address(&first_terms) != without_return_address(&loan["terms"])
            || (!first_terms["borrower_return_address"].is_null()
                && first_terms["borrower_return_address"]
                    != loan["terms"]["borrower_return_address"])
        {
            self.refuse(
                id,
                attempt,
                "the loan's terms changed since this co-signer first saw them".into(),
            );
            return Ok(());
        }
        match self.review(loan, &first_terms) {
            Ok(signed) => {
                let entry = SignedEntry {
                    kind: signed.kind.clone(),
                    txid: signed.txid.to_string(),
                    psbt: signed.psbt.to_string(),
                    signed_at: unix_now(),
                    posted: false,
                };
                tracing::info!(loan = %id, attempt, kind = %signed.kind, txid = %signed.txid, "signed");
                // On disk before it is kept in memory or posted: a failed write posts
                // nothing, and a restart never signs a second transaction for it.
                let mut next = self.journal.clone();
                next.signed.insert(key.clone(), entry.clone());
                next.save(&self.opts.state_dir)
                    .map_err(|source| CosignerError::State {
                        dir: self.opts.state_dir.clone(),
                        source,
                    })?;
                self.journal = next;
                self.status.refused.remove(id);
                self.post(id, &key, &entry.psbt)
            }
            Err(Refusal(reason)) => {
                self.refuse(id, attempt, reason);
                Ok(())
            }
        }
    }

    fn review(&self, loan: &Value, first_terms: &Value) -> Result<review::Signed, Refusal> {
        let id = loan["id"].as_str().unwrap_or_default();
        // Without the events the checks only get stricter: no repayment counted, no
        // release signed.
        let events = match self.opts.api.get(&format!("/loans/{id}/events")) {
            Ok(e) => e.as_array().cloned().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(loan = %id, error = %e, "the loan's events could not be read");
                Vec::new()
            }
        };
        let chain = match &self.opts.electrum {
            None => None,
            Some((url, tls)) => {
                let address = loan["escrow"]["address"]
                    .as_str()
                    .and_then(|a| Address::from_str(a).ok())
                    .and_then(|a| a.require_network(self.opts.network).ok())
                    .ok_or_else(|| Refusal("the loan has no escrow address".into()))?;
                Some(
                    crate::chain::lookup::script_view(
                        url,
                        tls,
                        self.opts.network,
                        &address.script_pubkey(),
                    )
                    .map_err(|e| Refusal(format!("its own chain view: {e}")))?,
                )
            }
        };
        let reference_price = match &self.opts.oracle {
            None => None,
            Some(config) => Some(own_price(config).map_err(Refusal)?),
        };
        let mut agreed: Map<String, Value> = first_terms.as_object().cloned().unwrap_or_default();
        agreed.retain(|_, v| !v.is_null());
        let expectation = Expectation {
            network: self.opts.network,
            party: Party::Lender,
            own: self.opts.account.clone(),
            arbiter: self.opts.arbiter.clone(),
            counterparty: None,
            agreed_terms: Some(agreed),
            tip: chain.as_ref().map(|c| c.tip),
            now: unix_now(),
            max_extra_blocks: u32::MAX / 2,
            template: PolicyTemplate::default(),
        };
        let own_sales: std::collections::BTreeSet<String> = self
            .journal
            .signed
            .iter()
            .filter(|(key, e)| {
                key.starts_with(&format!("{id}/")) && e.kind == "partial_liquidation"
            })
            .map(|(_, e)| e.txid.clone())
            .collect();
        review::review(
            &review::Review {
                loan,
                events: &events,
                own_party_id: &self.party_id,
                expectation: &expectation,
                reference_price,
                chain: chain.as_ref(),
                policy: &self.opts.policy,
                now: unix_now(),
                activated_at: self.journal.activated_at.get(id).copied(),
                was_active: self.journal.was_active.contains(id),
                ledger_repaid: match &self.opts.ledger {
                    Some(path) => Some(
                        ledger::repaid(path, id)
                            .map_err(|e| Refusal(format!("its ledger {}: {e}", path.display())))?,
                    ),
                    None => None,
                },
                own_sales: Some(&own_sales),
            },
            &self.opts.key,
            &self.secp,
        )
    }

    fn post(&mut self, id: &str, key: &str, psbt: &str) -> Result<(), CosignerError> {
        let answer = self.opts.api.post(
            &format!("/loans/{id}/psbt"),
            &json!({ "psbt": psbt }),
            Some(&format!("cosign-{key}")),
        );
        match answer {
            Ok(_) => {}
            // Taken already (finalized, or replaced by a bump): nothing to deliver.
            Err(e) if matches!(e.kind, ErrorKind::Conflict | ErrorKind::NotFound) => {
                tracing::info!(loan = %id, error = %e, "the signature is no longer needed");
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(entry) = self.journal.signed.get_mut(key) {
            if !entry.posted {
                entry.posted = true;
                self.save()?;
            }
        }
        Ok(())
    }
}

fn without_return_address(terms: &Value) -> Value {
    let mut t = terms.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("borrower_return_address");
    }
    t
}

/// One aggregate from its own sources.
fn own_price(config: &OracleConfig) -> Result<u64, String> {
    let (sources, _) = config.build(unix_now());
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(crate::oracle::ticker::poll_once(
            &client,
            &sources,
            &config.currency,
            &config.rules(),
        ))
        .map(|p| p.price_minor)
        .map_err(|n| format!("its own oracle has no price: {}", n.reason))
}
