//! The engine: the single writer of loan state (DESIGN.md §5a). Sources produce inputs,
//! the pure state machine decides, the engine applies and carries decisions out.
//!
//! So far: [`decision`], what a liquidation, release or refund pays whom, computed
//! from stored facts alone, so that the transaction it derives is the same on every
//! rebuild (the arbiter signs only that transaction: `tx::sign_decision`); and
//! [`record`], a decision with its arbiter-signed PSBT and its progress (awaiting the
//! co-signature, finalized, broadcast), stored atomically with the loan transition
//! that advances it (`Store::apply_with_decision`): the outbox a restart resumes from.
//! [`adjust`] holds the decisions that leave a loan open: partial liquidations and
//! withdrawals (the one decision the arbiter signs last).

mod adjust;
mod book;
mod clock;
pub mod core;
pub mod decision;
mod follow;
pub mod record;
mod tick;
mod view;

pub use self::core::{
    latest_decision, Acceptance, ConfirmedSpend, Engine, EngineConfig, EngineError, EscrowRecord,
    EscrowView,
};
pub use adjust::{withdrawal_limit, WITHDRAWAL_MARGIN};
pub use clock::ClockOutcome;
pub use decision::{Decision, DecisionError, DecisionKind, WithdrawalError};
pub use record::{DecisionRecord, Progress, RecordError};
pub use tick::TickOutcome;
