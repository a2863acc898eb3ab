//! The state no refused request may change, and the runner that takes it before and
//! after every case and compares.

use std::time::Instant;

use anyhow::{ensure, Context};
use serde_json::{json, Value};

use crate::common::serve::Market;
use crate::http::Answer;
use crate::refusal::{check, Want};
use crate::Scene;

/// What no refused request may change: per loan its state, pending PSBT (with its
/// bytes), txids, repaid amount and number of events; and the number of loans.
fn snapshot(m: &Market, ids: &[&str]) -> anyhow::Result<Value> {
    let mut loans = Vec::new();
    for id in ids {
        let v = m.api().get(&format!("/loans/{id}"), &m.admin)?;
        let events = m.api().get(&format!("/loans/{id}/events"), &m.admin)?;
        loans.push(json!({
            "id": id,
            "state": v["state"],
            "pending_psbt": v["pending_psbt"],
            "txids": v["txids"],
            "confirmed_txid": v["confirmed_txid"],
            "repaid_minor": v["repaid_minor"],
            "borrower_id": v["borrower_id"],
            "events": events.as_array().context("events")?.len(),
        }));
    }
    let count = m.api().get("/loans", &m.admin)?;
    Ok(json!({ "loans": loans, "count": count.as_array().context("loans")?.len() }))
}

/// Runs cases, each checked against its expectation and the snapshot of loans A, B and
/// offer O; collects every failure so one run names them all.
pub struct Cases<'a> {
    m: &'a Market,
    ids: Vec<&'a str>,
    failures: Vec<String>,
    run: usize,
}

impl<'a> Cases<'a> {
    /// Cases on `s`'s loans.
    pub fn new(s: &'a Scene<'a>) -> Self {
        Self {
            m: s.m,
            ids: vec![&s.a, &s.b, &s.o],
            failures: Vec::new(),
            run: 0,
        }
    }

    pub fn run(&mut self, name: &str, w: &Want, send: impl FnOnce() -> anyhow::Result<Answer>) {
        self.run += 1;
        let outcome = (|| {
            let before = snapshot(self.m, &self.ids)?;
            let answer = send()?;
            let checked = check(name, &answer, w);
            let after = snapshot(self.m, &self.ids)?;
            checked?;
            ensure!(
                before == after,
                "{name}: changed the loans\nbefore {before}\nafter  {after}"
            );
            Ok(())
        })();
        if let Err(e) = outcome {
            eprintln!("FAILED {e:#}");
            self.failures.push(format!("{e:#}"));
        }
    }

    /// A case run outside [`Cases::run`], and how it went.
    pub fn ran(&mut self, outcome: anyhow::Result<()>) {
        self.run += 1;
        self.keep(outcome);
    }

    /// Keep the failure of a check that is part of a case already counted.
    pub fn keep(&mut self, outcome: anyhow::Result<()>) {
        if let Err(e) = outcome {
            self.failures.push(format!("{e:#}"));
        }
    }

    /// How many ran and how long it took; an error naming every failure.
    pub fn report(self, started: Instant) -> anyhow::Result<()> {
        eprintln!(
            "{} cases, {} failures, {:.0?}",
            self.run,
            self.failures.len(),
            started.elapsed()
        );
        ensure!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n{}",
            self.failures.len(),
            self.run,
            self.failures.join("\n")
        );
        Ok(())
    }
}
