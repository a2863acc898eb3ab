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

/// Remove the snapshots sled was writing when its process died (`snap.*.generating`),
/// if no process holds the database. Returns whether any was removed.
///
/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, syncs it, then renames it;
/// but when it opens it takes the last `snap.*` file by name, `.generating` ones
/// included, so a process killed while writing one leaves a database that refuses to
/// open ("Read corrupted data at file offset None"). The partial file is only a cache
/// of what the log holds (the previous snapshot is removed after the rename, not
/// before), so removing it loses nothing: sled starts from the previous snapshot and
/// replays the log.
pub(super) fn remove_partial_snapshots(dir: &Path) -> bool {
    use fs2::FileExt;
    let Ok(db_file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("db"))
    else {
        return false;
    };
    // sled takes this same lock: held, another process runs on it; touch nothing.
    if db_file.try_lock_exclusive().is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::warn!(file = %name, "removed a partial sled snapshot left by a crash");
                    removed = true;
                }
                Err(e) => tracing::error!(file = %name, error = %e, "removing a partial snapshot"),
            }
        }
    }
    let _ = FileExt::unlock(&db_file);
    removed
}
