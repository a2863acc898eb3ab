//! PSBTs for the escrow's spending paths: build (with every field a hardware signer
//! needs), sign (SIGHASH_ALL only, after checking every input), merge a party's
//! co-signed copy (partial signatures only, each verified), finalize and extract with
//! miniscript. Pure: no I/O.

mod describe;
mod merge;
mod sign;

pub use describe::describe;
pub use merge::{merge, merge_and_finalize, CosignError, MergeError};
pub use sign::{sign, sign_decision, FeeCap, SpendDecision};

use std::collections::BTreeSet;

use bitcoin::absolute::LockTime;
use bitcoin::consensus::encode::VarInt;
use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::secp256k1::{Secp256k1, Verification};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::transaction::Version;
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Weight};
use miniscript::psbt::PsbtExt;

use crate::policy::{EscrowDescriptor, PathName, PolicyError};

/// Errors building, signing or finalizing; each names the input, output or field.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error("inputs: at least one escrow UTXO is needed")]
    NoInputs,
    #[error("input {outpoint}: listed twice")]
    DuplicateInput { outpoint: OutPoint },
    #[error("input {outpoint}: the previous transaction given has txid {found}")]
    PrevTxMismatch {
        outpoint: OutPoint,
        found: bitcoin::Txid,
    },
    #[error("input {outpoint}: the previous transaction has no output {vout}")]
    NoSuchOutput { outpoint: OutPoint, vout: u32 },
    #[error("input {outpoint}: does not pay to the escrow script")]
    NotEscrow { outpoint: OutPoint },
    #[error("payment {index}: {amount} is below the dust limit {dust} of its script")]
    PaymentBelowDust {
        index: usize,
        amount: Amount,
        dust: Amount,
    },
    #[error("rest: {rest} left after payments and a fee of {fee} is below the dust limit {dust}")]
    RestBelowDust {
        rest: Amount,
        fee: Amount,
        dust: Amount,
    },
    #[error("amounts: payments {payments} plus fee {fee} exceed the inputs {inputs}")]
    InsufficientFunds {
        inputs: Amount,
        payments: Amount,
        fee: Amount,
    },
    #[error("amounts: overflow")]
    Overflow,
    #[error("tip: {0} is not a block height")]
    BadTip(u32),
    #[error("path {path}: cannot plan a satisfaction with its keys")]
    Unplannable { path: PathName },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("input {index}: non_witness_utxo is missing; the amount cannot be checked")]
    MissingPrevTx { index: usize },
    #[error("input {index}: non_witness_utxo is {found} but the input spends {spends}")]
    WrongPrevTx {
        index: usize,
        found: bitcoin::Txid,
        spends: bitcoin::Txid,
    },
    #[error("input {index}: non_witness_utxo has no output {vout}")]
    NoSuchPrevOutput { index: usize, vout: u32 },
    #[error("input {index}: witness_utxo is missing or differs from the output it spends")]
    WitnessUtxoMismatch { index: usize },
    #[error("input {index}: cannot compute its sighash: {source}")]
    Sighash {
        index: usize,
        source: bitcoin::transaction::InputsIndexError,
    },
    #[error("input {index}: asks for sighash {found}; only SIGHASH_ALL is signed")]
    NonAllSighash { index: usize, found: String },
    #[error("this key ({fingerprint}) holds none of the escrow keys the PSBT asks to sign: nothing to sign")]
    NothingToSign {
        fingerprint: bitcoin::bip32::Fingerprint,
    },
    #[error(
        "input {index}: spends {script}, not this escrow's script; a foreign input is never signed"
    )]
    ForeignInput { index: usize, script: ScriptBuf },
    #[error("input {index}: its witness_script is missing or is not this escrow's")]
    WrongWitnessScript { index: usize },
    #[error("input {index}: asks this key to sign for {path}, which is not one of its keys in this escrow")]
    UnexpectedDerivation {
        index: usize,
        path: bitcoin::bip32::DerivationPath,
    },
    #[error("input {index}: the key derived at {path} is not the key the PSBT lists")]
    DerivedKeyMismatch {
        index: usize,
        path: bitcoin::bip32::DerivationPath,
    },
    #[error("fee: {fee} is above the cap of {cap} ({max_fee} absolute, {max_fee_bps} bps of the inputs {inputs})")]
    FeeAboveCap {
        fee: Amount,
        cap: Amount,
        max_fee: Amount,
        max_fee_bps: u32,
        inputs: Amount,
    },
    #[error("outputs: {outputs} exceed the inputs {inputs}")]
    OutputsExceedInputs { inputs: Amount, outputs: Amount },
    #[error("decision: the PSBT differs from the recorded decision: {0}")]
    NotTheDecision(String),
    #[error("the arbiter's key signs only the transaction of a recorded decision (sign_decision)")]
    ArbiterNeedsDecision,
    #[error("deriving a key to sign with: {0}")]
    Derive(#[from] bitcoin::bip32::Error),
    #[error("cannot finalize: {0}")]
    Finalize(String),
}

/// An escrow UTXO with its full previous transaction (segwit v0 amount attack,
/// CVE-2020-14199: signers check the amount against it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EscrowInput {
    pub outpoint: OutPoint,
    pub prev_tx: Transaction,
}

impl EscrowInput {
    pub fn txout(&self) -> Option<&TxOut> {
        self.prev_tx.output.get(self.outpoint.vout as usize)
    }

    /// What `inputs` hold together (`None` on overflow).
    pub fn total(inputs: &[EscrowInput]) -> Option<Amount> {
        inputs
            .iter()
            .filter_map(|i| i.txout().map(|o| o.value))
            .try_fold(Amount::ZERO, |a, v| a.checked_add(v))
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct SpendRequest {
    pub path: PathName,
    pub inputs: Vec<EscrowInput>,
    /// Fixed payments, in order, before the rest.
    pub payments: Vec<(ScriptBuf, Amount)>,
    /// Receives what is left after payments and fee.
    pub rest_to: ScriptBuf,
    pub fee_rate: FeeRate,
    /// Current chain tip: nLockTime for untimelocked paths (anti fee sniping).
    pub tip: u32,
}

/// A built, unsigned PSBT and the numbers behind it.
#[derive(Debug, Clone)]
pub struct BuiltSpend {
    pub psbt: Psbt,
    pub fee: Amount,
    /// Upper bound of the signed transaction's weight (signatures counted at 73 bytes).
    pub max_weight: Weight,
    pub rest: Amount,
}

/// RBF signalled, and nLockTime enforced.
pub const SEQUENCE: Sequence = Sequence::ENABLE_RBF_NO_LOCKTIME;

/// Build the PSBT for `req` spending `escrow`.
pub fn build(escrow: &EscrowDescriptor, req: &SpendRequest) -> Result<BuiltSpend, TxError> {
    if req.inputs.is_empty() {
        return Err(TxError::NoInputs);
    }
    let spk = escrow.script_pubkey();
    let mut seen = BTreeSet::new();
    let mut total_in = Amount::ZERO;
    for input in &req.inputs {
        let outpoint = input.outpoint;
        if !seen.insert(outpoint) {
            return Err(TxError::DuplicateInput { outpoint });
        }
        let found = input.prev_tx.compute_txid();
        if found != outpoint.txid {
            return Err(TxError::PrevTxMismatch { outpoint, found });
        }
        let txout = input.txout().ok_or(TxError::NoSuchOutput {
            outpoint,
            vout: outpoint.vout,
        })?;
        if txout.script_pubkey != spk {
            return Err(TxError::NotEscrow { outpoint });
        }
        total_in = total_in.checked_add(txout.value).ok_or(TxError::Overflow)?;
    }
    for (index, (script, amount)) in req.payments.iter().enumerate() {
        let dust = script.minimal_non_dust();
        if *amount < dust {
            return Err(TxError::PaymentBelowDust {
                index,
                amount: *amount,
                dust,
            });
        }
    }

    let path = escrow.path(req.path)?;
    let lock_time = match path.after_height {
        Some(h) => LockTime::from_height(h).map_err(|_| TxError::BadTip(h))?,
        None => LockTime::from_height(req.tip).map_err(|_| TxError::BadTip(req.tip))?,
    };
    let planned = escrow
        .witness_size(req.path)
        .map_err(|_| TxError::Unplannable { path: req.path })?;
    let witness_script_len = escrow.witness_script().len();
    // Per input: the planned witness items (with their count) plus the witness script
    // pushed last; the witness-item count is the same varint size with one more item.
    let witness_per_input = planned + VarInt::from(witness_script_len).size() + witness_script_len;

    let mut outputs: Vec<TxOut> = req
        .payments
        .iter()
        .map(|(script, amount)| TxOut {
            value: *amount,
            script_pubkey: script.clone(),
        })
        .collect();
    outputs.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: req.rest_to.clone(),
    });
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time,
        input: req
            .inputs
            .iter()
            .map(|i| TxIn {
                previous_output: i.outpoint,
                sequence: SEQUENCE,
                ..TxIn::default()
            })
            .collect(),
        output: outputs,
    };
    // Weight without witnesses, plus the segwit marker and flag, plus each witness.
    let witness_wu = witness_per_input
        .checked_mul(tx.input.len())
        .ok_or(TxError::Overflow)?;
    let max_weight = tx.weight() + Weight::from_wu(2 + witness_wu as u64);
    // Rounding: the fee is for the vsize rounded up, so it never falls short.
    let fee = req
        .fee_rate
        .fee_vb(max_weight.to_vbytes_ceil())
        .ok_or(TxError::Overflow)?;
    let payments = req
        .payments
        .iter()
        .try_fold(Amount::ZERO, |acc, (_, a)| acc.checked_add(*a))
        .ok_or(TxError::Overflow)?;
    let spent = payments.checked_add(fee).ok_or(TxError::Overflow)?;
    let rest = total_in
        .checked_sub(spent)
        .ok_or(TxError::InsufficientFunds {
            inputs: total_in,
            payments,
            fee,
        })?;
    let dust = req.rest_to.minimal_non_dust();
    if rest < dust {
        return Err(TxError::RestBelowDust { rest, fee, dust });
    }
    tx.output
        .last_mut()
        .expect("the rest output was pushed")
        .value = rest;

    let mut psbt = Psbt::from_unsigned_tx(tx).expect("inputs carry no scriptSig or witness");
    // What `update_input_with_descriptor` writes for a wsh() input (the witness script
    // and every key's origin), from what the escrow derived once.
    for (psbt_in, input) in psbt.inputs.iter_mut().zip(&req.inputs) {
        psbt_in.witness_utxo = input.txout().cloned();
        psbt_in.non_witness_utxo = Some(input.prev_tx.clone());
        psbt_in.sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::All));
        psbt_in.witness_script = Some(escrow.witness_script());
        psbt_in.bip32_derivation = escrow.bip32_derivations().clone();
    }
    Ok(BuiltSpend {
        psbt,
        fee,
        max_weight,
        rest,
    })
}

/// Check what a signer must check before signing any input: SIGHASH_ALL only, the full
/// previous transaction present and hashing to the outpoint, the witness UTXO equal to
/// the output it spends.
pub fn check_inputs(psbt: &Psbt) -> Result<(), TxError> {
    for (index, (input, txin)) in psbt.inputs.iter().zip(&psbt.unsigned_tx.input).enumerate() {
        if let Some(ty) = input.sighash_type {
            if ty.ecdsa_hash_ty().ok() != Some(EcdsaSighashType::All) {
                return Err(TxError::NonAllSighash {
                    index,
                    found: ty.to_string(),
                });
            }
        }
        let prev = input
            .non_witness_utxo
            .as_ref()
            .ok_or(TxError::MissingPrevTx { index })?;
        if prev.compute_txid() != txin.previous_output.txid {
            return Err(TxError::WrongPrevTx {
                index,
                found: prev.compute_txid(),
                spends: txin.previous_output.txid,
            });
        }
        let spent = prev.output.get(txin.previous_output.vout as usize).ok_or(
            TxError::NoSuchPrevOutput {
                index,
                vout: txin.previous_output.vout,
            },
        )?;
        if input.witness_utxo.as_ref() != Some(spent) {
            return Err(TxError::WitnessUtxoMismatch { index });
        }
        for (pk, sig) in &input.partial_sigs {
            if sig.sighash_type != EcdsaSighashType::All {
                return Err(TxError::NonAllSighash {
                    index,
                    found: format!("{} (signature of {pk})", sig.sighash_type),
                });
            }
        }
    }
    Ok(())
}

/// Finalize with miniscript (the cheapest satisfaction the signatures allow) and extract
/// the transaction. Miniscript's interpreter checks every input's final witness against
/// the transaction (every signature verified) as it finalizes it; no input is taken as
/// already final (their final fields are cleared first), so the extracted transaction
/// is the one checked, and extracting it does not run the interpreter a second time.
///
/// An input without a witness UTXO whose previous transaction lacks the output it
/// spends is refused here: miniscript's finalizer would index past that transaction's
/// outputs and panic.
pub fn finalize<C: Verification>(psbt: &Psbt, secp: &Secp256k1<C>) -> Result<Transaction, TxError> {
    for (index, (input, txin)) in psbt.inputs.iter().zip(&psbt.unsigned_tx.input).enumerate() {
        let vout = txin.previous_output.vout;
        if let (None, Some(prev)) = (&input.witness_utxo, &input.non_witness_utxo) {
            if prev.output.len() <= vout as usize {
                return Err(TxError::NoSuchPrevOutput { index, vout });
            }
        }
    }
    let mut work = psbt.clone();
    for input in &mut work.inputs {
        input.final_script_sig = None;
        input.final_script_witness = None;
    }
    if let Err(errors) = work.finalize_mut(secp) {
        let mut reasons = Vec::new();
        for (index, input) in psbt.inputs.iter().enumerate() {
            let signers: Vec<String> = input
                .partial_sigs
                .keys()
                .map(|pk| match input.bip32_derivation.get(&pk.inner) {
                    Some((fp, path)) => {
                        format!("[{fp}/{}]", path.to_string().trim_start_matches("m/"))
                    }
                    None => pk.to_string(),
                })
                .collect();
            reasons.push(format!(
                "input {index}: signatures from {}",
                if signers.is_empty() {
                    "nobody".to_owned()
                } else {
                    signers.join(", ")
                }
            ));
        }
        let lock = psbt.unsigned_tx.lock_time;
        return Err(TxError::Finalize(format!(
            "{} (nLockTime {lock}): missing signatures for every path, or a timelock above nLockTime; {}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
            reasons.join("; ")
        )));
    }
    let mut tx = work.unsigned_tx.clone();
    for (txin, input) in tx.input.iter_mut().zip(&work.inputs) {
        txin.witness = input.final_script_witness.clone().unwrap_or_default();
        txin.script_sig = input.final_script_sig.clone().unwrap_or_default();
    }
    Ok(tx)
}

#[cfg(test)]
mod sign_tests;
#[cfg(test)]
pub(crate) mod tests;
