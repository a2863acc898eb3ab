//! The breach: the price falls until loans A and B wait for the lender's
//! co-signature; their pending PSBTs, honest co-signatures, and the keys the
//! co-signature cases sign with.

use std::str::FromStr;

use anyhow::{ensure, Context};
use bitcoin::bip32::{DerivationPath, KeySource};
use bitcoin::ecdsa::Signature;
use bitcoin::psbt::Psbt;
use bitcoin::PublicKey;

use crate::signing::{derived, escrow_key, signature, Key, Over};
use crate::Scene;

pub struct Breach {
    /// A's pending PSBT, signed by the arbiter.
    pub pending_a: Psbt,
    /// A co-signed by the lender: the honest answer, as sent and parsed.
    pub signed_a: String,
    pub good: Psbt,
    /// The lender's escrow key in A (2-of-3 branch), and its origin there.
    pub lender: Key,
    pub lender_origin: KeySource,
    /// The lender's other key in A's escrow: the timelocked default claim's.
    pub claim: Key,
    pub arbiter_pk: PublicKey,
    /// B's pending PSBT, and B co-signed by its lender by hand (B's escrow has Bea's
    /// key) with that signature and key.
    pub pending_b: Psbt,
    pub signed_b: Psbt,
    pub sig_b: Signature,
    pub lender_b: Key,
    /// A key in no escrow.
    pub stranger: Key,
}

impl Breach {
    /// Lower the price to the margin call, then to liquidation; wait until both loans
    /// hold a pending PSBT.
    pub fn reach(s: &Scene) -> anyhow::Result<Self> {
        let (m, secp) = (s.m, &s.secp);
        m.set_price(7_000_000)?;
        for id in [&s.a, &s.b] {
            m.api()
                .wait(&format!("/loans/{id}"), &m.lender, "margin call", |v| {
                    v["state"] == "margin_call"
                })?;
        }
        m.set_price(6_000_000)?;
        for id in [&s.a, &s.b] {
            m.api()
                .wait(&format!("/loans/{id}"), &m.lender, "liquidating", |v| {
                    v["state"] == "liquidating" && v["pending_psbt"].is_object()
                })?;
        }
        let pending_of = |id: &str| -> anyhow::Result<Psbt> {
            let p = m.api().get(&format!("/loans/{id}/psbt"), &m.lender)?;
            Ok(Psbt::from_str(p["psbt"].as_str().context("psbt")?)?)
        };
        let pending_a = pending_of(&s.a)?;
        let pending_b = pending_of(&s.b)?;
        let (_, signed_a) = m.lender_signs(&s.a)?;
        let good = Psbt::from_str(&signed_a)?;
        let lender = escrow_key(&pending_a, &m.parties.lender, 0, secp)?;
        ensure!(
            good.inputs[0].partial_sigs.contains_key(&lender.pk),
            "the lender's key"
        );
        let arbiter_pk = *pending_a.inputs[0]
            .partial_sigs
            .keys()
            .next()
            .context("the arbiter's signature")?;
        let lender_b = escrow_key(&pending_b, &m.parties.lender, 0, secp)?;
        let mut signed_b = pending_b.clone();
        let sig_b = signature(&pending_b, &lender_b, Over::default(), secp)?;
        signed_b.inputs[0].partial_sigs.insert(lender_b.pk, sig_b);
        let stranger = derived(
            crate::common::escrow::random_key()?.master(),
            &DerivationPath::from_str("m/48'/1'/0'/2'/0/0")?,
            secp,
        )?;
        let lender_origin = pending_a.inputs[0].bip32_derivation[&lender.pk.inner].clone();
        let claim = escrow_key(&pending_a, &m.parties.lender, 2, secp)?;
        Ok(Self {
            pending_a,
            signed_a,
            good,
            lender,
            lender_origin,
            claim,
            arbiter_pk,
            pending_b,
            signed_b,
            sig_b,
            lender_b,
            stranger,
        })
    }
}
