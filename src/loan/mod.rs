//! The loan domain, pure (no I/O): money types, validated terms, the arithmetic of
//! owed amounts, LTV and liquidation splits, the lifecycle state machine, and the
//! liquidation-price index the engine consults on every price tick.

pub mod calc;
pub mod index;
mod inputs;
pub mod money;
pub mod partial;
pub mod plan;
pub mod state;
pub mod terms;
mod transition;

pub use money::{Bps, Currency, Fiat, Price};
pub use state::{
    apply, Adjustment, AdjustmentKind, Event, Input, LiquidationReason, Loan, LoanState,
    PriceEvidence, QuoteEvidence, TransitionError, TxKind,
};
pub use terms::{EscrowSchedule, LoanTerms, TermsError, TermsInput};
