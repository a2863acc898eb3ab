use super::*;
use crate::keys::{account_path, AccountKey, SigningKey};
use crate::policy::{EscrowHeights, EscrowKeys, PolicyTemplate};
use bitcoin::bip32::Xpriv;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::All;
use bitcoin::{Network, Txid};
use proptest::prelude::*;

pub(crate) struct Fixture {
    pub escrow: EscrowDescriptor,
    pub borrower: SigningKey,
    pub lender: SigningKey,
    pub arbiter: SigningKey,
    pub secp: Secp256k1<All>,
}

pub(crate) fn fixture() -> Fixture {
    let secp = Secp256k1::new();
    let key = |seed: u8| {
        let master = Xpriv::new_master(Network::Regtest, &[seed; 32]).unwrap();
        SigningKey::parse(&master.to_string(), Network::Regtest).unwrap()
    };
    let (borrower, lender, arbiter) = (key(11), key(12), key(13));
    let account = |k: &SigningKey| {
        AccountKey::from_master(
            k.master(),
            &account_path(Network::Regtest, 0).unwrap(),
            &secp,
        )
        .unwrap()
    };
    let keys = EscrowKeys {
        borrower: account(&borrower),
        lender: account(&lender),
        arbiter: account(&arbiter),
        index: 7,
    };
    let escrow = PolicyTemplate::default()
        .instantiate(
            &keys,
            EscrowHeights::new(300, 400, 200).unwrap(),
            Network::Regtest,
        )
        .unwrap();
    Fixture {
        escrow,
        borrower,
        lender,
        arbiter,
        secp,
    }
}

pub(crate) fn funding(escrow: &EscrowDescriptor, values: &[u64]) -> Vec<EscrowInput> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let prev_tx = Transaction {
                version: Version::TWO,
                lock_time: LockTime::ZERO,
                input: vec![TxIn {
                    previous_output: OutPoint::new(Txid::from_byte_array([i as u8 + 1; 32]), 0),
                    ..TxIn::default()
                }],
                output: vec![
                    TxOut {
                        value: Amount::from_sat(1_000),
                        script_pubkey: ScriptBuf::new_op_return([]),
                    },
                    TxOut {
                        value: Amount::from_sat(*v),
                        script_pubkey: escrow.script_pubkey(),
                    },
                ],
            };
            EscrowInput {
                outpoint: OutPoint::new(prev_tx.compute_txid(), 1),
                prev_tx,
            }
        })
        .collect()
}

fn payee(n: u8) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([n; 20]))
}

pub(crate) fn request(f: &Fixture, path: PathName, values: &[u64]) -> SpendRequest {
    SpendRequest {
        path,
        inputs: funding(&f.escrow, values),
        payments: vec![(payee(1), Amount::from_sat(40_000_000))],
        rest_to: payee(2),
        fee_rate: FeeRate::from_sat_per_vb(7).unwrap(),
        tip: 250,
    }
}

fn signers(f: &Fixture, path: PathName) -> Vec<&SigningKey> {
    match path {
        PathName::Cooperative => vec![&f.borrower, &f.lender],
        PathName::ArbitratedRelease => vec![&f.borrower, &f.arbiter],
        PathName::Liquidation => vec![&f.lender, &f.arbiter],
        PathName::DefaultClaim => vec![&f.lender],
        PathName::Recovery => vec![&f.borrower],
        PathName::Other => vec![],
    }
}

#[test]
fn every_path_builds_signs_and_finalizes_with_an_honest_fee() {
    let f = fixture();
    for path in PathName::ALL {
        for inputs in [&[100_000_000u64][..], &[60_000_000, 50_000_000][..]] {
            let req = request(&f, path, inputs);
            let built = build(&f.escrow, &req).unwrap();
            let mut psbt = built.psbt.clone();
            for input in &psbt.inputs {
                assert!(input.non_witness_utxo.is_some() && input.witness_utxo.is_some());
                assert!(input.witness_script.is_some());
                assert_eq!(input.bip32_derivation.len(), 5, "all escrow keys");
            }
            assert!(psbt.unsigned_tx.input.iter().all(|i| i.sequence.is_rbf()));
            for key in signers(&f, path) {
                assert!(sign_party(&mut psbt, key, &f).unwrap() > 0);
            }
            let tx = finalize(&psbt, &f.secp).unwrap();
            let vsize = tx.vsize() as u64;
            let fee_at_vsize = req.fee_rate.fee_vb(vsize).unwrap();
            let n_sigs = match path {
                PathName::DefaultClaim | PathName::Recovery => 1,
                _ => 2,
            } * inputs.len() as u64;
            assert!(
                built.fee >= fee_at_vsize,
                "{path}: fee {} < {fee_at_vsize}",
                built.fee
            );
            let slack = req.fee_rate.fee_vb(n_sigs).unwrap();
            assert!(
                built.fee <= fee_at_vsize + slack,
                "{path}: fee {} above {fee_at_vsize} + {slack}",
                built.fee
            );
            assert!(tx.weight() <= built.max_weight, "{path}");
            match path {
                PathName::DefaultClaim => assert_eq!(tx.lock_time.to_consensus_u32(), 300),
                PathName::Recovery => assert_eq!(tx.lock_time.to_consensus_u32(), 400),
                _ => assert_eq!(tx.lock_time.to_consensus_u32(), 250),
            }
            let observed = f
                .escrow
                .classify_spend(
                    &f.secp,
                    &tx,
                    0,
                    psbt.inputs[0].witness_utxo.as_ref().unwrap(),
                )
                .unwrap();
            assert_eq!(observed.path, path);
        }
    }
}

/// An unsigned liquidation of one 1 BTC escrow output.
fn liquidation_psbt(f: &Fixture) -> Psbt {
    build(
        &f.escrow,
        &request(f, PathName::Liquidation, &[100_000_000]),
    )
    .unwrap()
    .psbt
}

#[test]
fn one_signature_on_a_two_key_path_does_not_finalize() {
    let f = fixture();
    let mut psbt = liquidation_psbt(&f);
    sign_party(&mut psbt, &f.arbiter, &f).unwrap();
    let err = finalize(&psbt, &f.secp).unwrap_err();
    assert!(matches!(err, TxError::Finalize(_)), "{err}");
    assert!(
        err.to_string().contains("input 0: signatures from ["),
        "{err}"
    );
}

/// Found by the fuzz target at 30,000 cases: no witness UTXO, and a previous
/// transaction without the output the input spends, made miniscript's finalizer
/// index past its outputs and panic.
#[test]
fn a_previous_transaction_without_the_spent_output_is_refused_not_a_panic() {
    let f = fixture();
    let mut psbt = liquidation_psbt(&f);
    sign_party(&mut psbt, &f.arbiter, &f).unwrap();
    sign_party(&mut psbt, &f.lender, &f).unwrap();
    let input = &mut psbt.inputs[0];
    input.witness_utxo = None;
    let outputs = input.non_witness_utxo.as_ref().unwrap().output.len() as u32;
    psbt.unsigned_tx.input[0].previous_output.vout = outputs;
    let err = finalize(&psbt, &f.secp).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("input 0: non_witness_utxo has no output {outputs}")
    );
}

#[test]
fn a_key_not_in_the_psbt_signs_nothing() {
    let f = fixture();
    let mut psbt = liquidation_psbt(&f);
    let stranger = SigningKey::parse(
        &Xpriv::new_master(Network::Regtest, &[99; 32])
            .unwrap()
            .to_string(),
        Network::Regtest,
    )
    .unwrap();
    assert!(matches!(
        sign_party(&mut psbt, &stranger, &f),
        Err(TxError::NothingToSign { .. })
    ));
}

#[test]
fn build_refuses_bad_inputs_and_dust() {
    let f = fixture();
    let mut req = request(&f, PathName::Cooperative, &[100_000_000]);
    req.inputs[0].outpoint.vout = 0;
    assert!(matches!(
        build(&f.escrow, &req),
        Err(TxError::NotEscrow { .. })
    ));
    let mut req = request(&f, PathName::Cooperative, &[100_000_000]);
    req.inputs[0].outpoint.txid = Txid::all_zeros();
    assert!(matches!(
        build(&f.escrow, &req),
        Err(TxError::PrevTxMismatch { .. })
    ));
    let mut req = request(&f, PathName::Cooperative, &[100_000_000]);
    req.inputs.push(req.inputs[0].clone());
    assert!(matches!(
        build(&f.escrow, &req),
        Err(TxError::DuplicateInput { .. })
    ));
    let mut req = request(&f, PathName::Cooperative, &[100_000_000]);
    req.payments[0].1 = Amount::from_sat(100);
    assert!(matches!(
        build(&f.escrow, &req),
        Err(TxError::PaymentBelowDust { .. })
    ));
    let mut req = request(&f, PathName::Cooperative, &[40_000_400]);
    req.fee_rate = FeeRate::from_sat_per_vb(1).unwrap();
    assert!(matches!(
        build(&f.escrow, &req),
        Err(TxError::RestBelowDust { .. })
    ));
    let req = request(&f, PathName::Cooperative, &[1_000_000]);
    assert!(matches!(
        build(&f.escrow, &req),
        Err(TxError::InsufficientFunds { .. })
    ));
}

mod merge_refusals {
    use super::*;
    use crate::tx::{merge, MergeError};

    /// The service's copy signed by the arbiter, and the lender's co-signed copy.
    fn pair() -> (Fixture, Psbt, Psbt) {
        let f = fixture();
        let built = build(
            &f.escrow,
            &request(&f, PathName::Liquidation, &[60_000_000, 50_000_000]),
        )
        .unwrap();
        let mut ours = built.psbt;
        sign_party(&mut ours, &f.arbiter, &f).unwrap();
        let mut theirs = ours.clone();
        for input in &mut theirs.inputs {
            input.partial_sigs.clear();
        }
        sign_party(&mut theirs, &f.lender, &f).unwrap();
        (f, ours, theirs)
    }

    fn refused(ours: &Psbt, theirs: &Psbt, f: &Fixture) -> MergeError {
        let before = ours.clone();
        let err = merge(ours, theirs, &f.secp).unwrap_err();
        assert_eq!(
            *ours, before,
            "a refusal leaves the service's copy unchanged"
        );
        err
    }

    #[test]
    fn a_valid_cosignature_merges_and_finalizes() {
        let (f, ours, theirs) = pair();
        let merged = merge(&ours, &theirs, &f.secp).unwrap();
        let tx = finalize(&merged, &f.secp).unwrap();
        assert_eq!(tx.input.len(), 2);
        // Merging the same signatures again brings nothing new.
        assert!(matches!(
            merge(&merged, &theirs, &f.secp),
            Err(MergeError::NothingNew)
        ));
    }

    #[test]
    fn our_signature_handed_back_is_kept_and_a_different_one_under_our_key_refused() {
        let (f, ours, mut theirs) = pair();
        // The lender signed the copy we showed it: our signature comes back with its.
        for (mine, their) in ours.inputs.iter().zip(&mut theirs.inputs) {
            their.partial_sigs.extend(mine.partial_sigs.clone());
        }
        let merged = merge(&ours, &theirs, &f.secp).unwrap();
        finalize(&merged, &f.secp).unwrap();
        // Under our key, a signature that is not ours (the lender's bytes) is verified,
        // and refused.
        let (arbiter_key, _) = ours.inputs[0].partial_sigs.iter().next().unwrap();
        let lender_sig = *theirs.inputs[0]
            .partial_sigs
            .iter()
            .find(|(k, _)| *k != arbiter_key)
            .unwrap()
            .1;
        theirs.inputs[0]
            .partial_sigs
            .insert(*arbiter_key, lender_sig);
        assert!(matches!(
            refused(&ours, &theirs, &f),
            MergeError::BadSignature { index: 0, .. }
        ));
    }

    #[test]
    fn merge_and_finalize_verifies_each_signature_once_and_refuses_as_merge_does() {
        let (f, ours, theirs) = pair();
        let (merged, tx) = crate::tx::merge_and_finalize(&ours, &theirs, &f.secp).unwrap();
        let expected = merge(&ours, &theirs, &f.secp).unwrap();
        assert_eq!(merged, expected);
        assert_eq!(tx, finalize(&expected, &f.secp).unwrap());

        let (_, lender_sig) = theirs.inputs[0].partial_sigs.iter().next().unwrap();
        let lender_sig = *lender_sig;
        // A bad signature the final witness needs: the finalizer fails, and the
        // verifying merge names it.
        let mut bad = theirs.clone();
        let lender_key = *bad.inputs[1].partial_sigs.keys().next().unwrap();
        bad.inputs[1].partial_sigs.insert(lender_key, lender_sig);
        assert!(matches!(
            crate::tx::merge_and_finalize(&ours, &bad, &f.secp),
            Err(crate::tx::CosignError::Merge(MergeError::BadSignature {
                index: 1,
                ..
            }))
        ));
        // A bad signature under every other key of the escrow: whether a final witness
        // carries it or not, it is verified and refused.
        let mut extra = theirs.clone();
        for key in ours.inputs[0].bip32_derivation.keys() {
            let key = bitcoin::PublicKey::new(*key);
            if !extra.inputs[0].partial_sigs.contains_key(&key)
                && !ours.inputs[0].partial_sigs.contains_key(&key)
            {
                extra.inputs[0].partial_sigs.insert(key, lender_sig);
            }
        }
        assert!(matches!(
            crate::tx::merge_and_finalize(&ours, &extra, &f.secp),
            Err(crate::tx::CosignError::Merge(MergeError::BadSignature {
                index: 0,
                ..
            }))
        ));
    }

    #[test]
    fn changed_transactions_are_refused() {
        let (f, ours, theirs) = pair();
        type Edit = Box<dyn Fn(&mut Psbt)>;
        let edits: Vec<Edit> = vec![
            Box::new(|p| p.unsigned_tx.output[0].value += Amount::from_sat(1)),
            Box::new(|p| p.unsigned_tx.output[0].script_pubkey = payee(9)),
            Box::new(|p| {
                p.unsigned_tx.output.push(p.unsigned_tx.output[0].clone());
                p.outputs.push(Default::default());
            }),
            Box::new(|p| {
                p.unsigned_tx.output.pop();
                p.outputs.pop();
            }),
            Box::new(|p| {
                p.unsigned_tx.input.pop();
                p.inputs.pop();
            }),
            Box::new(|p| {
                let mut extra = p.unsigned_tx.input[0].clone();
                extra.previous_output.vout = 5;
                p.unsigned_tx.input.push(extra);
                p.inputs.push(p.inputs[0].clone());
            }),
            Box::new(|p| p.unsigned_tx.lock_time = LockTime::from_height(251).unwrap()),
            Box::new(|p| p.unsigned_tx.input[1].sequence = Sequence::MAX),
        ];
        for edit in edits {
            let mut changed = theirs.clone();
            edit(&mut changed);
            assert!(matches!(
                refused(&ours, &changed, &f),
                MergeError::TxDiffers(_)
            ));
        }
    }

    #[test]
    fn non_all_sighash_is_refused() {
        let (f, ours, mut theirs) = pair();
        let (_, sig) = theirs.inputs[0].partial_sigs.iter_mut().next().unwrap();
        sig.sighash_type = EcdsaSighashType::None;
        assert!(matches!(
            refused(&ours, &theirs, &f),
            MergeError::BadInput(TxError::NonAllSighash { .. })
        ));
        let (f, ours, mut theirs) = pair();
        theirs.inputs[1].sighash_type = Some(PsbtSighashType::from(
            EcdsaSighashType::SinglePlusAnyoneCanPay,
        ));
        assert!(matches!(
            refused(&ours, &theirs, &f),
            MergeError::BadInput(TxError::NonAllSighash { index: 1, .. })
        ));
    }

    #[test]
    fn a_signature_that_does_not_verify_is_refused() {
        let (f, ours, mut theirs) = pair();
        // Move input 1's signature onto input 0: valid signature, wrong message.
        let (k1, s1) = theirs.inputs[1]
            .partial_sigs
            .iter()
            .next()
            .map(|(k, s)| (*k, *s))
            .unwrap();
        theirs.inputs[0].partial_sigs.insert(k1, s1);
        let err = refused(&ours, &theirs, &f);
        assert!(
            matches!(err, MergeError::BadSignature { index: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_foreign_key_is_refused() {
        let (f, ours, mut theirs) = pair();
        let (_, sig) = theirs.inputs[0]
            .partial_sigs
            .iter()
            .next()
            .map(|(k, s)| (*k, *s))
            .unwrap();
        let stranger = bitcoin::PublicKey::new(bitcoin::secp256k1::PublicKey::from_secret_key(
            &f.secp,
            &bitcoin::secp256k1::SecretKey::from_slice(&[7; 32]).unwrap(),
        ));
        theirs.inputs[0].partial_sigs.insert(stranger, sig);
        assert!(matches!(
            refused(&ours, &theirs, &f),
            MergeError::UnknownKey { index: 0, .. }
        ));
    }

    #[test]
    fn an_uncompressed_copy_of_a_valid_signature_is_refused() {
        // bip32_derivation is keyed by the bare point, so the uncompressed form of a
        // key already signed for once passed as a new signature, and finalizing then
        // failed; the co-signer's copy is refused before that.
        for whose in ["the arbiter's (already in ours)", "the lender's (new)"] {
            let (f, ours, mut theirs) = pair();
            let source = if whose.starts_with("the arbiter") {
                &ours
            } else {
                &theirs
            };
            let (key, sig) = source.inputs[0]
                .partial_sigs
                .iter()
                .find(|(k, _)| {
                    let arbiter = ours.inputs[0].partial_sigs.contains_key(*k);
                    arbiter == whose.starts_with("the arbiter")
                })
                .map(|(k, s)| (*k, *s))
                .unwrap();
            let uncompressed = bitcoin::PublicKey {
                compressed: false,
                inner: key.inner,
            };
            theirs.inputs[0].partial_sigs.insert(uncompressed, sig);
            let err = refused(&ours, &theirs, &f);
            assert!(
                matches!(err, MergeError::UncompressedKey { index: 0, key } if key == uncompressed),
                "{whose}: {err}"
            );
        }
    }

    #[test]
    fn missing_or_wrong_previous_transactions_are_refused() {
        let (f, ours, mut theirs) = pair();
        theirs.inputs[0].non_witness_utxo = None;
        assert!(matches!(
            refused(&ours, &theirs, &f),
            MergeError::BadInput(TxError::MissingPrevTx { index: 0 })
        ));
        let (f, ours, mut theirs) = pair();
        let other = theirs.inputs[1].non_witness_utxo.clone();
        theirs.inputs[0].non_witness_utxo = other;
        assert!(matches!(
            refused(&ours, &theirs, &f),
            MergeError::BadInput(TxError::WrongPrevTx { index: 0, .. })
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// `build` never creates value (outputs + fee == inputs) and never pays below dust:
    /// it either succeeds with both true or refuses.
    #[test]
    fn build_never_creates_value_or_dust(
        inputs in proptest::collection::vec(1_000u64..5_000_000_000, 1..4),
        payments in proptest::collection::vec(1u64..2_000_000_000, 0..4),
        rate in 1u64..500,
        path in 0usize..5,
    ) {
        let f = fixture_cached();
        let mut req = request(f, PathName::ALL[path], &inputs);
        req.payments = payments.iter().enumerate().map(|(i, v)| (payee(i as u8 + 3), Amount::from_sat(*v))).collect();
        req.fee_rate = FeeRate::from_sat_per_vb(rate).unwrap();
        if let Ok(built) = build(&f.escrow, &req) {
            let total_in: u64 = inputs.iter().sum();
            let total_out: u64 = built.psbt.unsigned_tx.output.iter().map(|o| o.value.to_sat()).sum();
            prop_assert_eq!(total_out + built.fee.to_sat(), total_in);
            for o in &built.psbt.unsigned_tx.output {
                prop_assert!(o.value >= o.script_pubkey.minimal_non_dust());
            }
        }
    }
}

/// Sign as a party would: the arbiter through a decision equal to the PSBT (the
/// service's own path), the others directly.
pub(crate) fn sign_party(psbt: &mut Psbt, key: &SigningKey, f: &Fixture) -> Result<usize, TxError> {
    if key.fingerprint(&f.secp) == f.arbiter.fingerprint(&f.secp) {
        let decision = SpendDecision {
            tx: psbt.unsigned_tx.clone(),
        };
        sign_decision(psbt, key, &f.escrow, &decision, &FeeCap::default(), &f.secp)
    } else {
        sign(psbt, key, &f.escrow, &FeeCap::default(), &f.secp)
    }
}

fn fixture_cached() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(fixture)
}
