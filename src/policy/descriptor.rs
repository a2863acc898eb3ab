//! The compiled, checked [`EscrowDescriptor`]: parsing a given descriptor back to its
//! parties' roles, its addresses and wallet policy, and classifying an observed spend.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use bitcoin::secp256k1::{Secp256k1, Verification};
use bitcoin::{Address, Network, ScriptBuf, Transaction, TxOut};
use miniscript::descriptor::{DefiniteDescriptorKey, DescriptorPublicKey};
use miniscript::policy::Liftable;
use miniscript::{Descriptor, ForEachKey};
use serde::Serialize;

use super::analysis::{check_guarantees, minimal_paths};
use super::derived;
use super::{
    EscrowHeights, EscrowKeys, Party, PartyAccounts, PathName, PolicyError, PolicyTemplate, Role,
    SpendingPath,
};
use crate::keys::{Chain, KeyError};

/// A compiled, checked escrow descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowDescriptor {
    descriptor: Descriptor<DescriptorPublicKey>,
    roles: BTreeMap<DescriptorPublicKey, Role>,
    heights: EscrowHeights,
    network: Network,
    index: u32,
    pub(super) paths: Vec<SpendingPath>,
    // Derived once: deriving the five keys costs about half a millisecond, and the
    // watcher asks for the script of thousands of escrows on every sync.
    script_pubkey: ScriptBuf,
    witness_script: ScriptBuf,
    pubkey_roles: BTreeMap<bitcoin::PublicKey, Role>,
    origins: Vec<KeyOrigin>,
    /// What a PSBT input spending the escrow lists in `bip32_derivation`.
    bip32_derivations: BTreeMap<bitcoin::secp256k1::PublicKey, bitcoin::bip32::KeySource>,
    /// Each path's witness size (as `paths`, in order), without the witness script.
    witness_sizes: Vec<usize>,
}

impl EscrowDescriptor {
    pub(super) fn from_parts(
        descriptor: Descriptor<DescriptorPublicKey>,
        roles: BTreeMap<DescriptorPublicKey, Role>,
        heights: EscrowHeights,
        network: Network,
        index: u32,
    ) -> Result<Self, PolicyError> {
        if !matches!(descriptor, Descriptor::Wsh(_)) {
            return Err(PolicyError::Descriptor(
                "only wsh() escrows are supported".into(),
            ));
        }
        if descriptor.has_wildcard() {
            return Err(PolicyError::Descriptor(
                "keys must not have wildcards".into(),
            ));
        }
        descriptor
            .sanity_check()
            .map_err(|e| PolicyError::Descriptor(e.to_string()))?;
        let lifted = descriptor
            .lift()
            .map_err(|e| PolicyError::Descriptor(e.to_string()))?;
        let raw = minimal_paths(&lifted)?;
        check_guarantees(
            &raw,
            &roles,
            heights.default_height,
            heights.recovery_height,
        )?;
        let mut paths: Vec<SpendingPath> = raw
            .iter()
            .map(|p| {
                let signer_roles: BTreeSet<Role> = p.keys.iter().map(|k| roles[k]).collect();
                SpendingPath {
                    name: PathName::of(&signer_roles, p.after),
                    signers: signer_roles.into_iter().collect(),
                    after_height: p.after,
                    keys: p.keys.iter().cloned().collect(),
                }
            })
            .collect();
        paths.sort_by_key(|p| (p.name, p.after_height));
        // Each key derived once, here (an EC operation each): building and signing a
        // spend of this escrow then derive nothing (see `derived`).
        let secp = Secp256k1::verification_only();
        let mut pubkey_roles = BTreeMap::new();
        let mut derived_keys = BTreeMap::new();
        let mut origins = Vec::new();
        for (key, role) in &roles {
            let derived = key
                .clone()
                .at_derivation_index(0)
                .and_then(|k| k.derive_public_key(&secp))
                .map_err(|e| PolicyError::Descriptor(e.to_string()))?;
            pubkey_roles.insert(derived, *role);
            derived_keys.insert(key.clone(), derived);
            if let DescriptorPublicKey::XPub(x) = key {
                if let Some((fingerprint, origin)) = &x.origin {
                    origins.push(KeyOrigin {
                        role: *role,
                        key: derived,
                        fingerprint: *fingerprint,
                        path: origin.extend(&x.derivation_path),
                    });
                }
            }
        }
        let concrete = derived::concrete(&descriptor, &derived_keys)?;
        let witness_sizes = paths
            .iter()
            .map(|p| derived::witness_size(&concrete, &derived_keys, p))
            .collect::<Result<_, _>>()?;
        let bip32_derivations = origins
            .iter()
            .map(|o| (o.key.inner, (o.fingerprint, o.path.clone())))
            .collect();
        Ok(Self {
            script_pubkey: concrete.script_pubkey(),
            witness_script: concrete
                .explicit_script()
                .map_err(|e| PolicyError::Descriptor(e.to_string()))?,
            pubkey_roles,
            origins,
            bip32_derivations,
            witness_sizes,
            descriptor,
            roles,
            heights,
            network,
            index,
            paths,
        })
    }

    /// Parse a descriptor made by [`PolicyTemplate::instantiate`] (e.g. given on the
    /// command line), trusting nothing of its shape: every key must be one of the
    /// parties' own account keys (same xpub and origin) at `/0/i` or `/2/i` of one
    /// escrow index `i`, and its role follows from whose account and which chain it is
    /// — never from where it sits in the script. The heights are read from the role's
    /// paths (the lender's default key's lock is `default_height`, the borrower's
    /// recovery key's `recovery_height`), so a descriptor with the two timelocked keys
    /// swapped is refused; then every guarantee is checked again.
    ///
    /// Finally the descriptor must be exactly what `template` gives for these keys,
    /// index and heights: a descriptor of the parties' keys in another shape (keys
    /// reordered, paths changed) is refused even when it would keep the guarantees.
    pub fn parse(
        text: &str,
        network: Network,
        accounts: &PartyAccounts,
        template: &PolicyTemplate,
    ) -> Result<Self, PolicyError> {
        let descriptor = Descriptor::<DescriptorPublicKey>::from_str(text.trim())
            .map_err(|e| PolicyError::Descriptor(e.to_string()))?;
        let mut all_keys = Vec::new();
        descriptor.for_each_key(|k| {
            all_keys.push(k.clone());
            true
        });
        let mut roles = BTreeMap::new();
        let mut index = None;
        for key in all_keys {
            let (role, i) = role_of_key(&key, accounts, network)?;
            if *index.get_or_insert(i) != i {
                return Err(PolicyError::Roles(format!(
                    "{key} is of escrow index {i}, the other keys of {}",
                    index.unwrap_or(i)
                )));
            }
            if roles.values().any(|r| *r == role) {
                return Err(PolicyError::Roles(format!("two keys are the {role}'s")));
            }
            roles.insert(key, role);
        }
        let index = index.ok_or_else(|| PolicyError::Roles("the descriptor has no key".into()))?;
        for role in [
            Role::Borrower,
            Role::Lender,
            Role::Arbiter,
            Role::LenderDefault,
            Role::BorrowerRecovery,
        ] {
            if !roles.values().any(|r| *r == role) {
                return Err(PolicyError::Roles(format!("no {role} key")));
            }
        }
        let lifted = descriptor
            .lift()
            .map_err(|e| PolicyError::Descriptor(e.to_string()))?;
        let raw = minimal_paths(&lifted)?;
        let solo_height = |role: Role| {
            raw.iter()
                .find(|p| p.keys.len() == 1 && p.keys.iter().all(|k| roles.get(k) == Some(&role)))
                .and_then(|p| p.after)
                .ok_or_else(|| PolicyError::Roles(format!("no timelocked path of the {role} key")))
        };
        let heights = EscrowHeights::new(
            solo_height(Role::LenderDefault)?,
            solo_height(Role::BorrowerRecovery)?,
            0,
        )?;
        let parsed = Self::from_parts(descriptor, roles, heights, network, index)?;
        let keys = EscrowKeys {
            borrower: accounts.borrower.clone(),
            lender: accounts.lender.clone(),
            arbiter: accounts.arbiter.clone(),
            index,
        };
        let expected = template.instantiate(&keys, heights, network)?;
        if expected.descriptor != parsed.descriptor {
            return Err(PolicyError::NotTheTemplate {
                expected: expected.to_string(),
            });
        }
        Ok(parsed)
    }

    pub fn descriptor(&self) -> &Descriptor<DescriptorPublicKey> {
        &self.descriptor
    }

    /// The descriptor as a definite descriptor (its keys are derived on every use:
    /// slow, for checks; spends use [`EscrowDescriptor::witness_size`] and
    /// [`EscrowDescriptor::bip32_derivations`]).
    pub fn definite(&self) -> Descriptor<DefiniteDescriptorKey> {
        self.descriptor
            .at_derivation_index(0)
            .expect("escrow descriptors have no wildcard and no hardened step (checked)")
    }

    /// The witness size of path `name`'s satisfaction (signatures at 73 bytes, with
    /// the item count), without the witness script.
    pub fn witness_size(&self, name: PathName) -> Result<usize, PolicyError> {
        self.paths
            .iter()
            .zip(&self.witness_sizes)
            .find(|(p, _)| p.name == name)
            .map(|(_, w)| *w)
            .ok_or(PolicyError::NoSuchPath(name))
    }

    /// Every escrow key with its origin, as a PSBT input lists them.
    pub fn bip32_derivations(
        &self,
    ) -> &BTreeMap<bitcoin::secp256k1::PublicKey, bitcoin::bip32::KeySource> {
        &self.bip32_derivations
    }

    pub fn network(&self) -> Network {
        self.network
    }

    pub fn heights(&self) -> EscrowHeights {
        self.heights
    }

    /// The escrow index `i` (receive index `i` of the wallet policy).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Each role's account key (origin and xpub) and the chain its escrow key is on.
    fn role_accounts(&self) -> Vec<(String, Role, String)> {
        self.roles
            .iter()
            .map(|(key, role)| {
                let account = match key {
                    DescriptorPublicKey::XPub(x) => {
                        DescriptorPublicKey::XPub(miniscript::descriptor::DescriptorXKey {
                            derivation_path: Default::default(),
                            wildcard: miniscript::descriptor::Wildcard::None,
                            ..x.clone()
                        })
                        .to_string()
                    }
                    other => other.to_string(),
                };
                (key.to_string(), *role, account)
            })
            .collect()
    }

    /// The descriptor text without its checksum.
    fn body(&self) -> String {
        let text = self.descriptor.to_string();
        text.split('#').next().unwrap_or(&text).to_owned()
    }

    /// The multipath descriptor of the whole wallet policy (each key as
    /// `<account>/<0;1>/*` or `<account>/<2;3>/*`), with checksum: Bitcoin Core ≥ 29
    /// imports it, and its receive index `i` is this escrow.
    pub fn multipath_descriptor(&self) -> String {
        let mut text = self.body();
        for (key, role, account) in self.role_accounts() {
            text = text.replace(&key, &format!("{account}/{}/*", role.chain().multipath()));
        }
        Descriptor::<DescriptorPublicKey>::from_str(&text)
            .expect("replacing each escrow key by its multipath key keeps a valid descriptor")
            .to_string()
    }

    /// The BIP-388 wallet policy: the template with `@k/<0;1>/*` / `@k/<2;3>/*`
    /// placeholders, numbered in order of first appearance, and each account key (with
    /// origin) listed once. The template carries this escrow's absolute heights, so a
    /// hardware wallet registers one policy per loan, and only its receive index `i`
    /// (this escrow) is ever funded: other indexes of that policy are not escrows.
    pub fn wallet_policy(&self) -> WalletPolicy {
        let body = self.body();
        let mut found: Vec<(usize, String, Role, String)> = self
            .role_accounts()
            .into_iter()
            .map(|(key, role, account)| {
                let at = body
                    .find(&key)
                    .expect("every key of the descriptor is in its text");
                (at, key, role, account)
            })
            .collect();
        found.sort();
        let mut keys: Vec<String> = Vec::new();
        let mut template = body.clone();
        for (_, key, role, account) in found {
            let k = match keys.iter().position(|a| *a == account) {
                Some(k) => k,
                None => {
                    keys.push(account);
                    keys.len() - 1
                }
            };
            template = template.replace(&key, &format!("@{k}/{}/*", role.chain().multipath()));
        }
        WalletPolicy { template, keys }
    }

    pub fn address(&self) -> Address {
        Address::from_script(&self.script_pubkey, self.network)
            .expect("a P2WSH script always has an address")
    }

    pub fn script_pubkey(&self) -> ScriptBuf {
        self.script_pubkey.clone()
    }

    pub fn witness_script(&self) -> ScriptBuf {
        self.witness_script.clone()
    }

    pub fn paths(&self) -> &[SpendingPath] {
        &self.paths
    }

    pub fn path(&self, name: PathName) -> Result<&SpendingPath, PolicyError> {
        self.paths
            .iter()
            .find(|p| p.name == name)
            .ok_or(PolicyError::NoSuchPath(name))
    }

    /// Every key with its role.
    pub fn roles(&self) -> &BTreeMap<DescriptorPublicKey, Role> {
        &self.roles
    }

    /// Every key of the escrow with its role, master fingerprint and full path from the
    /// master (what a signer derives and a PSBT lists in `bip32_derivation`).
    pub fn key_origins(&self) -> Vec<KeyOrigin> {
        self.origins.clone()
    }

    /// The role of a concrete public key, if it is one of the escrow's.
    pub fn role_of(&self, key: &bitcoin::PublicKey) -> Option<Role> {
        self.pubkey_roles.get(key).copied()
    }

    /// Which path an input spending this escrow used: the witness is run through
    /// miniscript's interpreter, every signature is verified against the transaction,
    /// and the keys that signed and the timelock used name the path.
    pub fn classify_spend<C: Verification>(
        &self,
        secp: &Secp256k1<C>,
        tx: &Transaction,
        input_index: usize,
        spent: &TxOut,
    ) -> Result<ObservedSpend, PolicyError> {
        let input = tx
            .input
            .get(input_index)
            .ok_or_else(|| PolicyError::Descriptor(format!("no input {input_index}")))?;
        if spent.script_pubkey != self.script_pubkey() {
            return Err(PolicyError::Descriptor(format!(
                "input {input_index} does not spend this escrow"
            )));
        }
        let interpreter = miniscript::Interpreter::from_txdata(
            &spent.script_pubkey,
            &input.script_sig,
            &input.witness,
            input.sequence,
            tx.lock_time,
        )
        .map_err(|e| PolicyError::Descriptor(e.to_string()))?;
        // Segwit v0 SIGHASH_ALL commits to this input's amount only.
        let prevouts = bitcoin::sighash::Prevouts::One(input_index, spent);
        let mut signers = BTreeSet::new();
        let mut after = None;
        for step in interpreter.iter(secp, tx, input_index, &prevouts) {
            use miniscript::interpreter::{KeySigPair, SatisfiedConstraint as S};
            match step.map_err(|e| PolicyError::Descriptor(e.to_string()))? {
                S::PublicKey { key_sig } | S::PublicKeyHash { key_sig, .. } => {
                    let key = match key_sig {
                        KeySigPair::Ecdsa(pk, _) => pk,
                        KeySigPair::Schnorr(..) => {
                            return Err(PolicyError::Descriptor("schnorr signature in wsh".into()))
                        }
                    };
                    let role = self
                        .role_of(&key)
                        .ok_or_else(|| PolicyError::UnknownKey(key.to_string()))?;
                    signers.insert(role);
                }
                S::AbsoluteTimelock { n } => after = Some(n.to_consensus_u32()),
                other => {
                    return Err(PolicyError::Descriptor(format!(
                        "unexpected constraint {other:?}"
                    )))
                }
            }
        }
        let name = PathName::of(&signers, after);
        Ok(ObservedSpend {
            path: name,
            signers: signers.into_iter().collect(),
            after,
        })
    }
}

impl fmt::Display for EscrowDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // miniscript's Display appends the checksum.
        self.descriptor.fmt(f)
    }
}

/// One escrow key with where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOrigin {
    pub role: Role,
    pub key: bitcoin::PublicKey,
    pub fingerprint: bitcoin::bip32::Fingerprint,
    pub path: bitcoin::bip32::DerivationPath,
}

/// A BIP-388 wallet policy (what a hardware wallet registers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalletPolicy {
    pub template: String,
    pub keys: Vec<String>,
}

/// Whose account and which chain a descriptor key is, and its escrow index.
fn role_of_key(
    key: &DescriptorPublicKey,
    accounts: &PartyAccounts,
    network: Network,
) -> Result<(Role, u32), PolicyError> {
    use bitcoin::bip32::ChildNumber;
    let unknown = || PolicyError::UnknownKey(key.to_string());
    let DescriptorPublicKey::XPub(x) = key else {
        return Err(PolicyError::Roles(format!(
            "{key} is not an extended key of a party's account"
        )));
    };
    if x.xkey.network != bitcoin::NetworkKind::from(network) {
        return Err(PolicyError::Key(KeyError::WrongNetwork {
            field: format!("descriptor key {key}"),
            found: x.xkey.network,
            expected: network,
        }));
    }
    let party = [Party::Borrower, Party::Lender, Party::Arbiter]
        .into_iter()
        .find(|p| accounts.of(*p).xpub() == &x.xkey)
        .ok_or_else(unknown)?;
    let account = accounts.of(party);
    let origin_matches = x.origin.as_ref().is_some_and(|(fp, path)| {
        *fp == account.master_fingerprint() && path == account.origin_path()
    });
    if !origin_matches {
        return Err(PolicyError::Roles(format!(
            "{key}: the {party}'s xpub with another origin than its account key {account}"
        )));
    }
    let steps: Vec<ChildNumber> = x.derivation_path.clone().into();
    let (chain, index) = match (steps.as_slice(), x.wildcard) {
        (
            [ChildNumber::Normal { index: c }, ChildNumber::Normal { index: i }],
            miniscript::descriptor::Wildcard::None,
        ) => (Chain::from_receive(*c), *i),
        _ => (None, 0),
    };
    let chain = chain.ok_or_else(|| {
        PolicyError::Roles(format!(
            "{key}: an escrow key is <account>/0/i or <account>/2/i"
        ))
    })?;
    let role = Role::of(party, chain)
        .ok_or_else(|| PolicyError::Roles(format!("{key}: the arbiter has no timelocked key")))?;
    Ok((role, index))
}

/// What a spend of the escrow showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedSpend {
    pub path: PathName,
    pub signers: Vec<Role>,
    pub after: Option<u32>,
}
