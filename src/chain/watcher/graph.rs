//! The transaction graph the watcher keeps: bdk_chain's `IndexedTxGraph`, indexed by
//! the escrow scripts of the loans it watches.

use bdk_chain::spk_txout::SpkTxOutIndex;
use bdk_chain::{ConfirmationBlockTime, IndexedTxGraph};

use super::LoanId;

pub(super) type Graph = IndexedTxGraph<ConfirmationBlockTime, SpkTxOutIndex<LoanId>>;
