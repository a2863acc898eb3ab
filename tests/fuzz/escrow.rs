//! The valid escrow the PSBT, key and Electrum targets start from: three parties'
//! keys, the default template's descriptor, an arbiter-signed release decision, the
//! borrower's co-signed copy and the finalized transaction.

use std::sync::OnceLock;

use bitcoin::bip32::Xpriv;
use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, FeeRate, OutPoint, ScriptBuf, Transaction,
    TxIn, TxOut, Txid,
};
use btc_escrow::engine::{Decision, DecisionKind, DecisionRecord};
use btc_escrow::keys::{account_path, AccountKey, SigningKey};
use btc_escrow::policy::{
    EscrowDescriptor, EscrowHeights, EscrowKeys, PartyAccounts, PathName, PolicyTemplate,
};
use btc_escrow::tx::{self, FeeCap, SpendRequest};

use super::NETWORK;

pub(crate) struct Escrow {
    pub(crate) secp: Secp256k1<All>,
    pub(crate) escrow: EscrowDescriptor,
    /// The parties' account keys at index 7 (the escrow's).
    pub(crate) keys: EscrowKeys,
    pub(crate) accounts: PartyAccounts,
    pub(crate) heights: EscrowHeights,
    pub(crate) template: PolicyTemplate,
    pub(crate) borrower: SigningKey,
    /// The arbiter-signed decision (a release), as the service stores it.
    pub(crate) record: DecisionRecord,
    /// The service's copy: arbiter-signed.
    pub(crate) ours: Psbt,
    /// The borrower's co-signed copy.
    pub(crate) cosigned: Psbt,
    /// The finalized release.
    pub(crate) tx: Transaction,
    /// The escrow output each input spends (same script and value).
    pub(crate) spent: TxOut,
}

fn funding(escrow: &EscrowDescriptor, n: u8, value: Amount) -> tx::EscrowInput {
    let prev_tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([n; 32]), 0),
            ..TxIn::default()
        }],
        output: vec![
            TxOut {
                value: Amount::from_sat(1_000),
                script_pubkey: ScriptBuf::new_op_return([]),
            },
            TxOut {
                value,
                script_pubkey: escrow.script_pubkey(),
            },
        ],
    };
    tx::EscrowInput {
        outpoint: OutPoint::new(prev_tx.compute_txid(), 1),
        prev_tx,
    }
}

fn build_escrow() -> Escrow {
    let secp = Secp256k1::new();
    let key = |seed: u8| {
        let master = Xpriv::new_master(NETWORK, &[seed; 32]).expect("a 32-byte seed");
        SigningKey::parse(&master.to_string(), NETWORK).expect("an xprv of this network")
    };
    let (borrower, lender, arbiter) = (key(21), key(22), key(23));
    let account = |k: &SigningKey| {
        AccountKey::from_master(
            k.master(),
            &account_path(NETWORK, 0).expect("account 0"),
            &secp,
        )
        .expect("hardened derivation")
    };
    let keys = EscrowKeys {
        borrower: account(&borrower),
        lender: account(&lender),
        arbiter: account(&arbiter),
        index: 7,
    };
    let template = PolicyTemplate::default();
    let heights = EscrowHeights::new(300, 400, 200).expect("valid heights");
    let escrow = template
        .instantiate(&keys, heights, NETWORK)
        .expect("the default template instantiates");
    let value = Amount::from_sat(50_000_000);
    let inputs = vec![funding(&escrow, 1, value), funding(&escrow, 2, value)];
    let rest_to = ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([9; 20]));
    // The decision's fee is the one its transaction pays (checked when it is rebuilt).
    let fee = tx::build(
        &escrow,
        &SpendRequest {
            path: PathName::ArbitratedRelease,
            inputs: inputs.clone(),
            payments: Vec::new(),
            rest_to: rest_to.clone(),
            fee_rate: FeeRate::from_sat_per_kwu(500),
            tip: 250,
        },
    )
    .expect("the release builds")
    .fee;
    let decision = Decision {
        loan_id: "fuzz".into(),
        number: 0,
        kind: DecisionKind::Release,
        attempt: 0,
        inputs,
        payments: Vec::new(),
        rest_to,
        fee_sat_per_kvb: 2_000,
        tip: 250,
        fee,
    };
    let record = DecisionRecord::sign(decision, &escrow, &arbiter, &FeeCap::default(), &secp)
        .expect("the arbiter signs the decision");
    let ours = record.psbt().expect("the stored PSBT reads back");
    let mut cosigned = ours.clone();
    tx::sign(&mut cosigned, &borrower, &escrow, &FeeCap::default(), &secp)
        .expect("the borrower co-signs");
    let (_, tx) = record
        .cosign(&cosigned, &secp)
        .expect("the co-signed copy merges and finalizes");
    let spent = TxOut {
        value,
        script_pubkey: escrow.script_pubkey(),
    };
    Escrow {
        accounts: keys.accounts(),
        keys,
        heights,
        secp,
        escrow,
        template,
        borrower,
        record,
        ours,
        cosigned,
        tx,
        spent,
    }
}

/// The escrow, built on first use.
pub(crate) fn escrow() -> &'static Escrow {
    static E: OnceLock<Escrow> = OnceLock::new();
    E.get_or_init(build_escrow)
}
