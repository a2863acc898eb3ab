//! `verify-escrow`: what a borrower checks before sending coins to an escrow (and a
//! lender before paying out the principal), trusting nothing the server shows. From the
//! loan JSON it takes only the three account keys, the index, the heights and the
//! terms, and re-derives the rest itself:
//! - its own account key is one of the three, in its own role (its multisig key at
//!   `/0/i` and its timelocked key at `/2/i`);
//! - the descriptor is exactly the escrow template instantiated for those keys, index
//!   and heights (so no extra branch, no key moved), with every guarantee of
//!   DESIGN.md §2 re-checked: in particular the arbiter alone can spend nothing;
//! - the address, the index, the heights and the multipath descriptor (what a wallet
//!   imports) all give the same escrow;
//! - the terms are those the party agreed to (each field of its own copy), and the
//!   timelock heights fit them at the current tip: the lender's solo path cannot open
//!   before a full term (at fast blocks) plus grace from now, nor the borrower's
//!   recovery come later than the terms allow.
//!
//! Pure: the caller fetches the loan and the tip. Any mismatch is an error naming it.

use std::str::FromStr;

use bitcoin::Network;
use miniscript::descriptor::{Descriptor, DescriptorPublicKey, Wildcard};
use miniscript::ForEachKey;
use serde_json::{json, Map, Value};

use crate::keys::AccountKey;
use crate::loan::terms::FAST_SECS_PER_BLOCK;
use crate::policy::{EscrowDescriptor, EscrowHeights, Party, PartyAccounts, PolicyTemplate, Role};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the loan JSON has no valid `{field}`")]
    Missing { field: String },
    #[error("escrow.wallet_policy.keys: {0}")]
    Key(String),
    #[error("your account key {own} is not among the escrow's keys: this escrow is not yours")]
    OwnKeyMissing { own: String },
    #[error("the arbiter key you pinned ({arbiter}) is not among the escrow's keys")]
    ArbiterMissing { arbiter: String },
    #[error("the counterparty key you pinned ({key}) is not among the escrow's keys")]
    CounterpartyMissing { key: String },
    #[error("the descriptor is not the escrow of these keys with you as the {party}: {reason}")]
    Descriptor { party: Party, reason: String },
    #[error("{what}: derived {derived}, the loan shows {shown}")]
    Mismatch {
        what: &'static str,
        derived: String,
        shown: String,
    },
    #[error("term `{field}`: you agreed to {agreed}, the loan says {shown}")]
    Term {
        field: String,
        agreed: String,
        shown: String,
    },
    #[error("the path {path} can be spent by the {role} alone without a timelock")]
    SoloPath { path: String, role: Role },
    #[error(
        "default_height {default_height} opens the lender's solo path too early: a full term \
         plus grace from the tip ({tip}) is height {earliest} at the fastest blocks"
    )]
    DefaultTooEarly {
        default_height: u32,
        tip: u32,
        earliest: u32,
    },
    #[error(
        "default_height {default_height} is later than the terms allow from the tip {tip} \
         (at most {latest}, with {slack} blocks of slack)"
    )]
    DefaultTooLate {
        default_height: u32,
        tip: u32,
        latest: u32,
        slack: u32,
    },
}

/// What the party knows without the server.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub network: Network,
    /// Who is checking: the borrower or the lender.
    pub party: Party,
    /// Its own account key (`[fp/48'/coin'/account'/2']xpub`).
    pub own: AccountKey,
    /// The service's arbiter key, when the party pinned it (else the role of the two
    /// other keys is taken from the template: see [`Verified::arbiter_pinned`]).
    pub arbiter: Option<AccountKey>,
    /// The other party's account key, when known.
    pub counterparty: Option<AccountKey>,
    /// The terms the party agreed to, by API field name (an offer file): each must be
    /// the loan's.
    pub agreed_terms: Option<Map<String, Value>>,
    /// The chain tip the heights are checked against (`None`: only checked against
    /// each other and the terms, e.g. by a co-signer without its own chain view).
    pub tip: Option<u32>,
    pub now: u64,
    /// How many blocks later than the terms give at `tip` the default height may be
    /// (blocks found since acceptance): 144 is one day.
    pub max_extra_blocks: u32,
    pub template: PolicyTemplate,
}

/// An escrow that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub escrow: EscrowDescriptor,
    pub accounts: PartyAccounts,
    pub party: Party,
    pub arbiter_pinned: bool,
    pub required_collateral_sat: Option<u64>,
}

impl Verified {
    /// The report printed by `verify-escrow`.
    pub fn report(&self) -> Value {
        let h = self.escrow.heights();
        json!({
            "ok": true,
            "you_are": self.party,
            "address": self.escrow.address().to_string(),
            "index": self.escrow.index(),
            "default_height": h.default_height,
            "recovery_height": h.recovery_height,
            "required_collateral_sat": self.required_collateral_sat,
            "borrower_account": self.accounts.borrower.to_string(),
            "lender_account": self.accounts.lender.to_string(),
            "arbiter_account": self.accounts.arbiter.to_string(),
            "arbiter_pinned": self.arbiter_pinned,
            "descriptor": self.escrow.to_string(),
            "paths": self.escrow.paths().iter().map(|p| json!({
                "name": p.name,
                "signers": p.signers,
                "after_height": p.after_height,
            })).collect::<Vec<_>>(),
        })
    }
}

fn field<'a>(loan: &'a Value, path: &str) -> Result<&'a Value, VerifyError> {
    path.split('.')
        .try_fold(loan, |v, k| v.get(k))
        .filter(|v| !v.is_null())
        .ok_or_else(|| VerifyError::Missing {
            field: path.to_owned(),
        })
}

fn text<'a>(loan: &'a Value, path: &str) -> Result<&'a str, VerifyError> {
    field(loan, path)?
        .as_str()
        .ok_or_else(|| VerifyError::Missing {
            field: path.to_owned(),
        })
}

fn number(loan: &Value, path: &str) -> Result<u64, VerifyError> {
    field(loan, path)?
        .as_u64()
        .ok_or_else(|| VerifyError::Missing {
            field: path.to_owned(),
        })
}

fn height(loan: &Value, path: &str) -> Result<u32, VerifyError> {
    u32::try_from(number(loan, path)?).map_err(|_| VerifyError::Missing {
        field: path.to_owned(),
    })
}

/// Check `loan` (the API's loan JSON) against what the party knows.
pub fn verify_escrow(loan: &Value, exp: &Expectation) -> Result<Verified, VerifyError> {
    let descriptor = text(loan, "escrow.descriptor")?;
    let shown_address = text(loan, "escrow.address")?;
    let shown_index = height(loan, "escrow.index")?;
    let shown = EscrowHeights {
        default_height: height(loan, "escrow.default_height")?,
        recovery_height: height(loan, "escrow.recovery_height")?,
    };
    let keys: Vec<AccountKey> = field(loan, "escrow.wallet_policy.keys")?
        .as_array()
        .ok_or_else(|| VerifyError::Missing {
            field: "escrow.wallet_policy.keys".into(),
        })?
        .iter()
        .map(|k| {
            let k = k.as_str().unwrap_or_default();
            AccountKey::parse("escrow.wallet_policy.keys", k, exp.network)
                .map_err(|e| VerifyError::Key(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if keys.len() != 3 {
        return Err(VerifyError::Key(format!("{} keys, not 3", keys.len())));
    }

    // Whose key is whose: one's own is known; the arbiter's and the counterparty's
    // are pinned, or else taken in the one order the template accepts.
    let same = |a: &AccountKey, b: &AccountKey| a.to_string() == b.to_string();
    if !keys.iter().any(|k| same(k, &exp.own)) {
        return Err(VerifyError::OwnKeyMissing {
            own: exp.own.to_string(),
        });
    }
    let others: Vec<&AccountKey> = keys.iter().filter(|k| !same(k, &exp.own)).collect();
    if others.len() != 2 {
        return Err(VerifyError::Key("your key is listed twice".into()));
    }
    if let Some(a) = &exp.arbiter {
        if !others.iter().any(|k| same(k, a)) {
            return Err(VerifyError::ArbiterMissing {
                arbiter: a.to_string(),
            });
        }
    }
    if let Some(c) = &exp.counterparty {
        if !others.iter().any(|k| same(k, c)) {
            return Err(VerifyError::CounterpartyMissing { key: c.to_string() });
        }
    }
    let mut first_error = None;
    let mut found = None;
    for (arbiter, counterparty) in [(others[0], others[1]), (others[1], others[0])] {
        let pinned_ok = exp.arbiter.as_ref().is_none_or(|a| same(a, arbiter))
            && exp
                .counterparty
                .as_ref()
                .is_none_or(|c| same(c, counterparty));
        if !pinned_ok {
            continue;
        }
        let (borrower, lender) = match exp.party {
            Party::Borrower => (exp.own.clone(), counterparty.clone()),
            _ => (counterparty.clone(), exp.own.clone()),
        };
        let accounts = PartyAccounts {
            borrower,
            lender,
            arbiter: arbiter.clone(),
        };
        match EscrowDescriptor::parse(descriptor, exp.network, &accounts, &exp.template) {
            Ok(e) => {
                found = Some((e, accounts));
                break;
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let (escrow, accounts) = found.ok_or_else(|| VerifyError::Descriptor {
        party: exp.party,
        reason: first_error.unwrap_or_else(|| "no assignment of the keys fits".into()),
    })?;

    // The same escrow everywhere the loan shows it.
    let mismatch = |what, derived: String, shown: String| {
        if derived == shown {
            Ok(())
        } else {
            Err(VerifyError::Mismatch {
                what,
                derived,
                shown,
            })
        }
    };
    mismatch(
        "address",
        escrow.address().to_string(),
        shown_address.to_owned(),
    )?;
    mismatch(
        "escrow.index",
        escrow.index().to_string(),
        shown_index.to_string(),
    )?;
    let h = escrow.heights();
    mismatch(
        "escrow.default_height",
        h.default_height.to_string(),
        shown.default_height.to_string(),
    )?;
    mismatch(
        "escrow.recovery_height",
        h.recovery_height.to_string(),
        shown.recovery_height.to_string(),
    )?;
    // What a wallet imports (the exports) must be this escrow's, to the character.
    if let Ok(multipath) = text(loan, "escrow.multipath_descriptor") {
        mismatch(
            "escrow.multipath_descriptor",
            escrow.multipath_descriptor(),
            multipath.to_owned(),
        )?;
    }
    if let Ok(template) = text(loan, "escrow.wallet_policy.template") {
        let policy = escrow.wallet_policy();
        mismatch(
            "escrow.wallet_policy.template",
            policy.template.clone(),
            template.to_owned(),
        )?;
        let shown: Vec<String> = keys.iter().map(ToString::to_string).collect();
        mismatch(
            "escrow.wallet_policy.keys",
            policy.keys.join(", "),
            shown.join(", "),
        )?;
    }
    // DESIGN.md §2 again, said plainly: no single key spends without a timelock.
    for p in escrow.paths() {
        if p.signers.len() == 1 && p.after_height.is_none() {
            return Err(VerifyError::SoloPath {
                path: p.name.to_string(),
                role: p.signers[0],
            });
        }
    }

    // The terms agreed, then the heights against them.
    if let Some(agreed) = &exp.agreed_terms {
        for (k, v) in agreed {
            let shown = loan.get("terms").and_then(|t| t.get(k));
            if shown != Some(v) {
                return Err(VerifyError::Term {
                    field: k.clone(),
                    agreed: v.to_string(),
                    shown: shown.map_or("nothing".into(), Value::to_string),
                });
            }
        }
    }
    let term_secs = number(loan, "terms.term_secs")?;
    let grace = height(loan, "terms.grace_blocks")?;
    let delay = height(loan, "terms.recovery_delay_blocks")?;
    let deadline = number(loan, "terms.funding_deadline")?;
    mismatch(
        "recovery_height − default_height (terms.recovery_delay_blocks)",
        delay.to_string(),
        (h.recovery_height.saturating_sub(h.default_height)).to_string(),
    )?;
    let blocks = |secs: u64| u32::try_from(secs.div_ceil(FAST_SECS_PER_BLOCK)).unwrap_or(u32::MAX);
    if let Some(tip) = exp.tip {
        if exp.party == Party::Borrower {
            let earliest = tip.saturating_add(blocks(term_secs)).saturating_add(grace);
            if h.default_height < earliest {
                return Err(VerifyError::DefaultTooEarly {
                    default_height: h.default_height,
                    tip,
                    earliest,
                });
            }
        }
        let latest = tip
            .saturating_add(blocks(deadline.saturating_sub(exp.now)))
            .saturating_add(blocks(term_secs))
            .saturating_add(grace);
        if h.default_height > latest.saturating_add(exp.max_extra_blocks) {
            return Err(VerifyError::DefaultTooLate {
                default_height: h.default_height,
                tip,
                latest,
                slack: exp.max_extra_blocks,
            });
        }
    }
    Ok(Verified {
        escrow,
        accounts,
        party: exp.party,
        arbiter_pinned: exp.arbiter.is_some(),
        required_collateral_sat: loan.get("required_collateral_sat").and_then(Value::as_u64),
    })
}

/// The address a multipath descriptor gives at receive index `index`.
pub fn multipath_address(text: &str, index: u32, network: Network) -> Result<String, String> {
    let d = Descriptor::<DescriptorPublicKey>::from_str(text.trim()).map_err(|e| e.to_string())?;
    let receive = d
        .into_single_descriptors()
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("no single descriptor")?;
    // miniscript's `at_derivation_index` panics on a key with a hardened step or a
    // hardened wildcard after its xpub (no definite key can be made of it): refused
    // here first.
    if !receive.for_each_key(publicly_derivable) {
        return Err(
            "a key has a hardened step after its xpub: a public key cannot derive it".into(),
        );
    }
    let at = receive
        .at_derivation_index(index)
        .map_err(|e| e.to_string())?;
    at.address(network)
        .map(|a| a.to_string())
        .map_err(|e| e.to_string())
}

/// Whether every step after the key's xpub, its wildcard included, is unhardened.
fn publicly_derivable(key: &DescriptorPublicKey) -> bool {
    let wildcard = match key {
        DescriptorPublicKey::Single(_) => Wildcard::None,
        DescriptorPublicKey::XPub(x) => x.wildcard,
        DescriptorPublicKey::MultiXPub(x) => x.wildcard,
    };
    !key.has_hardened_step() && wildcard != Wildcard::Hardened
}
