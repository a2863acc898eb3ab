//! What an escrow derives once, when it is built: each key's public key, the descriptor
//! over those keys, and each path's witness size. Building and signing a spend then do
//! no EC operation but the signature itself (a key derivation is one, and miniscript's
//! `DefiniteDescriptorKey::to_public_key` also builds a secp256k1 context per call).

use std::collections::{BTreeMap, BTreeSet};

use bitcoin::absolute::LockTime;
use bitcoin::consensus::encode::VarInt;
use miniscript::descriptor::{DescriptorPublicKey, WshInner};
use miniscript::miniscript::satisfy::{Placeholder, Witness};
use miniscript::plan::AssetProvider;
use miniscript::{translate_hash_clone, Descriptor, TranslatePk, Translator};

use super::{PolicyError, SpendingPath};

/// Replaces each escrow key by its derived public key.
struct Derived<'a>(&'a BTreeMap<DescriptorPublicKey, bitcoin::PublicKey>);

impl Translator<DescriptorPublicKey, bitcoin::PublicKey, String> for Derived<'_> {
    fn pk(&mut self, pk: &DescriptorPublicKey) -> Result<bitcoin::PublicKey, String> {
        self.0
            .get(pk)
            .copied()
            .ok_or_else(|| format!("{pk}: not an escrow key"))
    }

    translate_hash_clone!(DescriptorPublicKey, bitcoin::PublicKey, String);
}

/// The descriptor with every key replaced by its derived public key.
pub(super) fn concrete(
    descriptor: &Descriptor<DescriptorPublicKey>,
    keys: &BTreeMap<DescriptorPublicKey, bitcoin::PublicKey>,
) -> Result<Descriptor<bitcoin::PublicKey>, PolicyError> {
    descriptor
        .translate_pk(&mut Derived(keys))
        .map_err(|e| PolicyError::Descriptor(format!("deriving the escrow's keys: {e:?}")))
}

/// What a path's signers hold: a signature from each of its keys and, for a
/// timelocked path, a transaction locked at its height.
struct PathAssets {
    keys: BTreeSet<bitcoin::PublicKey>,
    after: Option<LockTime>,
}

impl AssetProvider<bitcoin::PublicKey> for PathAssets {
    fn provider_lookup_ecdsa_sig(&self, pk: &bitcoin::PublicKey) -> bool {
        self.keys.contains(pk)
    }

    fn check_after(&self, l: LockTime) -> bool {
        self.after.is_some_and(|t| l.is_implied_by(t))
    }
}

/// The size of the witness items that satisfy `path` (signatures counted at their
/// largest, 73 bytes with the length byte), with the item count, without the witness
/// script: what miniscript's `Plan::witness_size` gives (a test checks it path by
/// path), computed on derived keys.
pub(super) fn witness_size(
    concrete: &Descriptor<bitcoin::PublicKey>,
    keys: &BTreeMap<DescriptorPublicKey, bitcoin::PublicKey>,
    path: &SpendingPath,
) -> Result<usize, PolicyError> {
    let unplannable = |why: &str| PolicyError::Descriptor(format!("{:?}: {why}", path.name));
    let Descriptor::Wsh(wsh) = concrete else {
        return Err(unplannable("not a wsh() descriptor"));
    };
    let WshInner::Ms(ms) = wsh.as_inner() else {
        return Err(unplannable("not a miniscript"));
    };
    let assets = PathAssets {
        keys: path
            .keys
            .iter()
            .map(|k| {
                keys.get(k)
                    .copied()
                    .ok_or_else(|| unplannable("unknown key"))
            })
            .collect::<Result<_, _>>()?,
        after: match path.after_height {
            Some(h) => Some(LockTime::from_height(h).map_err(|_| unplannable("height"))?),
            None => None,
        },
    };
    let Witness::Stack(items) = ms.build_template(&assets).stack else {
        return Err(unplannable("its signers cannot satisfy it"));
    };
    let mut size = VarInt::from(items.len()).size();
    for item in &items {
        size += match item {
            Placeholder::Pubkey(_, n) | Placeholder::PubkeyHash(_, n) => *n,
            Placeholder::EcdsaSigPk(_) | Placeholder::EcdsaSigPkHash(_) => 73,
            Placeholder::HashDissatisfaction
            | Placeholder::Sha256Preimage(_)
            | Placeholder::Hash256Preimage(_)
            | Placeholder::Ripemd160Preimage(_)
            | Placeholder::Hash160Preimage(_) => 33,
            Placeholder::PushOne => 2,
            Placeholder::PushZero => 1,
            Placeholder::SchnorrSigPk(..)
            | Placeholder::SchnorrSigPkHash(..)
            | Placeholder::TapScript(_)
            | Placeholder::TapControlBlock(_) => return Err(unplannable("a taproot item")),
        };
    }
    Ok(size)
}
