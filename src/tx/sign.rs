//! Signing, bound to the escrow: a key signs only inputs that spend this escrow's
//! script with this escrow's witness script, only for its own keys of this escrow
//! (each derived and compared with the key the PSBT lists), and only under a fee cap.
//! The arbiter additionally signs only the transaction of a recorded decision
//! (DESIGN.md §6). Pure: no I/O.

use std::collections::BTreeMap;

use bitcoin::bip32::{DerivationPath, Fingerprint};
use bitcoin::ecdsa::Signature;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, Message, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, Transaction};

use super::{check_inputs, TxError};
use crate::keys::SigningKey;
use crate::policy::{EscrowDescriptor, KeyOrigin, Role};

/// The most a signer lets a transaction pay in fees: both limits apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeCap {
    pub max_fee: Amount,
    /// Of the inputs' total, in basis points.
    pub max_fee_bps: u32,
}

impl Default for FeeCap {
    /// 0.001 BTC and 2 % of the inputs: an escrow spend is one or a few P2WSH inputs,
    /// a few hundred vbytes, so this is over 300 sat/vB.
    fn default() -> Self {
        Self {
            max_fee: Amount::from_sat(100_000),
            max_fee_bps: 200,
        }
    }
}

impl FeeCap {
    /// The cap for inputs worth `inputs`: the smaller of the two limits (rounded
    /// down: never a satoshi above either).
    pub fn cap(&self, inputs: Amount) -> Amount {
        let relative = u128::from(inputs.to_sat()) * u128::from(self.max_fee_bps) / 10_000;
        self.max_fee.min(Amount::from_sat(
            u64::try_from(relative).unwrap_or(u64::MAX),
        ))
    }
}

/// The unsigned transaction a recorded decision derives (deterministically, from the
/// stored decision): the arbiter signs nothing else, to the byte (inputs, sequences,
/// outputs, nLockTime, version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendDecision {
    pub tx: Transaction,
}

/// The inputs' total and the fee, from the witness UTXOs (checked against the full
/// previous transactions by [`check_inputs`]).
fn fee_of(psbt: &Psbt) -> Result<(Amount, Amount), TxError> {
    let inputs = psbt
        .inputs
        .iter()
        .map(|i| i.witness_utxo.as_ref().map_or(Amount::ZERO, |u| u.value))
        .try_fold(Amount::ZERO, |a, v| a.checked_add(v))
        .ok_or(TxError::Overflow)?;
    let outputs = psbt
        .unsigned_tx
        .output
        .iter()
        .try_fold(Amount::ZERO, |a, o| a.checked_add(o.value))
        .ok_or(TxError::Overflow)?;
    let fee = inputs
        .checked_sub(outputs)
        .ok_or(TxError::OutputsExceedInputs { inputs, outputs })?;
    Ok((inputs, fee))
}

/// Sign `psbt` with `key` as the borrower or the lender of `escrow`: after
/// [`check_inputs`], every input must spend the escrow's script with its witness
/// script; every derivation the PSBT lists under this key's fingerprint must be one of
/// this key's keys in the escrow (any other is refused, not skipped: someone is asking
/// this key to sign something else); each key is derived and compared with the listed
/// one; the fee must be within `cap`. The arbiter's key is refused here: it signs only
/// through [`sign_decision`]. Returns how many of this key's escrow keys have a
/// signature on the PSBT (a repeated call, giving the same RFC 6979 signatures, counts
/// them again); on error `psbt` is untouched.
pub fn sign(
    psbt: &mut Psbt,
    key: &SigningKey,
    escrow: &EscrowDescriptor,
    cap: &FeeCap,
    secp: &Secp256k1<All>,
) -> Result<usize, TxError> {
    sign_as(psbt, key, escrow, cap, secp, false)
}

fn sign_as(
    psbt: &mut Psbt,
    key: &SigningKey,
    escrow: &EscrowDescriptor,
    cap: &FeeCap,
    secp: &Secp256k1<All>,
    arbiter_for_decision: bool,
) -> Result<usize, TxError> {
    check_inputs(psbt)?;
    let spk = escrow.script_pubkey();
    let witness_script = escrow.witness_script();
    for (index, input) in psbt.inputs.iter().enumerate() {
        let script = input
            .witness_utxo
            .as_ref()
            .map(|u| u.script_pubkey.clone())
            .unwrap_or_default();
        if script != spk {
            return Err(TxError::ForeignInput { index, script });
        }
        if input.witness_script.as_ref() != Some(&witness_script) {
            return Err(TxError::WrongWitnessScript { index });
        }
    }
    let (inputs, fee) = fee_of(psbt)?;
    let limit = cap.cap(inputs);
    if fee > limit {
        return Err(TxError::FeeAboveCap {
            fee,
            cap: limit,
            max_fee: cap.max_fee,
            max_fee_bps: cap.max_fee_bps,
            inputs,
        });
    }

    let fingerprint = key.fingerprint(secp);
    let origins: Vec<KeyOrigin> = escrow
        .key_origins()
        .into_iter()
        .filter(|k| k.fingerprint == fingerprint)
        .collect();
    if !arbiter_for_decision && origins.iter().any(|k| k.role == Role::Arbiter) {
        return Err(TxError::ArbiterNeedsDecision);
    }
    // This key's keys in the escrow: public key → full path from the master.
    let ours: BTreeMap<bitcoin::secp256k1::PublicKey, DerivationPath> =
        origins.into_iter().map(|k| (k.key.inner, k.path)).collect();
    let mut signed = psbt.clone();
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    let mut count = 0;
    for (index, input) in signed.inputs.iter_mut().enumerate() {
        let asked: Vec<(bitcoin::secp256k1::PublicKey, Fingerprint, DerivationPath)> = input
            .bip32_derivation
            .iter()
            .filter(|(_, (fp, _))| *fp == fingerprint)
            .map(|(pk, (fp, path))| (*pk, *fp, path.clone()))
            .collect();
        for (listed, _, path) in asked {
            if ours.get(&listed) != Some(&path) {
                return Err(TxError::UnexpectedDerivation { index, path });
            }
            let (secret, public) = key.derive_pair(secp, &path)?;
            if public != listed {
                return Err(TxError::DerivedKeyMismatch { index, path });
            }
            let value = input
                .witness_utxo
                .as_ref()
                .expect("checked above: every input has the escrow's witness_utxo")
                .value;
            let sighash = cache
                .p2wsh_signature_hash(index, &witness_script, value, EcdsaSighashType::All)
                .map_err(|source| TxError::Sighash { index, source })?;
            let signature = secp.sign_ecdsa(&Message::from(sighash), &secret);
            input.partial_sigs.insert(
                bitcoin::PublicKey::new(listed),
                Signature {
                    signature,
                    sighash_type: EcdsaSighashType::All,
                },
            );
            count += 1;
        }
    }
    if count == 0 {
        return Err(TxError::NothingToSign { fingerprint });
    }
    *psbt = signed;
    Ok(count)
}

/// The arbiter's signature: only on the transaction of `decision` (the unsigned
/// transaction equal to it, to the byte), then under every check of [`sign`].
pub fn sign_decision(
    psbt: &mut Psbt,
    key: &SigningKey,
    escrow: &EscrowDescriptor,
    decision: &SpendDecision,
    cap: &FeeCap,
    secp: &Secp256k1<All>,
) -> Result<usize, TxError> {
    if psbt.unsigned_tx != decision.tx {
        return Err(TxError::NotTheDecision(super::merge::differences(
            &decision.tx,
            &psbt.unsigned_tx,
        )));
    }
    sign_as(psbt, key, escrow, cap, secp, true)
}
