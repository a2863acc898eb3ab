//! The running service survives SIGKILL at any moment. A driver lives many loans
//! through the real API and the chain (offers, acceptances, fundings, top-ups, price
//! moves that margin-call and breach them, the lender's co-signatures of
//! liquidations, repayments, the borrower's co-signatures of releases, blocks) while
//! another thread kills `serve` with SIGKILL at a random moment, `BTC_ESCROW_KILLS`
//! times (50 by default; the long campaign sets 1000). After each restart it checks:
//!
//! - every acknowledged write is there: each offer answered 201 exists, each accepted
//!   loan is past `offered`, each repayment answered 2xx is counted exactly once
//!   (by its key), each co-signature answered 2xx is no longer awaited;
//! - each loan's event log has no gap and no duplicate, and every event shown
//!   before the kill is still there, unchanged (the global sequence too);
//! - a decision attempt shown (kind, attempt) always has the same transaction: the
//!   arbiter never signed two different ones for it.
//!
//! At the end, with no more kills, every pending co-signature is given and blocks are
//! mined until nothing waits, then each loan's outcome on chain is its final state:
//! every transaction spending its escrow is one the loan lists (so no conflicting
//! transaction was ever broadcast for a decision, other than its own fee bumps), a
//! liquidated or released loan's recorded transaction is confirmed, and an open
//! loan's escrow holds exactly its collateral. `BTC_ESCROW_KILL_SEED` replays a run.

mod common;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bitcoin::{Amount, FeeRate, Txid};
use common::serve::{Market, Serve};
use electrum_client::ElectrumApi;
use reqwest::Method;
use serde_json::{json, Value};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }
}

/// What the driver was told, and what it has seen.
#[derive(Default)]
struct Known {
    /// Offers by idempotency key: the loan id once an answer came.
    offers: BTreeMap<String, Option<String>>,
    loans: BTreeMap<String, LoanSeen>,
    /// Writes answered 2xx.
    acks: u64,
    /// Writes whose answer a kill cut off.
    unknown: u64,
    /// Writes refused, by status (a loan that moved on, no price yet, ...).
    refused: BTreeMap<u16, u64>,
}

#[derive(Default)]
struct LoanSeen {
    accepted: bool,
    funded: bool,
    /// Repayments by key: (amount, acknowledged).
    repayments: BTreeMap<String, (u64, bool)>,
    /// Decision attempts shown: (kind, attempt) → its transaction.
    attempts: BTreeMap<(String, u64), Txid>,
    /// Co-signatures acknowledged: (kind, attempt).
    cosigned: Vec<(String, u64)>,
    /// The event log as last shown.
    events: Vec<Value>,
    /// Seen in a final state (checked again only in a full check).
    settled: bool,
}

/// The outcome of one write.
enum Sent {
    Ok(Value),
    Refused,
    /// No answer: the server died.
    Cut,
}

struct Driver {
    m: Market,
    /// Set while a write is in flight (the killer aims at some of them).
    writing: Arc<AtomicBool>,
    rng: Rng,
    known: Known,
    price: u64,
    next_key: u64,
}

const PRICES: [u64; 5] = [12_000_000, 10_000_000, 8_000_000, 7_000_000, 5_500_000];
/// Loans not yet settled at any time (new offers are made while fewer are open).
const MAX_OPEN: usize = 12;

impl Driver {
    fn key(&mut self, what: &str) -> String {
        self.next_key += 1;
        format!("{what}-{}-{}", self.rng.next() % 1_000_000, self.next_key)
    }

    fn send(&mut self, method: Method, path: &str, token: &str, body: &Value, key: &str) -> Sent {
        let headers = [("Idempotency-Key", key)];
        self.writing.store(true, Ordering::SeqCst);
        let answer = self
            .m
            .api()
            .call(method, path, Some(token), Some(body), &headers);
        self.writing.store(false, Ordering::SeqCst);
        match answer {
            Ok((s, v)) if (200..300).contains(&s) => {
                self.known.acks += 1;
                Sent::Ok(v)
            }
            Ok((s, v)) => {
                if std::env::var_os("BTC_ESCROW_TEST_LOG").is_some() {
                    eprintln!("refused {s}: {path}: {v}");
                }
                *self.known.refused.entry(s).or_default() += 1;
                Sent::Refused
            }
            Err(_) => {
                self.known.unknown += 1;
                Sent::Cut
            }
        }
    }

    fn get(&self, path: &str, token: &str) -> Option<Value> {
        match self.m.api().call(Method::GET, path, Some(token), None, &[]) {
            Ok((200, v)) => Some(v),
            other => {
                if std::env::var_os("BTC_ESCROW_TEST_LOG").is_some() {
                    eprintln!("GET {path}: {other:?}");
                }
                None
            }
        }
    }

    fn ids_in(&self, states: &[&str]) -> Vec<String> {
        let Some(all) = self.get("/loans", &self.m.admin) else {
            return vec![];
        };
        all.as_array()
            .map(|a| {
                a.iter()
                    .filter(|l| states.iter().any(|s| l["state"] == *s))
                    .filter_map(|l| l["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One random step. Errors are the test's own (the chain, the wallet).
    fn step(&mut self) -> anyhow::Result<()> {
        match self.rng.below(100) {
            0..=9 if self.open() < MAX_OPEN => self.offer(),
            10..=24 => self.accept(),
            25..=39 => self.fund(),
            40..=47 => {
                self.m.env.mine(1)?;
                Ok(())
            }
            48..=57 => {
                self.price = *self.rng.pick(&PRICES).expect("prices");
                let body = json!({ "price_minor": self.price });
                let admin = self.m.admin.clone();
                let key = self.key("price");
                self.send(Method::PUT, "/oracle/manual", &admin, &body, &key);
                Ok(())
            }
            58..=72 => self.repay(),
            73..=90 => self.cosign(),
            91..=95 => self.top_up(),
            _ => Ok(()),
        }
    }

    fn offer(&mut self) -> anyhow::Result<()> {
        let key = self.key("offer");
        let terms = self.m.offer_terms();
        let lender = self.m.lender.clone();
        self.known.offers.insert(key.clone(), None);
        self.retry_offer(&key, &terms, &lender);
        Ok(())
    }

    /// Send (or send again, with its key) an offer; record its id when answered.
    fn retry_offer(&mut self, key: &str, terms: &Value, lender: &str) {
        if let Sent::Ok(v) = self.send(Method::POST, "/loans", lender, terms, key) {
            if let Some(id) = v["id"].as_str() {
                self.known
                    .offers
                    .insert(key.to_owned(), Some(id.to_owned()));
                self.known.loans.entry(id.to_owned()).or_default();
            }
        }
    }

    fn accept(&mut self) -> anyhow::Result<()> {
        let offered = self.ids_in(&["offered"]);
        if std::env::var_os("BTC_ESCROW_TEST_STEPS").is_some() {
            eprintln!("accept: offered {offered:?}");
        }
        let Some(id) = self.rng.pick(&offered).cloned() else {
            return Ok(());
        };
        let body = json!({ "borrower_return_address": self.m.borrower_return.to_string() });
        let borrower = self.m.borrower.clone();
        let key = self.key("accept");
        if let Sent::Ok(_) = self.send(
            Method::POST,
            &format!("/loans/{id}/accept"),
            &borrower,
            &body,
            &key,
        ) {
            self.known.loans.entry(id).or_default().accepted = true;
        }
        Ok(())
    }

    fn fund(&mut self) -> anyhow::Result<()> {
        let waiting = self.ids_in(&["awaiting_collateral"]);
        let unfunded: Vec<String> = waiting
            .into_iter()
            .filter(|id| !self.known.loans.get(id).is_some_and(|l| l.funded))
            .collect();
        let Some(id) = self.rng.pick(&unfunded).cloned() else {
            return Ok(());
        };
        let Some(loan) = self.get(&format!("/loans/{id}"), &self.m.borrower) else {
            return Ok(());
        };
        let address = self.m.escrow_of(&loan)?.address();
        ensure!(loan["escrow"]["address"] == address.to_string().as_str());
        let sat = loan["required_collateral_sat"].as_u64().context("sat")?;
        self.m.wallet.sync()?;
        self.m.wallet.send(
            &address,
            Amount::from_sat(sat),
            FeeRate::from_sat_per_vb(2).context("rate")?,
        )?;
        self.known.loans.entry(id).or_default().funded = true;
        Ok(())
    }

    fn top_up(&mut self) -> anyhow::Result<()> {
        let open = self.ids_in(&["active", "margin_call"]);
        let Some(id) = self.rng.pick(&open).cloned() else {
            return Ok(());
        };
        let Some(loan) = self.get(&format!("/loans/{id}"), &self.m.borrower) else {
            return Ok(());
        };
        let address = self.m.escrow_of(&loan)?.address();
        self.m.wallet.sync()?;
        self.m.wallet.send(
            &address,
            Amount::from_sat(2_000_000),
            FeeRate::from_sat_per_vb(2).context("rate")?,
        )?;
        Ok(())
    }

    fn repay(&mut self) -> anyhow::Result<()> {
        let open = self.ids_in(&["active", "margin_call"]);
        let Some(id) = self.rng.pick(&open).cloned() else {
            return Ok(());
        };
        let Some(loan) = self.get(&format!("/loans/{id}"), &self.m.lender) else {
            return Ok(());
        };
        let owed = loan["owed_minor"].as_u64().context("owed")?;
        // Part of it, or all (a cent may accrue meanwhile: then it stays open).
        let amount = if self.rng.below(3) == 0 {
            owed
        } else {
            (owed / (2 + self.rng.below(4))).max(1)
        };
        let key = self.key("repay");
        self.known
            .loans
            .entry(id.clone())
            .or_default()
            .repayments
            .insert(key.clone(), (amount, false));
        self.send_repayment(&id, &key, amount);
        Ok(())
    }

    fn send_repayment(&mut self, id: &str, key: &str, amount: u64) {
        let lender = self.m.lender.clone();
        let body = json!({ "amount_minor": amount });
        let path = format!("/loans/{id}/repayments");
        if let Sent::Ok(_) = self.send(Method::POST, &path, &lender, &body, key) {
            if let Some(r) = self
                .known
                .loans
                .get_mut(id)
                .and_then(|l| l.repayments.get_mut(key))
            {
                r.1 = true;
            }
        }
    }

    /// Co-sign a pending PSBT: the lender a liquidation, the borrower a release.
    fn cosign(&mut self) -> anyhow::Result<()> {
        let pending = self.ids_in(&["liquidating", "releasing"]);
        let Some(id) = self.rng.pick(&pending).cloned() else {
            return Ok(());
        };
        self.cosign_loan(&id)
    }

    fn cosign_loan(&mut self, id: &str) -> anyhow::Result<()> {
        let Some(p) = self.get(&format!("/loans/{id}/psbt"), &self.m.admin) else {
            return Ok(());
        };
        let Some(loan) = self.get(&format!("/loans/{id}"), &self.m.admin) else {
            return Ok(());
        };
        let kind = p["kind"].as_str().context("kind")?.to_owned();
        let attempt = p["attempt"].as_u64().context("attempt")?;
        let mut psbt = bitcoin::psbt::Psbt::from_str(p["psbt"].as_str().context("psbt")?)?;
        self.saw_attempt(id, &kind, attempt, psbt.unsigned_tx.compute_txid())?;
        let (key, token) = match kind.as_str() {
            "liquidation" => (&self.m.parties.lender, self.m.lender.clone()),
            _ => (&self.m.parties.borrower, self.m.borrower.clone()),
        };
        let escrow = self.m.escrow_of(&loan)?;
        btc_escrow::tx::sign(
            &mut psbt,
            key,
            &escrow,
            &btc_escrow::tx::FeeCap::default(),
            &self.m.parties.secp,
        )?;
        let body = json!({ "psbt": psbt.to_string() });
        let k = self.key("cosign");
        let path = format!("/loans/{id}/psbt");
        let headers = [("Prefer", "respond-async"), ("Idempotency-Key", k.as_str())];
        self.writing.store(true, Ordering::SeqCst);
        let answer = self
            .m
            .api()
            .call(Method::POST, &path, Some(&token), Some(&body), &headers);
        self.writing.store(false, Ordering::SeqCst);
        match answer {
            Ok((s, _)) if (200..300).contains(&s) => {
                self.known.acks += 1;
                let seen = self.known.loans.entry(id.to_owned()).or_default();
                seen.cosigned.push((kind, attempt));
            }
            Ok(_) => {}
            Err(_) => self.known.unknown += 1,
        }
        Ok(())
    }

    fn saw_attempt(
        &mut self,
        id: &str,
        kind: &str,
        attempt: u64,
        txid: Txid,
    ) -> anyhow::Result<()> {
        let seen = self.known.loans.entry(id.to_owned()).or_default();
        let first = *seen
            .attempts
            .entry((kind.to_owned(), attempt))
            .or_insert(txid);
        ensure!(
            first == txid,
            "loan {id}: {kind} attempt {attempt} was {first}, now {txid}: signed twice"
        );
        Ok(())
    }

    /// Offers answered whose loan is not seen settled, and offers not answered yet.
    fn open(&self) -> usize {
        self.known
            .offers
            .values()
            .filter(|id| {
                id.as_ref()
                    .is_none_or(|id| !self.known.loans.get(id).is_some_and(|l| l.settled))
            })
            .count()
    }

    /// After a restart: what was acknowledged and shown is all there (every loan
    /// answered to an offer exists). A loan seen settled is checked again only when
    /// `full`.
    fn check(&mut self, full: bool) -> anyhow::Result<()> {
        let api = self.m.api().clone();
        let ids: Vec<String> = self
            .known
            .loans
            .iter()
            .filter(|(_, l)| full || !l.settled)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let path = format!("/loans/{id}");
            let loan = api
                .get(&path, &self.m.admin)
                .with_context(|| format!("loan {id}, answered to an offer"))?;
            let events = api.get(&format!("{path}/events"), &self.m.admin)?;
            let events = events.as_array().context("events")?.clone();
            let seen = self.known.loans.get_mut(&id).context("seen")?;
            ensure!(
                !seen.accepted || loan["state"] != "offered",
                "loan {id}: acceptance acknowledged, now {}",
                loan["state"]
            );
            // No gap, no duplicate; what was shown is unchanged.
            for (i, e) in events.iter().enumerate() {
                ensure!(
                    e["loan_seq"] == json!(i),
                    "loan {id}: event {i} has loan_seq {}",
                    e["loan_seq"]
                );
                if i > 0 {
                    ensure!(
                        e["global_seq"].as_u64() > events[i - 1]["global_seq"].as_u64(),
                        "loan {id}: global sequence not increasing at {i}"
                    );
                }
            }
            ensure!(
                events.len() >= seen.events.len() && events[..seen.events.len()] == seen.events[..],
                "loan {id}: events shown before the kill changed or vanished:\nbefore {:?}\nafter {:?}",
                seen.events,
                events
            );
            seen.events = events.clone();
            seen.settled = ["liquidated", "closed", "closed_on_chain"]
                .iter()
                .any(|s| loan["state"] == *s)
                || (loan["state"] == "expired" && loan["confirmed_txid"].is_string());
            // Each acknowledged repayment counted once, by its key.
            let recorded: BTreeMap<String, usize> = events
                .iter()
                .filter(|e| e["event"]["event"] == "repayment_recorded")
                .filter_map(|e| e["event"]["key"].as_str())
                .fold(BTreeMap::new(), |mut m, k| {
                    *m.entry(k.trim_start_matches("key:").to_owned())
                        .or_default() += 1;
                    m
                });
            for (key, n) in &recorded {
                ensure!(*n == 1, "loan {id}: repayment {key} counted {n} times");
            }
            for (key, (_, acked)) in &seen.repayments {
                ensure!(
                    !acked || recorded.contains_key(key),
                    "loan {id}: repayment {key} acknowledged, not recorded"
                );
            }
            // An acknowledged co-signature is not awaited again.
            if let Some(p) = loan["pending_psbt"].as_object() {
                let (kind, attempt) = (
                    p["kind"].as_str().unwrap_or_default().to_owned(),
                    p["attempt"].as_u64().unwrap_or_default(),
                );
                let psbt = bitcoin::psbt::Psbt::from_str(p["psbt"].as_str().context("psbt")?)?;
                self.saw_attempt(&id, &kind, attempt, psbt.unsigned_tx.compute_txid())?;
                let seen = &self.known.loans[&id];
                // `pending_psbt` is shown only while the co-signature is awaited.
                ensure!(
                    !seen.cosigned.contains(&(kind.clone(), attempt)),
                    "loan {id}: {kind} attempt {attempt} co-signed and acknowledged, awaited again: {loan}"
                );
            }
        }
        Ok(())
    }

    /// Send again what a kill cut off (same keys): offers and repayments.
    fn resume(&mut self) {
        let unanswered: Vec<String> = self
            .known
            .offers
            .iter()
            .filter(|(_, id)| id.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in unanswered {
            let terms = self.m.offer_terms();
            let lender = self.m.lender.clone();
            self.retry_offer(&key, &terms, &lender);
        }
        let repayments: Vec<(String, String, u64)> = self
            .known
            .loans
            .iter()
            .flat_map(|(id, l)| {
                l.repayments
                    .iter()
                    .filter(|(_, (_, acked))| !acked)
                    .map(|(k, (a, _))| (id.clone(), k.clone(), *a))
            })
            .collect();
        for (id, key, amount) in repayments {
            self.send_repayment(&id, &key, amount);
            // Refused (the loan moved on, or it was over what is owed): never counted.
            if let Some(l) = self.known.loans.get_mut(&id) {
                if l.repayments.get(&key).is_some_and(|r| !r.1) {
                    l.repayments.remove(&key);
                }
            }
        }
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.m.serve = Serve::start(&self.m.data.path)?;
        // The manual price lives in memory: set it again.
        self.m.set_price(self.price)?;
        Ok(())
    }
}

fn kills() -> usize {
    std::env::var("BTC_ESCROW_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[test]
fn serve_killed_at_random_moments_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let seed = std::env::var("BTC_ESCROW_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("kill campaign: seed {seed} (BTC_ESCROW_KILL_SEED replays it)");
    let mut m = Market::open()?;
    m.wallet.fund(&m.env, 2)?;
    let mut d = Driver {
        m,
        writing: Arc::new(AtomicBool::new(false)),
        rng: Rng(seed),
        known: Known::default(),
        price: 10_000_000,
        next_key: 0,
    };
    d.m.set_price(d.price)?;
    d.m.api()
        .wait("/health", &d.m.admin, "fit to decide", |h| h["ok"] == true)?;
    let started = Instant::now();
    let total = kills();
    for round in 0..total {
        let killed = Arc::new(AtomicBool::new(false));
        let pid = d.m.serve.pid() as i32;
        let delay = Duration::from_millis(300 + d.rng.below(3_200));
        // Half the kills land inside a write: 0–3 ms after it was sent.
        let aim = d.rng.below(2) == 0;
        let inside = Duration::from_micros(d.rng.below(3_000));
        let killer = {
            let killed = killed.clone();
            let writing = d.writing.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let give_up = Instant::now() + Duration::from_secs(3);
                while aim && !writing.load(Ordering::SeqCst) && Instant::now() < give_up {
                    std::thread::sleep(Duration::from_micros(200));
                }
                if aim {
                    std::thread::sleep(inside);
                }
                // SAFETY: kill(2) on our own child's pid, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed.store(true, Ordering::SeqCst);
            })
        };
        while !killed.load(Ordering::SeqCst) {
            let t = Instant::now();
            d.step().with_context(|| format!("round {round}"))?;
            if std::env::var_os("BTC_ESCROW_TEST_STEPS").is_some() {
                eprintln!("step {:?}", t.elapsed());
            }
        }
        killer
            .join()
            .map_err(|_| anyhow::anyhow!("the killer thread"))?;
        d.m.serve.kill().ok();
        d.restart()
            .with_context(|| format!("restart after kill {}", round + 1))?;
        d.resume();
        d.check((round + 1) % 25 == 0)
            .with_context(|| format!("after kill {} (seed {seed})", round + 1))?;
        if (round + 1) % 10 == 0 {
            eprintln!(
                "kill {}/{total}: {} loans, {} writes acknowledged, {} cut off, {:?}",
                round + 1,
                d.known.loans.len(),
                d.known.acks,
                d.known.unknown,
                started.elapsed()
            );
        }
    }
    settle_and_check_the_chain(&mut d)?;
    eprintln!(
        "kill campaign: {total} kills survived, {} loans, {} writes acknowledged, {} cut off, \
         0 lost, refused {:?}, in {:?}",
        d.known.loans.len(),
        d.known.acks,
        d.known.unknown,
        d.known.refused,
        started.elapsed()
    );
    Ok(())
}

/// No more kills: co-sign what is pending, mine until nothing waits for the chain,
/// then compare each loan with its escrow on chain.
fn settle_and_check_the_chain(d: &mut Driver) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        // An open loan whose breach is still being confirmed (breach ticks counted,
        // not yet liquidating) is waited for too: at a steady price it becomes liquidating a
        // few ticks later, after a check that looked only for `liquidating` loans.
        // The list is read strictly: a failed read is not "nothing waits".
        let all = d.m.api().get("/loans", &d.m.admin)?;
        let waiting: Vec<String> = all
            .as_array()
            .context("loans")?
            .iter()
            .filter(|l| {
                let open = l["state"] == "active" || l["state"] == "margin_call";
                l["state"] == "liquidating"
                    || l["state"] == "releasing"
                    || (open && l["breach_ticks"].as_u64().is_some_and(|t| t > 0))
            })
            .filter_map(|l| l["id"].as_str().map(str::to_owned))
            .collect();
        if waiting.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "still waiting for the chain: {waiting:?}"
        );
        for id in &waiting {
            d.cosign_loan(id)?;
        }
        std::thread::sleep(Duration::from_millis(500));
        d.m.env.mine(1)?;
        std::thread::sleep(Duration::from_millis(500));
    }
    // Confirm what is still in the mempool (a last top-up) and let the service see it.
    d.m.env.mine(1)?;
    let tip = d.m.env.height()?;
    d.m.api().wait("/health", &d.m.admin, "synced", |h| {
        h["chain"]["tip_height"].as_u64() == Some(u64::from(tip))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    d.check(true)?;
    let electrum = d.m.env.electrum()?;
    let all = d.m.api().get("/loans", &d.m.admin)?;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for loan in all.as_array().context("loans")? {
        let id = loan["id"].as_str().context("id")?;
        let state = loan["state"].as_str().context("state")?;
        *outcomes.entry(state.to_owned()).or_default() += 1;
        if loan["escrow"].is_null() {
            continue;
        }
        let escrow = d.m.escrow_of(loan)?;
        let script = escrow.address().script_pubkey();
        let history = electrum.script_get_history(&script)?;
        let txids: Vec<String> = loan["txids"]
            .as_array()
            .context("txids")?
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        let mut spends = Vec::new();
        for h in &history {
            let tx = electrum.transaction_get(&h.tx_hash)?;
            let spends_escrow = tx.input.iter().any(|i| {
                history.iter().any(|f| f.tx_hash == i.previous_output.txid)
                    && electrum
                        .transaction_get(&i.previous_output.txid)
                        .ok()
                        .and_then(|p| p.output.get(i.previous_output.vout as usize).cloned())
                        .is_some_and(|o| o.script_pubkey == script)
            });
            if spends_escrow {
                ensure!(
                    txids.contains(&h.tx_hash.to_string()),
                    "loan {id}: {} spends its escrow and is not one of its transactions {txids:?}",
                    h.tx_hash
                );
                spends.push((h.tx_hash, h.height));
            }
        }
        let unspent: u64 = electrum
            .script_list_unspent(&script)?
            .iter()
            .filter(|u| u.height > 0)
            .map(|u| u.value)
            .sum();
        match state {
            "liquidated" | "closed" => {
                let txid = loan["confirmed_txid"].as_str().context("confirmed_txid")?;
                ensure!(
                    spends.iter().any(|(t, h)| t.to_string() == txid && *h > 0),
                    "loan {id} is {state} by {txid}, not confirmed on chain: {spends:?}"
                );
            }
            "active" | "margin_call" => {
                ensure!(spends.is_empty(), "loan {id} is {state}, spent: {spends:?}");
                ensure!(
                    loan["collateral_sat"].as_u64() == Some(unspent),
                    "loan {id}: collateral {} shown, {unspent} on chain",
                    loan["collateral_sat"]
                );
            }
            "offered" | "awaiting_collateral" => {
                ensure!(spends.is_empty(), "loan {id} is {state}, spent: {spends:?}")
            }
            other => bail!("loan {id}: unexpected final state {other}: {loan}"),
        }
    }
    eprintln!("kill campaign: final states {outcomes:?}");
    Ok(())
}
