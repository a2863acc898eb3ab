//! Escrow policies: a template with placeholders → substituted concrete policy →
//! compiled `wsh` descriptor → [`EscrowDescriptor`], whose spending paths are checked
//! against the guarantees of DESIGN.md §2 by lifting the compiled descriptor. Pure: no
//! I/O (the template text is handed in).

pub mod analysis;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use bitcoin::secp256k1::{Secp256k1, Verification};
use bitcoin::{Address, Network, ScriptBuf, Transaction, TxOut};
use miniscript::descriptor::{DefiniteDescriptorKey, DescriptorPublicKey};
use miniscript::policy::{Concrete, Liftable};
use miniscript::{Descriptor, ForEachKey, Miniscript, Segwitv0};
use serde::Serialize;

use crate::keys::{AccountKey, Chain, KeyError};
use analysis::{check_guarantees, minimal_paths, RawPath};

/// The default template (policies/escrow.policy), compiled into the binary.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../policies/escrow.policy");

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 7] = [
    "{borrower}",
    "{lender}",
    "{arbiter}",
    "{lender_default}",
    "{borrower_recovery}",
    "{default_height}",
    "{recovery_height}",
];

/// Why a template, its inputs or a descriptor were refused. Each guarantee of DESIGN.md
/// §2 has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("template: unknown placeholder {0} (known: {known})", known = PLACEHOLDERS.join(" "))]
    UnknownPlaceholder(String),
    #[error("template: not a valid policy: {0}")]
    Parse(String),
    #[error("template: does not compile to a P2WSH miniscript: {0}")]
    Compile(String),
    #[error("descriptor: {0}")]
    Descriptor(String),
    #[error("heights: recovery_height ({recovery}) must be above default_height ({default})")]
    RecoveryNotAfterDefault { default: u32, recovery: u32 },
    #[error("heights: default_height ({default}) must be above the funding height ({funding})")]
    DefaultNotAfterFunding { default: u32, funding: u32 },
    #[error("heights: {name} ({value}) is not a block height (must be below 500000000)")]
    NotAHeight { name: &'static str, value: u32 },
    #[error("guarantee broken: a single party ({party}) can spend at height {height}, before default_height {default_height}")]
    SinglePartyBeforeDefault {
        party: Party,
        height: u32,
        default_height: u32,
    },
    #[error("guarantee broken: the arbiter's key alone can spend")]
    ArbiterAlone,
    #[error("guarantee broken: the borrower alone can spend at height {height}, before recovery_height {recovery_height}")]
    BorrowerAloneBeforeRecovery { height: u32, recovery_height: u32 },
    #[error("guarantee broken: a path needs no signature at all")]
    AnyoneCanSpend,
    #[error("guarantee broken: time-based lock (after(n) with n >= 500000000); only block heights are allowed")]
    TimeBasedLock,
    #[error("guarantee broken: height-based and time-based locks are mixed")]
    MixedTimelocks,
    #[error("guarantee broken: relative timelocks (older) are not allowed")]
    RelativeTimelock,
    #[error("guarantee broken: hash locks are not allowed")]
    HashLock,
    #[error("guarantee broken: key {0} belongs to no party of the escrow")]
    UnknownKey(String),
    #[error("guarantee broken: the policy can never be spent")]
    Unspendable,
    #[error(
        "guarantee broken: the compiled descriptor does not lift back to the template's semantics"
    )]
    LiftMismatch,
    #[error("policy too complex to analyze")]
    TooComplex,
    #[error("the escrow has no {0} path")]
    NoSuchPath(PathName),
    #[error("descriptor: cannot tell which key belongs to whom: {0}")]
    Roles(String),
    #[error("descriptor: not the escrow the policy template gives for these keys, index and heights ({expected})")]
    NotTheTemplate { expected: String },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The three parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    Borrower,
    Lender,
    Arbiter,
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Party::Borrower => "borrower",
            Party::Lender => "lender",
            Party::Arbiter => "arbiter",
        })
    }
}

/// The five keys of an escrow, named as their placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Borrower,
    Lender,
    Arbiter,
    LenderDefault,
    BorrowerRecovery,
}

impl Role {
    /// The role of a party's key on an account chain (the arbiter has no timelocked
    /// key).
    pub fn of(party: Party, chain: Chain) -> Option<Role> {
        match (party, chain) {
            (Party::Borrower, Chain::Multisig) => Some(Role::Borrower),
            (Party::Borrower, Chain::Timelocked) => Some(Role::BorrowerRecovery),
            (Party::Lender, Chain::Multisig) => Some(Role::Lender),
            (Party::Lender, Chain::Timelocked) => Some(Role::LenderDefault),
            (Party::Arbiter, Chain::Multisig) => Some(Role::Arbiter),
            (Party::Arbiter, Chain::Timelocked) => None,
        }
    }

    /// The account chain the role's key comes from.
    pub fn chain(self) -> Chain {
        match self {
            Role::Borrower | Role::Lender | Role::Arbiter => Chain::Multisig,
            Role::LenderDefault | Role::BorrowerRecovery => Chain::Timelocked,
        }
    }

    pub fn party(self) -> Party {
        match self {
            Role::Borrower | Role::BorrowerRecovery => Party::Borrower,
            Role::Lender | Role::LenderDefault => Party::Lender,
            Role::Arbiter => Party::Arbiter,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Borrower => "borrower",
            Role::Lender => "lender",
            Role::Arbiter => "arbiter",
            Role::LenderDefault => "lender_default",
            Role::BorrowerRecovery => "borrower_recovery",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The named spending paths of DESIGN.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathName {
    Cooperative,
    ArbitratedRelease,
    Liquidation,
    DefaultClaim,
    Recovery,
    /// A path of a custom template that is none of the five.
    Other,
}

impl PathName {
    pub const ALL: [PathName; 5] = [
        PathName::Cooperative,
        PathName::ArbitratedRelease,
        PathName::Liquidation,
        PathName::DefaultClaim,
        PathName::Recovery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PathName::Cooperative => "cooperative",
            PathName::ArbitratedRelease => "arbitrated-release",
            PathName::Liquidation => "liquidation",
            PathName::DefaultClaim => "default-claim",
            PathName::Recovery => "recovery",
            PathName::Other => "other",
        }
    }

    fn of(roles: &BTreeSet<Role>, after: Option<u32>) -> Self {
        use Role::*;
        let roles: Vec<Role> = roles.iter().copied().collect();
        match (roles.as_slice(), after) {
            ([Borrower, Lender], None) => PathName::Cooperative,
            ([Borrower, Arbiter], None) => PathName::ArbitratedRelease,
            ([Lender, Arbiter], None) => PathName::Liquidation,
            ([LenderDefault], Some(_)) => PathName::DefaultClaim,
            ([BorrowerRecovery], Some(_)) => PathName::Recovery,
            _ => PathName::Other,
        }
    }
}

impl fmt::Display for PathName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PathName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PathName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown path {s:?}; one of cooperative, arbitrated-release, liquidation, default-claim, recovery")
            })
    }
}

/// One way to spend the escrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpendingPath {
    pub name: PathName,
    /// The roles whose signatures the path needs.
    pub signers: Vec<Role>,
    /// The absolute block height from which the path is valid, if timelocked.
    pub after_height: Option<u32>,
    #[serde(skip)]
    pub keys: Vec<DescriptorPublicKey>,
}

/// The absolute heights of an escrow's timelocked paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EscrowHeights {
    pub default_height: u32,
    pub recovery_height: u32,
}

impl EscrowHeights {
    /// Check `recovery > default > funding` and that both are block heights.
    pub fn new(
        default_height: u32,
        recovery_height: u32,
        funding_height: u32,
    ) -> Result<Self, PolicyError> {
        for (name, value) in [
            ("default_height", default_height),
            ("recovery_height", recovery_height),
        ] {
            if value >= 500_000_000 {
                return Err(PolicyError::NotAHeight { name, value });
            }
        }
        if default_height <= funding_height {
            return Err(PolicyError::DefaultNotAfterFunding {
                default: default_height,
                funding: funding_height,
            });
        }
        if recovery_height <= default_height {
            return Err(PolicyError::RecoveryNotAfterDefault {
                default: default_height,
                recovery: recovery_height,
            });
        }
        Ok(Self {
            default_height,
            recovery_height,
        })
    }
}

/// The three parties' account keys (what a descriptor is checked against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyAccounts {
    pub borrower: AccountKey,
    pub lender: AccountKey,
    pub arbiter: AccountKey,
}

impl PartyAccounts {
    fn of(&self, party: Party) -> &AccountKey {
        match party {
            Party::Borrower => &self.borrower,
            Party::Lender => &self.lender,
            Party::Arbiter => &self.arbiter,
        }
    }
}

/// The three account keys and the escrow's index.
#[derive(Debug, Clone)]
pub struct EscrowKeys {
    pub borrower: AccountKey,
    pub lender: AccountKey,
    pub arbiter: AccountKey,
    pub index: u32,
}

impl EscrowKeys {
    pub fn accounts(&self) -> PartyAccounts {
        PartyAccounts {
            borrower: self.borrower.clone(),
            lender: self.lender.clone(),
            arbiter: self.arbiter.clone(),
        }
    }

    /// The five per-escrow keys by role.
    pub fn derive(&self) -> Result<BTreeMap<Role, DescriptorPublicKey>, PolicyError> {
        crate::keys::check_distinct(&[
            ("borrower", &self.borrower),
            ("lender", &self.lender),
            ("arbiter", &self.arbiter),
        ])?;
        Ok(BTreeMap::from([
            (
                Role::Borrower,
                self.borrower.derive(Chain::Multisig, self.index)?,
            ),
            (
                Role::Lender,
                self.lender.derive(Chain::Multisig, self.index)?,
            ),
            (
                Role::Arbiter,
                self.arbiter.derive(Chain::Multisig, self.index)?,
            ),
            (
                Role::LenderDefault,
                self.lender.derive(Chain::Timelocked, self.index)?,
            ),
            (
                Role::BorrowerRecovery,
                self.borrower.derive(Chain::Timelocked, self.index)?,
            ),
        ]))
    }
}

/// A policy template (the text with placeholders).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTemplate {
    text: String,
}

impl Default for PolicyTemplate {
    fn default() -> Self {
        Self {
            text: DEFAULT_TEMPLATE.trim().to_owned(),
        }
    }
}

impl PolicyTemplate {
    /// Accept a template whose placeholders are all known.
    pub fn new(text: &str) -> Result<Self, PolicyError> {
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            let end = rest[start..]
                .find('}')
                .map(|e| start + e + 1)
                .ok_or_else(|| PolicyError::UnknownPlaceholder(rest[start..].to_owned()))?;
            let placeholder = &rest[start..end];
            if !PLACEHOLDERS.contains(&placeholder) {
                return Err(PolicyError::UnknownPlaceholder(placeholder.to_owned()));
            }
            rest = &rest[end..];
        }
        Ok(Self {
            text: text.trim().to_owned(),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn substitute(
        &self,
        keys: &BTreeMap<Role, DescriptorPublicKey>,
        heights: EscrowHeights,
    ) -> String {
        let mut text = self.text.clone();
        for (role, key) in keys {
            text = text.replace(&format!("{{{}}}", role.as_str()), &key.to_string());
        }
        text.replace("{default_height}", &heights.default_height.to_string())
            .replace("{recovery_height}", &heights.recovery_height.to_string())
    }

    /// Substitute, parse, compile and check the guarantees.
    pub fn instantiate(
        &self,
        keys: &EscrowKeys,
        heights: EscrowHeights,
        network: Network,
    ) -> Result<EscrowDescriptor, PolicyError> {
        let derived = keys.derive()?;
        let text = self.substitute(&derived, heights);
        let concrete = Concrete::<DescriptorPublicKey>::from_str(&text)
            .map_err(|e| PolicyError::Parse(e.to_string()))?;
        let template_paths = {
            let lifted = concrete
                .lift()
                .map_err(|e| PolicyError::Parse(e.to_string()))?;
            minimal_paths(&lifted)?
        };
        let roles: BTreeMap<DescriptorPublicKey, Role> =
            derived.iter().map(|(r, k)| (k.clone(), *r)).collect();
        // Check on the template first: a broken guarantee is reported as such even
        // when the template would not compile either.
        check_guarantees(
            &template_paths,
            &roles,
            heights.default_height,
            heights.recovery_height,
        )?;
        let ms = self.compile(&derived, heights)?;
        let descriptor =
            Descriptor::new_wsh(ms).map_err(|e| PolicyError::Compile(e.to_string()))?;
        let escrow = EscrowDescriptor::from_parts(descriptor, roles, heights, network, keys.index)?;
        let compiled_paths: BTreeSet<RawPath<DescriptorPublicKey>> = escrow
            .paths
            .iter()
            .map(|p| RawPath {
                keys: p.keys.iter().cloned().collect(),
                after: p.after_height,
            })
            .collect();
        if compiled_paths != template_paths {
            return Err(PolicyError::LiftMismatch);
        }
        Ok(escrow)
    }
}

impl PolicyTemplate {
    /// Compile the template for these keys and heights. The policy compiler is slow
    /// (seconds for the default template), and its choice depends only on the shape of
    /// the policy and the sizes of keys and height pushes, not on their values. So the
    /// template is compiled once per height size class with stand-in keys and heights,
    /// and the real ones are put into the compiled miniscript's text. The caller checks
    /// that the result lifts to the template's semantics with the real keys.
    fn compile(
        &self,
        keys: &BTreeMap<Role, DescriptorPublicKey>,
        heights: EscrowHeights,
    ) -> Result<Miniscript<DescriptorPublicKey, Segwitv0>, PolicyError> {
        type Cache = Mutex<HashMap<(String, usize, usize), Result<String, PolicyError>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let stand_in_keys = example_keys(Network::Regtest)
            .derive()
            .expect("the example keys are distinct");
        let (d_class, r_class) = (
            push_len(heights.default_height),
            push_len(heights.recovery_height),
        );
        let stand_in = EscrowHeights {
            default_height: stand_in_height(d_class, 0),
            recovery_height: stand_in_height(r_class, 1),
        };
        let cache_key = (self.text.clone(), d_class, r_class);
        let cached = CACHE
            .get_or_init(Default::default)
            .lock()
            .map(|c| c.get(&cache_key).cloned())
            .unwrap_or(None);
        let compiled = match cached {
            Some(c) => c?,
            None => {
                let text = self.substitute(&stand_in_keys, stand_in);
                let result = Concrete::<DescriptorPublicKey>::from_str(&text)
                    .map_err(|e| PolicyError::Parse(e.to_string()))
                    .and_then(|c| {
                        c.compile::<Segwitv0>()
                            .map_err(|e| PolicyError::Compile(e.to_string()))
                    })
                    .map(|ms| ms.to_string());
                if let Ok(mut cache) = CACHE.get_or_init(Default::default).lock() {
                    cache.insert(cache_key, result.clone());
                }
                result?
            }
        };
        // Two phases through markers that occur in no key or number, so a real value
        // equal to another stand-in is never replaced twice.
        let mut text = compiled;
        for role in keys.keys() {
            text = text.replace(&stand_in_keys[role].to_string(), &format!("<{role}>"));
        }
        text = text
            .replace(&format!("after({})", stand_in.default_height), "after(<d>)")
            .replace(
                &format!("after({})", stand_in.recovery_height),
                "after(<r>)",
            );
        for (role, key) in keys {
            text = text.replace(&format!("<{role}>"), &key.to_string());
        }
        text = text
            .replace("<d>", &heights.default_height.to_string())
            .replace("<r>", &heights.recovery_height.to_string());
        Miniscript::from_str(&text).map_err(|e| PolicyError::Compile(e.to_string()))
    }
}

/// Bytes of the script push of a height (what the compiler's cost model sees).
fn push_len(height: u32) -> usize {
    bitcoin::script::Builder::new()
        .push_int(i64::from(height))
        .into_script()
        .len()
}

/// A stand-in height with the same push size; `which` (0 or 1) keeps two apart.
fn stand_in_height(class: usize, which: usize) -> u32 {
    const CANDIDATES: [u32; 10] = [1, 2, 17, 18, 128, 129, 32_768, 32_769, 8_388_608, 8_388_609];
    CANDIDATES
        .into_iter()
        .filter(|h| push_len(*h) == class)
        .nth(which)
        .unwrap_or(CANDIDATES[which])
}

/// A compiled, checked escrow descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowDescriptor {
    descriptor: Descriptor<DescriptorPublicKey>,
    roles: BTreeMap<DescriptorPublicKey, Role>,
    heights: EscrowHeights,
    network: Network,
    index: u32,
    paths: Vec<SpendingPath>,
    // Derived once: deriving the five keys costs about half a millisecond, and the
    // watcher asks for the script of thousands of escrows on every sync.
    script_pubkey: ScriptBuf,
    witness_script: ScriptBuf,
    pubkey_roles: BTreeMap<bitcoin::PublicKey, Role>,
}

impl EscrowDescriptor {
    fn from_parts(
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
        let definite = descriptor
            .at_derivation_index(0)
            .map_err(|e| PolicyError::Descriptor(e.to_string()))?;
        let secp = Secp256k1::verification_only();
        let mut pubkey_roles = BTreeMap::new();
        for (key, role) in &roles {
            let derived = key
                .clone()
                .at_derivation_index(0)
                .and_then(|k| k.derive_public_key(&secp))
                .map_err(|e| PolicyError::Descriptor(e.to_string()))?;
            pubkey_roles.insert(derived, *role);
        }
        Ok(Self {
            script_pubkey: definite.script_pubkey(),
            witness_script: definite
                .explicit_script()
                .map_err(|e| PolicyError::Descriptor(e.to_string()))?,
            pubkey_roles,
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

    /// The descriptor as a definite (non-wildcard) descriptor.
    pub fn definite(&self) -> Descriptor<DefiniteDescriptorKey> {
        self.descriptor
            .at_derivation_index(0)
            .expect("escrow descriptors have no wildcard and no hardened step (checked)")
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
        let secp = Secp256k1::verification_only();
        self.roles
            .iter()
            .filter_map(|(key, role)| {
                let DescriptorPublicKey::XPub(x) = key else {
                    return None;
                };
                let (fingerprint, origin) = x.origin.clone()?;
                let public = key
                    .clone()
                    .at_derivation_index(0)
                    .ok()?
                    .derive_public_key(&secp)
                    .ok()?;
                Some(KeyOrigin {
                    role: *role,
                    key: public,
                    fingerprint,
                    path: origin.extend(&x.derivation_path),
                })
            })
            .collect()
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

/// Deterministic throwaway keys for `policy check` (which has no real keys).
pub fn example_keys(network: Network) -> EscrowKeys {
    let secp = Secp256k1::new();
    let account = |seed: u8| {
        let master = bitcoin::bip32::Xpriv::new_master(network, &[seed; 32])
            .expect("a 32-byte seed is a valid master key");
        let path = crate::keys::account_path(network, 0).expect("account 0 is valid");
        AccountKey::from_master(&master, &path, &secp)
            .expect("hardened derivation of a fixed path cannot fail")
    };
    EscrowKeys {
        borrower: account(1),
        lender: account(2),
        arbiter: account(3),
        index: 0,
    }
}

#[cfg(test)]
mod tests;
