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
        Ok((TempOutput { temp, target: target.to_path_buf(), committed: false }, file))
    }

    /// Renames the temporary file over the target.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.temp, &self.target)
            .with_context(|| format!("cannot rename {} to {}", self.temp.display(), self.target.display()))?;
        self.committed = true;
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
