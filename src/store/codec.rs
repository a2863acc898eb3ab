//! How records sit in sled: values wrapped in a versioned JSON envelope, the ids and
//! event keys records are stored under, and the `meta` counters.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{StoreError, VALUE_VERSION};

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    v: u32,
    data: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeVersion {
    v: u32,
}

#[derive(Deserialize)]
struct EnvelopeIn<T> {
    data: T,
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(&EnvelopeOut {
        v: VALUE_VERSION,
        data: value,
    })
    .expect("serializing our own types to JSON cannot fail")
}

pub(super) fn decode<T: DeserializeOwned>(
    kind: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt {
        kind,
        key: key.to_owned(),
        reason: e.to_string(),
    };
    let v: EnvelopeVersion = serde_json::from_slice(bytes).map_err(corrupt)?;
    if v.v > VALUE_VERSION {
        return Err(StoreError::FutureValue {
            kind,
            key: key.to_owned(),
            found: v.v,
        });
    }
    let e: EnvelopeIn<T> = serde_json::from_slice(bytes).map_err(corrupt)?;
    Ok(e.data)
}

pub(super) fn check_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadId(id.to_owned()))
    }
}

pub(super) fn event_key(loan_id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(loan_id.len() + 9);
    k.extend_from_slice(loan_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A counter in `meta`: absent is 0, anything but 8 bytes is corruption (never read as
/// 0, which would hand out an escrow index or event number a second time).
pub(super) fn read_u64(key: &'static str, v: Option<sled::IVec>) -> Result<u64, StoreError> {
    match v {
        None => Ok(0),
        Some(b) => <[u8; 8]>::try_from(b.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                kind: "meta",
                key: key.to_owned(),
                reason: format!("{} bytes where a u64 counter (8 bytes) belongs", b.len()),
            }),
    }
}
