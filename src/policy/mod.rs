//! Escrow policies: a template with placeholders → substituted concrete policy →
//! compiled `wsh` descriptor → [`EscrowDescriptor`], whose spending paths are checked
//! against the guarantees of DESIGN.md §2 by lifting the compiled descriptor. Pure: no
//! I/O (the template text is handed in).

pub mod analysis;
mod derived;
mod descriptor;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use bitcoin::secp256k1::Secp256k1;
use bitcoin::Network;
use miniscript::descriptor::DescriptorPublicKey;
use miniscript::policy::{Concrete, Liftable};
use miniscript::{Descriptor, Miniscript, Segwitv0};
use serde::Serialize;

use crate::keys::{AccountKey, Chain, KeyError};
use analysis::{check_guarantees, minimal_paths, RawPath};
pub use descriptor::{EscrowDescriptor, KeyOrigin, ObservedSpend, WalletPolicy};

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
