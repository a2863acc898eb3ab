//! The loan book the engine prices on each tick: active loans in a liquidation-price
//! index keyed at their **margin-call** LTV (the lowest threshold at which a tick can
//! move a loan), plus the few loans a tick can move from below it (a margin call to
//! clear, a breach count to reset). A tick then costs O(log n + k) in the number of
//! loans, not a scan of the book: an active loan below its margin-call LTV with no
//! breach counted cannot change on a price (only its tick sequence would be noted,
//! which the engine skips for it: a later replay of that tick is evaluated afresh, and
//! it could not count a breach the first time).

use std::collections::{BTreeMap, BTreeSet};

use crate::loan::index::{IndexedLoan, LiquidationIndex};
use crate::loan::{Currency, Loan, LoanState, Price};

/// How long an index key stays valid before it is recomputed (interest drift).
const REKEY_SECS: u64 = 3_600;

#[derive(Default)]
pub(super) struct Book {
    indexes: BTreeMap<Currency, LiquidationIndex>,
    /// Loans every tick must see: in margin call, or with breach ticks counted.
    watched: BTreeSet<String>,
}

impl Book {
    /// Put `loan` where its state says, or take it out of the book.
    pub(super) fn update(&mut self, loan: &Loan, now: u64) {
        let t = loan.terms.get();
        let currency = t.principal.currency;
        let priced = matches!(loan.state, LoanState::Active | LoanState::MarginCall);
        match (priced, loan.accrual) {
            (true, Some(accrual)) => {
                self.indexes
                    .entry(currency)
                    .or_insert_with(|| LiquidationIndex::new(currency, REKEY_SECS))
                    .upsert(
                        &loan.id,
                        IndexedLoan {
                            accrual,
                            collateral: loan.collateral,
                            threshold: t.margin_call_ltv,
                        },
                        now,
                    );
            }
            _ => {
                if let Some(index) = self.indexes.get_mut(&currency) {
                    index.remove(&loan.id);
                }
            }
        }
        if priced && (loan.state == LoanState::MarginCall || loan.breach_ticks > 0) {
            self.watched.insert(loan.id.clone());
        } else {
            self.watched.remove(&loan.id);
        }
    }

    /// The loans a tick at `price` can move: at or above their margin-call LTV, or
    /// watched. Sorted, each once.
    pub(super) fn candidates(&mut self, price: Price, now: u64) -> Vec<String> {
        let mut out: BTreeSet<String> = self.watched.clone();
        if let Some(index) = self.indexes.get_mut(&price.currency) {
            out.extend(index.breached(price, now));
        }
        out.into_iter().collect()
    }

    /// The loans every tick must see (in margin call, or with breach ticks counted).
    pub(super) fn watched(&self) -> Vec<String> {
        self.watched.iter().cloned().collect()
    }

    /// Loans in the book.
    pub(super) fn len(&self) -> usize {
        self.indexes.values().map(|i| i.len()).sum()
    }
}

impl super::Engine {
    /// How many loans each price tick prices (the active ones).
    pub fn priced_loans(&self) -> usize {
        self.book.len()
    }
}
