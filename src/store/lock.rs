//! Waiting for sled's file lock, and naming who holds it when the wait runs out.

use std::path::Path;
use std::time::Duration;

/// How long [`Store::open`](super::Store::open) waits for sled's file lock. sled releases it only when its
/// background flusher lets go, some time after the previous `Db` in this process was
/// dropped; another process holding it is reported once this has passed.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

pub(super) fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Who holds the flock on `file`, from /proc/locks (Linux); "an unknown process"
/// elsewhere.
pub(super) fn lock_holder(file: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let unknown = || "an unknown process".to_owned();
    let Ok(meta) = std::fs::metadata(file) else {
        return unknown();
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return unknown();
    };
    let inode = meta.ino().to_string();
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 6 && fields[5].rsplit(':').next() == Some(inode.as_str()) {
            let pid = fields[4];
            let me = std::process::id().to_string();
            return if pid == me {
                format!("this process (pid {pid}: a store opened here and not yet released)")
            } else {
                format!("pid {pid}")
            };
        }
    }
    unknown()
}
