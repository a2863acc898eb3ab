//! What the chain says about each escrow (deposits, spends, where each transaction
//! stands) and how one canonicalization of the graph becomes that snapshot.

use std::collections::BTreeMap;

use bdk_chain::bitcoin::{Amount, BlockHash, OutPoint, Transaction, Txid};
use bdk_chain::local_chain::LocalChain;
use bdk_chain::{BlockId, CanonicalizationParams, ChainPosition, ConfirmationBlockTime};
use bitcoin::secp256k1::{Secp256k1, VerifyOnly};
use serde::Serialize;

use super::graph::Graph;
use super::LoanId;
use crate::policy::{EscrowDescriptor, ObservedSpend};

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TxStatus {
    Unconfirmed,
    Confirmed {
        height: u32,
        block_hash: BlockHash,
        confirmations: u32,
    },
}

impl TxStatus {
    pub fn is_confirmed(&self) -> bool {
        matches!(self, TxStatus::Confirmed { .. })
    }

    pub fn confirmations(&self) -> u32 {
        match self {
            TxStatus::Confirmed { confirmations, .. } => *confirmations,
            TxStatus::Unconfirmed => 0,
        }
    }

    /// Same place in the chain (confirmation counts aside).
    pub(super) fn same_place(&self, other: &TxStatus) -> bool {
        match (self, other) {
            (TxStatus::Unconfirmed, TxStatus::Unconfirmed) => true,
            (
                TxStatus::Confirmed { block_hash: a, .. },
                TxStatus::Confirmed { block_hash: b, .. },
            ) => a == b,
            _ => false,
        }
    }
}

/// A deposit to the escrow (the funding or a top-up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deposit {
    pub outpoint: OutPoint,
    pub amount: Amount,
    pub status: TxStatus,
    /// The canonical transaction spending it, if any.
    pub spent_by: Option<Txid>,
}

/// A transaction spending the escrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spend {
    pub txid: Txid,
    pub status: TxStatus,
    /// The escrow outputs it spends.
    pub spends: Vec<OutPoint>,
    /// Which path it used (witness run through the interpreter); `Err` says why it
    /// could not be classified.
    pub path: Result<ObservedSpend, String>,
}

/// What the chain says about one escrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EscrowState {
    pub loan_id: LoanId,
    pub deposits: Vec<Deposit>,
    pub spends: Vec<Spend>,
}

impl EscrowState {
    /// Unspent deposits with at least `min_conf` confirmations.
    pub fn confirmed_collateral(&self, min_conf: u32) -> Amount {
        self.deposits
            .iter()
            .filter(|d| d.spent_by.is_none() && d.status.confirmations() >= min_conf.max(1))
            .map(|d| d.amount)
            .sum()
    }

    /// Unspent deposits not yet confirmed.
    pub fn unconfirmed_collateral(&self) -> Amount {
        self.deposits
            .iter()
            .filter(|d| d.spent_by.is_none() && !d.status.is_confirmed())
            .map(|d| d.amount)
            .sum()
    }
}

/// The watcher's view of the chain, borrowed to build a snapshot.
pub(super) struct View<'a> {
    pub graph: &'a Graph,
    pub chain: &'a LocalChain,
    pub escrows: &'a BTreeMap<LoanId, EscrowDescriptor>,
    pub secp: &'a Secp256k1<VerifyOnly>,
}

impl View<'_> {
    fn status_of(&self, position: &ChainPosition<ConfirmationBlockTime>, tip: BlockId) -> TxStatus {
        match position {
            ChainPosition::Confirmed { anchor, .. } => TxStatus::Confirmed {
                height: anchor.block_id.height,
                block_hash: anchor.block_id.hash,
                confirmations: tip.height.saturating_sub(anchor.block_id.height) + 1,
            },
            ChainPosition::Unconfirmed { .. } => TxStatus::Unconfirmed,
        }
    }

    /// Every watched escrow's state, from one canonicalization of the graph.
    pub fn states(&self, tip: BlockId) -> Vec<EscrowState> {
        let outpoints: Vec<(LoanId, OutPoint)> = self
            .graph
            .index
            .outpoints()
            .iter()
            .filter(|(id, _)| self.escrows.contains_key(id))
            .cloned()
            .collect();
        let mut states: BTreeMap<LoanId, EscrowState> = self
            .escrows
            .keys()
            .map(|id| {
                (
                    id.clone(),
                    EscrowState {
                        loan_id: id.clone(),
                        deposits: Vec::new(),
                        spends: Vec::new(),
                    },
                )
            })
            .collect();
        let mut spends: BTreeMap<(LoanId, Txid), Spend> = BTreeMap::new();
        let txouts = self.graph.graph().filter_chain_txouts(
            self.chain,
            tip,
            CanonicalizationParams::default(),
            outpoints,
        );
        for (loan_id, full) in txouts {
            let spent_by = full.spent_by.as_ref().map(|(_, txid)| *txid);
            if let Some((position, txid)) = &full.spent_by {
                let status = self.status_of(position, tip);
                let descriptor = &self.escrows[&loan_id];
                let entry = spends
                    .entry((loan_id.clone(), *txid))
                    .or_insert_with(|| Spend {
                        txid: *txid,
                        status,
                        spends: Vec::new(),
                        path: self.classify(descriptor, *txid, full.outpoint),
                    });
                entry.spends.push(full.outpoint);
            }
            if let Some(state) = states.get_mut(&loan_id) {
                state.deposits.push(Deposit {
                    outpoint: full.outpoint,
                    amount: full.txout.value,
                    status: self.status_of(&full.chain_position, tip),
                    spent_by,
                });
            }
        }
        for ((loan_id, _), spend) in spends {
            if let Some(state) = states.get_mut(&loan_id) {
                state.spends.push(spend);
            }
        }
        states
            .into_values()
            .map(|mut s| {
                s.deposits.sort_by_key(|d| d.outpoint);
                s
            })
            .collect()
    }

    fn classify(
        &self,
        descriptor: &EscrowDescriptor,
        txid: Txid,
        spent: OutPoint,
    ) -> Result<ObservedSpend, String> {
        let tx: std::sync::Arc<Transaction> = self
            .graph
            .graph()
            .get_tx(txid)
            .ok_or_else(|| format!("spending tx {txid} not downloaded"))?;
        let index = tx
            .input
            .iter()
            .position(|i| i.previous_output == spent)
            .ok_or_else(|| format!("{txid} does not spend {spent}"))?;
        let txout = self
            .graph
            .graph()
            .get_txout(spent)
            .ok_or_else(|| format!("output {spent} unknown"))?;
        descriptor
            .classify_spend(self.secp, &tx, index, txout)
            .map_err(|e| e.to_string())
    }
}
