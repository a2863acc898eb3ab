//! Carrying a decision out after it is taken: the co-signature in, the finalized
//! transaction out (once, then recorded as broadcast), the same bytes again while it
//! is not confirmed (a reorg took it out, a mempool dropped it), and a fee bump (RBF)
//! when it stays unconfirmed for too many blocks: the same decision with a higher fee,
//! taken from the borrower's share, signed again by the arbiter and co-signed again.

use bitcoin::psbt::Psbt;
use bitcoin::{Transaction, Txid};

use super::core::{Engine, EngineError};
use super::decision::DecisionKind;
use super::record::{DecisionRecord, Progress, RecordError};
use crate::loan::{apply, Input, Loan, LoanState, TxKind};
use crate::store::Durability;

fn decode_tx(hex: &str) -> Result<Transaction, EngineError> {
    bitcoin::consensus::encode::deserialize_hex(hex)
        .map_err(|e| RecordError::StoredPsbt(e.to_string()).into())
}

impl Engine {
    /// A party's co-signed PSBT for the pending decision: merged under DESIGN.md §6,
    /// finalized, stored durably before it is returned for broadcast.
    pub fn cosign(&mut self, id: &str, psbt: &Psbt) -> Result<Transaction, EngineError> {
        let record = self
            .decision(id)?
            .filter(|r| r.progress == Progress::AwaitingCosignature)
            .ok_or_else(|| EngineError::NothingToCosign { id: id.to_owned() })?;
        let (next, tx) = record.cosign(psbt, &self.secp)?;
        self.store_cosigned(id, &record, &next, Durability::Durable)?;
        Ok(tx)
    }

    /// Store `next`, a co-signed record made from `before` off the engine thread (by
    /// [`DecisionRecord::cosign`]), if the loan's pending decision is still `before`:
    /// a decision bumped or carried out meanwhile is not overwritten. The same
    /// co-signature stored already (a concurrent repeat) is not an error. With
    /// [`Durability::Buffered`] the caller flushes before acknowledging it.
    pub fn store_cosigned(
        &mut self,
        id: &str,
        before: &DecisionRecord,
        next: &DecisionRecord,
        durability: Durability,
    ) -> Result<(), EngineError> {
        let now = self.decision(id)?;
        match now {
            Some(r) if r == *before => {}
            Some(r) if r.progress.txid().is_some() && r.progress.txid() == next.progress.txid() => {
                return Ok(())
            }
            _ => return Err(EngineError::NothingToCosign { id: id.to_owned() }),
        }
        self.store
            .put_decision(&next.store_key(), next, durability)?;
        self.finalized.insert(id.to_owned());
        Ok(())
    }

    /// Finalized transactions not yet recorded as broadcast (after a restart too: the
    /// set is rebuilt from the store when the engine opens).
    pub fn to_broadcast(&self) -> Result<Vec<(String, Transaction)>, EngineError> {
        self.to_broadcast_except(|_| false)
    }

    /// [`Engine::to_broadcast`] without the loans `skip` names (e.g. those whose
    /// broadcast is already under way), without reading their records.
    pub fn to_broadcast_except(
        &self,
        skip: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, Transaction)>, EngineError> {
        let mut out = Vec::new();
        for id in self.finalized.iter().filter(|id| !skip(id)) {
            // Not for a loan that no longer waits for it (its escrow was spent by
            // another transaction, closed on chain): the network would refuse it.
            if !waits_for_its_transaction(&self.loan(id)?) {
                continue;
            }
            if let Some(record) = self.decision(id)? {
                if let Progress::Finalized { tx_hex, .. } = &record.progress {
                    out.push((id.clone(), decode_tx(tx_hex)?));
                }
            }
        }
        Ok(out)
    }

    /// A finalized transaction was accepted by the network (or was already known) with
    /// the chain at `tip`.
    pub fn broadcasted(&mut self, id: &str, txid: Txid, tip: u32) -> Result<Loan, EngineError> {
        let loan = self.loan(id)?;
        let mut record = self
            .decision(id)?
            .ok_or_else(|| EngineError::NothingToCosign { id: id.to_owned() })?;
        let kind: TxKind = record.decision.tx_kind();
        let (next, events) = apply(&loan, &Input::TxBroadcast { kind, txid })?;
        if let Progress::Finalized { txid: t, tx_hex } = &record.progress {
            if *t == txid {
                record.progress = Progress::Broadcast {
                    txid,
                    tx_hex: tx_hex.clone(),
                    tip,
                };
            }
        }
        if next == loan {
            self.store
                .put_decision(&record.store_key(), &record, Durability::Durable)?;
        } else {
            self.store.apply_with_decision(
                loan.version,
                &next,
                &events,
                &record.store_key(),
                &record,
                Durability::Durable,
            )?;
        }
        if !matches!(record.progress, Progress::Finalized { .. }) {
            self.finalized.remove(id);
        }
        Ok(next)
    }

    /// Decisions broadcast and not confirmed, whose loan still waits for them: the same
    /// bytes, to be sent again (a reorg or an evicting mempool lost them; a server
    /// that still has them answers "already known").
    pub fn to_rebroadcast(&self) -> Result<Vec<(String, Transaction)>, EngineError> {
        let mut out = Vec::new();
        for loan in self.store.loans()? {
            if !waits_for_its_transaction(&loan) {
                continue;
            }
            if let Some(record) = self.decision(&loan.id)? {
                if let Progress::Broadcast { tx_hex, .. } = &record.progress {
                    out.push((loan.id.clone(), decode_tx(tx_hex)?));
                }
            }
        }
        Ok(out)
    }

    /// Bump the fee of every decision broadcast at least `after_blocks` blocks before
    /// `tip` and still unconfirmed: a new attempt of the same decision (same inputs,
    /// same amount owed and price), its fee rate at least the current estimate and at
    /// least 1.5 times and 1 sat/vB above the last, signed by the arbiter and waiting
    /// for the co-signature again. Every txid stays recorded, so whichever attempt
    /// confirms completes the loan. Returns the loans bumped.
    pub fn bump_stale(
        &mut self,
        tip: u32,
        after_blocks: u32,
        fee_sat_per_kvb: u64,
    ) -> Result<Vec<String>, EngineError> {
        let mut bumped = Vec::new();
        for loan in self.store.loans()? {
            if !waits_for_its_transaction(&loan) {
                continue;
            }
            let Some(record) = self.decision(&loan.id)? else {
                continue;
            };
            let Progress::Broadcast { tip: sent_at, .. } = record.progress else {
                continue;
            };
            // A withdrawal is never signed by the arbiter first, so never bumped: it
            // is sent again as it is, and the borrower, paid by it, can bump it
            // (CPFP) from its own output.
            if matches!(record.decision.kind, DecisionKind::Withdrawal { .. }) {
                continue;
            }
            if tip < sent_at.saturating_add(after_blocks) {
                continue;
            }
            self.bump(&loan, &record, fee_sat_per_kvb)?;
            bumped.push(loan.id.clone());
        }
        Ok(bumped)
    }

    /// The network refused the loan's finalized transaction for its fee (the mempool's
    /// minimum rose above it): a fee bump now, as [`Engine::bump_stale`] makes one.
    /// False when there is nothing to bump (not waiting, not the finalized attempt).
    pub fn bump_refused(
        &mut self,
        id: &str,
        txid: bitcoin::Txid,
        fee_sat_per_kvb: u64,
    ) -> Result<bool, EngineError> {
        let loan = self.loan(id)?;
        if !waits_for_its_transaction(&loan) {
            return Ok(false);
        }
        let Some(record) = self.decision(id)? else {
            return Ok(false);
        };
        if !matches!(&record.progress, Progress::Finalized { txid: t, .. } if *t == txid) {
            return Ok(false);
        }
        if matches!(record.decision.kind, DecisionKind::Withdrawal { .. }) {
            // Refused, so seen by nobody but the service: the withdrawal is dropped
            // (the loan is active again) rather than signed again by the arbiter
            // first; the borrower asks again.
            let (next, events) = apply(
                &loan,
                &Input::WithdrawalRefused {
                    reason: "its transaction was refused for its fee; ask again".into(),
                },
            )?;
            self.store.apply(
                loan.version,
                &next,
                &events,
                crate::store::Durability::Durable,
            )?;
            self.finalized.remove(id);
            self.book.update(&next, crate::util::unix_now());
            return Ok(true);
        }
        self.bump(&loan, &record, fee_sat_per_kvb)?;
        Ok(true)
    }

    /// A new attempt of `record`'s decision at a higher fee rate, signed by the arbiter
    /// and waiting for the co-signature again.
    fn bump(
        &mut self,
        loan: &Loan,
        record: &DecisionRecord,
        fee_sat_per_kvb: u64,
    ) -> Result<(), EngineError> {
        let last = record.decision.fee_sat_per_kvb;
        let rate = fee_sat_per_kvb
            .max(last.saturating_mul(3).div_ceil(2))
            .max(last.saturating_add(1_000));
        let escrow = self.escrow_of(&loan.id)?;
        let decision = record.decision.bumped(loan, escrow, rate)?;
        let next = self.sign_record(decision)?;
        self.store
            .put_decision(&next.store_key(), &next, Durability::Durable)?;
        self.finalized.remove(&loan.id);
        tracing::info!(loan = %loan.id, attempt = next.decision.attempt, rate, "fee bumped");
        Ok(())
    }
}

impl Engine {
    /// Whether loan `id` still waits for its decision's transaction to confirm.
    pub fn waits_for_its_transaction(&self, id: &str) -> bool {
        self.loan(id).is_ok_and(|l| waits_for_its_transaction(&l))
    }
}

/// A loan waiting for its decision's transaction to confirm.
fn waits_for_its_transaction(loan: &Loan) -> bool {
    loan.confirmed_tx.is_none()
        && matches!(
            loan.state,
            LoanState::Liquidating
                | LoanState::Releasing
                | LoanState::Expired
                | LoanState::Withdrawing
        )
}
