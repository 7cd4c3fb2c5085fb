//! An archive's repository code, shared by the append (`export`), `prune` and the archive sink:
//! one place decides what an archive is, which of its states is the newest, how a new state is
//! named and numbered, and which states a retention policy keeps.
//!
//! An archive is a QCOW2 image written by e2image-rs (export record) whose states are internal
//! snapshots; its active layer shows the newest one (an inverted chain). It is opened for
//! change through [`open_archive`]: an exclusive lock, then `qcow::Editor::open`, which
//! validates the image, refuses refcounts that disagree with the references, and truncates the
//! leftovers of an interrupted edit.

mod decisions;

pub use decisions::{decide, Decision, DecisionDoc, NewState};

use crate::record::ExportRecord;
use anyhow::{bail, Context, Result};
use qcow::Editor;
use std::path::{Path, PathBuf};

/// An archive opened for change: locked, checked, leftovers of an interrupted edit removed.
pub struct OpenArchive {
    /// The editor over the archive.
    pub editor: Editor,
    /// Where it is.
    pub path: PathBuf,
    /// Notes for the summary (leftovers removed).
    pub notes: Vec<String>,
}

/// Opens `path` for an in-place change: first read-only, refusing a file that is not an
/// archive ([`refuse_non_archive`]); then for writing, with an exclusive lock,
/// [`Editor::open`] (which truncates the leftovers of an interrupted edit) and the
/// fault-injection hook of test builds.
///
/// # Errors
/// Not an archive; not openable, locked by another run, not a usable QCOW2 image
/// (refcounts that disagree with the references included).
pub fn open_archive(path: &Path) -> Result<OpenArchive> {
    refuse_non_archive(path)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the archive {}", path.display()))?;
    crate::sys::lock::exclusive(&file, path, "the archive")?;
    let mut editor = Editor::open(file).with_context(|| {
        format!(
            "{}: not a usable QCOW2 archive; nothing was written",
            path.display()
        )
    })?;
    hook_faults(&mut editor);
    let mut notes = Vec::new();
    if editor.leftover_bytes() > 0 {
        notes.push(format!(
            "{}: removed {} left past the end of the archive by an interrupted append or prune",
            path.display(),
            crate::text::size(editor.leftover_bytes())
        ));
    }
    Ok(OpenArchive {
        editor,
        path: path.to_path_buf(),
        notes,
    })
}

/// Refuses, before anything opens it for writing, a file that is not an archive: not a QCOW2
/// image, not written by e2image-rs (no export record), or without states (a plain export).
///
/// # Errors
/// What it is instead.
fn refuse_non_archive(path: &Path) -> Result<()> {
    let p = path.display();
    if !crate::probe::is_qcow2(path)? {
        bail!("{p} is not a QCOW2 image, so not an archive; nothing was changed");
    }
    let reader = crate::qcow_view::open_image(path, false)
        .with_context(|| format!("{p}: not a usable QCOW2 archive; nothing was changed"))?;
    if ExportRecord::of(&reader).is_none() {
        bail!(
            "{p} is not an archive: it was not written by e2image-rs (no export record); nothing was changed"
        );
    }
    if reader.snapshots().is_empty() {
        bail!(
            "{p} is not an archive: it has no states (a plain export; `e2image-rs -Q --name NAME` creates an archive); nothing was changed"
        );
    }
    Ok(())
}

/// With the `fault-injection` feature: `E2IMAGE_RS_FAULT_AFTER_WRITES=k` aborts the process
/// right after the k-th write, flush, truncation or hole punch of the edit (a crash at that
/// point). Release builds read nothing.
fn hook_faults(editor: &mut Editor) {
    if !cfg!(feature = "fault-injection") {
        return;
    }
    let Some(k) = std::env::var("E2IMAGE_RS_FAULT_AFTER_WRITES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let mut count = 0u64;
    editor.set_write_hook(Box::new(move |_event| {
        count += 1;
        if count > k {
            std::process::abort();
        }
        Ok(())
    }));
}

impl OpenArchive {
    /// The export record ([`open_archive`] refused an image without one).
    ///
    /// # Errors
    /// No export record (the image changed since it was checked).
    pub fn record(&self) -> Result<ExportRecord> {
        ExportRecord::of(self.editor.reader())
            .with_context(|| format!("{}: the export record is gone", self.path.display()))
    }

    /// The snapshot holding the newest state: the one the active layer shows, else the
    /// newest in the archive's order ([`crate::retention::StateOrder`]).
    ///
    /// # Errors
    /// The archive has no states.
    pub fn newest_state(&self) -> Result<usize> {
        if let Some(i) = self.editor.snapshot_matching_active() {
            return Ok(i);
        }
        let order = decisions::orders(self.editor.snapshots());
        (0..order.len())
            .max_by_key(|&i| order[i])
            .with_context(|| format!("{} has no states", self.path.display()))
    }

    /// The name for a new state: `wanted` (refused if a state has that name or id), else
    /// `default` made unique with `-2`, `-3`, ...
    ///
    /// # Errors
    /// [`crate::exit::UsageError`] for a `wanted` name already used.
    pub fn unique_name(&self, wanted: Option<&str>, default: &str) -> Result<String> {
        let snaps = self.editor.snapshots();
        let taken = |n: &str| snaps.iter().any(|s| s.name == n || s.id == n);
        if let Some(n) = wanted {
            if taken(n) {
                return Err(crate::exit::UsageError(format!(
                    "--name {n:?}: the archive already has a state with that name or id"
                ))
                .into());
            }
            return Ok(n.to_string());
        }
        let mut name = default.to_string();
        let mut k = 2;
        while taken(&name) {
            name = format!("{default}-{k}");
            k += 1;
        }
        Ok(name)
    }

    /// The next snapshot id: one more than the largest numeric id (QEMU's rule).
    pub fn next_id(&self) -> u64 {
        self.editor
            .snapshots()
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1
    }
}
