//! Merging a party's co-signed PSBT into the service's own copy: only if the unsigned
//! transaction is identical, only partial signatures are taken, and each is verified
//! against the sighash computed from the service's copy before it is kept.

use bitcoin::ecdsa::Signature;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Message, Secp256k1, Verification};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::PublicKey;

use super::{check_inputs, TxError};

/// Why a co-signed PSBT was refused. The service's copy is never changed by a refusal.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("unsigned transaction differs: {0}")]
    TxDiffers(String),
    #[error("co-signed PSBT: {0}")]
    BadInput(#[from] TxError),
    #[error(
        "input {index}: signature of {key} uses sighash {found}; only SIGHASH_ALL is accepted"
    )]
    NonAllSighash {
        index: usize,
        key: PublicKey,
        found: EcdsaSighashType,
    },
    #[error("input {index}: {key} is not a key of this escrow")]
    UnknownKey { index: usize, key: PublicKey },
    #[error("input {index}: {key} is an uncompressed key; segwit v0 takes compressed keys only")]
    UncompressedKey { index: usize, key: PublicKey },
    #[error("input {index}: the signature of {key} does not verify")]
    BadSignature { index: usize, key: PublicKey },
    #[error("input {index}: cannot compute the sighash: {reason}")]
    Sighash { index: usize, reason: String },
    #[error("the co-signed PSBT carries no new signature")]
    NothingNew,
}

/// What differs between two unsigned transactions, named field by field.
pub(super) fn differences(ours: &bitcoin::Transaction, theirs: &bitcoin::Transaction) -> String {
    let mut what = Vec::new();
    if ours.version != theirs.version {
        what.push("version".to_owned());
    }
    if ours.lock_time != theirs.lock_time {
        what.push(format!(
            "nLockTime {} != {}",
            theirs.lock_time, ours.lock_time
        ));
    }
    if ours.input.len() != theirs.input.len() {
        what.push(format!(
            "{} inputs instead of {}",
            theirs.input.len(),
            ours.input.len()
        ));
    } else {
        for (i, (a, b)) in ours.input.iter().zip(&theirs.input).enumerate() {
            if a.previous_output != b.previous_output {
                what.push(format!("input {i} spends {}", b.previous_output));
            }
            if a.sequence != b.sequence {
                what.push(format!("input {i} sequence {}", b.sequence));
            }
            if a.script_sig != b.script_sig || a.witness != b.witness {
                what.push(format!("input {i} carries a scriptSig or witness"));
            }
        }
    }
    if ours.output.len() != theirs.output.len() {
        what.push(format!(
            "{} outputs instead of {}",
            theirs.output.len(),
            ours.output.len()
        ));
    } else {
        for (i, (a, b)) in ours.output.iter().zip(&theirs.output).enumerate() {
            if a.value != b.value {
                what.push(format!(
                    "output {i} amount {} instead of {}",
                    b.value, a.value
                ));
            }
            if a.script_pubkey != b.script_pubkey {
                what.push(format!("output {i} script"));
            }
        }
    }
    what.join(", ")
}

/// Return `ours` with the verified partial signatures of `theirs` added, or an error
/// (and `ours` untouched).
pub fn merge<C: Verification>(
    ours: &Psbt,
    theirs: &Psbt,
    secp: &Secp256k1<C>,
) -> Result<Psbt, MergeError> {
    merge_with(ours, theirs, secp, true)
}

/// Why a co-signed PSBT was not merged and finalized.
#[derive(Debug, thiserror::Error)]
pub enum CosignError {
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(transparent)]
    Finalize(TxError),
}

/// [`merge`] then [`finalize`](super::finalize), verifying each signature once. The
/// finalizer's interpreter verifies every signature the final witnesses carry, so
/// those are not verified first as well; a signature added that no final witness
/// carries is verified here. If finalizing fails, the verifying [`merge`] runs to name
/// a bad signature (or any other refusal) as it would have; otherwise the finalizer's
/// error is returned. `ours` is never changed.
pub fn merge_and_finalize<C: Verification>(
    ours: &Psbt,
    theirs: &Psbt,
    secp: &Secp256k1<C>,
) -> Result<(Psbt, bitcoin::Transaction), CosignError> {
    let merged = merge_with(ours, theirs, secp, false)?;
    let tx = match super::finalize(&merged, secp) {
        Ok(tx) => tx,
        Err(e) => {
            merge(ours, theirs, secp)?;
            return Err(CosignError::Finalize(e));
        }
    };
    let mut cache = SighashCache::new(&merged.unsigned_tx);
    for (index, (input, txin)) in merged.inputs.iter().zip(&tx.input).enumerate() {
        for (key, sig) in &input.partial_sigs {
            let in_witness = txin
                .witness
                .iter()
                .any(|item| item == sig.to_vec().as_slice());
            if in_witness || ours.inputs[index].partial_sigs.get(key) == Some(sig) {
                continue;
            }
            let (Some(script), Some(utxo)) = (&input.witness_script, &input.witness_utxo) else {
                return Err(MergeError::Sighash {
                    index,
                    reason: "the service's copy lacks witness_script or witness_utxo".into(),
                }
                .into());
            };
            verify(
                &mut cache,
                index,
                script,
                utxo.value,
                key,
                &sig.signature,
                secp,
            )?;
        }
    }
    Ok((merged, tx))
}

/// Verify `signature` by `key` of input `index` (P2WSH, SIGHASH_ALL).
fn verify<C: Verification>(
    cache: &mut SighashCache<&bitcoin::Transaction>,
    index: usize,
    script: &bitcoin::Script,
    value: bitcoin::Amount,
    key: &PublicKey,
    signature: &bitcoin::secp256k1::ecdsa::Signature,
    secp: &Secp256k1<C>,
) -> Result<(), MergeError> {
    let sighash = cache
        .p2wsh_signature_hash(index, script, value, EcdsaSighashType::All)
        .map_err(|e| MergeError::Sighash {
            index,
            reason: e.to_string(),
        })?;
    secp.verify_ecdsa(&Message::from(sighash), signature, &key.inner)
        .map_err(|_| MergeError::BadSignature { index, key: *key })
}

fn merge_with<C: Verification>(
    ours: &Psbt,
    theirs: &Psbt,
    secp: &Secp256k1<C>,
    verify_now: bool,
) -> Result<Psbt, MergeError> {
    if ours.unsigned_tx != theirs.unsigned_tx {
        return Err(MergeError::TxDiffers(differences(
            &ours.unsigned_tx,
            &theirs.unsigned_tx,
        )));
    }
    check_inputs(theirs)?;
    let mut merged = ours.clone();
    let mut cache = SighashCache::new(&ours.unsigned_tx);
    let mut added = 0;
    for (index, (mine, their)) in merged.inputs.iter_mut().zip(&theirs.inputs).enumerate() {
        let (Some(script), Some(utxo)) = (&mine.witness_script, &mine.witness_utxo) else {
            return Err(MergeError::Sighash {
                index,
                reason: "the service's copy lacks witness_script or witness_utxo".into(),
            });
        };
        for (key, sig) in &their.partial_sigs {
            let Signature {
                signature,
                sighash_type,
            } = *sig;
            if sighash_type != EcdsaSighashType::All {
                return Err(MergeError::NonAllSighash {
                    index,
                    key: *key,
                    found: sighash_type,
                });
            }
            // bip32_derivation is keyed by the bare point: without this, the uncompressed
            // form of a key already there would pass as a new signature.
            if !key.compressed {
                return Err(MergeError::UncompressedKey { index, key: *key });
            }
            if !mine.bip32_derivation.contains_key(&key.inner) {
                return Err(MergeError::UnknownKey { index, key: *key });
            }
            // Our own signature handed back (the party signed the PSBT we showed it):
            // the same bytes under the same key, nothing to verify or add.
            if mine.partial_sigs.get(key) == Some(sig) {
                continue;
            }
            if verify_now {
                verify(&mut cache, index, script, utxo.value, key, &signature, secp)?;
            }
            if mine.partial_sigs.insert(*key, *sig).is_none() {
                added += 1;
            }
        }
    }
    if added == 0 {
        return Err(MergeError::NothingNew);
    }
    Ok(merged)
}
