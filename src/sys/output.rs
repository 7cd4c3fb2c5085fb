//! Output files are written under a temporary name in the destination directory and renamed
//! over the final name only when complete, so a failed run never leaves a half-written image
//! under OUT (and an existing OUT is replaced, never patched).
//!
//! Temporary files are named `.NAME.e2image-rs.PID.tmp`, created with mode 0600 whatever the
//! umask (images hold file names and metadata, as e2image's do), and locked (flock) by their
//! writer for as long as it runs. They are registered with [`super::signals`], so an interrupt
//! removes them. A run that dies uncaught (SIGKILL, power cut) leaves one behind: the next run
//! that writes into the same directory removes every temporary of this pattern whose lock is
//! free (its writer is gone, whatever its PID has become since) and reports it.

use super::signals;
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every file e2image-rs creates.
pub const PRIVATE_MODE: u32 = 0o600;
/// The fixed part of temporary names: `.NAME` + this + `PID.tmp`.
const TEMP_TAG: &str = ".e2image-rs.";
/// Longest part of OUT's name kept in the temporary name (NAME_MAX is 255 bytes).
const MAX_NAME_IN_TEMP: usize = 200;

/// A temporary output file that is deleted unless [`TempOutput::commit`] renames it.
pub struct TempOutput {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
    /// Notes on stale temporaries removed from the directory.
    swept: Vec<String>,
}

impl TempOutput {
    /// Creates the temporary file for `target` in its directory, empty, private and locked,
    /// after removing stale temporaries there.
    ///
    /// # Errors
    /// `target` has no file name; the directory cannot be written.
    pub fn create(target: &Path) -> Result<(TempOutput, File)> {
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .with_context(|| format!("{}: not a file name", target.display()))?
            .to_string_lossy()
            .into_owned();
        let swept = sweep_stale(&dir);
        let temp = dir.join(temp_name(&name, std::process::id()));
        let file = create_private(&temp)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        signals::register_temp(&temp, target);
        let out = TempOutput {
            temp,
            target: target.to_path_buf(),
            committed: false,
            swept,
        };
        file.try_lock()
            .map_err(|e| anyhow::anyhow!("cannot lock the new file: {e}"))?;
        Ok((out, file))
    }

    /// Notes on stale temporaries of interrupted runs that were removed.
    pub fn swept(&self) -> &[String] {
        &self.swept
    }

    /// Renames the temporary file over the target; with `sync` (the file was synced by its
    /// writer) also syncs the directory, so that the rename itself is durable.
    ///
    /// # Errors
    /// The rename fails.
    pub fn commit(mut self, sync: bool) -> Result<()> {
        let r = signals::settle_temp(&self.temp, || std::fs::rename(&self.temp, &self.target));
        r.with_context(|| format!("cannot create {}", self.target.display()))?;
        self.committed = true;
        if sync {
            sync_dir(&self.target);
        }
        Ok(())
    }

    /// Like [`TempOutput::commit`], but refuses to replace an existing target (for patch and
    /// undo files, which another run may need): the rename does not replace, atomically.
    ///
    /// The file was synced by its writer; the directory is synced after the rename.
    ///
    /// # Errors
    /// The target exists; the rename fails.
    pub fn commit_new(mut self) -> Result<()> {
        let r = signals::settle_temp(&self.temp, || rename_noreplace(&self.temp, &self.target));
        if let Err(e) = r {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                bail!(
                    "{} appeared while this run was writing it (another run?); it was not replaced",
                    self.target.display()
                );
            }
            return Err(e).with_context(|| format!("cannot create {}", self.target.display()));
        }
        self.committed = true;
        sync_dir(&self.target);
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            signals::settle_temp(&self.temp, || std::fs::remove_file(&self.temp).ok());
        }
    }
}

/// Creates a new file (never an existing one) with mode [`PRIVATE_MODE`], whatever the umask.
///
/// # Errors
/// The file exists or cannot be created.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(PRIVATE_MODE))?;
    Ok(file)
}

/// The directory `target` is in (`.` for a bare name).
fn parent_dir(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.NAME.e2image-rs.PID.tmp`, with NAME cut to [`MAX_NAME_IN_TEMP`] bytes.
fn temp_name(name: &str, pid: u32) -> String {
    let name = crate::bytes::cut_str(name, MAX_NAME_IN_TEMP);
    format!(".{name}{TEMP_TAG}{pid}.tmp")
}

/// The PID in a temporary name of ours, if `name` is one.
fn temp_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (_, pid) = rest.rsplit_once(TEMP_TAG)?;
    pid.parse().ok()
}

/// Removes the temporaries of dead runs in `dir`: names of our pattern, not ours, whose lock
/// can be taken (a live writer holds it). Returns one note per removed file.
fn sweep_stale(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut notes = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_pid(&name).filter(|&p| p != std::process::id()) else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = e.path();
        let Ok(f) = OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        if f.try_lock().is_err() {
            continue;
        }
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let shown = if dir == Path::new(".") {
            PathBuf::from(&name)
        } else {
            path.clone()
        };
        if std::fs::remove_file(&path).is_ok() {
            notes.push(format!(
                "removed {}, an unfinished output of {} left by an interrupted run (PID {pid})",
                shown.display(),
                crate::text::size(size)
            ));
        }
    }
    notes
}

/// `rename` that fails with `AlreadyExists` instead of replacing the target.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            // Filesystems without RENAME_NOREPLACE: a hard link fails on an existing name.
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Flushes the directory holding `target`, so that a rename into it is durable.
fn sync_dir(target: &Path) {
    if let Ok(d) = File::open(parent_dir(target)) {
        let _ = d.sync_all();
    }
}

/// Flushes a file being written to stable storage in the background, so that the final
/// `fsync` before the rename has little left to do: the writeback of the early part of the
/// image overlaps with producing the rest.
pub struct BackgroundSync {
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// How often the background flush runs.
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(25);

impl BackgroundSync {
    /// A background flush that does nothing.
    pub fn start_none() -> BackgroundSync {
        BackgroundSync {
            stop: None,
            handle: None,
        }
    }

    /// Starts flushing a clone of `file` every [`SYNC_INTERVAL`] until dropped; does nothing
    /// unless `enabled`.
    pub fn start(file: &File, enabled: bool) -> BackgroundSync {
        if !enabled {
            return BackgroundSync::start_none();
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = file.try_clone().ok().map(|f| {
            std::thread::spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(SYNC_INTERVAL)
                {
                    let _ = f.sync_data();
                }
            })
        });
        BackgroundSync {
            stop: Some(tx),
            handle,
        }
    }
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_round_trip() {
        assert_eq!(temp_name("out.qcow2", 42), ".out.qcow2.e2image-rs.42.tmp");
        assert_eq!(temp_pid(".out.qcow2.e2image-rs.42.tmp"), Some(42));
        assert_eq!(temp_pid(".out.qcow2.42.tmp"), None);
        assert_eq!(temp_pid("out.e2image-rs.42.tmp"), None);
        let long = "x".repeat(300);
        assert!(temp_name(&long, 1).len() < 255);
    }
}
