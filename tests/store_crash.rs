//! Crash safety of the store: a child process applies loan transitions and allocates
//! escrow indexes in a loop, printing an acknowledgement after each durable write; the
//! parent kills it with SIGKILL at random moments (200 times) and after each kill
//! reopens the database and checks that every acknowledged write is there, that every
//! loan's event log is complete and free of duplicates, and that no escrow index was
//! ever handed out twice.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use bitcoin::{Amount, Network};
use btc_escrow::loan::money::{Bps, Currency, Fiat};
use btc_escrow::loan::{apply, Input, Loan, LoanState, LoanTerms, TermsInput};
use btc_escrow::store::{Durability, Store};

const CHILD_ENV: &str = "BTC_ESCROW_CRASH_CHILD_DIR";
const KILLS: usize = 200;
const NOW: u64 = 1_800_000_000;

fn terms() -> anyhow::Result<LoanTerms> {
    Ok(LoanTerms::new(
        TermsInput {
            principal: Fiat::new(10_000_000, Currency::new("USD")?),
            apr: Bps(1_000),
            term_secs: 86_400,
            initial_ltv: Bps(5_000),
            margin_call_ltv: Bps(7_000),
            liquidation_ltv: Bps(8_000),
            hard_liquidation_ltv: None,
            liquidation_penalty: Bps(500),
            hysteresis: Bps(200),
            confirm_ticks: 2,
            grace_blocks: 10,
            recovery_delay_blocks: 10,
            funding_deadline: NOW + 1_000,
            borrower_return_address:
                "bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85".into(),
            lender_payout_address:
                "bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85".into(),
            min_confirmations: 1,
            partial_liquidation: false,
            target_ltv: None,
            margin_call_levels: Vec::new(),
        },
        Network::Regtest,
        NOW,
    )?)
}

struct XorShift(u64);

impl XorShift {
    fn seeded() -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self(t ^ u64::from(std::process::id()) << 32 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The child: runs until killed. Ignored so that it never runs as a test by itself;
/// the parent starts it with `--ignored`.
#[test]
#[ignore = "the crash test's child process, started by crash_and_reopen_200_times"]
fn crash_child() -> anyhow::Result<()> {
    let dir = std::env::var(CHILD_ENV).context("run by crash_and_reopen_200_times only")?;
    let store = Store::open(std::path::Path::new(&dir))?;
    let mut loans: Vec<Loan> = store.loans()?;
    let mut rng = XorShift::seeded();
    let terms = terms()?;
    loop {
        match rng.next() % 8 {
            0 => {
                let index = store.allocate_escrow_index()?;
                println!("IDX {index}");
            }
            1 => {
                let offered = Loan::offered(
                    &format!("c{}-{}", std::process::id(), loans.len()),
                    terms.clone(),
                );
                let (loan, events) = apply(
                    &offered,
                    &Input::Accepted {
                        now: NOW,
                        escrow_index: 0,
                        descriptor: "wsh(x)".into(),
                        required_collateral: Amount::ONE_BTC,
                        schedule: terms.escrow_heights(100, NOW).expect("heights fit"),
                    },
                )?;
                store.insert_loan(&loan, &events, Durability::Durable)?;
                println!("ACK {} {} {}", loan.id, loan.version, loan.event_count);
                loans.push(loan);
            }
            _ if !loans.is_empty() => {
                let i = (rng.next() as usize) % loans.len();
                let loan = &loans[i];
                // Fund and un-fund in turn: always legal, two events each time.
                let confirmed = if loan.state == LoanState::Active {
                    Amount::ZERO
                } else {
                    Amount::ONE_BTC
                };
                let (next, events) = apply(
                    loan,
                    &Input::CollateralObserved {
                        now: NOW,
                        confirmed,
                        escrow_spent: false,
                    },
                )?;
                let durability = if rng.next() % 4 == 0 {
                    Durability::Buffered
                } else {
                    Durability::Durable
                };
                store.apply(loan.version, &next, &events, durability)?;
                if durability == Durability::Durable {
                    println!("ACK {} {} {}", next.id, next.version, next.event_count);
                }
                loans[i] = next;
            }
            _ => {}
        }
    }
}

#[test]
fn crash_and_reopen_200_times() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut rng = XorShift::seeded();
    let mut acked: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut indexes: BTreeSet<u32> = BTreeSet::new();
    let mut total_acks = 0usize;
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(20 + rng.next() % 80));
        child.kill()?; // SIGKILL
        child.wait()?;
        let lines = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
        for line in lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["ACK", id, version, count] => {
                    acked.insert((*id).to_owned(), (version.parse()?, count.parse()?));
                    total_acks += 1;
                }
                ["IDX", n] => {
                    let n: u32 = n.parse()?;
                    ensure!(
                        indexes.insert(n),
                        "round {round}: escrow index {n} handed out twice"
                    );
                }
                _ => {}
            }
        }

        let store =
            Store::open(dir.path()).with_context(|| format!("reopen after kill {round}"))?;
        for (id, (version, count)) in &acked {
            let Some(loan) = store.loan(id)? else {
                bail!("round {round}: acknowledged loan {id} is missing");
            };
            ensure!(
                loan.version >= *version,
                "round {round}: {id} lost acknowledged version {version} (has {})",
                loan.version
            );
            if loan.version == *version {
                ensure!(loan.event_count == *count);
            }
        }
        let mut global = BTreeSet::new();
        for loan in store.loans()? {
            let events = store.events(&loan.id)?;
            ensure!(
                events.len() as u64 == loan.event_count,
                "round {round}: {} has {} events, expects {}",
                loan.id,
                events.len(),
                loan.event_count
            );
            for (i, e) in events.iter().enumerate() {
                ensure!(
                    e.loan_seq == i as u64,
                    "round {round}: {} event {i} has sequence {}",
                    loan.id,
                    e.loan_seq
                );
                ensure!(
                    global.insert(e.global_seq),
                    "round {round}: global sequence {} repeated",
                    e.global_seq
                );
            }
        }
        if let Some(max) = indexes.last() {
            let next = store.allocate_escrow_index()?;
            ensure!(
                next > *max,
                "round {round}: allocator would hand out {next} again (max acknowledged {max})"
            );
            indexes.insert(next);
        }
    }
    ensure!(
        total_acks > KILLS,
        "the child must get work done between kills ({total_acks} acks)"
    );
    eprintln!(
        "{KILLS} kills, {total_acks} acknowledged writes, {} escrow indexes, {} loans",
        indexes.len(),
        acked.len()
    );
    Ok(())
}
