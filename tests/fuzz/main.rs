//! Fuzzing on stable Rust (issue 14, item 5): property-based fuzz targets (proptest)
//! for every parser that takes outside input.
//!
//! | target | module | what it parses |
//! |---|---|---|
//! | `psbt_intake_and_merge` | `psbt` | a party's co-signed PSBT (binary): `Psbt::deserialize`, then `tx::check_inputs`, `tx::merge` against the service's arbiter-signed copy, `tx::finalize` and `DecisionRecord::cosign` (merge + finalize, what the API's co-sign runs) |
//! | `psbt_base64_intake` | `psbt` | the same PSBT as the API and the CLI take it: base64 text through `Psbt::from_str` |
//! | `account_and_signing_keys` | `keys` | `AccountKey::parse` (`[fingerprint/path]xpub`) and `SigningKey::parse` (xprv or BIP39 mnemonic) |
//! | `escrow_descriptor` | `keys` | `EscrowDescriptor::parse` (with and without checksum) and `verify::multipath_address` |
//! | `policy_template` | `keys` | `PolicyTemplate::new` and `instantiate` (the operator's template file) |
//! | `loan_terms_json` | `terms` | an offer's terms (`TermsInput` JSON, then `LoanTerms::new`) and a stored terms record (`LoanTerms`, validated again by `serde(try_from)`) |
//! | `oracle_price_text` | `oracle` | `oracle::decimal::parse_price`, `price_from_json`, `sources::parse_manual_price` |
//! | `oracle_responses` | `oracle` | whole HTTP answers of a local fake exchange, read by `Source::fetch` for the Kraken, Bitstamp, Coinbase and JSON-pointer adapters (status, body, size limit) |
//! | `config_toml` | `config` | `Settings::from_parts` (the whole file, with the `[oracle]` section) and `OracleConfig::from_toml` |
//! | `electrum_transactions_and_headers` | `electrum` | Electrum-shaped data: see the note below |
//! | `electrum_scalars` | `electrum` | the server's fee float (`chain::btc_per_kvb_to_sat`, `FeePolicy::apply`) and broadcast rejection text (`chain::broadcast::classify_rejection`) |
//!
//! Electrum: the JSON-RPC answers themselves are decoded inside `electrum-client`
//! (script-hash history, header and transaction hex), which the crate does not expose;
//! no `chain` function parses a raw answer. So the Electrum target fuzzes what those
//! answers become, as the watcher and the tools use them:
//! `bitcoin::consensus::deserialize::<Transaction>` / `<block::Header>` (what
//! `electrum-client` runs on `blockchain.transaction.get` and header hex),
//! `consensus::encode::deserialize_hex::<Transaction>` (the CLI's `broadcast` input),
//! and `EscrowDescriptor::classify_spend` (the watcher runs it on every spend of an
//! escrow the server reports: miniscript's interpreter over an outside witness).
//!
//! Each target feeds (a) arbitrary bytes or text, up to 1 MiB, and (b) mutations of a
//! valid input (bit flips, byte sets, inserts, deletes, truncation, copied chunks,
//! dictionary tokens, changed digits) so the fuzzer gets past the first check. Every
//! case asserts no panic (proptest reports a panic as a failure and shrinks it), that
//! no single allocation exceeds [`MAX_ALLOCATION`] (a global allocator records the
//! largest request of the test's thread), and where it makes sense a round trip
//! (`parse(print(x)) == x`) or that an error names its field. One plain test per
//! target gives a huge declared length (a compact-size prefix of 2^32, a
//! `Content-Length` of 4 GiB, a million nested brackets) and checks it is refused
//! quickly without a large allocation. `every_seed_input_is_accepted` checks that the
//! valid inputs the mutations start from pass every check.
//!
//! This file holds what the targets share: the allocation bound, the case count, the
//! mutation strategies ([`input`]) and the common dictionaries. `escrow` builds the
//! valid escrow and decision PSBT the PSBT, key and Electrum targets start from; each
//! other module holds one area's targets, its seeds and its dictionary.
//!
//! In `cargo test` each target runs a bounded number of cases (its `config(n)`: 128 to
//! 1000; the whole file takes about ten seconds in debug). For long runs set
//! `PROPTEST_CASES` (it overrides every target's default):
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release --test fuzz
//! PROPTEST_CASES=1000000 cargo test --release --test fuzz -- psbt_intake_and_merge
//! ```
//!
//! A failure is shrunk to a minimal input and saved under `proptest-regressions/`, where
//! it is replayed first on every later run.

mod config;
mod electrum;
mod escrow;
mod keys;
mod oracle;
mod psbt;
mod terms;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bitcoin::Network;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};

/// The network of every key, address and descriptor.
const NETWORK: Network = Network::Regtest;

/// The clock of terms and quotes (unix seconds).
const NOW: u64 = 1_800_000_000;

/// A compact-size length prefix declaring 2^32 items (or bytes).
const DECLARED_2_POW_32: [u8; 9] = [0xff, 0, 0, 0, 0, 1, 0, 0, 0];

// ---------------------------------------------------------------------------------
// Allocation bound
// ---------------------------------------------------------------------------------

/// No single allocation while parsing one input may ask for more than this. Inputs are
/// at most [`MAX_INPUT`]; rust-bitcoin reads declared lengths in chunks of at most
/// 4 MB; anything near a declared 2^32 would be far above.
const MAX_ALLOCATION: usize = 16 << 20;

/// The largest fuzz input.
const MAX_INPUT: usize = 1 << 20;

/// The system allocator, recording the largest single request made on each thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: never panic inside the allocator (a thread being torn down).
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Run `f` and return what it returned with the largest single allocation it asked for
/// on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// Run `f` and check it allocated no more than [`MAX_ALLOCATION`] at once.
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let (out, largest) = largest_allocation(f);
    prop_assert!(
        largest <= MAX_ALLOCATION,
        "{what}: one allocation of {largest} bytes (limit {MAX_ALLOCATION})"
    );
    Ok(out)
}

/// A huge declared length must be refused fast and without a large allocation.
fn refused_quickly<T, E: std::fmt::Debug>(what: &str, f: impl FnOnce() -> Result<T, E>) -> E {
    let start = Instant::now();
    let (out, largest) = largest_allocation(f);
    let took = start.elapsed();
    assert!(
        largest <= MAX_ALLOCATION,
        "{what}: one allocation of {largest} bytes"
    );
    assert!(took < Duration::from_secs(10), "{what}: took {took:?}");
    match out {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------
// Cases and inputs
// ---------------------------------------------------------------------------------

/// `default_cases` per target, or `PROPTEST_CASES` when it is set (long runs).
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs beside them for proptest's default place.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/fuzz.txt"
        )))),
        ..ProptestConfig::default()
    }
}

/// One edit of a valid input.
#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, u16),
    Truncate(Index),
    Copy {
        from: Index,
        to: Index,
        len: u16,
    },
    /// Insert a dictionary token.
    Token(Index, Index),
    /// Replace the word (letters, digits, `_`, `.`) at a place with a dictionary token.
    Replace(Index, Index),
    /// Change the first digit at or after a place.
    Digit(Index, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 1..64u16).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), any::<Index>(), 1..256u16).prop_map(|(from, to, len)| Edit::Copy {
            from,
            to,
            len
        }),
        (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::Token(i, t)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::Replace(i, t)),
        (any::<Index>(), 0..10u8).prop_map(|(i, d)| Edit::Digit(i, d)),
    ]
}

/// A place in `0..=len` (insertion points).
fn place(i: &Index, len: usize) -> usize {
    i.index(len + 1)
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

/// `base` with `edits` applied; the result never exceeds [`MAX_INPUT`].
fn mutate(base: &[u8], edits: &[Edit], dict: &[&[u8]]) -> Vec<u8> {
    let mut d = base.to_vec();
    for e in edits {
        let len = d.len();
        match e {
            Edit::Flip(i, bit) if len > 0 => d[i.index(len)] ^= 1 << bit,
            Edit::Set(i, b) if len > 0 => d[i.index(len)] = *b,
            Edit::Insert(i, bytes) => {
                let at = place(i, len);
                d.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(i, n) => {
                let at = place(i, len);
                d.drain(at..(at + usize::from(*n)).min(len));
            }
            Edit::Truncate(i) => d.truncate(place(i, len)),
            Edit::Copy { from, to, len: n } if len > 0 => {
                let from = from.index(len);
                let chunk = d[from..(from + usize::from(*n)).min(len)].to_vec();
                let to = place(to, len);
                d.splice(to..to, chunk);
            }
            Edit::Token(i, t) if !dict.is_empty() => {
                let at = place(i, len);
                d.splice(at..at, dict[t.index(dict.len())].iter().copied());
            }
            Edit::Replace(i, t) if !dict.is_empty() => {
                let mut at = place(i, len);
                while at > 0 && is_word(d[at - 1]) {
                    at -= 1;
                }
                let end = at + d[at..].iter().take_while(|b| is_word(**b)).count();
                d.splice(at..end, dict[t.index(dict.len())].iter().copied());
            }
            Edit::Digit(i, digit) => {
                let at = place(i, len);
                if let Some(p) = d[at..].iter().position(u8::is_ascii_digit) {
                    d[at + p] = b'0' + digit;
                }
            }
            _ => {}
        }
        d.truncate(MAX_INPUT);
    }
    d
}

/// Cheap noise up to [`MAX_INPUT`] (a proptest `Vec<u8>` of a million elements is
/// slow to generate and to shrink).
fn fill(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Arbitrary bytes: mostly short, now and then up to [`MAX_INPUT`].
fn noise() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => vec(any::<u8>(), 0..512),
        1 => (0..=MAX_INPUT, any::<u64>()).prop_map(|(len, seed)| fill(len, seed)),
    ]
}

/// Arbitrary text: printable ASCII with the structure characters, or any characters.
fn text_noise() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[ -~\n\t]{0,300}".prop_map(String::into_bytes),
        1 => ".{0,200}".prop_map(String::into_bytes),
        1 => noise(),
    ]
}

/// Noise (one case in five) or a mutation of one of `bases` (the rest).
fn input(
    bases: &'static [Vec<u8>],
    dict: &'static [&'static [u8]],
    text: bool,
) -> impl Strategy<Value = Vec<u8>> {
    let noise = if text {
        text_noise().boxed()
    } else {
        noise().boxed()
    };
    prop_oneof![
        1 => noise,
        4 => (any::<Index>(), vec(edit(), 0..6))
            .prop_map(move |(b, e)| mutate(&bases[b.index(bases.len())], &e, dict)),
    ]
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The valid inputs of one target, built once and kept for the whole run.
struct Seeds(OnceLock<&'static [Vec<u8>]>);

impl Seeds {
    const fn new() -> Self {
        Self(OnceLock::new())
    }

    fn get(&'static self, build: impl FnOnce() -> Vec<Vec<u8>>) -> &'static [Vec<u8>] {
        self.0.get_or_init(|| Box::leak(build().into_boxed_slice()))
    }
}

// ---------------------------------------------------------------------------------
// Dictionaries more than one area uses
// ---------------------------------------------------------------------------------

/// Consensus bytes: compact sizes, versions, sighash types (PSBTs and transactions).
const BYTES_DICT: &[&[u8]] = &[
    &[0x00],
    &[0xff],
    &[0xfd, 0xff, 0xff],
    &[0xfe, 0xff, 0xff, 0xff, 0xff],
    &DECLARED_2_POW_32,
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x00, 0x01],
    &[0x01, 0x00],
    &[0x02, 0x00, 0x00, 0x00],
    &[0x81],
    &[0x01, 0x00, 0x00, 0x00],
    &[0x83, 0x00, 0x00, 0x00],
];

/// JSON values and edge numbers (loan terms and exchange answers).
const JSON_DICT: &[&[u8]] = &[
    b"-1",
    b"0",
    b"1e400",
    b"-0",
    b"0.5",
    b"18446744073709551615",
    b"18446744073709551616",
    b"4294967296",
    b"10000",
    b"null",
    b"true",
    b"\"\"",
    b"[]",
    b"{}",
    b"\"USD\"",
    b"\"usd\"",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"1\"",
    b"\"regtest\"",
    b"\"bitcoin\"",
    b"\"bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080\"",
    b"\"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4\"",
    b",",
    b":",
];

// ---------------------------------------------------------------------------------
// The seeds
// ---------------------------------------------------------------------------------

/// Every valid input the mutations start from is accepted as it is: otherwise the
/// targets would only ever fuzz the first check.
#[test]
fn every_seed_input_is_accepted() {
    psbt::seeds_are_accepted();
    keys::seeds_are_accepted();
    terms::seeds_are_accepted();
    oracle::seeds_are_accepted();
    config::seeds_are_accepted();
    electrum::seeds_are_accepted();
}
