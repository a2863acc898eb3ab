//! Spending-path analysis: a lifted (semantic) policy flattened into its minimal
//! spending paths, each a set of keys plus the absolute height it needs, and the
//! guarantees of DESIGN.md §2 checked on them with every key mapped to its party.

use std::collections::{BTreeMap, BTreeSet};

use miniscript::policy::semantic::Policy as Semantic;
use miniscript::MiniscriptKey;

use super::{Party, PolicyError, Role};

/// A way to spend: these keys sign, and the chain is at least at `after` (if any).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawPath<Pk: Ord> {
    pub keys: BTreeSet<Pk>,
    pub after: Option<u32>,
}

impl<Pk: Ord + Clone> RawPath<Pk> {
    fn merge(&self, other: &Self) -> Self {
        Self {
            keys: self.keys.union(&other.keys).cloned().collect(),
            after: match (self.after, other.after) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// True if `self` asks for no more than `other` (so `other` is redundant).
    fn implies(&self, other: &Self) -> bool {
        self.keys.is_subset(&other.keys) && self.after.unwrap_or(0) <= other.after.unwrap_or(0)
    }
}

/// An upper bound on paths while flattening; an escrow policy has a handful.
const MAX_PATHS: usize = 4096;

/// The minimal spending paths of a semantic policy. Relative timelocks, hash locks and
/// time-based (not height-based) `after` are refused here.
pub fn minimal_paths<Pk: MiniscriptKey + Ord>(
    policy: &Semantic<Pk>,
) -> Result<BTreeSet<RawPath<Pk>>, PolicyError> {
    let mut heights = 0;
    let mut times = 0;
    check_locks(policy, &mut heights, &mut times)?;
    if heights > 0 && times > 0 {
        return Err(PolicyError::MixedTimelocks);
    }
    if times > 0 {
        return Err(PolicyError::TimeBasedLock);
    }
    let all = flatten(policy)?;
    let minimal = all
        .iter()
        .filter(|p| !all.iter().any(|q| q != *p && q.implies(p)))
        .cloned()
        .collect();
    Ok(minimal)
}

fn check_locks<Pk: MiniscriptKey>(
    policy: &Semantic<Pk>,
    heights: &mut usize,
    times: &mut usize,
) -> Result<(), PolicyError> {
    match policy {
        Semantic::After(t) if t.is_block_time() => *times += 1,
        Semantic::After(_) => *heights += 1,
        Semantic::Older(_) => return Err(PolicyError::RelativeTimelock),
        Semantic::Sha256(_)
        | Semantic::Hash256(_)
        | Semantic::Ripemd160(_)
        | Semantic::Hash160(_) => return Err(PolicyError::HashLock),
        Semantic::Thresh(t) => {
            for sub in t.iter() {
                check_locks(sub, heights, times)?;
            }
        }
        Semantic::Unsatisfiable | Semantic::Trivial | Semantic::Key(_) => {}
    }
    Ok(())
}

fn flatten<Pk: MiniscriptKey + Ord>(
    policy: &Semantic<Pk>,
) -> Result<BTreeSet<RawPath<Pk>>, PolicyError> {
    Ok(match policy {
        Semantic::Unsatisfiable => BTreeSet::new(),
        Semantic::Trivial => [RawPath {
            keys: BTreeSet::new(),
            after: None,
        }]
        .into(),
        Semantic::Key(k) => [RawPath {
            keys: [k.clone()].into(),
            after: None,
        }]
        .into(),
        Semantic::After(t) => [RawPath {
            keys: BTreeSet::new(),
            after: Some(t.to_consensus_u32()),
        }]
        .into(),
        Semantic::Thresh(t) => {
            let subs = t
                .iter()
                .map(|s| flatten(s))
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = BTreeSet::new();
            for combo in combinations(subs.len(), t.k()) {
                let mut acc: BTreeSet<RawPath<Pk>> = [RawPath {
                    keys: BTreeSet::new(),
                    after: None,
                }]
                .into();
                for i in combo {
                    let mut next = BTreeSet::new();
                    for a in &acc {
                        for b in &subs[i] {
                            next.insert(a.merge(b));
                            if next.len() > MAX_PATHS {
                                return Err(PolicyError::TooComplex);
                            }
                        }
                    }
                    acc = next;
                }
                out.extend(acc);
                if out.len() > MAX_PATHS {
                    return Err(PolicyError::TooComplex);
                }
            }
            out
        }
        Semantic::Older(_) => return Err(PolicyError::RelativeTimelock),
        _ => return Err(PolicyError::HashLock),
    })
}

fn combinations(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn go(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            go(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    if k <= n {
        go(0, n, k, &mut Vec::new(), &mut out);
    }
    out
}

/// Check the guarantees on minimal paths whose keys are already mapped to roles.
pub fn check_guarantees<Pk: MiniscriptKey + Ord>(
    paths: &BTreeSet<RawPath<Pk>>,
    roles: &BTreeMap<Pk, Role>,
    default_height: u32,
    recovery_height: u32,
) -> Result<(), PolicyError> {
    if paths.is_empty() {
        return Err(PolicyError::Unspendable);
    }
    let mut checked = Vec::new();
    for path in paths {
        let mut parties = BTreeSet::new();
        for key in &path.keys {
            let role = roles
                .get(key)
                .ok_or_else(|| PolicyError::UnknownKey(key.to_string()))?;
            parties.insert(role.party());
        }
        checked.push((
            parties.into_iter().collect::<Vec<_>>(),
            path.after.unwrap_or(0),
        ));
    }
    // The arbiter-alone rule first: it holds at every height, so it is the most
    // specific reason when a path breaks several rules.
    if checked
        .iter()
        .any(|(p, _)| p.as_slice() == [Party::Arbiter])
    {
        return Err(PolicyError::ArbiterAlone);
    }
    for (parties, height) in checked {
        match parties.as_slice() {
            [] => return Err(PolicyError::AnyoneCanSpend),
            [party] if height < default_height => {
                return Err(PolicyError::SinglePartyBeforeDefault {
                    party: *party,
                    height,
                    default_height,
                })
            }
            [Party::Borrower] if height < recovery_height => {
                return Err(PolicyError::BorrowerAloneBeforeRecovery {
                    height,
                    recovery_height,
                })
            }
            _ => {}
        }
    }
    Ok(())
}
