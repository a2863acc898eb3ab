//! The events between two snapshots of an escrow: deposits and spends seen, confirmed,
//! reorganized out or gone.

use std::collections::{BTreeMap, BTreeSet};

use bdk_chain::bitcoin::{Amount, OutPoint, Txid};
use serde::Serialize;

use super::state::{Deposit, EscrowState, Spend, TxStatus};
use super::LoanId;
use crate::policy::ObservedSpend;

/// A change since the previous sync. Confirmation counts growing by one block are not
/// events (they are in the snapshot); moving between blocks, leaving or entering the
/// chain is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChainEvent {
    DepositSeen {
        loan_id: LoanId,
        outpoint: OutPoint,
        amount: Amount,
        status: TxStatus,
    },
    DepositConfirmed {
        loan_id: LoanId,
        outpoint: OutPoint,
        height: u32,
    },
    /// Its block left the best chain; it waits in the mempool again.
    DepositReorgedOut {
        loan_id: LoanId,
        outpoint: OutPoint,
    },
    /// No longer in the best chain nor the mempool (replaced, double-spent, evicted).
    DepositGone {
        loan_id: LoanId,
        outpoint: OutPoint,
    },
    SpendSeen {
        loan_id: LoanId,
        txid: Txid,
        status: TxStatus,
        path: Result<ObservedSpend, String>,
    },
    SpendConfirmed {
        loan_id: LoanId,
        txid: Txid,
        height: u32,
    },
    SpendReorgedOut {
        loan_id: LoanId,
        txid: Txid,
    },
    SpendGone {
        loan_id: LoanId,
        txid: Txid,
    },
}

/// How one transaction's place changed between two snapshots.
enum Change {
    Seen,
    Confirmed(u32),
    ReorgedOut,
    Gone,
}

fn changes(old: Option<&TxStatus>, new: Option<&TxStatus>) -> Vec<Change> {
    let confirmed = |s: &TxStatus| match s {
        TxStatus::Confirmed { height, .. } => Some(Change::Confirmed(*height)),
        TxStatus::Unconfirmed => None,
    };
    match (old, new) {
        (None, Some(n)) => std::iter::once(Change::Seen).chain(confirmed(n)).collect(),
        (Some(_), None) => vec![Change::Gone],
        (Some(o), Some(n)) if !o.same_place(n) => {
            // Leaving a block is a reorg, whether or not another block has it now.
            let left = o.is_confirmed().then_some(Change::ReorgedOut);
            left.into_iter().chain(confirmed(n)).collect()
        }
        _ => Vec::new(),
    }
}

/// Events turning `before` into `after` (one escrow).
pub(super) fn diff(
    before: Option<&EscrowState>,
    after: &EscrowState,
    events: &mut Vec<ChainEvent>,
) {
    let loan_id = || after.loan_id.clone();
    let deposits = |s: Option<&EscrowState>| -> BTreeMap<OutPoint, Deposit> {
        s.map(|s| s.deposits.iter().map(|d| (d.outpoint, d.clone())).collect())
            .unwrap_or_default()
    };
    let (old, new) = (deposits(before), deposits(Some(after)));
    for outpoint in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let (o, n) = (old.get(outpoint), new.get(outpoint));
        for change in changes(o.map(|d| &d.status), n.map(|d| &d.status)) {
            let outpoint = *outpoint;
            events.push(match change {
                Change::Seen => {
                    let d = n.expect("seen means present now");
                    ChainEvent::DepositSeen {
                        loan_id: loan_id(),
                        outpoint,
                        amount: d.amount,
                        status: d.status,
                    }
                }
                Change::Confirmed(height) => ChainEvent::DepositConfirmed {
                    loan_id: loan_id(),
                    outpoint,
                    height,
                },
                Change::ReorgedOut => ChainEvent::DepositReorgedOut {
                    loan_id: loan_id(),
                    outpoint,
                },
                Change::Gone => ChainEvent::DepositGone {
                    loan_id: loan_id(),
                    outpoint,
                },
            });
        }
    }
    let spends = |s: Option<&EscrowState>| -> BTreeMap<Txid, Spend> {
        s.map(|s| s.spends.iter().map(|x| (x.txid, x.clone())).collect())
            .unwrap_or_default()
    };
    let (old, new) = (spends(before), spends(Some(after)));
    for txid in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let (o, n) = (old.get(txid), new.get(txid));
        for change in changes(o.map(|x| &x.status), n.map(|x| &x.status)) {
            let txid = *txid;
            events.push(match change {
                Change::Seen => {
                    let x = n.expect("seen means present now");
                    ChainEvent::SpendSeen {
                        loan_id: loan_id(),
                        txid,
                        status: x.status,
                        path: x.path.clone(),
                    }
                }
                Change::Confirmed(height) => ChainEvent::SpendConfirmed {
                    loan_id: loan_id(),
                    txid,
                    height,
                },
                Change::ReorgedOut => ChainEvent::SpendReorgedOut {
                    loan_id: loan_id(),
                    txid,
                },
                Change::Gone => ChainEvent::SpendGone {
                    loan_id: loan_id(),
                    txid,
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bdk_chain::bitcoin::BlockHash;
    use bitcoin::hashes::Hash;

    fn confirmed(height: u32, hash: u8) -> TxStatus {
        TxStatus::Confirmed {
            height,
            block_hash: BlockHash::from_byte_array([hash; 32]),
            confirmations: 1,
        }
    }

    fn kinds(c: Vec<Change>) -> Vec<String> {
        c.into_iter()
            .map(|c| match c {
                Change::Seen => "seen".to_owned(),
                Change::Confirmed(h) => format!("confirmed@{h}"),
                Change::ReorgedOut => "reorged".to_owned(),
                Change::Gone => "gone".to_owned(),
            })
            .collect()
    }

    #[test]
    fn status_changes_become_events() {
        let u = TxStatus::Unconfirmed;
        assert_eq!(kinds(changes(None, Some(&u))), ["seen"]);
        assert_eq!(
            kinds(changes(None, Some(&confirmed(5, 1)))),
            ["seen", "confirmed@5"]
        );
        assert_eq!(
            kinds(changes(Some(&u), Some(&confirmed(5, 1)))),
            ["confirmed@5"]
        );
        assert_eq!(
            kinds(changes(Some(&confirmed(5, 1)), Some(&u))),
            ["reorged"]
        );
        // Same height, another block: out of one block, into another.
        assert_eq!(
            kinds(changes(Some(&confirmed(5, 1)), Some(&confirmed(5, 2)))),
            ["reorged", "confirmed@5"]
        );
        assert!(changes(Some(&confirmed(5, 1)), Some(&confirmed(5, 1))).is_empty());
        assert_eq!(kinds(changes(Some(&u), None)), ["gone"]);
    }
}
