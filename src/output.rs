//! Output files are written under a temporary name in the destination directory and renamed
//! over the final name only when complete, so a failed run never leaves a half-written image
//! under OUT (and an existing OUT is replaced, never patched).

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// A temporary output file that is deleted unless [`TempOutput::commit`] renames it.
pub struct TempOutput {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl TempOutput {
    /// Creates `.NAME.PID.tmp` next to `target`, empty and exclusively ours.
    pub fn create(target: &Path) -> Result<(TempOutput, File)> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .with_context(|| format!("{}: not a file name", target.display()))?
            .to_string_lossy()
            .into_owned();
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        Ok((
            TempOutput {
                temp,
                target: target.to_path_buf(),
                committed: false,
            },
            file,
        ))
    }

    /// Renames the temporary file over the target; with `sync` (the file was synced by its
    /// writer) also syncs the directory, so that the rename itself is durable.
    pub fn commit(mut self, sync: bool) -> Result<()> {
        std::fs::rename(&self.temp, &self.target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.temp.display(),
                self.target.display()
            )
        })?;
        self.committed = true;
        if sync {
            let dir = match self.target.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
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
    /// Starts flushing a clone of `file` every [`SYNC_INTERVAL`] until dropped; does nothing
    /// unless `enabled`.
    pub fn start(file: &File, enabled: bool) -> BackgroundSync {
        if !enabled {
            return BackgroundSync {
                stop: None,
                handle: None,
            };
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
