//! Keys and signatures made by hand: the lender's escrow keys found through a PSBT's
//! derivations, and SIGHASH_ALL signatures of input 0 over whatever a case wants signed.

use anyhow::Context;
use bitcoin::bip32::{ChildNumber, DerivationPath, Xpriv};
use bitcoin::ecdsa::Signature;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, PublicKey, ScriptBuf};
use btc_escrow::keys::SigningKey;

/// A private key and its public key.
pub struct Key {
    pub sk: SecretKey,
    pub pk: PublicKey,
}

/// `key`'s escrow key on `chain` in `psbt` (input 0's bip32_derivation entry under
/// `key`'s fingerprint whose path ends `chain/index`): chain 0 is the 2-of-3 branch,
/// chain 2 the timelocked single-key branch.
pub fn escrow_key(
    psbt: &Psbt,
    key: &SigningKey,
    chain: u32,
    secp: &Secp256k1<All>,
) -> anyhow::Result<Key> {
    let fingerprint = key.master().fingerprint(secp);
    let path = psbt.inputs[0]
        .bip32_derivation
        .values()
        .find(|(fp, path)| {
            let steps: Vec<_> = path.into_iter().collect();
            *fp == fingerprint
                && steps.len() >= 2
                && *steps[steps.len() - 2] == ChildNumber::Normal { index: chain }
        })
        .map(|(_, p)| p.clone())
        .with_context(|| format!("no key of chain {chain} in the PSBT"))?;
    derived(key.master(), &path, secp)
}

/// The key at `path` under `master`.
pub fn derived(
    master: &Xpriv,
    path: &DerivationPath,
    secp: &Secp256k1<All>,
) -> anyhow::Result<Key> {
    let sk = master.derive_priv(secp, path)?.private_key;
    Ok(Key {
        sk,
        pk: PublicKey::new(sk.public_key(secp)),
    })
}

/// What a signature commits to where it is not the PSBT's own (input 0's witness
/// script and amount), and extra nonce data if any.
#[derive(Default)]
pub struct Over<'s> {
    pub script: Option<&'s ScriptBuf>,
    pub amount: Option<Amount>,
    pub nonce: Option<[u8; 32]>,
}

/// A SIGHASH_ALL signature of `psbt`'s input 0 by `key`, over what `over` says.
pub fn signature(
    psbt: &Psbt,
    key: &Key,
    over: Over,
    secp: &Secp256k1<All>,
) -> anyhow::Result<Signature> {
    let input = &psbt.inputs[0];
    let script = over
        .script
        .or(input.witness_script.as_ref())
        .context("witness_script")?;
    let amount = over
        .amount
        .or(input.witness_utxo.as_ref().map(|u| u.value))
        .context("witness_utxo")?;
    let sighash = SighashCache::new(&psbt.unsigned_tx).p2wsh_signature_hash(
        0,
        script,
        amount,
        EcdsaSighashType::All,
    )?;
    let msg = Message::from(sighash);
    let sig = match over.nonce {
        Some(n) => secp.sign_ecdsa_with_noncedata(&msg, &key.sk, &n),
        None => secp.sign_ecdsa(&msg, &key.sk),
    };
    Ok(Signature::sighash_all(sig))
}

/// Sign `psbt`'s input 0 as it stands with `key` and add the signature under its key.
pub fn sign(psbt: &mut Psbt, key: &Key, secp: &Secp256k1<All>) -> anyhow::Result<()> {
    let sig = signature(psbt, key, Over::default(), secp)?;
    psbt.inputs[0].partial_sigs.insert(key.pk, sig);
    Ok(())
}
