//! What a rollback writes, for `--dry-run` and the summary: blocks per class, bytes, runs, and
//! the files whose blocks change.

use super::conflicts::Conflicts;
use super::diff::DiffStats;
use super::held::Held;
use crate::patching::{by_class, owners_of};
use crate::qcow_view::QcowView;
use crate::ranges::push;
use crate::record::ExportRecord;
use std::fmt::Write;
use std::ops::Range;

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

    /// The human-readable report.
    pub fn render(&self, plan: &Subject<'_>, conflicts: &Conflicts, dry_run: bool) -> String {
        let mut s = String::new();
        let bs = u64::from(self.block_size);
        let _ = writeln!(
            s,
            "rollback of {} ({}) onto {}{}",
            plan.image.display(),
            plan.label,
            plan.target.display(),
            if dry_run {
                " — dry run, nothing written"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "  blocks held by the state: {}; differing from the target: {} ({} bytes to write in {} runs, superblock block included)",
            plan.held.blocks(),
            self.stats.differ,
            self.blocks() * bs,
            self.runs
        );
        let classes = by_class(plan.walk, &self.written);
        let list: Vec<String> = classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(s, "  by class: {}", list.join(", "));
        let _ = writeln!(s, "  {}", describe_record(plan.reader));
        if plan.held.zeros_unknown {
            let _ = writeln!(
                s,
                "  QCOW2 v2 image not written by e2image-rs: blocks copied as all zeros are not recorded (no zero flag); the target keeps its bytes there"
            );
        }
        if !plan.held.has_data {
            let _ = writeln!(
                s,
                "  the image holds no file data for this state: restored files keep the target's data blocks"
            );
        }
        let files = owners_of(plan.fs, &self.written);
        let _ = writeln!(s, "  files affected: {}", files.len());
        for (ino, path) in files.iter().take(MAX_FILES_LISTED) {
            let _ = writeln!(s, "    inode {ino} {path}");
        }
        if files.len() > MAX_FILES_LISTED {
            let _ = writeln!(s, "    … and {} more", files.len() - MAX_FILES_LISTED);
        }
        if !conflicts.is_empty() {
            let _ = writeln!(s, "{}", conflicts.render(MAX_FILES_LISTED));
        }
        s
    }
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
