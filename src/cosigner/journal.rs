//! The co-signer's memory, in its own directory: what it signed (per loan and decision
//! attempt, written durably *before* the signature is posted, so a restart neither
//! signs a second transaction for one attempt nor forgets to post the first), the terms
//! of each loan as it first saw them, and the last event it read. Its status (what it
//! refused and why) is a separate file, rewritten after every sweep.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One signature given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEntry {
    pub kind: String,
    pub txid: String,
    /// The signed PSBT, base64 (posted again after a restart if it was not yet).
    pub psbt: String,
    pub signed_at: u64,
    pub posted: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    /// `loan/attempt` → the one transaction signed for that attempt.
    pub signed: BTreeMap<String, SignedEntry>,
    /// Loan → its terms when first seen.
    pub terms: BTreeMap<String, Value>,
    /// The last event sequence read from the stream.
    pub last_seq: Option<u64>,
    /// Loan → its activation time when first seen.
    #[serde(default)]
    pub activated_at: BTreeMap<String, u64>,
    /// Loans seen active (or past it): never refunded.
    #[serde(default)]
    pub was_active: std::collections::BTreeSet<String>,
}

/// A refusal, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub attempt: u32,
    pub reason: String,
    pub at: u64,
}

/// What `status.json` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub party_id: String,
    /// `stream` while following the event stream, `polling` while it is down.
    pub mode: String,
    pub updated_at: u64,
    pub last_seq: Option<u64>,
    pub signed: usize,
    /// Loan → its latest refusal (removed once the loan has nothing pending).
    pub refused: BTreeMap<String, Refused>,
    pub last_error: Option<String>,
}

/// The journal key of a loan's decision attempt (the first decision keeps the key it
/// had before a loan could take several).
pub fn key(loan: &str, decision: u32, attempt: u32) -> String {
    if decision == 0 {
        format!("{loan}/{attempt}")
    } else {
        format!("{loan}/d{decision}/{attempt}")
    }
}

fn journal_path(dir: &Path) -> PathBuf {
    dir.join("journal.json")
}

impl Journal {
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        match std::fs::read(journal_path(dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::other(format!("journal.json: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Write durably: a temporary file synced, renamed over the journal, the
    /// directory synced.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        write_atomic(dir, &journal_path(dir), &serde_json::to_vec_pretty(self)?)
    }
}

pub fn save_status(dir: &Path, status: &Status) -> std::io::Result<()> {
    write_atomic(
        dir,
        &dir.join("status.json"),
        &serde_json::to_vec_pretty(status)?,
    )
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        assert!(j.signed.is_empty());
        j.signed.insert(
            key("l1", 0, 0),
            SignedEntry {
                kind: "liquidation".into(),
                txid: "ab".into(),
                psbt: "cHNidP8=".into(),
                signed_at: 1,
                posted: false,
            },
        );
        j.last_seq = Some(7);
        j.save(dir.path()).unwrap();
        let again = Journal::load(dir.path()).unwrap();
        assert_eq!(again.signed, j.signed);
        assert_eq!(again.last_seq, Some(7));
    }
}
