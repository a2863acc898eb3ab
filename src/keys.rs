//! Party keys: account keys with origin, per-escrow derivation, and the arbiter's key
//! file (mode 0600, never logged, `Debug` redacted).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, Xpriv, Xpub};
use bitcoin::hashes::hmac::{Hmac, HmacEngine};
use bitcoin::hashes::{sha512, Hash, HashEngine};
use bitcoin::secp256k1::{All, Secp256k1, SecretKey};
use bitcoin::{Network, NetworkKind};
use miniscript::descriptor::{DescriptorPublicKey, DescriptorXKey, Wildcard};

/// Errors about keys; each names the key or file and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{field}: not an account key with origin ([fingerprint/path]xpub): {reason}")]
    Parse { field: String, reason: String },
    #[error("{field}: the key has no origin ([fingerprint/48'/coin'/account'/2'])")]
    MissingOrigin { field: String },
    #[error("{field}: an account key must not carry a derivation path or wildcard after the xpub")]
    HasDerivation { field: String },
    #[error("{field}: the key is for {found:?} but the service runs on {expected}")]
    WrongNetwork {
        field: String,
        found: NetworkKind,
        expected: Network,
    },
    #[error("{field}: a single public key is not an account key; give an xpub/tpub")]
    NotExtended { field: String },
    #[error("{first} and {second} are the same account key; every party needs its own")]
    Duplicate { first: String, second: String },
    #[error("escrow index {0} is hardened or too large (must be below 2^31)")]
    BadIndex(u32),
    #[error("account {0}: must be below 2^31 (it is used hardened)")]
    BadAccount(u32),
    #[error("{field}: the key is for {found:?} but the service runs on {expected}")]
    PrivateKeyNetwork {
        field: String,
        found: NetworkKind,
        expected: Network,
    },
    #[error("key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("key derivation failed: {0}")]
    Bip32(#[from] bitcoin::bip32::Error),
}

/// The coin type of BIP48 paths for a network.
pub fn coin_type(network: Network) -> u32 {
    match NetworkKind::from(network) {
        NetworkKind::Main => 0,
        NetworkKind::Test => 1,
    }
}

/// The BIP48 P2WSH account path `m/48'/coin'/account'/2'`; an account at or above 2^31
/// is an error (never silently account 0).
pub fn account_path(network: Network, account: u32) -> Result<DerivationPath, KeyError> {
    Ok(DerivationPath::from(vec![
        ChildNumber::from_hardened_idx(48).expect("48 < 2^31"),
        ChildNumber::from_hardened_idx(coin_type(network)).expect("coin type < 2^31"),
        ChildNumber::from_hardened_idx(account).map_err(|_| KeyError::BadAccount(account))?,
        ChildNumber::from_hardened_idx(2).expect("2 < 2^31"),
    ]))
}

/// Which chain of an account a per-escrow key comes from (the BIP-388 / Liana
/// convention: escrow `i` is receive index `i` of each multipath key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    /// `<0;1>/*`, receive `/0/i`: the party's key in the 2-of-3.
    Multisig = 0,
    /// `<2;3>/*`, receive `/2/i`: the lender's timelocked default key, the borrower's
    /// recovery key.
    Timelocked = 2,
}

impl Chain {
    /// The receive step of the chain (`0` or `2`).
    pub fn receive(self) -> u32 {
        self as u32
    }

    /// The BIP-389 multipath step of the chain: `<0;1>` or `<2;3>`.
    pub fn multipath(self) -> &'static str {
        match self {
            Chain::Multisig => "<0;1>",
            Chain::Timelocked => "<2;3>",
        }
    }

    /// The chain whose receive step is `step`, if any.
    pub fn from_receive(step: u32) -> Option<Self> {
        match step {
            0 => Some(Chain::Multisig),
            2 => Some(Chain::Timelocked),
            _ => None,
        }
    }
}

/// A party's registered account key, with origin, checked against the network.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountKey {
    key: DescriptorXKey<Xpub>,
}

impl AccountKey {
    /// Parse `[fingerprint/path]xpub` and check it belongs to `network`. `field` names
    /// the input in errors (e.g. "borrower").
    pub fn parse(field: &str, text: &str, network: Network) -> Result<Self, KeyError> {
        let parsed = DescriptorPublicKey::from_str(text.trim()).map_err(|e| KeyError::Parse {
            field: field.to_owned(),
            reason: e.to_string(),
        })?;
        let key = match parsed {
            DescriptorPublicKey::XPub(x) => x,
            DescriptorPublicKey::Single(_) | DescriptorPublicKey::MultiXPub(_) => {
                return Err(KeyError::NotExtended {
                    field: field.to_owned(),
                })
            }
        };
        if key.origin.is_none() {
            return Err(KeyError::MissingOrigin {
                field: field.to_owned(),
            });
        }
        if !key.derivation_path.is_empty() || key.wildcard != Wildcard::None {
            return Err(KeyError::HasDerivation {
                field: field.to_owned(),
            });
        }
        if key.xkey.network != NetworkKind::from(network) {
            return Err(KeyError::WrongNetwork {
                field: field.to_owned(),
                found: key.xkey.network,
                expected: network,
            });
        }
        Ok(Self { key })
    }

    /// The account key of a master private key at `path` (with origin).
    pub fn from_master(
        master: &Xpriv,
        path: &DerivationPath,
        secp: &Secp256k1<All>,
    ) -> Result<Self, KeyError> {
        let account = master.derive_priv(secp, path)?;
        Ok(Self {
            key: DescriptorXKey {
                origin: Some((master.fingerprint(secp), path.clone())),
                xkey: Xpub::from_priv(secp, &account),
                derivation_path: DerivationPath::default(),
                wildcard: Wildcard::None,
            },
        })
    }

    pub fn master_fingerprint(&self) -> Fingerprint {
        self.key
            .origin
            .as_ref()
            .map(|(fp, _)| *fp)
            .expect("an AccountKey always has an origin (checked in parse)")
    }

    pub fn xpub(&self) -> &Xpub {
        &self.key.xkey
    }

    /// The origin path from the master (`m/48'/coin'/account'/2'`).
    pub fn origin_path(&self) -> &DerivationPath {
        &self
            .key
            .origin
            .as_ref()
            .expect("an AccountKey always has an origin (checked in parse)")
            .1
    }

    /// The full path from the master of the key of escrow `index` on `chain`.
    pub fn full_path(&self, chain: Chain, index: u32) -> Result<DerivationPath, KeyError> {
        let child = ChildNumber::from_normal_idx(index).map_err(|_| KeyError::BadIndex(index))?;
        Ok(self.origin_path().extend([
            ChildNumber::Normal {
                index: chain.receive(),
            },
            child,
        ]))
    }

    /// The key `<account>/chain/index` as a definite descriptor key (origin kept, so
    /// PSBTs carry the full path from the master fingerprint).
    pub fn derive(&self, chain: Chain, index: u32) -> Result<DescriptorPublicKey, KeyError> {
        let child = ChildNumber::from_normal_idx(index).map_err(|_| KeyError::BadIndex(index))?;
        Ok(DescriptorPublicKey::XPub(DescriptorXKey {
            origin: self.key.origin.clone(),
            xkey: self.key.xkey,
            derivation_path: DerivationPath::from(vec![
                ChildNumber::Normal {
                    index: chain.receive(),
                },
                child,
            ]),
            wildcard: Wildcard::None,
        }))
    }
}

impl fmt::Display for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        DescriptorPublicKey::XPub(self.key.clone()).fmt(f)
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountKey({self})")
    }
}

/// Refuse the same account key registered for two parties.
pub fn check_distinct(keys: &[(&str, &AccountKey)]) -> Result<(), KeyError> {
    for (i, (name_a, a)) in keys.iter().enumerate() {
        for (name_b, b) in &keys[i + 1..] {
            if a.xpub() == b.xpub() {
                return Err(KeyError::Duplicate {
                    first: (*name_a).to_owned(),
                    second: (*name_b).to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// A master private key read from a file holding an xprv/tprv or a BIP39 mnemonic.
pub struct SigningKey {
    master: Xpriv,
    fingerprint: Fingerprint,
    /// The parents of the keys derived so far (escrow chains), with their public keys.
    chains: std::sync::Mutex<
        std::collections::BTreeMap<DerivationPath, (Xpriv, bitcoin::secp256k1::PublicKey)>,
    >,
    /// Keys derived so far with their public keys (see [`SigningKey::derive_pair`]).
    leaves: std::sync::Mutex<
        std::collections::HashMap<DerivationPath, (SecretKey, bitcoin::secp256k1::PublicKey)>,
    >,
}

/// Derived keys a [`SigningKey`] keeps with their public keys: one per escrow it
/// signs for, about 100 bytes each (6.5 MB at most).
const LEAVES_KEPT: usize = 65_536;

impl SigningKey {
    /// Parse an xprv/tprv (the BIP32 root) or a BIP39 mnemonic (empty passphrase). An
    /// xprv of another network is refused.
    pub fn parse(text: &str, network: Network) -> Result<Self, KeyError> {
        let text = text.trim();
        if let Ok(master) = Xpriv::from_str(text) {
            if master.network != NetworkKind::from(network) {
                return Err(KeyError::PrivateKeyNetwork {
                    field: "key".to_owned(),
                    found: master.network,
                    expected: network,
                });
            }
            return Ok(Self::new(master));
        }
        let mnemonic = bip39::Mnemonic::parse(text).map_err(|e| KeyError::Parse {
            field: "key".to_owned(),
            reason: format!("neither an xprv nor a BIP39 mnemonic ({e})"),
        })?;
        let master = Xpriv::new_master(network, &mnemonic.to_seed(""))?;
        Ok(Self::new(master))
    }

    fn new(master: Xpriv) -> Self {
        Self {
            fingerprint: master.fingerprint(&Secp256k1::signing_only()),
            master,
            chains: Default::default(),
            leaves: Default::default(),
        }
    }

    /// The private key at `path` and its public key. A signer checks the public key
    /// against the one a PSBT lists before signing; computing it is an EC
    /// multiplication as dear as the signature, so each pair is kept (up to
    /// [`LEAVES_KEPT`]): an escrow's second signature (a fee bump, a co-signature)
    /// derives nothing.
    pub fn derive_pair(
        &self,
        secp: &Secp256k1<All>,
        path: &DerivationPath,
    ) -> Result<(SecretKey, bitcoin::secp256k1::PublicKey), bitcoin::bip32::Error> {
        if let Some(pair) = self.leaves.lock().ok().and_then(|m| m.get(path).copied()) {
            return Ok(pair);
        }
        let secret = self.derive(secp, path)?;
        let pair = (secret, secret.public_key(secp));
        if let Ok(mut m) = self.leaves.lock() {
            if m.len() < LEAVES_KEPT {
                m.insert(path.clone(), pair);
            }
        }
        Ok(pair)
    }

    /// The private key at `path` from the master. The parent of the last step (an
    /// escrow chain, e.g. `m/48'/1'/0'/2'/0`) is derived once and kept with its public
    /// key, so deriving escrow key `i` is one HMAC and one scalar addition: no EC
    /// multiplication (BIP32 CKDpriv, checked against `Xpriv::derive_priv` in tests).
    pub fn derive(
        &self,
        secp: &Secp256k1<All>,
        path: &DerivationPath,
    ) -> Result<SecretKey, bitcoin::bip32::Error> {
        let steps: &[ChildNumber] = path.as_ref();
        let Some((last, parent_steps)) = steps.split_last() else {
            return Ok(self.master.private_key);
        };
        let parent_path = DerivationPath::from(parent_steps);
        let cached = self
            .chains
            .lock()
            .ok()
            .and_then(|m| m.get(&parent_path).copied());
        let (parent, parent_public) = match cached {
            Some(p) => p,
            None => {
                let x = self.master.derive_priv(secp, &parent_path)?;
                let p = (x, x.private_key.public_key(secp));
                if let Ok(mut m) = self.chains.lock() {
                    // Bounded: a signer has few chains; anything past that is not kept.
                    if m.len() < 256 {
                        m.insert(parent_path, p);
                    }
                }
                p
            }
        };
        let mut hmac = HmacEngine::<sha512::Hash>::new(&parent.chain_code[..]);
        match last {
            ChildNumber::Normal { .. } => hmac.input(&parent_public.serialize()),
            ChildNumber::Hardened { .. } => {
                hmac.input(&[0u8]);
                hmac.input(&parent.private_key[..]);
            }
        }
        hmac.input(&u32::from(*last).to_be_bytes());
        let i = Hmac::from_engine(hmac).to_byte_array();
        let tweak = SecretKey::from_slice(&i[..32]).map_err(bitcoin::bip32::Error::Secp256k1)?;
        parent
            .private_key
            .add_tweak(&tweak.into())
            .map_err(bitcoin::bip32::Error::Secp256k1)
    }

    /// Read a key file, refusing one that group or others may read or write, or a key
    /// of another network.
    pub fn from_file(path: &Path, network: Network) -> Result<Self, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let file_err = |reason: String| KeyError::File {
            path: path.to_owned(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_err(format!(
                "mode {mode:o} lets others read it; chmod 600 it"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        Self::parse(&text, network).map_err(|e| match e {
            KeyError::PrivateKeyNetwork {
                found, expected, ..
            } => file_err(format!("the key is for {found:?}, not {expected}")),
            other => other,
        })
    }

    pub fn master(&self) -> &Xpriv {
        &self.master
    }

    /// The master key's fingerprint (computed once).
    pub fn fingerprint(&self, _secp: &Secp256k1<All>) -> Fingerprint {
        self.fingerprint
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// The service's own key: a BIP32 master key in `<data dir>/arbiter.key`, mode 0600.
pub struct ArbiterKey {
    signing: SigningKey,
    network: Network,
}

impl ArbiterKey {
    pub const FILE_NAME: &'static str = "arbiter.key";

    /// Create a new random arbiter key in `data_dir` (refusing to overwrite one).
    pub fn create(data_dir: &Path, network: Network) -> Result<Self, KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join(Self::FILE_NAME);
        let file_err = |reason: String| KeyError::File {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| file_err(e.to_string()))?;
        let mut seed = [0u8; 32];
        bitcoin::secp256k1::rand::RngCore::fill_bytes(
            &mut bitcoin::secp256k1::rand::thread_rng(),
            &mut seed,
        );
        let master = Xpriv::new_master(network, &seed)?;
        if path.exists() {
            return Err(file_err(
                "already exists; an existing key is never overwritten".into(),
            ));
        }
        // Written in full to a temporary file, then linked into place: a crash leaves
        // either no key or the whole key, never an empty file that blocks a retry, and
        // the link refuses to replace a key created meanwhile.
        let tmp = data_dir.join(format!("{}.tmp", Self::FILE_NAME));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| file_err(format!("cannot create {} ({e})", tmp.display())))?;
        file.write_all(format!("{master}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| file_err(e.to_string()))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(|e| {
            file_err(format!(
                "cannot create ({e}); an existing key is never overwritten"
            ))
        })?;
        // The new directory entries are durable only once their directories are synced
        // (the data directory's own entry too, when it was just made).
        for dir in [Some(data_dir), data_dir.parent()].into_iter().flatten() {
            if dir.as_os_str().is_empty() {
                continue;
            }
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| file_err(format!("syncing {}: {e}", dir.display())))?;
        }
        Ok(Self {
            signing: SigningKey::new(master),
            network,
        })
    }

    /// Load the arbiter key, refusing a file readable or writable by group or others,
    /// or a key of another network.
    pub fn load(data_dir: &Path, network: Network) -> Result<Self, KeyError> {
        let signing = SigningKey::from_file(&data_dir.join(Self::FILE_NAME), network)?;
        Ok(Self { signing, network })
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The arbiter's account key (`m/48'/coin'/0'/2'`) with origin.
    pub fn account(&self, secp: &Secp256k1<All>) -> Result<AccountKey, KeyError> {
        AccountKey::from_master(&self.signing.master, &account_path(self.network, 0)?, secp)
    }
}

impl fmt::Debug for ArbiterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArbiterKey({}, <redacted>)", self.network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(seed: u8, network: Network) -> AccountKey {
        let secp = Secp256k1::new();
        let master = Xpriv::new_master(network, &[seed; 32]).unwrap();
        AccountKey::from_master(&master, &account_path(network, 0).unwrap(), &secp).unwrap()
    }

    #[test]
    fn account_key_round_trips_and_checks_network() {
        let key = account(1, Network::Regtest);
        let text = key.to_string();
        assert!(text.starts_with('['), "{text}");
        assert_eq!(
            AccountKey::parse("borrower", &text, Network::Regtest).unwrap(),
            key
        );
        let err = AccountKey::parse("borrower", &text, Network::Bitcoin).unwrap_err();
        assert!(matches!(err, KeyError::WrongNetwork { .. }), "{err}");
        assert!(err.to_string().starts_with("borrower"), "{err}");
    }

    #[test]
    fn account_key_needs_origin_and_no_derivation() {
        let key = account(2, Network::Regtest);
        let bare = key.xpub().to_string();
        assert!(matches!(
            AccountKey::parse("lender", &bare, Network::Regtest),
            Err(KeyError::MissingOrigin { .. })
        ));
        let derived = format!("{key}/0/*");
        assert!(matches!(
            AccountKey::parse("lender", &derived, Network::Regtest),
            Err(KeyError::HasDerivation { .. })
        ));
        assert!(matches!(
            AccountKey::parse("lender", "nonsense", Network::Regtest),
            Err(KeyError::Parse { .. })
        ));
    }

    #[test]
    fn duplicate_accounts_are_refused() {
        let a = account(3, Network::Regtest);
        let b = account(4, Network::Regtest);
        assert!(check_distinct(&[("borrower", &a), ("lender", &b)]).is_ok());
        let err = check_distinct(&[("borrower", &a), ("lender", &b), ("arbiter", &a)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "borrower and arbiter are the same account key; every party needs its own"
        );
    }

    #[test]
    fn derived_keys_differ_per_chain_and_index() {
        let a = account(5, Network::Regtest);
        let k00 = a.derive(Chain::Multisig, 0).unwrap();
        let k10 = a.derive(Chain::Timelocked, 0).unwrap();
        assert!(k10.to_string().ends_with("/2/0"), "{k10}");
        let k01 = a.derive(Chain::Multisig, 1).unwrap();
        assert_ne!(k00, k10);
        assert_ne!(k00, k01);
        assert!(k00.to_string().ends_with("/0/0"), "{k00}");
        assert!(a.derive(Chain::Multisig, 1 << 31).is_err());
    }

    #[test]
    fn arbiter_key_file_is_private_and_redacted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let created = ArbiterKey::create(dir.path(), Network::Regtest).unwrap();
        let path = dir.path().join(ArbiterKey::FILE_NAME);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            ArbiterKey::create(dir.path(), Network::Regtest).is_err(),
            "never overwrites"
        );
        assert!(
            !dir.path().join("arbiter.key.tmp").exists(),
            "no temporary file left"
        );
        let loaded = ArbiterKey::load(dir.path(), Network::Regtest).unwrap();
        let secp = Secp256k1::new();
        assert_eq!(
            created.account(&secp).unwrap(),
            loaded.account(&secp).unwrap()
        );
        let debug = format!("{loaded:?} {:?}", loaded.signing_key());
        let secret = std::fs::read_to_string(&path).unwrap();
        assert!(
            !debug.contains(secret.trim()) && debug.contains("redacted"),
            "{debug}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ArbiterKey::load(dir.path(), Network::Regtest).unwrap_err();
        assert!(err.to_string().contains("644"), "{err}");
        assert!(ArbiterKey::load(dir.path(), Network::Bitcoin).is_err());
    }

    #[test]
    fn an_invalid_account_is_an_error_not_account_zero() {
        assert_eq!(
            account_path(Network::Regtest, 1 << 31),
            Err(KeyError::BadAccount(1 << 31))
        );
        assert_eq!(
            account_path(Network::Regtest, 3).unwrap().to_string(),
            "48'/1'/3'/2'"
        );
    }

    #[test]
    fn a_signing_key_file_is_private_and_of_the_network() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lender.key");
        let master = Xpriv::new_master(Network::Regtest, &[7; 32]).unwrap();
        std::fs::write(&path, master.to_string()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SigningKey::from_file(&path, Network::Regtest).unwrap_err();
        assert!(err.to_string().contains("644"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SigningKey::from_file(&path, Network::Regtest).is_ok());
        let err = SigningKey::from_file(&path, Network::Bitcoin).unwrap_err();
        assert!(err.to_string().contains("lender.key"), "{err}");
        assert!(matches!(
            SigningKey::parse(&master.to_string(), Network::Bitcoin),
            Err(KeyError::PrivateKeyNetwork { .. })
        ));
    }

    #[test]
    fn signing_key_reads_xprv_or_mnemonic() {
        let secp = Secp256k1::new();
        let m = bip39::Mnemonic::parse(
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        )
        .unwrap();
        let from_words = SigningKey::parse(&m.to_string(), Network::Regtest).unwrap();
        let xprv = from_words.master().to_string();
        let from_xprv = SigningKey::parse(&xprv, Network::Regtest).unwrap();
        assert_eq!(from_words.fingerprint(&secp), from_xprv.fingerprint(&secp));
        // BIP32 test vector of the "abandon ... about" mnemonic.
        assert_eq!(from_words.fingerprint(&secp).to_string(), "73c5da0a");
        assert!(SigningKey::parse("not a key", Network::Regtest).is_err());
    }
}

#[cfg(test)]
mod derive_tests {
    use super::*;

    /// The cached derivation is BIP32's: equal to `Xpriv::derive_priv` for normal and
    /// hardened last steps, the first time (parent derived) and the next (cached).
    #[test]
    fn derive_is_bip32_with_or_without_the_cached_parent() {
        let secp = Secp256k1::new();
        let master = Xpriv::new_master(Network::Regtest, &[7u8; 32]).unwrap();
        let key = SigningKey::new(master);
        for text in [
            "m",
            "m/0",
            "m/48'/1'/0'/2'/0/5",
            "m/48'/1'/0'/2'/0/6",
            "m/48'/1'/0'/2'/2/5",
            "m/48'/1'/0'/2'/0/2147483647",
            "m/48'/1'/0'/2'/7'",
            "m/1/2/3",
        ] {
            let path = DerivationPath::from_str(text).unwrap();
            let want = master.derive_priv(&secp, &path).unwrap().private_key;
            for _ in 0..2 {
                assert_eq!(key.derive(&secp, &path).unwrap(), want, "{text}");
            }
        }
    }
}
