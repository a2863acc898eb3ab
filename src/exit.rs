//! The exit kit: leaving an escrow without the service. A party's key alone spends
//! through its timelocked path once the chain reaches the height (the lender's default
//! claim at `default_height`, the borrower's recovery at `recovery_height`); the
//! borrower and the lender together spend through the cooperative path at any time,
//! the arbiter absent. Pure: the caller finds the escrow's outputs (its own Electrum)
//! and broadcasts.

use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{Address, Amount, FeeRate, ScriptBuf, Transaction};

use crate::keys::SigningKey;
use crate::policy::{EscrowDescriptor, PathName, Role};
use crate::tx::{self, EscrowInput, FeeCap, SpendRequest, TxError};

#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    #[error("this key is none of the escrow's keys (its fingerprint {fingerprint})")]
    NotAParty { fingerprint: String },
    #[error("this key is the arbiter's: the arbiter has no path of its own")]
    Arbiter,
    #[error("the escrow holds nothing to spend (no unspent output on the server)")]
    Empty,
    #[error(transparent)]
    Tx(#[from] TxError),
}

/// A signed solo exit.
#[derive(Debug, Clone)]
pub struct SoloExit {
    pub path: PathName,
    /// The height from which the transaction is final (its nLockTime).
    pub final_at: u32,
    pub tx: Transaction,
    pub fee: Amount,
}

/// The party `key` is in `escrow`, by its keys' fingerprints.
pub fn party_role(
    escrow: &EscrowDescriptor,
    key: &SigningKey,
    secp: &Secp256k1<All>,
) -> Result<Role, ExitError> {
    let fingerprint = key.fingerprint(secp);
    let roles: Vec<Role> = escrow
        .key_origins()
        .into_iter()
        .filter(|o| o.fingerprint == fingerprint)
        .map(|o| o.role)
        .collect();
    if roles.contains(&Role::Arbiter) {
        return Err(ExitError::Arbiter);
    }
    roles
        .into_iter()
        .find(|r| matches!(r, Role::Lender | Role::Borrower))
        .ok_or_else(|| ExitError::NotAParty {
            fingerprint: fingerprint.to_string(),
        })
}

/// Build, sign and finalize the spend of every output in `inputs` to `to` through the
/// solo path of `key`'s party: the lender's default claim or the borrower's recovery.
/// The transaction's nLockTime is the path's height: it is final (Bitcoin Core takes
/// it) once the chain's tip is at that height (nLockTime below the next block's
/// height), so it can be kept and broadcast later.
pub fn solo(
    escrow: &EscrowDescriptor,
    key: &SigningKey,
    inputs: Vec<EscrowInput>,
    to: &Address,
    fee_rate: FeeRate,
    cap: &FeeCap,
    secp: &Secp256k1<All>,
) -> Result<SoloExit, ExitError> {
    if inputs.is_empty() {
        return Err(ExitError::Empty);
    }
    let path = match party_role(escrow, key, secp)? {
        Role::Lender => PathName::DefaultClaim,
        _ => PathName::Recovery,
    };
    let final_at = escrow
        .path(path)
        .map_err(TxError::from)?
        .after_height
        .unwrap_or(0);
    let built = tx::build(
        escrow,
        &SpendRequest {
            path,
            inputs,
            payments: Vec::new(),
            rest_to: to.script_pubkey(),
            fee_rate,
            tip: final_at,
        },
    )?;
    let mut psbt = built.psbt;
    tx::sign(&mut psbt, key, escrow, cap, secp)?;
    let tx = tx::finalize(&psbt, secp)?;
    Ok(SoloExit {
        path,
        final_at,
        tx,
        fee: built.fee,
    })
}

/// The cooperative path (borrower + lender, no arbiter): a PSBT paying `payments` and
/// the rest to `rest_to`, signed by `key`; the other party signs it with its own key
/// (`btc-escrow psbt sign`), then `psbt finalize` and broadcast.
#[allow(clippy::too_many_arguments)]
pub fn cooperative(
    escrow: &EscrowDescriptor,
    key: &SigningKey,
    inputs: Vec<EscrowInput>,
    payments: Vec<(ScriptBuf, Amount)>,
    rest_to: ScriptBuf,
    fee_rate: FeeRate,
    tip: u32,
    cap: &FeeCap,
    secp: &Secp256k1<All>,
) -> Result<(Psbt, Amount), ExitError> {
    if inputs.is_empty() {
        return Err(ExitError::Empty);
    }
    party_role(escrow, key, secp)?;
    let built = tx::build(
        escrow,
        &SpendRequest {
            path: PathName::Cooperative,
            inputs,
            payments,
            rest_to,
            fee_rate,
            tip,
        },
    )?;
    let mut psbt = built.psbt;
    tx::sign(&mut psbt, key, escrow, cap, secp)?;
    Ok((psbt, built.fee))
}
