//! A decision's record: the decision, the PSBT the arbiter signed for it, and how far
//! carrying it out got (awaiting the co-signature, finalized, broadcast). It is stored
//! with the loan transition that takes or advances it (`Store::apply_with_decision`),
//! so after a crash the engine resumes from it: the arbiter's PSBT is never signed
//! differently (rebuilt from the stored decision it is the same, RFC 6979), a final
//! transaction is broadcast again only as the same bytes, and an acknowledged
//! co-signature is never lost. Pure: no I/O.

use std::str::FromStr;

use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{Transaction, Txid};
use serde::{Deserialize, Serialize};

use super::decision::{Decision, DecisionError};
use crate::keys::SigningKey;
use crate::policy::EscrowDescriptor;
use crate::tx::{self, FeeCap, MergeError, TxError};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Decision(#[from] DecisionError),
    #[error("signing the decision: {0}")]
    Sign(#[source] Box<TxError>),
    #[error("the co-signed PSBT: {0}")]
    Cosignature(#[from] MergeError),
    #[error("finalizing the co-signed PSBT: {0}")]
    Finalize(#[source] Box<TxError>),
    #[error("the stored PSBT is unreadable: {0}")]
    StoredPsbt(String),
    #[error("decision {key} is already {status}; a co-signature is no longer taken")]
    NotAwaiting { key: String, status: &'static str },
}

/// How far a decision got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Progress {
    /// Signed by the arbiter; waiting for the lender's (or, for a release, either
    /// party's) signature.
    AwaitingCosignature,
    /// Co-signed and finalized: broadcast these bytes, and only these.
    Finalized { txid: Txid, tx_hex: String },
    /// Broadcast with the chain at `tip` (the chain decides the rest).
    Broadcast {
        txid: Txid,
        tx_hex: String,
        tip: u32,
    },
}

impl Progress {
    /// The finalized transaction's id, once there is one.
    pub fn txid(&self) -> Option<Txid> {
        match self {
            Progress::AwaitingCosignature => None,
            Progress::Finalized { txid, .. } | Progress::Broadcast { txid, .. } => Some(*txid),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Progress::AwaitingCosignature => "awaiting its co-signature",
            Progress::Finalized { .. } => "finalized",
            Progress::Broadcast { .. } => "broadcast",
        }
    }
}

/// A decision, its arbiter-signed PSBT (base64) and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub decision: Decision,
    pub psbt: String,
    pub progress: Progress,
    /// When the arbiter signed this attempt (unix seconds; 0 in records written before
    /// it was kept): the co-signature latency is measured from it.
    #[serde(default)]
    pub signed_at: u64,
}

impl DecisionRecord {
    /// The store key of a loan's decision attempt (zero-padded: keys sort by decision,
    /// then attempt). The first decision keeps the key records had before a loan could
    /// take more than one (`d…` sorts after every digit).
    pub fn key(loan_id: &str, number: u32, attempt: u32) -> String {
        if number == 0 {
            format!("{loan_id}/{attempt:010}")
        } else {
            format!("{loan_id}/d{number:06}/{attempt:010}")
        }
    }

    pub fn store_key(&self) -> String {
        Self::key(
            &self.decision.loan_id,
            self.decision.number,
            self.decision.attempt,
        )
    }

    /// A decision the arbiter signs last (a withdrawal): its unsigned PSBT, for the
    /// party to sign first.
    pub fn unsigned(decision: Decision, escrow: &EscrowDescriptor) -> Result<Self, RecordError> {
        let psbt = decision.unsigned(escrow)?.psbt;
        Ok(Self {
            decision,
            psbt: psbt.to_string(),
            progress: Progress::AwaitingCosignature,
            signed_at: 0,
        })
    }

    /// Build the decision's transaction and sign it as the arbiter (only that
    /// transaction: `tx::sign_decision`).
    pub fn sign(
        decision: Decision,
        escrow: &EscrowDescriptor,
        arbiter: &SigningKey,
        cap: &FeeCap,
        secp: &Secp256k1<All>,
    ) -> Result<Self, RecordError> {
        // One build: the PSBT, and the transaction it must equal, from the decision.
        let mut psbt = decision.unsigned(escrow)?.psbt;
        let expected = tx::SpendDecision {
            tx: psbt.unsigned_tx.clone(),
        };
        tx::sign_decision(&mut psbt, arbiter, escrow, &expected, cap, secp)
            .map_err(|e| RecordError::Sign(Box::new(e)))?;
        Ok(Self {
            decision,
            psbt: psbt.to_string(),
            progress: Progress::AwaitingCosignature,
            signed_at: 0,
        })
    }

    /// The arbiter-signed PSBT.
    pub fn psbt(&self) -> Result<Psbt, RecordError> {
        Psbt::from_str(&self.psbt).map_err(|e| RecordError::StoredPsbt(e.to_string()))
    }

    /// Take a party's co-signed copy: merged only under DESIGN.md §6 (same unsigned
    /// transaction, partial signatures only, each verified), then finalized. Returns
    /// the record advanced to `Finalized` and the transaction to broadcast; on error
    /// the record is unchanged.
    pub fn cosign(
        &self,
        theirs: &Psbt,
        secp: &Secp256k1<All>,
    ) -> Result<(Self, Transaction), RecordError> {
        if self.progress != Progress::AwaitingCosignature {
            return Err(RecordError::NotAwaiting {
                key: self.store_key(),
                status: self.progress.name(),
            });
        }
        let (merged, tx) = match tx::merge_and_finalize(&self.psbt()?, theirs, secp) {
            Ok(done) => done,
            Err(tx::CosignError::Merge(e)) => return Err(e.into()),
            Err(tx::CosignError::Finalize(e)) => return Err(RecordError::Finalize(Box::new(e))),
        };
        let next = Self {
            decision: self.decision.clone(),
            signed_at: self.signed_at,
            psbt: merged.to_string(),
            progress: Progress::Finalized {
                txid: tx.compute_txid(),
                tx_hex: bitcoin::consensus::encode::serialize_hex(&tx),
            },
        };
        Ok((next, tx))
    }
}

#[cfg(test)]
mod tests;
