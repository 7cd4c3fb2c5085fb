//! What a rollback writes, for `--dry-run` and the summary: blocks per class, bytes, runs, and
//! the files whose blocks change; as text ([`Facts::render`]) or JSON ([`Facts::doc`]).

use super::conflicts::Conflicts;
use super::diff::DiffStats;
use super::held::Held;
use crate::patching::{by_class, owners_of, Driven};
use crate::qcow_view::QcowView;
use crate::ranges::push;
use crate::record::ExportRecord;
use crate::text::size_short;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Most affected files listed by name.
const MAX_FILES_LISTED: usize = 20;

/// What a report is about: the image state, the target and what the state holds.
pub struct Subject<'a> {
    /// The QCOW2 image.
    pub image: &'a std::path::Path,
    /// Which state of it ("the active state", "snapshot 2 (monday)").
    pub label: &'a str,
    /// The target's path.
    pub target: &'a std::path::Path,
    /// The blocks the state holds.
    pub held: &'a Held,
    /// The state's walk (block classes).
    pub walk: &'a ext::BlockSet,
    /// The image (for its export record).
    pub reader: &'a qcow::Reader,
    /// The state's filesystem (for file names).
    pub fs: &'a ext::Filesystem<QcowView<'a>>,
}

/// Totals of the runs that differ.
#[derive(Debug)]
pub struct Report {
    block_size: u32,
    /// Comparison totals.
    pub stats: DiffStats,
    /// Runs handed over (the superblock block's included).
    pub runs: u64,
    /// Block ranges that will be written (differing blocks, plus the superblock block).
    pub written: Vec<Range<u64>>,
}

impl Report {
    /// An empty report for `block_size`-byte blocks.
    pub fn new(block_size: u32) -> Report {
        Report {
            block_size,
            stats: DiffStats::default(),
            runs: 0,
            written: Vec::new(),
        }
    }

    /// Counts one run of `bytes` bytes at block `first`.
    pub fn add(&mut self, first: u64, bytes: usize) {
        let n = (bytes / self.block_size as usize) as u64;
        self.runs += 1;
        push(&mut self.written, first..first + n);
    }

    /// Blocks written (the superblock block always counts).
    pub fn blocks(&self) -> u64 {
        self.written.iter().map(|r| r.end - r.start).sum()
    }

    /// What the report says, owned (the subject's filesystem is not needed any more).
    pub fn facts(&self, plan: &Subject<'_>, conflicts: &Conflicts) -> Facts {
        let mut notes = Vec::new();
        if plan.held.zeros_unknown {
            notes.push("QCOW2 v2 image not written by e2image-rs: blocks copied as all zeros are not recorded (no zero flag); the target keeps its bytes there".to_string());
        }
        if !plan.held.has_data {
            notes.push("the image holds no file data for this state: restored files keep the target's data blocks".to_string());
        }
        let conflicts = if conflicts.is_empty() {
            Vec::new()
        } else {
            let text = conflicts.render(MAX_FILES_LISTED);
            text.lines().map(str::to_string).collect()
        };
        Facts {
            image: plan.image.display().to_string(),
            state: plan.label.to_string(),
            target: plan.target.display().to_string(),
            block_size: u64::from(self.block_size),
            blocks_held: plan.held.blocks(),
            blocks_differing: self.stats.differ,
            blocks_written: self.blocks(),
            runs: self.runs,
            by_class: by_class(plan.walk, &self.written),
            record: describe_record(plan.reader),
            notes,
            files: owners_of(plan.fs, &self.written),
            conflicts,
            undo_line: None,
        }
    }
}

/// Everything the text and JSON reports of a rollback say.
#[derive(Debug)]
pub struct Facts {
    image: String,
    state: String,
    target: String,
    block_size: u64,
    blocks_held: u64,
    blocks_differing: u64,
    /// Blocks to write (the superblock block always counts).
    blocks_written: u64,
    runs: u64,
    by_class: BTreeMap<&'static str, u64>,
    record: String,
    notes: Vec<String>,
    files: Vec<(u32, String)>,
    conflicts: Vec<String>,
    /// The undo file written, and the line about it.
    pub undo_line: Option<(PathBuf, String)>,
}

impl Facts {
    /// Which state is rolled back to ("the active state", "snapshot 2 (monday)").
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The human-readable report.
    pub fn render(&self, dry_run: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "rollback of {} ({}) onto {}{}",
            self.image,
            self.state,
            self.target,
            if dry_run {
                " — dry run, nothing written"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "  blocks held by the state: {}; differing from the target: {} ({} to write in {} runs, superblock block included)",
            self.blocks_held,
            self.blocks_differing,
            size_short(self.blocks_written * self.block_size),
            self.runs
        );
        let list: Vec<String> = self
            .by_class
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        let _ = writeln!(s, "  by class: {}", list.join(", "));
        let _ = writeln!(s, "  {}", self.record);
        for n in &self.notes {
            let _ = writeln!(s, "  {n}");
        }
        let _ = writeln!(s, "  files affected: {}", self.files.len());
        for (ino, path) in self.files.iter().take(MAX_FILES_LISTED) {
            let _ = writeln!(s, "    inode {ino} {path}");
        }
        if self.files.len() > MAX_FILES_LISTED {
            let _ = writeln!(s, "    … and {} more", self.files.len() - MAX_FILES_LISTED);
        }
        for c in &self.conflicts {
            let _ = writeln!(s, "{c}");
        }
        if let Some((_, line)) = &self.undo_line {
            let _ = writeln!(s, "{line}");
        }
        if dry_run {
            let _ = writeln!(s, "{}", self.summary());
        }
        s
    }

    /// The dry run's last line: what a rollback would write, and whether it would go ahead.
    fn summary(&self) -> String {
        let verdict = match self.conflicts.is_empty() {
            true => "the rollback would go ahead".to_string(),
            false => {
                "the rollback is refused without --force (see the restored files above)".to_string()
            }
        };
        format!(
            "summary: {} block(s) ({}) would be written in {} run(s), {} file(s) affected; {verdict}",
            self.blocks_written,
            size_short(self.blocks_written * self.block_size),
            self.runs,
            self.files.len()
        )
    }

    /// The `--json` document: planned counts in a dry run (`driven` absent), what was done
    /// otherwise, with the patch written.
    pub fn doc(&self, driven: Option<&Driven>, patch: Option<&Path>) -> RollbackDoc {
        let bs = self.block_size;
        let written = driven.map_or(self.blocks_written, |d| d.blocks_written);
        RollbackDoc {
            image: self.image.clone(),
            state: self.state.clone(),
            target: self.target.clone(),
            dry_run: driven.is_none(),
            block_size: bs,
            blocks_held: self.blocks_held,
            bytes_held: self.blocks_held * bs,
            blocks_differing: self.blocks_differing,
            bytes_differing: self.blocks_differing * bs,
            blocks_written: written,
            bytes_written: driven.map_or(written * bs, |d| d.bytes_written),
            runs: self.runs,
            by_class: self.by_class.clone(),
            export_record: self.record.clone(),
            notes: self.notes.clone(),
            files_affected: self
                .files
                .iter()
                .map(|(inode, path)| FileDoc {
                    inode: *inode,
                    path: path.clone(),
                })
                .collect(),
            conflicts: self.conflicts.clone(),
            patch: patch.map(|p| p.display().to_string()),
            undo_file: self
                .undo_line
                .as_ref()
                .map(|(p, _)| p.display().to_string()),
            exit_status: 0,
        }
    }
}

/// The `--json` document of a rollback's first run (or dry run).
#[derive(Debug, Serialize)]
pub struct RollbackDoc {
    /// The image's path.
    pub image: String,
    /// Which state of it ("the active state", "snapshot 2 (monday)").
    pub state: String,
    /// The target's path.
    pub target: String,
    /// Nothing was written.
    pub dry_run: bool,
    /// Filesystem block size, bytes.
    pub block_size: u64,
    /// Blocks the state holds.
    pub blocks_held: u64,
    /// Bytes of the held blocks.
    pub bytes_held: u64,
    /// Held blocks that differ from the target.
    pub blocks_differing: u64,
    /// Bytes of the differing blocks.
    pub bytes_differing: u64,
    /// Blocks written (planned in a dry run; the superblock block always counts).
    pub blocks_written: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Runs in the patch.
    pub runs: u64,
    /// Written blocks per class of the state's walk.
    pub by_class: BTreeMap<&'static str, u64>,
    /// What the image's export record says, as a sentence.
    pub export_record: String,
    /// What the report notes about the image (no file data, zeros not recorded).
    pub notes: Vec<String>,
    /// Files whose blocks change.
    pub files_affected: Vec<FileDoc>,
    /// Restored files whose data would be wrong (metadata-only images), as report lines.
    pub conflicts: Vec<String>,
    /// The patch written.
    pub patch: Option<String>,
    /// The undo file written.
    pub undo_file: Option<String>,
    /// 0.
    pub exit_status: i32,
}

/// A file whose blocks change.
#[derive(Debug, Serialize)]
pub struct FileDoc {
    /// Its inode number.
    pub inode: u32,
    /// Its path in the state.
    pub path: String,
}

/// One line on what the image's export record says (see `crate::export_record`).
fn describe_record(reader: &qcow::Reader) -> String {
    let Some(r) = ExportRecord::of(reader) else {
        return "no export record (not written by e2image-rs): which blocks the state holds is inferred from its clusters".into();
    };
    format!(
        "export record: {}{}",
        r.summary(),
        if r.zeros_recorded {
            ""
        } else {
            " (held as zeros where the state's walk lists them)"
        }
    )
}
