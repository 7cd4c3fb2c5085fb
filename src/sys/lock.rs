//! Exclusive locks on the files a run writes in place (rollback targets, patch files), so that
//! two runs never write one target at once. `flock(2)` locks: released by the kernel when the
//! process ends, however it ends, so a killed run never leaves a stale lock.

use anyhow::{bail, Result};
use std::fs::{File, TryLockError};
use std::path::Path;

/// Takes an exclusive lock on `file` (opened from `path`), or refuses: `what` names the file
/// in the message ("the target", "the patch").
///
/// # Errors
/// Another process holds a lock on it; the lock cannot be taken.
pub fn exclusive(file: &File, path: &Path, what: &str) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => bail!(
            "{what} {} is in use by another e2image-rs run (it is locked)",
            path.display()
        ),
        Err(TryLockError::Error(e)) => bail!("cannot lock {what} {}: {e}", path.display()),
    }
}

/// Takes a shared lock (for reading runs such as a dry run), refused while a writer holds it.
///
/// # Errors
/// As [`exclusive`].
pub fn shared(file: &File, path: &Path, what: &str) -> Result<()> {
    match file.try_lock_shared() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => bail!(
            "{what} {} is being written by another e2image-rs run (it is locked)",
            path.display()
        ),
        Err(TryLockError::Error(e)) => bail!("cannot lock {what} {}: {e}", path.display()),
    }
}
