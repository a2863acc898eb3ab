//! The engine's core, synchronous and free of network I/O: it owns the store (the
//! single writer of loan state) and the arbiter's key, turns commands, chain views and
//! price ticks into state-machine inputs, writes each transition with its events, and
//! — when a transition is a decision — computes the decision, arbiter-signs exactly its
//! transaction and stores both in the same store transaction. Broadcasting is the
//! caller's: [`Engine::to_broadcast`] lists the finalized transactions (after a
//! restart too), [`Engine::broadcasted`] records one as sent.

use std::collections::BTreeMap;

use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{Network, Txid};
use serde::{Deserialize, Serialize};

use super::decision::{Decision, DecisionError};
use super::record::{DecisionRecord, RecordError};
pub use super::view::{ConfirmedSpend, EscrowView};
use crate::keys::{AccountKey, ArbiterKey, KeyError};
use crate::loan::calc::{self, CalcError};
use crate::loan::{
    apply, Event, Fiat, Input, Loan, LoanState, LoanTerms, Price, TermsError, TermsInput,
    TransitionError,
};
use crate::policy::{
    EscrowDescriptor, EscrowHeights, EscrowKeys, PolicyError, PolicyTemplate, Role,
};
use crate::store::{Durability, Store, StoreError};
use crate::tx::{EscrowInput, FeeCap};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Terms(#[from] TermsError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Decision(#[from] DecisionError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("loan {id}: {source}")]
    Calc { id: String, source: CalcError },
    #[error("loan {id}: not found")]
    NotFound { id: String },
    #[error("loan {id}: the escrow heights do not fit (term and deadline too long)")]
    Heights { id: String },
    #[error("confirm_ticks: {found} is below the service's minimum of {min}")]
    ConfirmTicks { found: u32, min: u32 },
    #[error("loan {id}: no decision awaits a co-signature")]
    NothingToCosign { id: String },
    #[error("loan {id}: no chain view of its escrow yet; nothing is decided without one")]
    NoChainView { id: String },
    #[error("loan {id}: {source}")]
    Withdrawal {
        id: String,
        source: super::decision::WithdrawalError,
    },
    #[error("loan {id}: {reason}")]
    WithdrawalRefused { id: String, reason: String },
}

/// What the engine needs to know besides its store and key.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub network: Network,
    pub min_confirmations: u32,
    /// The fewest `confirm_ticks` an offer may ask for (a single wick liquidates
    /// nobody).
    pub min_confirm_ticks: u32,
    pub fee_cap: FeeCap,
    pub template: PolicyTemplate,
}

/// What an escrow is rebuilt from (stored at acceptance with the transition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowRecord {
    pub borrower: String,
    pub lender: String,
    pub arbiter: String,
    pub index: u32,
    pub default_height: u32,
    pub recovery_height: u32,
    pub accepted_at_height: u32,
}

/// Who accepts an offer, with which account keys, at which price.
#[derive(Debug, Clone, Copy)]
pub struct Acceptance<'a> {
    pub borrower_id: &'a str,
    pub borrower: &'a AccountKey,
    pub lender: &'a AccountKey,
    pub price: Price,
    /// The borrower's return address, unless the offer's terms already carry one.
    pub return_address: Option<&'a str>,
}

pub struct Engine {
    pub(super) store: Store,
    arbiter: ArbiterKey,
    arbiter_account: AccountKey,
    config: EngineConfig,
    pub(super) secp: Secp256k1<All>,
    escrows: BTreeMap<String, EscrowDescriptor>,
    views: BTreeMap<String, EscrowView>,
    /// The chain's tip as last reported (see [`Engine::set_tip`]).
    tip: Option<u32>,
    pub(super) book: super::book::Book,
    /// Loans whose latest decision is finalized and not yet recorded as broadcast (so
    /// listing what to broadcast does not read every loan).
    pub(super) finalized: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("escrows", &self.escrows.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Open on a store: every accepted loan's escrow is rebuilt from its record.
    pub fn open(
        store: Store,
        arbiter: ArbiterKey,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let secp = Secp256k1::new();
        let arbiter_account = arbiter.account(&secp)?;
        let mut engine = Self {
            store,
            arbiter,
            arbiter_account,
            config,
            secp,
            escrows: BTreeMap::new(),
            views: BTreeMap::new(),
            tip: None,
            book: Default::default(),
            finalized: Default::default(),
        };
        let now = crate::util::unix_now();
        for loan in engine.store.loans()? {
            engine.book.update(&loan, now);
            if let Some(record) = engine.store.escrow::<EscrowRecord>(&loan.id)? {
                let escrow = engine.rebuild(&record)?;
                if matches!(loan.state, LoanState::Active | LoanState::MarginCall) {
                    engine.derive_arbiter_key(&escrow);
                }
                engine.escrows.insert(loan.id.clone(), escrow);
            }
            if let Some(record) = engine.decision(&loan.id)? {
                if matches!(record.progress, super::record::Progress::Finalized { .. }) {
                    engine.finalized.insert(loan.id.clone());
                }
            }
        }
        Ok(engine)
    }

    fn rebuild(&self, r: &EscrowRecord) -> Result<EscrowDescriptor, EngineError> {
        let n = self.config.network;
        let keys = EscrowKeys {
            borrower: AccountKey::parse("borrower", &r.borrower, n)?,
            lender: AccountKey::parse("lender", &r.lender, n)?,
            arbiter: AccountKey::parse("arbiter", &r.arbiter, n)?,
            index: r.index,
        };
        let heights =
            EscrowHeights::new(r.default_height, r.recovery_height, r.accepted_at_height)?;
        Ok(self.config.template.instantiate(&keys, heights, n)?)
    }

    /// Derive the arbiter's key of `escrow` ahead of a decision (the signing key keeps
    /// it: see `SigningKey::derive_pair`), so a crash breaching thousands of loans
    /// spends one EC multiplication per decision (the signature) rather than two.
    fn derive_arbiter_key(&self, escrow: &EscrowDescriptor) {
        let key = self.arbiter.signing_key();
        let fingerprint = key.fingerprint(&self.secp);
        for origin in escrow.key_origins() {
            if origin.role == Role::Arbiter && origin.fingerprint == fingerprint {
                let _ = key.derive_pair(&self.secp, &origin.path);
            }
        }
    }

    pub(super) fn arbiter_signing_key(&self) -> &crate::keys::SigningKey {
        self.arbiter.signing_key()
    }

    pub(super) fn fee_cap(&self) -> &FeeCap {
        &self.config.fee_cap
    }

    /// The arbiter's account key (the third key of every escrow).
    pub fn arbiter_account(&self) -> &AccountKey {
        &self.arbiter_account
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The escrows being watched, by loan.
    pub fn escrows(&self) -> &BTreeMap<String, EscrowDescriptor> {
        &self.escrows
    }

    pub fn loan(&self, id: &str) -> Result<Loan, EngineError> {
        self.store
            .loan(id)?
            .ok_or_else(|| EngineError::NotFound { id: id.to_owned() })
    }

    /// Apply `input` and store the transition (nothing when nothing changed).
    pub(super) fn step(
        &self,
        loan: &Loan,
        input: &Input,
    ) -> Result<(Loan, Vec<Event>), EngineError> {
        let (next, events) = apply(loan, input)?;
        if next != *loan {
            self.store
                .apply(loan.version, &next, &events, Durability::Durable)?;
        }
        Ok((next, events))
    }

    /// A lender's offer.
    pub fn offer(
        &mut self,
        id: &str,
        lender_id: &str,
        terms: TermsInput,
        now: u64,
    ) -> Result<Loan, EngineError> {
        if terms.confirm_ticks < self.config.min_confirm_ticks {
            return Err(EngineError::ConfirmTicks {
                found: terms.confirm_ticks,
                min: self.config.min_confirm_ticks,
            });
        }
        let terms = LoanTerms::new(terms, self.config.network, now)?;
        let mut loan = Loan::offered(id, terms);
        loan.lender_id = lender_id.to_owned();
        loan.created_at = now;
        self.store.insert_loan(&loan, &[], Durability::Durable)?;
        Ok(loan)
    }

    /// A borrower accepts: a fresh escrow index, the escrow of the three account keys
    /// at heights fixed now, and the collateral the initial LTV needs at `price`.
    pub fn accept(
        &mut self,
        id: &str,
        acceptance: Acceptance<'_>,
        tip: u32,
        now: u64,
    ) -> Result<Loan, EngineError> {
        let Acceptance {
            borrower_id,
            borrower,
            lender,
            price,
            return_address,
        } = acceptance;
        let mut loan = self.loan(id)?;
        // Refused before an escrow index is taken: a bad accept changes nothing.
        if loan.state != LoanState::Offered {
            return Err(TransitionError::Illegal {
                id: id.to_owned(),
                state: loan.state,
                input: "accepted",
            }
            .into());
        }
        if let Some(address) = return_address {
            loan.terms = loan.terms.with_borrower_return_address(address)?;
        }
        if !loan.terms.has_borrower_return_address() {
            return Err(
                TermsError::BorrowerReturnAddress(crate::util::AddressError::Missing {
                    field: "borrower_return_address".into(),
                })
                .into(),
            );
        }
        let t = loan.terms.get();
        let schedule = loan
            .terms
            .escrow_heights(tip, now)
            .ok_or_else(|| EngineError::Heights { id: id.to_owned() })?;
        let required =
            calc::required_collateral(t.principal, t.initial_ltv, price).map_err(|source| {
                EngineError::Calc {
                    id: id.to_owned(),
                    source,
                }
            })?;
        let record = EscrowRecord {
            borrower: borrower.to_string(),
            lender: lender.to_string(),
            arbiter: self.arbiter_account.to_string(),
            index: self.store.allocate_escrow_index()?,
            default_height: schedule.default_height,
            recovery_height: schedule.recovery_height,
            accepted_at_height: tip,
        };
        let escrow = self.rebuild(&record)?;
        let (next, events) = apply(
            &loan,
            &Input::Accepted {
                now,
                escrow_index: record.index,
                descriptor: escrow.to_string(),
                required_collateral: required,
                schedule,
            },
        )?;
        let next = Loan {
            borrower_id: Some(borrower_id.to_owned()),
            ..next
        };
        self.store
            .apply_with_escrow(loan.version, &next, &events, &record, Durability::Durable)?;
        self.derive_arbiter_key(&escrow);
        self.escrows.insert(id.to_owned(), escrow);
        Ok(next)
    }

    /// The chain's view of a loan's escrow: collateral, then spends (ours complete the
    /// decision; anyone else's close the loan on chain).
    pub fn observe(&mut self, id: &str, view: EscrowView, now: u64) -> Result<Loan, EngineError> {
        let mut loan = self.loan(id)?;
        let min_conf = self
            .config
            .min_confirmations
            .max(loan.terms.get().min_confirmations);
        let whole = view;
        let view = whole
            .clone()
            .at_depth_except(min_conf, |txid| loan.settled(txid));
        let settled_before = loan.adjustments.len();
        loan = self.observe_collateral(&loan, &view, now)?;
        for spend in &view.confirmed_spends {
            if loan.settled(spend.txid) {
                continue;
            }
            let mut ours = loan
                .broadcasts
                .iter()
                .find(|(_, t)| *t == spend.txid)
                .map(|(k, _)| *k);
            if ours.is_none() {
                // A transaction of one of its decisions that the loan never recorded
                // as sent: sent before a crash and recorded after it, or finalized
                // and sent by a party itself (a txid does not cover the witnesses).
                // Ours, not a stranger's: recorded as broadcast, then confirmed.
                if let Some(kind) = self.decided_tx_kind(id, spend.txid)? {
                    let sent = Input::TxBroadcast {
                        kind,
                        txid: spend.txid,
                    };
                    match self.step(&loan, &sent) {
                        Ok((next, _)) => {
                            loan = next;
                            ours = Some(kind);
                        }
                        Err(EngineError::Transition(TransitionError::Illegal { .. })) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            let input = match ours {
                Some(kind) => Input::TxConfirmed {
                    kind,
                    txid: spend.txid,
                    height: spend.height,
                },
                None => Input::SpentByUnknownTx {
                    txid: spend.txid,
                    path: spend.path.clone(),
                },
            };
            match self.step(&loan, &input) {
                Ok((next, _)) => loan = next,
                // Not a spend this state takes (e.g. an unfunded offer): nothing moves.
                Err(EngineError::Transition(TransitionError::Illegal { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        // Ours left the chain: back to waiting for it (the engine re-broadcasts).
        if let Some((kind, txid)) = loan.confirmed_tx {
            if !view.confirmed_spends.iter().any(|s| s.txid == txid) {
                loan = self.step(&loan, &Input::TxReorgedOut { kind, txid })?.0;
                self.sent_again_at_tip(id, txid)?;
            }
        }
        // A stranger's spend left the chain: the loan is back where it was.
        if let (LoanState::ClosedOnChain, Some(txid)) = (loan.state, loan.spent_by) {
            if !view.confirmed_spends.iter().any(|s| s.txid == txid) {
                loan = self.step(&loan, &Input::UnknownSpendReorgedOut { txid })?.0;
            }
        }
        // An adjustment settled in this view: its change is the collateral now (the
        // confirmed attempt's, at any depth), and what a next decision spends.
        let view = if loan.adjustments.len() > settled_before {
            let view = whole.at_depth_except(min_conf, |txid| loan.settled(txid));
            loan = self.observe_collateral(&loan, &view, now)?;
            view
        } else {
            view
        };
        self.views.insert(id.to_owned(), view);
        self.book.update(&loan, now);
        Ok(loan)
    }

    /// The confirmed collateral of `view`, for a loan in a state that counts it.
    fn observe_collateral(
        &self,
        loan: &Loan,
        view: &EscrowView,
        now: u64,
    ) -> Result<Loan, EngineError> {
        if !matches!(
            loan.state,
            LoanState::AwaitingCollateral
                | LoanState::Active
                | LoanState::MarginCall
                | LoanState::Expired
        ) {
            return Ok(loan.clone());
        }
        let input = Input::CollateralObserved {
            now,
            confirmed: view.collateral(),
            escrow_spent: view.spent_for(loan),
        };
        Ok(self.step(loan, &input)?.0)
    }

    /// The chain's tip, reported before the views of a sync are observed.
    pub fn set_tip(&mut self, tip: u32) {
        self.tip = Some(tip);
    }

    /// A reorg took the loan's confirmed `txid` out of the chain: it waits again from
    /// the current tip, so the blocks of the reorg do not count as blocks it waited
    /// unconfirmed (which would bump its fee and ask for a new co-signature).
    fn sent_again_at_tip(&mut self, id: &str, txid: Txid) -> Result<(), EngineError> {
        let Some(tip) = self.tip else { return Ok(()) };
        let Some(mut record) = self.decision(id)? else {
            return Ok(());
        };
        if let super::record::Progress::Broadcast {
            txid: sent,
            tip: at,
            ..
        } = &mut record.progress
        {
            if *sent == txid && *at < tip {
                *at = tip;
                self.store
                    .put_decision(&record.store_key(), &record, Durability::Durable)?;
            }
        }
        Ok(())
    }

    /// The kind of the loan's decision attempt whose transaction is `txid`, if any.
    fn decided_tx_kind(
        &self,
        id: &str,
        txid: Txid,
    ) -> Result<Option<crate::loan::TxKind>, EngineError> {
        for (_, record) in self.store.decisions::<DecisionRecord>(&format!("{id}/"))? {
            let psbt = record.psbt()?;
            if psbt.unsigned_tx.compute_txid() == txid {
                return Ok(Some(record.decision.tx_kind()));
            }
        }
        Ok(None)
    }

    /// A repayment recorded by the lender; the final one becomes a release decision.
    #[allow(clippy::too_many_arguments)]
    pub fn repay(
        &mut self,
        id: &str,
        amount: Fiat,
        key: &str,
        now: u64,
        tip: u32,
        fee_sat_per_kvb: u64,
    ) -> Result<Loan, EngineError> {
        let loan = self.loan(id)?;
        let (next, events) = apply(
            &loan,
            &Input::RepaymentRecorded {
                now,
                amount,
                key: key.to_owned(),
            },
        )?;
        if next == loan {
            return Ok(next);
        }
        if next.state == LoanState::Releasing {
            let inputs = self.inputs_of(id)?;
            let decision = Decision::release(
                &loan,
                self.escrow_of(id)?,
                inputs,
                fee_sat_per_kvb,
                tip,
                false,
            )?;
            let next = self.decide(&loan, &next, &events, decision, Durability::Durable)?;
            self.book.update(&next, now);
            return Ok(next);
        } else {
            self.store
                .apply(loan.version, &next, &events, Durability::Durable)?;
        }
        // Only once stored: a refused decision leaves the book as it was.
        self.book.update(&next, now);
        Ok(next)
    }

    pub(super) fn escrow_of(&self, id: &str) -> Result<&EscrowDescriptor, EngineError> {
        self.escrows
            .get(id)
            .ok_or_else(|| EngineError::NotFound { id: id.to_owned() })
    }

    pub(super) fn inputs_of(&self, id: &str) -> Result<Vec<EscrowInput>, EngineError> {
        self.views
            .get(id)
            .map(|v| v.confirmed.clone())
            .ok_or_else(|| EngineError::NoChainView { id: id.to_owned() })
    }

    /// The decision signed by the arbiter, as a record awaiting its co-signature.
    pub(super) fn sign_record(&self, decision: Decision) -> Result<DecisionRecord, EngineError> {
        let escrow = self.escrow_of(&decision.loan_id)?;
        Ok(DecisionRecord {
            signed_at: crate::util::unix_now(),
            ..DecisionRecord::sign(
                decision,
                escrow,
                self.arbiter.signing_key(),
                &self.config.fee_cap,
                &self.secp,
            )?
        })
    }

    /// Sign the decision as the arbiter and store it with the transition, as the
    /// loan's next decision; returns the loan as stored.
    pub(super) fn decide(
        &self,
        before: &Loan,
        after: &Loan,
        events: &[Event],
        mut decision: Decision,
        durability: Durability,
    ) -> Result<Loan, EngineError> {
        decision.number = before.decisions;
        let record = self.sign_record(decision)?;
        self.store_decision(before, after, events, record, durability)
    }

    /// Store `record` (numbered as `before`'s next decision) with the transition to
    /// `after`; returns the loan as stored.
    pub(super) fn store_decision(
        &self,
        before: &Loan,
        after: &Loan,
        events: &[Event],
        record: DecisionRecord,
        durability: Durability,
    ) -> Result<Loan, EngineError> {
        let (after, record) = numbered(before, after.clone(), record);
        self.store.apply_with_decision(
            before.version,
            &after,
            events,
            &record.store_key(),
            &record,
            durability,
        )?;
        Ok(after)
    }

    /// The loan's latest decision record.
    pub fn decision(&self, id: &str) -> Result<Option<DecisionRecord>, EngineError> {
        latest_decision(&self.store, id)
    }
}

/// `record` numbered as `before`'s next decision, and `after` counting it.
pub(super) fn numbered(
    before: &Loan,
    after: Loan,
    mut record: DecisionRecord,
) -> (Loan, DecisionRecord) {
    record.decision.number = before.decisions;
    let after = Loan {
        decisions: before.decisions + 1,
        ..after
    };
    (after, record)
}

/// A loan's latest decision attempt, read from `store` by any thread (the engine
/// thread stays the only writer).
pub fn latest_decision(store: &Store, id: &str) -> Result<Option<DecisionRecord>, EngineError> {
    let prefix = format!("{id}/");
    Ok(store
        .decisions::<DecisionRecord>(&prefix)?
        .pop()
        .map(|(_, r)| r))
}

#[cfg(test)]
mod tests;
