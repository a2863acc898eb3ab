//! What the chain shows of one escrow, as the engine needs it: the deposits a decision
//! may spend (deep enough for the loan, with their previous transactions) and the
//! transactions spending it.

use std::collections::BTreeMap;

use bitcoin::{Amount, OutPoint, Transaction, Txid};

use crate::loan::Loan;
use crate::tx::EscrowInput;

/// What the chain shows of one escrow, as the engine needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EscrowView {
    /// Unspent confirmed deposits, with their previous transactions (what a decision
    /// spends; [`EscrowView::at_depth`] keeps those deep enough).
    pub confirmed: Vec<EscrowInput>,
    /// How many confirmations each deposit of `confirmed` had when the view was
    /// taken; a deposit not listed counts as deep enough. The engine keeps only those
    /// as deep as the loan's own `min_confirmations` (see [`EscrowView::at_depth`]).
    pub depth: BTreeMap<OutPoint, u32>,
    /// The transactions spending the escrow in the view (confirmed or not).
    pub spending: Vec<Txid>,
    /// Confirmed spends.
    pub confirmed_spends: Vec<ConfirmedSpend>,
}

/// A confirmed transaction spending the escrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmedSpend {
    pub txid: Txid,
    pub height: u32,
    /// The path it used, as the watcher classified it.
    pub path: String,
}

impl EscrowView {
    /// The engine's view of what the watcher reports of an escrow: unspent confirmed
    /// deposits with their depth (and previous transactions, from `tx`), what spends
    /// it, and the confirmed spends with their paths. A
    /// deposit whose transaction `tx` cannot give is left out (it cannot be spent by a
    /// PSBT a signer can check).
    pub fn from_chain(
        state: &crate::chain::EscrowState,
        tx: impl Fn(Txid) -> Option<Transaction>,
    ) -> Self {
        // Every confirmed deposit, with its depth: `at_depth` keeps those deep enough,
        // except the change of the loan's own settled adjustments (ours, confirmed).
        let deep: Vec<_> = state
            .deposits
            .iter()
            .filter(|d| d.spent_by.is_none() && d.status.confirmations() >= 1)
            .collect();
        let depth = deep
            .iter()
            .map(|d| (d.outpoint, d.status.confirmations()))
            .collect();
        let confirmed = deep
            .iter()
            .filter_map(|d| {
                tx(d.outpoint.txid).map(|prev_tx| EscrowInput {
                    outpoint: d.outpoint,
                    prev_tx,
                })
            })
            .collect();
        let confirmed_spends = state
            .spends
            .iter()
            .filter_map(|s| match s.status {
                crate::chain::TxStatus::Confirmed { height, .. } => Some(ConfirmedSpend {
                    txid: s.txid,
                    height,
                    path: match &s.path {
                        Ok(p) => p.path.as_str().to_owned(),
                        Err(reason) => format!("unclassified: {reason}"),
                    },
                }),
                crate::chain::TxStatus::Unconfirmed => None,
            })
            .collect();
        Self {
            confirmed,
            depth,
            spending: state.spends.iter().map(|s| s.txid).collect(),
            confirmed_spends,
        }
    }

    /// The view with only the deposits confirmed at least `min_conf` times: a loan
    /// whose terms ask for more confirmations than the service's floor counts its
    /// collateral (and spends it) only at that depth.
    pub fn at_depth(self, min_conf: u32) -> Self {
        self.at_depth_except(min_conf, |_| false)
    }

    /// [`EscrowView::at_depth`], keeping at any depth the outputs of the transactions
    /// `ours` names (the change a settled adjustment paid back into the escrow).
    pub fn at_depth_except(mut self, min_conf: u32, ours: impl Fn(Txid) -> bool) -> Self {
        let depth = std::mem::take(&mut self.depth);
        self.confirmed.retain(|i| {
            ours(i.outpoint.txid) || depth.get(&i.outpoint).is_none_or(|d| *d >= min_conf)
        });
        self.depth = depth;
        self
    }

    /// Is the escrow being spent by a transaction other than `loan`'s settled
    /// adjustments?
    pub fn spent_for(&self, loan: &Loan) -> bool {
        // A settled adjustment's transaction counts only while confirmed (a reorg
        // back into the mempool makes it a pending spend again).
        self.spending
            .iter()
            .any(|t| !loan.settled(*t) || !self.confirmed_spends.iter().any(|s| s.txid == *t))
    }

    pub fn collateral(&self) -> Amount {
        self.confirmed
            .iter()
            .filter_map(|i| i.txout().map(|o| o.value))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loan::{Adjustment, AdjustmentKind, Bps, Currency, Fiat, Price};
    use bitcoin::hashes::Hash;

    #[test]
    fn a_settled_adjustment_spends_only_while_confirmed() {
        let t = Txid::from_byte_array([7; 32]);
        let usd = Currency::new("USD").unwrap();
        let mut loan = Loan::offered("l", crate::loan::terms::tests::terms());
        loan.adjustments.push(Adjustment {
            kind: AdjustmentKind::Withdrawal,
            decided_at: 0,
            repay: Fiat::new(0, usd),
            paid: Amount::ONE_SAT,
            change: Amount::ONE_SAT,
            fee: Amount::ONE_SAT,
            price: Price::new(1, usd),
            ltv_before: Bps(1),
            ltv_after: Bps(1),
            oracle_seq: None,
            txid: Some(t),
            height: Some(1),
            attempts: vec![t],
        });
        let mut view = EscrowView {
            spending: vec![t],
            ..EscrowView::default()
        };
        // Back in the mempool after a reorg: a pending spend of the escrow.
        assert!(view.spent_for(&loan));
        view.confirmed_spends.push(ConfirmedSpend {
            txid: t,
            height: 1,
            path: "arbitrated-release".into(),
        });
        assert!(!view.spent_for(&loan));
        // Anyone else's spend counts.
        view.spending.push(Txid::from_byte_array([8; 32]));
        assert!(view.spent_for(&loan));
    }
}
