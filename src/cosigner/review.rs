//! What the co-signer checks before signing a pending PSBT, from its own knowledge:
//! the escrow re-derived from its own key (`verify`), the terms it first saw, its own
//! price reading and its own view of the escrow's outputs. Pure: any failed check is a
//! [`Refusal`] with the reason, and nothing is signed.

use std::collections::BTreeSet;
use std::str::FromStr;

use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{Address, Amount, OutPoint, Txid};
use serde::Deserialize;
use serde_json::Value;

use crate::chain::lookup::ScriptView;
use crate::keys::SigningKey;
use crate::loan::calc::{self, Accrual};
use crate::loan::{Bps, Currency, Fiat, Price};
use crate::tx::{self, FeeCap};
use crate::verify::{verify_escrow, Expectation};

/// The co-signer's limits (`--policy FILE`, TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosignPolicy {
    /// The most fee a transaction it signs may pay, in sats…
    #[serde(default = "default_max_fee_sat")]
    pub max_fee_sat: u64,
    /// …and in basis points of the escrow's value (both apply).
    #[serde(default = "default_max_fee_bps")]
    pub max_fee_bps: u32,
    /// How far the decision's price may be from its own reference price, in basis
    /// points (both ways: a liquidation at a price too high pays the lender too few
    /// sats, one at a price too low was not justified).
    #[serde(default = "default_tolerance")]
    pub price_tolerance_bps: u32,
    /// Seconds between two polls when the event stream is down (and between sweeps).
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    /// The lender's own payout addresses: when given, a loan paying elsewhere is
    /// refused (the address is not taken from the server).
    #[serde(default)]
    pub lender_payout_addresses: Vec<String>,
}

fn default_max_fee_sat() -> u64 {
    100_000
}
fn default_max_fee_bps() -> u32 {
    200
}
fn default_tolerance() -> u32 {
    300
}
fn default_poll() -> u64 {
    5
}

impl Default for CosignPolicy {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

impl CosignPolicy {
    pub fn fee_cap(&self) -> FeeCap {
        FeeCap {
            max_fee: Amount::from_sat(self.max_fee_sat),
            max_fee_bps: self.max_fee_bps,
        }
    }
}

/// Why the co-signer did not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse<T>(reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(reason.into()))
}

/// Everything one review looks at.
pub struct Review<'a> {
    pub loan: &'a Value,
    /// The loan's events (`GET /v1/loans/{id}/events`).
    pub events: &'a [Value],
    pub own_party_id: &'a str,
    /// The escrow expectation: this lender's account key, the terms it first saw.
    pub expectation: &'a Expectation,
    /// Its own oracle's price, minor units per BTC (`None`: the decision's price is the
    /// reference, checked only for consistency).
    pub reference_price: Option<u64>,
    /// Its own view of the escrow's outputs (`None`: inputs checked from the PSBT).
    pub chain: Option<&'a ScriptView>,
    pub policy: &'a CosignPolicy,
    pub now: u64,
    /// The activation time it first saw (the server's later word is not taken).
    pub activated_at: Option<u64>,
    /// Whether it ever saw the loan active: such a loan is never refunded.
    pub was_active: bool,
    /// What its own ledger says was repaid (`None`: the server's events are counted).
    pub ledger_repaid: Option<u64>,
    /// The partial liquidations it signed itself (txids): only those count as repaid
    /// by a sale (`None`: every settled sale the events show counts).
    pub own_sales: Option<&'a BTreeSet<String>>,
}

/// A PSBT the co-signer signed.
#[derive(Debug, Clone)]
pub struct Signed {
    pub attempt: u32,
    pub kind: String,
    pub txid: Txid,
    pub psbt: Psbt,
}

fn get_u64(v: &Value, k: &str) -> Result<u64, Refusal> {
    v.get(k)
        .and_then(Value::as_u64)
        .ok_or_else(|| Refusal(format!("the loan has no `{k}`")))
}

/// Check the loan's pending PSBT and sign it with `key`, or say why not.
pub fn review(r: &Review, key: &SigningKey, secp: &Secp256k1<All>) -> Result<Signed, Refusal> {
    let loan = r.loan;
    let id = loan["id"].as_str().unwrap_or("?");
    if loan["lender_id"].as_str() != Some(r.own_party_id) {
        return refuse(format!(
            "loan {id} is not this lender's (its lender is {})",
            loan["lender_id"]
        ));
    }
    let pending = &loan["pending_psbt"];
    if pending.is_null() {
        return refuse("nothing to co-sign");
    }
    let kind = pending["kind"].as_str().unwrap_or_default().to_owned();
    let attempt = u32::try_from(get_u64(pending, "attempt")?).unwrap_or(u32::MAX);
    let verified = verify_escrow(loan, r.expectation)
        .map_err(|e| Refusal(format!("the escrow does not check: {e}")))?;
    let escrow = &verified.escrow;
    let network = r.expectation.network;
    let psbt = Psbt::from_str(pending["psbt"].as_str().unwrap_or_default())
        .map_err(|e| Refusal(format!("the pending PSBT does not parse: {e}")))?;
    tx::check_inputs(&psbt).map_err(|e| Refusal(format!("the PSBT's inputs: {e}")))?;

    // Inputs: the escrow's outputs, and (with its own chain view) exactly those.
    let spk = escrow.script_pubkey();
    let mut inputs = Amount::ZERO;
    for (i, input) in psbt.inputs.iter().enumerate() {
        let utxo = input.witness_utxo.as_ref();
        if utxo.map(|u| &u.script_pubkey) != Some(&spk) {
            return refuse(format!("input {i} does not spend the escrow"));
        }
        inputs = inputs
            .checked_add(utxo.map_or(Amount::ZERO, |u| u.value))
            .ok_or_else(|| Refusal("the inputs' amounts overflow".into()))?;
    }
    if let Some(view) = r.chain {
        let spent: BTreeSet<OutPoint> = psbt
            .unsigned_tx
            .input
            .iter()
            .map(|i| i.previous_output)
            .collect();
        let held: BTreeSet<OutPoint> = view
            .before_pending_spends()
            .iter()
            .map(|i| i.outpoint)
            .collect();
        if spent != held {
            return refuse(format!(
                "the inputs are not the escrow's outputs this co-signer sees: spends {spent:?}, the escrow holds {held:?}"
            ));
        }
    }
    let outputs = psbt
        .unsigned_tx
        .output
        .iter()
        .try_fold(Amount::ZERO, |a, o| a.checked_add(o.value))
        .ok_or_else(|| Refusal("the outputs' amounts overflow".into()))?;
    let fee = inputs
        .checked_sub(outputs)
        .ok_or_else(|| Refusal("the outputs exceed the inputs".into()))?;
    let cap = r.policy.fee_cap().cap(inputs);
    if fee > cap {
        return refuse(format!("the fee {fee} is above this co-signer's cap {cap}"));
    }

    // Outputs: only to the addresses of the terms.
    let terms = &loan["terms"];
    let address = |k: &str| -> Result<Option<bitcoin::ScriptBuf>, Refusal> {
        match terms[k].as_str() {
            None => Ok(None),
            Some(a) => Address::from_str(a)
                .ok()
                .and_then(|a| a.require_network(network).ok())
                .map(|a| Some(a.script_pubkey()))
                .ok_or_else(|| Refusal(format!("terms.{k} is not a {network} address"))),
        }
    };
    let lender_spk = address("lender_payout_address")?;
    let payout = terms["lender_payout_address"].as_str().unwrap_or_default();
    if !r.policy.lender_payout_addresses.is_empty()
        && !r.policy.lender_payout_addresses.iter().any(|a| a == payout)
    {
        return refuse(format!(
            "the lender's payout address {payout} is not one of this co-signer's"
        ));
    }
    let borrower_spk = address("borrower_return_address")?;
    let paid_to = |spk: &Option<bitcoin::ScriptBuf>| -> Amount {
        psbt.unsigned_tx
            .output
            .iter()
            .filter(|o| Some(&o.script_pubkey) == spk.as_ref())
            .map(|o| o.value)
            .sum()
    };
    // A partial liquidation pays its change back into the escrow (the script this
    // co-signer derived itself).
    let to_escrow = (kind == "partial_liquidation").then(|| spk.clone());
    for (i, o) in psbt.unsigned_tx.output.iter().enumerate() {
        let known = Some(&o.script_pubkey) == lender_spk.as_ref()
            || Some(&o.script_pubkey) == borrower_spk.as_ref()
            || Some(&o.script_pubkey) == to_escrow.as_ref();
        if !known {
            return refuse(format!(
                "output {i} pays neither the lender's payout address nor the borrower's return address of the terms"
            ));
        }
    }
    let to_lender = paid_to(&lender_spk);

    let sum = |event: &str, field: &str| -> u64 {
        r.events
            .iter()
            .filter(|e| e["event"]["event"] == event)
            .filter_map(|e| e["event"][field]["minor"].as_u64())
            .fold(0u64, u64::saturating_add)
    };
    // Repaid by partial liquidations: each settled sale follows its transaction's
    // confirmation, which must be one this co-signer signed (when it keeps a journal).
    let mut sold = 0u64;
    for pair in r.events.windows(2) {
        let (confirmed, settled) = (&pair[0]["event"], &pair[1]["event"]);
        if settled["event"] != "partial_liquidation_settled" || confirmed["event"] != "tx_confirmed"
        {
            continue;
        }
        let txid = confirmed["txid"].as_str().unwrap_or_default();
        if r.own_sales.is_none_or(|own| own.contains(txid)) {
            sold = sold.saturating_add(settled["repaid"]["minor"].as_u64().unwrap_or(0));
        }
    }
    // Repaid in money (its own ledger, else the server's events), and by sales.
    let repaid: u64 = r
        .ledger_repaid
        .unwrap_or_else(|| sum("repayment_recorded", "amount"))
        .saturating_add(sold);
    // Fully repaid: the server says so, and (with its own ledger) at least the
    // principal came back.
    let fully_repaid = r.events.iter().any(|e| e["event"]["event"] == "repaid")
        && r.ledger_repaid.is_none_or(|_| {
            terms["principal_minor"]
                .as_u64()
                .is_some_and(|p| repaid >= p)
        });
    match kind.as_str() {
        "liquidation" | "partial_liquidation" => {
            let currency = Currency::new(terms["currency"].as_str().unwrap_or_default())
                .map_err(|e| Refusal(format!("terms.currency: {e}")))?;
            let decision_price = get_u64(pending, "price_minor")?;
            let reference = r.reference_price.unwrap_or(decision_price);
            let tol = u128::from(r.policy.price_tolerance_bps);
            let scaled =
                |bps: u128| u64::try_from(u128::from(reference) * bps / 10_000).unwrap_or(u64::MAX);
            let (low, high) = (scaled(10_000 - tol.min(10_000)), scaled(10_000 + tol));
            if decision_price < low || decision_price > high {
                return refuse(format!(
                    "the decision price {decision_price} is outside {low}..={high} (this co-signer's reference {reference} ± {tol} bps)"
                ));
            }
            // What is owed, at least: the principal less every repayment, with its
            // interest from activation to a minute before the arbiter's signature (a
            // lower bound of the true debt whatever the repayments paid first; the
            // minute covers the decision being taken a little before it was signed).
            let principal = get_u64(terms, "principal_minor")?.saturating_sub(repaid);
            let apr = u32::try_from(get_u64(terms, "apr_bps")?).unwrap_or(u32::MAX);
            let activated = match r.activated_at {
                Some(first) if loan["activated_at"].as_u64() != Some(first) => {
                    return refuse(format!(
                        "the loan's activation time changed (first seen {first}, now {})",
                        loan["activated_at"]
                    ))
                }
                Some(first) => first,
                None => get_u64(loan, "activated_at")?,
            };
            let signed_at = get_u64(pending, "signed_at")?
                .saturating_sub(60)
                .max(activated);
            let owed = Accrual::new(Fiat::new(principal, currency), Bps(apr), activated)
                .owed(signed_at)
                .map_err(|e| Refusal(format!("computing what is owed: {e}")))?;
            let penalty =
                u32::try_from(get_u64(terms, "liquidation_penalty_bps")?).unwrap_or(u32::MAX);
            // At the decision's price (within tolerance of its own, checked above),
            // rounded up as the engine does: the lender is made whole.
            let split = calc::liquidation_split(
                owed,
                Bps(penalty),
                Price::new(decision_price.max(1), currency),
                inputs,
                fee,
                Amount::ZERO,
            )
            .map_err(|e| Refusal(format!("computing the lender's share: {e}")))?;
            if kind == "partial_liquidation" {
                if paid_to(&borrower_spk) != Amount::ZERO {
                    return refuse(
                        "a partial liquidation pays the borrower: its change goes back into the escrow",
                    );
                }
                check_partial(
                    r,
                    pending,
                    PartialCheck {
                        principal: get_u64(terms, "principal_minor")?,
                        repaid,
                        apr,
                        activated,
                        currency,
                        penalty: Bps(penalty),
                        price: decision_price,
                        inputs,
                        fee,
                        to_lender,
                        to_escrow: paid_to(&to_escrow),
                    },
                )?;
            } else if to_lender < split.lender {
                return refuse(format!(
                    "the lender's output {to_lender} is below owed × (1 + penalty) = {} at {decision_price} per BTC ({} minor owed)",
                    split.lender, owed.minor
                ));
            }
            // Justified: a breach at the lowest price within tolerance, or a default.
            let reason = loan["liquidation_reason"].as_str().unwrap_or_default();
            if reason == "default" {
                let due = activated.saturating_add(get_u64(terms, "term_secs")?);
                if r.now < due {
                    return refuse(format!("a default liquidation before maturity ({due})"));
                }
            } else {
                let ltv = calc::ltv(owed, inputs, Price::new(low.max(1), currency))
                    .map_err(|e| Refusal(format!("computing the LTV: {e}")))?;
                let line = u32::try_from(get_u64(terms, "liquidation_ltv_bps")?).unwrap_or(0);
                if ltv.0 < line {
                    return refuse(format!(
                        "no breach: the LTV at {low} per BTC is {} bps, under the liquidation line {line}",
                        ltv.0
                    ));
                }
            }
        }
        "release" | "refund" => {
            if kind == "release" && !fully_repaid {
                return refuse("a release before this lender recorded the full repayment");
            }
            if kind == "refund" {
                if r.was_active {
                    return refuse("a refund of a loan this co-signer saw active");
                }
                let deadline = get_u64(terms, "funding_deadline")?;
                if loan["state"] != "expired" || r.now < deadline {
                    return refuse(format!(
                        "a refund before the funding deadline {deadline} (state {})",
                        loan["state"]
                    ));
                }
            }
            if to_lender != Amount::ZERO || paid_to(&borrower_spk) != outputs {
                return refuse(format!(
                    "a {kind} pays someone other than the borrower's return address"
                ));
            }
        }
        "withdrawal" => return refuse(
            "a withdrawal is the borrower's to sign (the arbiter checks its limit and signs last)",
        ),
        other => return refuse(format!("an unknown kind of PSBT: {other:?}")),
    }

    let mut signed = psbt;
    tx::sign(&mut signed, key, escrow, &r.policy.fee_cap(), secp)
        .map_err(|e| Refusal(format!("signing: {e}")))?;
    Ok(Signed {
        attempt,
        kind,
        txid: signed.unsigned_tx.compute_txid(),
        psbt: signed,
    })
}

/// What a partial liquidation is checked with.
struct PartialCheck {
    principal: u64,
    repaid: u64,
    apr: u32,
    activated: u64,
    currency: Currency,
    penalty: Bps,
    price: u64,
    inputs: Amount,
    fee: Amount,
    to_lender: Amount,
    to_escrow: Amount,
}

/// A partial liquidation pays the lender at least what its claimed sale is worth
/// (`repay × (1 + penalty)` at the decision price, rounded up) and sells no more than
/// the smallest sale that restores the target at the most that can be owed (the whole
/// principal's interest from activation to the arbiter's signature, less every
/// repayment): the co-signer recomputes that sale itself (`partial::partial_sale`).
fn check_partial(r: &Review, pending: &Value, c: PartialCheck) -> Result<(), Refusal> {
    use crate::loan::partial::{self, Sale};
    let terms = &r.loan["terms"];
    let target = terms["target_ltv_bps"]
        .as_u64()
        .and_then(|t| u32::try_from(t).ok())
        .filter(|_| terms["partial_liquidation"] == true)
        .ok_or_else(|| {
            Refusal("a partial liquidation of a loan whose terms ask for none".into())
        })?;
    let claimed = get_u64(pending, "repay_minor")?;
    let price = Price::new(c.price.max(1), c.currency);
    let paid = calc::lender_sats(claimed, c.penalty, price)
        .map_err(|e| Refusal(format!("computing the lender's share: {e}")))?;
    if c.to_lender.to_sat() < paid {
        return refuse(format!(
            "the lender's output {} is below the sale's {claimed} minor × (1 + penalty) = {paid} sat at {} per BTC",
            c.to_lender, c.price
        ));
    }
    // Never later than now: a signature time from the future would raise the debt.
    let signed_at = get_u64(pending, "signed_at")?.min(r.now).max(c.activated);
    let most_owed = Accrual::new(Fiat::new(c.principal, c.currency), Bps(c.apr), c.activated)
        .owed(signed_at)
        .map_err(|e| Refusal(format!("computing what is owed: {e}")))?
        .minor
        .saturating_sub(c.repaid);
    let dust = Amount::from_sat(330);
    let needed = match partial::partial_sale(
        Fiat::new(most_owed, c.currency),
        c.inputs,
        price,
        Bps(target),
        c.penalty,
        c.fee,
        dust,
    )
    .map_err(|e| Refusal(format!("computing the sale: {e}")))?
    {
        Sale::Partial(s) => s,
        Sale::Full { why } => {
            return refuse(format!(
                "a partial liquidation where this co-signer finds a full one is due: {why}"
            ))
        }
    };
    if claimed > needed.repay.minor || c.to_lender > needed.lender {
        return refuse(format!(
            "the sale is more than needed: it repays {claimed} minor for {} sat, and {} minor for {} sat restores the target {target} bps at {} per BTC",
            c.to_lender,
            needed.repay.minor,
            needed.lender,
            c.price
        ));
    }
    if c.to_escrow < needed.change {
        return refuse(format!(
            "the change back into the escrow {} is below the {} a sale of {} minor leaves",
            c.to_escrow, needed.change, needed.repay.minor
        ));
    }
    Ok(())
}
