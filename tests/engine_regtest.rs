//! The engine on a real chain (bitcoind + electrs, through the watcher), one scenario
//! per test:
//! - a loan is offered, accepted, funded from a BDK wallet and activated at one
//!   confirmation; the price falls into the liquidation band for `confirm_ticks`
//!   aggregated prices; the engine decides and arbiter-signs the liquidation, the
//!   lender co-signs, the transaction is broadcast and mined, and the loan is
//!   Liquidated; the lender's payout and the borrower's remainder on chain equal the
//!   decision, computed independently here;
//! - a loan is repaid in full; the release is co-signed by the borrower (or the
//!   lender), mined, and the collateral minus the fee is back at the borrower's address;
//! - and the scenarios of the tests below, each described above it.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bitcoin::{Amount, FeeRate, Network};
use btc_escrow::chain::{ChainUpdate, Watcher, WatcherConfig};
use btc_escrow::engine::{Acceptance, Engine, EngineConfig, EscrowView};
use btc_escrow::keys::{account_path, AccountKey, ArbiterKey, SigningKey};
use btc_escrow::loan::{Currency, LoanState, Price, PriceEvidence, TermsInput, TxKind};
use btc_escrow::policy::PolicyTemplate;
use btc_escrow::store::Store;
use btc_escrow::tx::{self, FeeCap};
use btc_escrow::util::unix_now;
use common::escrow::Parties;
use common::wallet::TestWallet;
use common::{Regtest, Reorg};

const RATE: u64 = 2_000; // sat/kvB

fn usd(minor: u64) -> Price {
    Price::new(minor, Currency::new("USD").expect("USD"))
}

struct World {
    env: Regtest,
    _dir: tempfile::TempDir,
    engine: Engine,
    watcher: Watcher,
    parties: Parties,
    wallet: TestWallet,
    lender_payout: bitcoin::Address,
    borrower_return: bitcoin::Address,
}

impl World {
    fn new() -> anyhow::Result<Self> {
        let env = Regtest::start()?;
        let dir = tempfile::tempdir()?;
        let arbiter = ArbiterKey::create(dir.path(), Network::Regtest)?;
        let store = Store::open(&dir.path().join("db"))?;
        let engine = Engine::open(
            store,
            arbiter,
            EngineConfig {
                network: Network::Regtest,
                min_confirmations: 1,
                min_confirm_ticks: 3,
                fee_cap: FeeCap::default(),
                template: PolicyTemplate::default(),
            },
        )?;
        let watcher = Watcher::new(WatcherConfig::new(&env.electrum_url, Network::Regtest));
        let mut wallet = TestWallet::new(&env)?;
        wallet.fund(&env, 1)?;
        let lender_payout = TestWallet::new(&env)?.address();
        let borrower_return = TestWallet::new(&env)?.address();
        Ok(Self {
            env,
            _dir: dir,
            engine,
            watcher,
            parties: Parties::new()?,
            wallet,
            lender_payout,
            borrower_return,
        })
    }

    fn account(&self, key: &SigningKey) -> anyhow::Result<AccountKey> {
        Ok(AccountKey::from_master(
            key.master(),
            &account_path(Network::Regtest, 0)?,
            &self.parties.secp,
        )?)
    }

    /// $10,000 for 90 days, 50 % initial LTV, margin call 70 %, liquidation 80 %
    /// confirmed over 3 ticks, 5 % penalty.
    fn terms(&self) -> TermsInput {
        common::escrow::loan_terms(&self.lender_payout, &self.borrower_return)
    }

    /// Sync until the escrow's view satisfies `ok`, feed it to the engine.
    fn observe_until(
        &mut self,
        id: &str,
        ok: impl Fn(&EscrowView) -> bool,
    ) -> anyhow::Result<EscrowView> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(update) = self.watcher.sync() {
                let view = self.view_of(&update, id)?;
                if ok(&view) {
                    self.engine.observe(id, view.clone(), unix_now())?;
                    return Ok(view);
                }
            }
            if Instant::now() > deadline {
                bail!("the escrow of {id} never reached the expected view");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn view_of(&self, update: &ChainUpdate, id: &str) -> anyhow::Result<EscrowView> {
        let state = update
            .escrows
            .iter()
            .find(|s| s.loan_id == id)
            .context("the escrow is watched")?;
        Ok(EscrowView::from_chain(state, |txid| {
            self.watcher.transaction(txid).map(|t| (*t).clone())
        }))
    }

    /// Offer, accept at $100,000/BTC (0.2 BTC required), fund, confirm: Active.
    fn active_loan(&mut self, id: &str) -> anyhow::Result<()> {
        let terms = self.terms();
        self.active_loan_with(id, terms)
    }

    fn active_loan_with(&mut self, id: &str, terms: TermsInput) -> anyhow::Result<()> {
        let required = self.accepted_loan(id, terms)?;
        self.deposit(id, required)?;
        // Not active while unconfirmed.
        self.observe_until(id, |v| v.confirmed.is_empty())?;
        ensure!(self.engine.loan(id)?.state == LoanState::AwaitingCollateral);
        self.env.mine(1)?;
        self.observe_until(id, |v| !v.confirmed.is_empty())?;
        ensure!(self.engine.loan(id)?.state == LoanState::Active);
        Ok(())
    }

    /// Offer and accept at $100,000/BTC; the escrow is watched. Returns the collateral
    /// required.
    fn accepted_loan(&mut self, id: &str, terms: TermsInput) -> anyhow::Result<Amount> {
        let now = unix_now();
        self.engine.offer(id, "lender", terms, now)?;
        let (borrower, lender) = (
            self.account(&self.parties.borrower)?,
            self.account(&self.parties.lender)?,
        );
        let loan = self.engine.accept(
            id,
            Acceptance {
                borrower_id: "borrower",
                borrower: &borrower,
                lender: &lender,
                price: usd(10_000_000),
                return_address: None,
            },
            self.env.height()?,
            now,
        )?;
        ensure!(loan.required_collateral == Amount::from_sat(20_000_000));
        let escrow = self.engine.escrows()[id].clone();
        self.watcher.register(id, escrow)?;
        Ok(loan.required_collateral)
    }

    /// Send `amount` to the loan's escrow from the test wallet; wait until electrs has
    /// it (unconfirmed).
    fn deposit(&mut self, id: &str, amount: Amount) -> anyhow::Result<bitcoin::Txid> {
        let escrow = self.engine.escrows()[id].clone();
        let funding = self.wallet.send(
            &escrow.address(),
            amount,
            FeeRate::from_sat_per_vb(2).expect("2 sat/vB"),
        )?;
        let txid = funding.compute_txid();
        self.env.wait_for_tx(&escrow.script_pubkey(), txid)?;
        Ok(txid)
    }

    /// Send what the engine finalized (as `serve`'s chain thread does).
    fn broadcast_pending(&mut self) -> anyhow::Result<()> {
        let tip = self.env.height()?;
        for (loan_id, tx) in self.engine.to_broadcast()? {
            let txid = match self.watcher.broadcast(&tx) {
                Ok(txid) | Err(btc_escrow::chain::BroadcastError::AlreadyKnown { txid }) => txid,
                Err(e) => bail!("broadcast refused: {e}"),
            };
            self.engine.broadcasted(&loan_id, txid, tip)?;
        }
        Ok(())
    }

    /// Co-sign the pending decision as the lender (or the borrower), broadcast, mine,
    /// see it confirmed.
    fn settle(&mut self, id: &str, lender: bool) -> anyhow::Result<bitcoin::Transaction> {
        let record = self.engine.decision(id)?.context("a decision is pending")?;
        let escrow = self.engine.escrows()[id].clone();
        let mut theirs = record.psbt()?;
        let key = if lender {
            &self.parties.lender
        } else {
            &self.parties.borrower
        };
        tx::sign(
            &mut theirs,
            key,
            &escrow,
            &FeeCap::default(),
            &self.parties.secp,
        )?;
        let final_tx = self.engine.cosign(id, &theirs)?;
        self.broadcast_pending()?;
        let txid = final_tx.compute_txid();
        self.env.mine(1)?;
        self.observe_until(id, |v| v.confirmed_spends.iter().any(|s| s.txid == txid))?;
        Ok(final_tx)
    }
}

#[test]
fn a_confirmed_breach_is_liquidated_on_chain_as_decided() -> anyhow::Result<()> {
    let mut w = World::new()?;
    w.active_loan("loan-1")?;
    let tip = w.env.height()?;
    // $62,000/BTC: LTV 80.65 % on 0.2 BTC. A wick (one tick, then a recovery) first.
    let price = |m| PriceEvidence::bare(usd(m));
    w.engine
        .price_tick(price(6_200_000), unix_now(), tip, RATE)?;
    w.engine
        .price_tick(price(7_000_000), unix_now(), tip, RATE)?;
    ensure!(
        w.engine.decision("loan-1")?.is_none(),
        "a wick liquidates nobody"
    );
    for _ in 0..3 {
        w.engine
            .price_tick(price(6_200_000), unix_now(), tip, RATE)?;
    }
    let loan = w.engine.loan("loan-1")?;
    ensure!(loan.state == LoanState::Liquidating, "{:?}", loan.state);
    let record = w.engine.decision("loan-1")?.context("decided")?;

    let tx = w.settle("loan-1", true)?;
    let loan = w.engine.loan("loan-1")?;
    ensure!(loan.state == LoanState::Liquidated, "{:?}", loan.state);
    ensure!(loan.confirmed_tx == Some((TxKind::Liquidation, tx.compute_txid())));

    // Independently: $10,000 plus interest since activation, plus 5 %, at $62,000,
    // rounded up; the rest minus the fee to the borrower.
    let owed = match &record.decision.kind {
        btc_escrow::engine::DecisionKind::Liquidation { owed, .. } => owed.minor,
        other => bail!("{other:?}"),
    };
    ensure!((1_000_000..1_000_100).contains(&owed), "owed {owed}");
    let claim = (u128::from(owed) * 10_500 * 100_000_000).div_ceil(10_000 * 6_200_000) as u64;
    let paid_to = |address: &bitcoin::Address| -> Amount {
        tx.output
            .iter()
            .filter(|o| o.script_pubkey == address.script_pubkey())
            .map(|o| o.value)
            .sum()
    };
    ensure!(paid_to(&w.lender_payout) == Amount::from_sat(claim));
    ensure!(
        paid_to(&w.borrower_return) == Amount::from_sat(20_000_000 - claim) - record.decision.fee
    );
    Ok(())
}

/// Repay in full, the release co-signed by the lender or by the borrower, mined:
/// Closed, the collateral minus the fee at the borrower's return address.
fn released(lender_cosigns: bool) -> anyhow::Result<()> {
    let mut w = World::new()?;
    w.active_loan("loan-2")?;
    let tip = w.env.height()?;
    let owed = w.engine.loan("loan-2")?.owed(unix_now())?;
    let loan = w
        .engine
        .repay("loan-2", owed, "wire-42", unix_now(), tip, RATE)?;
    ensure!(loan.state == LoanState::Releasing, "{:?}", loan.state);
    let record = w.engine.decision("loan-2")?.context("a release decision")?;
    let tx = w.settle("loan-2", lender_cosigns)?;
    ensure!(w.engine.loan("loan-2")?.state == LoanState::Closed);
    ensure!(tx.output.len() == 1);
    ensure!(tx.output[0].script_pubkey == w.borrower_return.script_pubkey());
    ensure!(tx.output[0].value == Amount::from_sat(20_000_000) - record.decision.fee);
    Ok(())
}

#[test]
fn a_repaid_loan_is_released_with_the_borrowers_signature() -> anyhow::Result<()> {
    released(false)
}

#[test]
fn a_repaid_loan_is_released_with_the_lenders_signature() -> anyhow::Result<()> {
    released(true)
}

/// The loan's terms ask for two confirmations. The borrower sends 0.12 BTC, then tops
/// up 0.08 BTC: with the first deposit two blocks deep and the top-up one block deep
/// the loan still waits (0.12 BTC counted); one more block and it is Active with
/// 0.2 BTC.
#[test]
fn a_top_up_activates_the_loan_at_its_min_confirmations_not_before() -> anyhow::Result<()> {
    let mut w = World::new()?;
    let mut terms = w.terms();
    terms.min_confirmations = 2;
    w.accepted_loan("loan-t", terms)?;
    w.deposit("loan-t", Amount::from_sat(12_000_000))?;
    w.env.mine(1)?;
    w.observe_until("loan-t", |v| v.depth.values().any(|d| *d == 1))?;
    let loan = w.engine.loan("loan-t")?;
    ensure!(
        loan.collateral == Amount::ZERO,
        "one block is not two: {loan:?}"
    );
    w.env.mine(1)?;
    w.observe_until("loan-t", |v| v.depth.values().any(|d| *d == 2))?;
    let loan = w.engine.loan("loan-t")?;
    ensure!(loan.state == LoanState::AwaitingCollateral);
    ensure!(loan.collateral == Amount::from_sat(12_000_000));
    let top_up = w.deposit("loan-t", Amount::from_sat(8_000_000))?;
    w.env.mine(1)?;
    w.observe_until("loan-t", |v| v.depth.keys().any(|o| o.txid == top_up))?;
    let loan = w.engine.loan("loan-t")?;
    ensure!(
        loan.state == LoanState::AwaitingCollateral,
        "{:?}",
        loan.state
    );
    ensure!(loan.collateral == Amount::from_sat(12_000_000));
    w.env.mine(1)?;
    w.observe_until("loan-t", |v| {
        v.depth.iter().any(|(o, d)| o.txid == top_up && *d == 2)
    })?;
    let loan = w.engine.loan("loan-t")?;
    ensure!(loan.state == LoanState::Active, "{:?}", loan.state);
    ensure!(loan.collateral == Amount::from_sat(20_000_000));
    Ok(())
}

/// Margin call at 70 % LTV with 2 % hysteresis, on 0.2 BTC for $10,000: $70,000/BTC
/// (71.4 %) raises it; $72,000 (69.4 %) is inside the hysteresis and keeps it;
/// $75,000 (66.7 %) clears it. Nothing is liquidated.
#[test]
fn a_margin_call_is_raised_and_cleared_below_the_hysteresis() -> anyhow::Result<()> {
    let mut w = World::new()?;
    w.active_loan("loan-m")?;
    let tip = w.env.height()?;
    let mut tick = |minor: u64| -> anyhow::Result<LoanState> {
        w.engine
            .price_tick(PriceEvidence::bare(usd(minor)), unix_now(), tip, RATE)?;
        Ok(w.engine.loan("loan-m")?.state)
    };
    ensure!(tick(8_500_000)? == LoanState::Active);
    ensure!(tick(7_000_000)? == LoanState::MarginCall);
    ensure!(tick(7_200_000)? == LoanState::MarginCall);
    ensure!(tick(7_500_000)? == LoanState::Active);
    let events = w.engine.store().events("loan-m")?;
    let names: Vec<String> = events
        .iter()
        .map(|e| format!("{:?}", e.event))
        .filter(|e| e.starts_with("MarginCall"))
        .collect();
    ensure!(names.len() == 2, "raised once, cleared once: {names:?}");
    ensure!(w.engine.decision("loan-m")?.is_none());
    Ok(())
}

/// A 100-minute loan with one grace block is not repaid. The engine's clock, moved
/// past maturity plus grace with a fresh price, liquidates it for default at that
/// price; the lender co-signs; mined: Liquidated, the reason recorded as a default.
#[test]
fn an_unpaid_loan_is_liquidated_at_maturity_plus_grace() -> anyhow::Result<()> {
    let mut w = World::new()?;
    let mut terms = w.terms();
    terms.term_secs = 6_000;
    terms.grace_blocks = 1;
    w.active_loan_with("loan-f", terms)?;
    let tip = w.env.height()?;
    let evidence = PriceEvidence::bare(usd(9_000_000));
    let early = w.engine.clock(unix_now(), tip, RATE, Some(&evidence))?;
    ensure!(early.defaulted.is_empty(), "not yet due: {early:?}");
    let due = unix_now() + 6_000 + 600;
    let none = w.engine.clock(due, tip, RATE, None)?;
    ensure!(
        none.waiting_for_price == vec!["loan-f".to_owned()],
        "{none:?}"
    );
    ensure!(w.engine.loan("loan-f")?.state == LoanState::Active);
    let out = w.engine.clock(due, tip, RATE, Some(&evidence))?;
    ensure!(out.defaulted == vec!["loan-f".to_owned()], "{out:?}");
    let record = w.engine.decision("loan-f")?.context("a default decision")?;
    let tx = w.settle("loan-f", true)?;
    let loan = w.engine.loan("loan-f")?;
    ensure!(loan.state == LoanState::Liquidated, "{:?}", loan.state);
    ensure!(
        loan.liquidation_reason == Some(btc_escrow::loan::LiquidationReason::Default),
        "{:?}",
        loan.liquidation_reason
    );
    // At $90,000: the debt plus 5 % to the lender, rounded up; the rest to the borrower.
    let owed = match &record.decision.kind {
        btc_escrow::engine::DecisionKind::Liquidation { owed, .. } => owed.minor,
        other => bail!("{other:?}"),
    };
    let claim = (u128::from(owed) * 10_500 * 100_000_000).div_ceil(10_000 * 9_000_000) as u64;
    ensure!(tx.output[0].value == Amount::from_sat(claim));
    ensure!(tx.output[0].script_pubkey == w.lender_payout.script_pubkey());
    Ok(())
}

/// The borrower sends 0.05 of the 0.2 BTC asked and stops. At the funding deadline
/// the loan expires and the deposit is released to the borrower (co-signed by the
/// borrower), minus the fee.
#[test]
fn a_partial_deposit_is_refunded_when_the_funding_deadline_passes() -> anyhow::Result<()> {
    let mut w = World::new()?;
    let terms = w.terms();
    let deadline = terms.funding_deadline;
    w.accepted_loan("loan-x", terms)?;
    w.deposit("loan-x", Amount::from_sat(5_000_000))?;
    w.env.mine(1)?;
    w.observe_until("loan-x", |v| !v.confirmed.is_empty())?;
    let tip = w.env.height()?;
    let early = w.engine.clock(deadline - 1, tip, RATE, None)?;
    ensure!(early.expired.is_empty(), "{early:?}");
    let out = w.engine.clock(deadline, tip, RATE, None)?;
    ensure!(out.expired == vec!["loan-x".to_owned()], "{out:?}");
    ensure!(w.engine.loan("loan-x")?.state == LoanState::Expired);
    let record = w.engine.decision("loan-x")?.context("a refund decision")?;
    let tx = w.settle("loan-x", false)?;
    ensure!(tx.output.len() == 1);
    ensure!(tx.output[0].script_pubkey == w.borrower_return.script_pubkey());
    ensure!(tx.output[0].value == Amount::from_sat(5_000_000) - record.decision.fee);
    let loan = w.engine.loan("loan-x")?;
    ensure!(
        loan.confirmed_tx == Some((TxKind::Refund, tx.compute_txid())),
        "{loan:?}"
    );
    Ok(())
}

/// Breach three ticks into a decision, co-signed by the lender and broadcast.
fn decided_and_broadcast(w: &mut World, id: &str) -> anyhow::Result<bitcoin::Txid> {
    w.active_loan(id)?;
    let tip = w.env.height()?;
    for _ in 0..3 {
        w.engine
            .price_tick(PriceEvidence::bare(usd(6_200_000)), unix_now(), tip, RATE)?;
    }
    let record = w.engine.decision(id)?.context("decided")?;
    let escrow = w.engine.escrows()[id].clone();
    let mut theirs = record.psbt()?;
    tx::sign(
        &mut theirs,
        &w.parties.lender,
        &escrow,
        &FeeCap::default(),
        &w.parties.secp,
    )?;
    let txid = w.engine.cosign(id, &theirs)?.compute_txid();
    w.broadcast_pending()?;
    ensure!(w.env.mempool_contains(txid)?);
    Ok(txid)
}

/// The liquidation confirms, a reorg takes its block away: the loan is Liquidating
/// again and the engine sends the same transaction again; mined again: Liquidated.
#[test]
fn a_reorged_liquidation_is_sent_again_and_confirms_again() -> anyhow::Result<()> {
    let mut w = World::new()?;
    let txid = decided_and_broadcast(&mut w, "loan-r")?;
    w.env.mine(1)?;
    w.observe_until("loan-r", |v| {
        v.confirmed_spends.iter().any(|s| s.txid == txid)
    })?;
    ensure!(w.engine.loan("loan-r")?.state == LoanState::Liquidated);
    w.env.reorg(1, Reorg::DropTxs)?;
    w.observe_until("loan-r", |v| v.confirmed_spends.is_empty())?;
    ensure!(w.engine.loan("loan-r")?.state == LoanState::Liquidating);
    let again = w.engine.to_rebroadcast()?;
    ensure!(
        again.len() == 1 && again[0].1.compute_txid() == txid,
        "{again:?}"
    );
    match w.watcher.broadcast(&again[0].1) {
        Ok(_) | Err(btc_escrow::chain::BroadcastError::AlreadyKnown { .. }) => {}
        Err(e) => bail!("{e}"),
    }
    w.env.mine(1)?;
    w.observe_until("loan-r", |v| {
        v.confirmed_spends.iter().any(|s| s.txid == txid)
    })?;
    let loan = w.engine.loan("loan-r")?;
    ensure!(loan.state == LoanState::Liquidated);
    ensure!(loan.confirmed_tx == Some((TxKind::Liquidation, txid)));
    Ok(())
}

/// The liquidation stays unconfirmed for two blocks (mined without it): the engine
/// bumps its fee (a new attempt of the same decision, the lender's payment
/// unchanged), the lender co-signs again, the replacement is broadcast, replaces the
/// first in the mempool and confirms: Liquidated by the replacement, both txids
/// recorded.
#[test]
fn a_stuck_liquidation_is_bumped_by_rbf_and_the_replacement_confirms() -> anyhow::Result<()> {
    let mut w = World::new()?;
    let first = decided_and_broadcast(&mut w, "loan-b")?;
    let before = w.engine.decision("loan-b")?.context("record")?;
    w.env.mine_block_with(&[])?;
    w.env.mine_block_with(&[])?;
    w.observe_until("loan-b", |v| {
        v.confirmed_spends.is_empty() && !v.spending.is_empty()
    })?;
    let tip = w.env.height()?;
    ensure!(
        w.engine.bump_stale(tip, 3, RATE)?.is_empty(),
        "not yet: 2 blocks"
    );
    ensure!(w.engine.bump_stale(tip, 2, RATE)? == vec!["loan-b".to_owned()]);
    let bumped = w.engine.decision("loan-b")?.context("the new attempt")?;
    ensure!(bumped.decision.attempt == 1);
    ensure!(bumped.decision.fee > before.decision.fee);
    let (old_tx, new_tx) = (before.psbt()?.unsigned_tx, bumped.psbt()?.unsigned_tx);
    ensure!(
        old_tx.output[0] == new_tx.output[0],
        "the lender's payment is kept"
    );
    let escrow = w.engine.escrows()["loan-b"].clone();
    let mut theirs = bumped.psbt()?;
    tx::sign(
        &mut theirs,
        &w.parties.lender,
        &escrow,
        &FeeCap::default(),
        &w.parties.secp,
    )?;
    let second = w.engine.cosign("loan-b", &theirs)?.compute_txid();
    w.broadcast_pending()?;
    ensure!(w.env.mempool_contains(second)? && !w.env.mempool_contains(first)?);
    w.env.mine(1)?;
    w.observe_until("loan-b", |v| {
        v.confirmed_spends.iter().any(|s| s.txid == second)
    })?;
    let loan = w.engine.loan("loan-b")?;
    ensure!(loan.state == LoanState::Liquidated);
    ensure!(loan.confirmed_tx == Some((TxKind::Liquidation, second)));
    ensure!(loan.broadcasts.len() == 2, "{:?}", loan.broadcasts);
    Ok(())
}

/// A short loan (a 100-minute term, one grace block, a funding window of ten minutes)
/// the service never liquidates (no price ticks here): once the chain passes its
/// default height the lender takes the collateral alone by the timelocked path; the
/// engine sees a spend it did not build and closes the loan on chain, naming the path.
#[test]
fn the_lenders_solo_claim_closes_the_loan_on_chain() -> anyhow::Result<()> {
    let mut w = World::new()?;
    let mut terms = w.terms();
    terms.term_secs = 6_000;
    terms.grace_blocks = 1;
    terms.funding_deadline = unix_now() + 600;
    w.active_loan_with("loan-d", terms)?;
    let escrow = w.engine.escrows()["loan-d"].clone();
    let default_height = escrow.heights().default_height;
    let tip = w.env.height()?;
    ensure!(
        default_height > tip && default_height - tip < 40,
        "{default_height} vs {tip}"
    );
    w.env.mine(default_height - tip)?;
    let view = w.observe_until("loan-d", |v| !v.confirmed.is_empty())?;
    let inputs = view.confirmed.clone();
    let claim = common::escrow::spend(
        &w.parties,
        &escrow,
        btc_escrow::policy::PathName::DefaultClaim,
        inputs,
        &w.lender_payout,
        w.env.height()?,
    )?;
    let txid = w.env.broadcast_rpc(&claim)?;
    w.env.mine(1)?;
    w.observe_until("loan-d", |v| {
        v.confirmed_spends.iter().any(|s| s.txid == txid)
    })?;
    let loan = w.engine.loan("loan-d")?;
    ensure!(loan.state == LoanState::ClosedOnChain, "{:?}", loan.state);
    ensure!(loan.spent_by == Some(txid));
    let events = w.engine.store().events("loan-d")?;
    ensure!(
        events.iter().any(|e| matches!(
            &e.event,
            btc_escrow::loan::Event::ClosedOnChain { path, .. } if path == "default-claim"
        )),
        "{events:?}"
    );
    Ok(())
}
