//! The lender's own record of the repayments it received and recorded (`loan repay
//! --ledger FILE` appends one JSON line per accepted repayment): with it, the co-signer
//! counts repayments from its own books, not from the server's events.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub loan: String,
    pub amount_minor: u64,
    pub at: u64,
}

/// Append `entry`, synced.
pub fn append(path: &Path, entry: &Entry) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{}", serde_json::to_string(entry)?)?;
    f.sync_all()
}

/// What the ledger says was repaid on `loan` (nothing if the file does not exist yet).
pub fn repaid(path: &Path, loan: &str) -> std::io::Result<u64> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0u64;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: Entry = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::other(format!("line {}: {e}", n + 1)))?;
        if entry.loan == loan {
            total = total
                .checked_add(entry.amount_minor)
                .ok_or_else(|| std::io::Error::other("the repayments overflow"))?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repayments_add_up_per_loan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        assert_eq!(repaid(&path, "l1").unwrap(), 0);
        for (loan, amount) in [("l1", 100), ("l2", 7), ("l1", 250)] {
            append(
                &path,
                &Entry {
                    loan: loan.into(),
                    amount_minor: amount,
                    at: 1,
                },
            )
            .unwrap();
        }
        assert_eq!(repaid(&path, "l1").unwrap(), 350);
        assert_eq!(repaid(&path, "l2").unwrap(), 7);
    }
}
