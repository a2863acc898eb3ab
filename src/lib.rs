//! btc-escrow: a Bitcoin-native collateral escrow for crypto-backed loans.
//!
//! The layout follows DESIGN.md §11: `loan/` and `policy/` are pure domain code,
//! `store/` is the only module that touches sled, `chain/` the only one that talks to
//! Electrum, `api/` the only one that serves HTTP (`client` is its other side, for the parties'
//! tools; `oracle/` fetches the exchanges' prices).

pub mod alloc;
pub mod api;
pub mod chain;
pub mod client;
pub mod config;
pub mod cosigner;
pub mod engine;
pub mod exit;
pub mod init;
pub mod keys;
pub mod loan;
pub mod oracle;
pub mod policy;
pub mod service;
pub mod store;
pub mod tx;
pub mod util;
pub mod verify;
