//! Every headline figure in one run, each beside its goal. Runs the other benches, each
//! in its own process (`cargo bench --bench NAME` with the sizes below), gathers the
//! `figure: KEY = VALUE UNIT` lines they print and prints one table. A bench that
//! fails is reported with its last lines (the regtest ones, `chain_sync` and
//! `breach_to_broadcast`, need the binaries `regtest/setup` builds, and say so).
//!
//! `cargo bench --bench report` (about 15 minutes on 2 cores: the book of a million
//! loans is written twice). Sizes: BTC_ESCROW_REPORT_LOANS (default 1,000,000),
//! BTC_ESCROW_REPORT_ESCROWS (the large sync, default 20,000).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

/// A bench run: the bench, its environment, what it is for.
struct Run {
    bench: &'static str,
    env: Vec<(&'static str, String)>,
    what: &'static str,
}

/// A figure: its key, what it is, and its goal (`<` or `<=` a bound, in its unit).
struct Figure {
    key: String,
    what: String,
    goal: Option<(&'static str, f64)>,
}

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let loans = env_or("BTC_ESCROW_REPORT_LOANS", 1_000_000);
    let escrows = env_or("BTC_ESCROW_REPORT_ESCROWS", 20_000);
    let runs = vec![
        Run {
            bench: "engine",
            env: vec![
                ("BTC_ESCROW_BENCH_PARTS", "decisions,store,ticks".into()),
                ("BTC_ESCROW_BENCH_LOANS", loans.to_string()),
            ],
            what: "signing path, store writes, ticks",
        },
        Run {
            bench: "engine",
            env: vec![
                ("BTC_ESCROW_BENCH_PARTS", "mass_breach".into()),
                ("BTC_ESCROW_BENCH_LOANS", loans.to_string()),
                ("BTC_ESCROW_BENCH_BREACHED", "10000".into()),
            ],
            what: "mass breach",
        },
        Run {
            bench: "chain_sync",
            env: vec![("BTC_ESCROW_BENCH_ESCROWS", "2000".into())],
            what: "sync of 2,000 escrows (regtest)",
        },
        Run {
            bench: "chain_sync",
            env: vec![("BTC_ESCROW_BENCH_ESCROWS", escrows.to_string())],
            what: "sync of the large set (regtest)",
        },
        Run {
            bench: "api_load",
            env: vec![],
            what: "HTTP API under load",
        },
        Run {
            bench: "breach_to_broadcast",
            env: vec![],
            what: "breach to broadcast (regtest)",
        },
    ];
    let figures = [
        (
            "tick_0",
            format!("tick over {loans} loans, none moving"),
            None,
        ),
        (
            "tick_10",
            format!("tick over {loans} loans, 10 moving"),
            None,
        ),
        (
            "tick_1000",
            format!("tick over {loans} loans, 1,000 moving"),
            None,
        ),
        (
            "mass_breach",
            format!("one tick liquidating 10,000 of {loans} loans (stored, flushed)"),
            Some(("<", 1_000.0)),
        ),
        (
            "psbt_build_sign",
            "liquidation PSBT built + arbiter-signed".into(),
            Some(("<=", 100.0)),
        ),
        (
            "decisions_1000",
            "1,000 liquidation decisions built + signed".into(),
            Some(("<", 100.0)),
        ),
        (
            "merge_finalize",
            "co-signed PSBT verified + merged + finalized".into(),
            Some(("<=", 150.0)),
        ),
        ("ecdsa_sign", "one ECDSA signature (the floor)".into(), None),
        (
            "store_durable",
            "store: one transition, durable".into(),
            None,
        ),
        (
            "store_buffered",
            "store: one transition, buffered".into(),
            None,
        ),
        (
            "first_sync_2000",
            "first sync, 2,000 escrows".into(),
            Some(("<", 2.0)),
        ),
        (
            "warm_restart_2000",
            "restart from the stored cache, 2,000 escrows".into(),
            Some(("<", 1.0)),
        ),
        (
            "incremental_sync_2000",
            "sync after a new block, 2,000 escrows".into(),
            None,
        ),
        (
            &*format!("first_sync_{escrows}").leak(),
            format!("first sync, {escrows} escrows"),
            Some(("<", 20.0 * escrows as f64 / 20_000.0)),
        ),
        (
            &*format!("warm_restart_{escrows}").leak(),
            format!("restart from the stored cache, {escrows} escrows"),
            None,
        ),
        (
            "cosign_post_rps",
            "co-signed POST .../psbt, stored durably".into(),
            None,
        ),
        (
            "cosign_post_p99",
            "co-signed POST .../psbt, p99".into(),
            None,
        ),
        ("get_loan_rps", "GET /v1/loans/{id}".into(), None),
        ("get_loan_p99", "GET /v1/loans/{id}, p99".into(), None),
        (
            "breach_to_broadcast",
            "confirming tick -> liquidation in the mempool".into(),
            None,
        ),
    ]
    .into_iter()
    .map(|(key, what, goal)| Figure {
        key: key.to_owned(),
        what,
        goal,
    })
    .collect::<Vec<_>>();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut measured: BTreeMap<String, (f64, String)> = BTreeMap::new();
    let mut failures = Vec::new();
    for run in &runs {
        let started = Instant::now();
        eprintln!("report: running {} ({})...", run.bench, run.what);
        let child = Command::new(&cargo)
            .args(["bench", "--quiet", "--bench", run.bench])
            .envs(run.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{}: cannot start cargo: {e}", run.what));
                continue;
            }
        };
        let stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        for line in BufReader::new(child.stdout.take().expect("piped"))
            .lines()
            .map_while(Result::ok)
        {
            println!("  {line}");
            if let Some((key, value)) = line
                .strip_prefix("figure: ")
                .and_then(|rest| rest.split_once(" = "))
            {
                let mut parts = value.split_whitespace();
                if let (Some(number), Some(unit)) = (parts.next(), parts.next()) {
                    if let Ok(number) = number.parse::<f64>() {
                        measured.insert(key.to_owned(), (number, unit.to_owned()));
                    }
                }
            }
        }
        let status = child.wait();
        let errors = errors.join().unwrap_or_default();
        if !status.is_ok_and(|s| s.success()) {
            let tail: Vec<&str> = errors
                .iter()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .take(4)
                .map(String::as_str)
                .collect();
            failures.push(format!(
                "{} (`cargo bench --bench {}`) failed: {}",
                run.what,
                run.bench,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        eprintln!(
            "report: {} done in {:.0} s",
            run.bench,
            started.elapsed().as_secs_f64()
        );
    }

    println!();
    println!("{:<62} {:>14} {:>12}  met", "figure", "measured", "goal");
    for f in &figures {
        let (value, goal, met) = match measured.get(&f.key) {
            Some((v, unit)) => {
                let goal = f.goal.map(|(op, bound)| format!("{op} {bound} {unit}"));
                let met = f.goal.map(|(op, bound)| {
                    let ok = if op == "<" { *v < bound } else { *v <= bound };
                    if ok {
                        "yes"
                    } else {
                        "NO"
                    }
                });
                (format!("{v} {unit}"), goal, met)
            }
            None => ("not measured".to_owned(), None, None),
        };
        println!(
            "{:<62} {:>14} {:>12}  {}",
            f.what,
            value,
            goal.unwrap_or_else(|| "-".into()),
            met.unwrap_or("")
        );
    }
    for failure in &failures {
        println!("not measured: {failure}");
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cpus} cores");
}
