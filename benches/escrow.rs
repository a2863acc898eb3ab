//! Escrow policy and PSBT costs: compiling and analyzing a descriptor (with and
//! without the compile cache), signing one liquidation input, merging a co-signed PSBT
//! and finalizing it.

use std::hint::black_box;
use std::str::FromStr;

use bitcoin::absolute::LockTime;
use bitcoin::bip32::Xpriv;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::transaction::Version;
use bitcoin::{Amount, FeeRate, Network, OutPoint, ScriptBuf, Transaction, TxIn, TxOut, Txid};
use btc_escrow::keys::{account_path, AccountKey, SigningKey};
use btc_escrow::policy::{EscrowHeights, EscrowKeys, PathName, PolicyTemplate};
use btc_escrow::tx::{self, EscrowInput, SpendRequest};
use criterion::{criterion_group, criterion_main, Criterion};
use miniscript::descriptor::DescriptorPublicKey;
use miniscript::policy::Concrete;
use miniscript::Segwitv0;

fn signing_key(seed: u8) -> SigningKey {
    let master = Xpriv::new_master(Network::Regtest, &[seed; 32]).expect("valid seed");
    SigningKey::parse(&master.to_string(), Network::Regtest).expect("valid xprv")
}

fn bench(c: &mut Criterion) {
    let secp = Secp256k1::new();
    let (b, l, a) = (signing_key(1), signing_key(2), signing_key(3));
    let account = |k: &SigningKey| {
        AccountKey::from_master(
            k.master(),
            &account_path(Network::Regtest, 0).expect("account 0"),
            &secp,
        )
        .expect("derive")
    };
    let mut keys = EscrowKeys {
        borrower: account(&b),
        lender: account(&l),
        arbiter: account(&a),
        index: 0,
    };
    let heights = EscrowHeights::new(1_000, 2_000, 100).expect("ordered");
    let template = PolicyTemplate::default();

    let mut group = c.benchmark_group("policy");
    group.sample_size(10);
    group.bench_function("compile_uncached (miniscript compiler)", |bench| {
        let derived = keys.derive().expect("distinct");
        let mut text = template.text().to_owned();
        for (role, key) in &derived {
            text = text.replace(&format!("{{{}}}", role.as_str()), &key.to_string());
        }
        let text = text
            .replace("{default_height}", "1000")
            .replace("{recovery_height}", "2000");
        bench.iter(|| {
            let concrete = Concrete::<DescriptorPublicKey>::from_str(&text).expect("parses");
            black_box(concrete.compile::<Segwitv0>().expect("compiles"))
        })
    });
    group.sample_size(50);
    let mut index = 0;
    group.bench_function("instantiate_analyze_address (cached compile)", |bench| {
        bench.iter(|| {
            index += 1;
            keys.index = index;
            let escrow = template
                .instantiate(&keys, heights, Network::Regtest)
                .expect("valid");
            black_box(escrow.address())
        })
    });
    group.finish();

    keys.index = 0;
    let escrow = template
        .instantiate(&keys, heights, Network::Regtest)
        .expect("valid");
    let prev_tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::all_zeros(), 0),
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: Amount::from_sat(100_000_000),
            script_pubkey: escrow.script_pubkey(),
        }],
    };
    let req = SpendRequest {
        path: PathName::Liquidation,
        inputs: vec![EscrowInput {
            outpoint: OutPoint::new(prev_tx.compute_txid(), 0),
            prev_tx,
        }],
        payments: vec![(
            ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::all_zeros()),
            Amount::from_sat(60_000_000),
        )],
        rest_to: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([1; 20])),
        fee_rate: FeeRate::from_sat_per_vb(5).expect("5"),
        tip: 500,
    };
    let unsigned = tx::build(&escrow, &req).expect("builds").psbt;
    let decision = tx::SpendDecision {
        tx: unsigned.unsigned_tx.clone(),
    };
    let cap = tx::FeeCap::default();
    let mut group = c.benchmark_group("tx");
    group.bench_function("build_liquidation", |bench| {
        bench.iter(|| black_box(tx::build(&escrow, &req).expect("builds")))
    });
    group.bench_function("sign_one_liquidation_input", |bench| {
        bench.iter(|| {
            let mut psbt = unsigned.clone();
            black_box(
                tx::sign_decision(&mut psbt, &a, &escrow, &decision, &cap, &secp).expect("signs"),
            )
        })
    });
    let mut ours = unsigned.clone();
    tx::sign_decision(&mut ours, &a, &escrow, &decision, &cap, &secp).expect("signs");
    let mut theirs = unsigned.clone();
    tx::sign(&mut theirs, &l, &escrow, &cap, &secp).expect("signs");
    group.bench_function("merge_and_finalize", |bench| {
        bench.iter(|| {
            let merged = tx::merge(&ours, &theirs, &secp).expect("merges");
            black_box(tx::finalize(&merged, &secp).expect("finalizes"))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
