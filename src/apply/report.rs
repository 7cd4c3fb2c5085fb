//! What an apply writes and discards, for `--dry-run`, the text report printed before the
//! target is touched, the closing line and the `--json` summary.

use super::compare::{PassStats, Written};
use crate::delta_record::{DeltaFlags, DeltaRecord};
use crate::patching::{by_class, owners_of, Driven};
use crate::ranges::total;
use crate::text::size_short;
use ext::{BlockSet, BlockView, Filesystem};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Most affected files listed by name.
const MAX_FILES_LISTED: usize = 20;

/// Everything the reports say about one apply.
#[derive(Debug)]
pub struct Report {
    /// The delta.
    pub delta: PathBuf,
    /// The target.
    pub target: PathBuf,
    /// The delta record, if it has one.
    pub record: Option<DeltaRecord>,
    /// Cluster size of the delta, bytes.
    pub cluster_size: u64,
    /// Clusters it replaces, and how many of them are zero clusters (discards).
    pub replaced_clusters: u64,
    /// Zero clusters among them.
    pub zero_clusters: u64,
    /// Filesystem block size, bytes.
    pub block_size: u64,
    /// Totals of the comparison.
    pub stats: PassStats,
    /// The blocks that change.
    pub written: Written,
    /// Zero blocks are discarded (not `--no-discard`).
    pub discard: bool,
    /// Only blocks of FROM's or TO's copy set change in the clusters (they span several).
    pub masked: bool,
    /// Changed blocks per class of FROM's walk (empty without a record).
    pub classes: BTreeMap<&'static str, u64>,
    /// Files whose blocks change: inode, path, and whether the path is FROM's (a file TO
    /// no longer has there).
    pub files: Vec<(u32, String, bool)>,
    /// The patch written (not in a dry run).
    pub patch: Option<PathBuf>,
    /// The undo file written, and the line about it.
    pub undo: Option<(PathBuf, String)>,
}

impl Report {
    /// "FROM..TO" of the record, or the delta's path without one.
    pub fn label(&self) -> String {
        match &self.record {
            Some(r) => format!("{}..{}", r.from_name, r.to_name),
            None => format!("{} (no delta record)", self.delta.display()),
        }
    }

    /// Blocks written and discarded, as planned: (written, discarded).
    pub fn planned(&self) -> (u64, u64) {
        let (w, z) = (total(&self.written.written), total(&self.written.zeros));
        if self.discard {
            (w, z)
        } else {
            (w + z, 0)
        }
    }

    /// The text report.
    pub fn render(&self, dry_run: bool) -> String {
        let mut s = String::new();
        let dry = if dry_run {
            " — dry run, nothing written"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "apply of {} (delta {}) onto {}{dry}",
            self.delta.display(),
            self.label(),
            self.target.display()
        );
        let _ = writeln!(
            s,
            "  clusters the delta replaces: {} of {}, {} in all ({} zero: discards), touching {} blocks",
            self.replaced_clusters,
            size_short(self.cluster_size),
            size_short(self.replaced_clusters * self.cluster_size),
            self.zero_clusters,
            self.stats.compared
        );
        let (w, d) = self.planned();
        let _ = writeln!(
            s,
            "  differing from the target: {} blocks; to write: {w} blocks ({}), to discard: {d} blocks ({}), in {} runs (superblock block included)",
            self.stats.differ,
            size_short(w * self.block_size),
            size_short(d * self.block_size),
            self.written.runs
        );
        if !self.classes.is_empty() {
            let list: Vec<String> = self
                .classes
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(s, "  by class (in FROM): {}", list.join(", "));
        }
        let _ = writeln!(s, "  {}", self.describe_record());
        if self.masked {
            let _ = writeln!(s, "  clusters span several blocks: only the blocks of FROM's or TO's copy set in them change");
        }
        if !self.discard && total(&self.written.zeros) > 0 {
            let _ = writeln!(
                s,
                "  --no-discard: zeros are written where the delta discards"
            );
        }
        self.render_files(&mut s);
        s
    }

    fn describe_record(&self) -> String {
        let Some(r) = &self.record else {
            return "no delta record (--force): TARGET is not checked against FROM; unallocated clusters keep its bytes, allocated ones are written, zero ones discarded".into();
        };
        let yes = |f| if r.has(f) { "yes" } else { "no" };
        format!(
            "delta record: FROM {}, TO {}, file data {}, snapshot files {}; TARGET holds FROM (superblock, group descriptors and the replaced blocks checked)",
            r.from_name,
            r.to_name,
            yes(DeltaFlags::FILE_DATA),
            yes(DeltaFlags::SNAPSHOT_FILES)
        )
    }

    fn render_files(&self, s: &mut String) {
        let _ = writeln!(s, "  files affected: {}", self.files.len());
        for (ino, path, from) in self.files.iter().take(MAX_FILES_LISTED) {
            let side = if *from { " (in FROM)" } else { "" };
            let _ = writeln!(s, "    inode {ino} {path}{side}");
        }
        if self.files.len() > MAX_FILES_LISTED {
            let _ = writeln!(s, "    … and {} more", self.files.len() - MAX_FILES_LISTED);
        }
        if let Some((_, line)) = &self.undo {
            let _ = writeln!(s, "{line}");
        }
    }

    /// The closing line of a finished apply; `o` is the target's ` -o N` (or empty).
    pub fn done_line(&self, d: &Driven, o: &str) -> String {
        let (t, p) = (
            self.target.display(),
            self.patch.as_deref().map(Path::display),
        );
        let undo = p.map_or(String::new(), |p| {
            format!("; `e2image-rs apply --undo {p}{o} {t}` rewinds it")
        });
        format!(
            "{t}: applied delta {}: {} blocks written, {} discarded ({} written, {} discarded){undo}",
            self.label(),
            d.blocks_written,
            d.blocks_discarded,
            size_short(d.bytes_written),
            size_short(d.bytes_discarded)
        )
    }

    /// The `--json` summary: planned counts in a dry run, what was done otherwise.
    pub fn doc(&self, dry_run: bool, driven: Option<&Driven>) -> ApplyDoc {
        let (w, d) = self.planned();
        let (bs, cs) = (self.block_size, self.cluster_size);
        let done = driven.copied().unwrap_or(Driven {
            blocks_written: w,
            bytes_written: w * bs,
            blocks_discarded: d,
            bytes_discarded: d * bs,
            already: false,
        });
        let files = self.files.iter().map(|(ino, path, from)| FileDoc {
            inode: *ino,
            path: path.clone(),
            in_from: *from,
        });
        ApplyDoc {
            delta: self.delta.display().to_string(),
            target: self.target.display().to_string(),
            from: self.record.as_ref().map(|r| r.from_name.clone()),
            to: self.record.as_ref().map(|r| r.to_name.clone()),
            record: self.record.is_some(),
            dry_run,
            block_size: bs,
            cluster_size: cs,
            replaced_clusters: self.replaced_clusters,
            replaced_bytes: self.replaced_clusters * cs,
            zero_clusters: self.zero_clusters,
            zero_bytes: self.zero_clusters * cs,
            blocks_differing: self.stats.differ,
            bytes_differing: self.stats.differ * bs,
            blocks_written: done.blocks_written,
            bytes_written: done.bytes_written,
            blocks_discarded: done.blocks_discarded,
            bytes_discarded: done.bytes_discarded,
            runs: self.written.runs,
            by_class: self.classes.clone(),
            files_affected: files.collect(),
            patch: self.patch.as_ref().map(|p| p.display().to_string()),
            undo_file: self.undo.as_ref().map(|(p, _)| p.display().to_string()),
            exit_status: 0,
        }
    }
}

/// The `--json` document of an apply's first run (or dry run).
#[derive(Debug, Serialize)]
pub struct ApplyDoc {
    /// The delta's path.
    pub delta: String,
    /// The target's path.
    pub target: String,
    /// FROM's name (absent without a delta record).
    pub from: Option<String>,
    /// TO's name (absent without a delta record).
    pub to: Option<String>,
    /// The delta has a record.
    pub record: bool,
    /// Nothing was written.
    pub dry_run: bool,
    /// Filesystem block size, bytes.
    pub block_size: u64,
    /// The delta's cluster size, bytes.
    pub cluster_size: u64,
    /// Clusters the delta replaces.
    pub replaced_clusters: u64,
    /// Bytes of the replaced clusters.
    pub replaced_bytes: u64,
    /// Zero clusters among them (discards).
    pub zero_clusters: u64,
    /// Bytes of the zero clusters.
    pub zero_bytes: u64,
    /// Blocks that differ from the target.
    pub blocks_differing: u64,
    /// Bytes of the differing blocks.
    pub bytes_differing: u64,
    /// Blocks written (planned in a dry run).
    pub blocks_written: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Blocks discarded (planned in a dry run).
    pub blocks_discarded: u64,
    /// Bytes discarded.
    pub bytes_discarded: u64,
    /// Runs in the patch (the superblock block's included).
    pub runs: u64,
    /// Changed blocks per class of FROM's walk.
    pub by_class: BTreeMap<&'static str, u64>,
    /// Files whose blocks change.
    pub files_affected: Vec<FileDoc>,
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
    /// Its path.
    pub path: String,
    /// The path is FROM's (TO no longer has the file there).
    pub in_from: bool,
}

/// Changed blocks per class of FROM's copy set.
pub fn classes(
    from: Option<&BlockSet>,
    changed: &[std::ops::Range<u64>],
) -> BTreeMap<&'static str, u64> {
    from.map(|set| by_class(set, changed)).unwrap_or_default()
}

/// The files owning changed blocks: TO's (when TO's filesystem could be opened), then FROM's
/// that TO does not list (by inode number and path: a deleted file's inode may be reused).
pub fn files<A: BlockView, B: BlockView>(
    to: Option<&Filesystem<A>>,
    from: Option<&Filesystem<B>>,
    changed: &[std::ops::Range<u64>],
) -> Vec<(u32, String, bool)> {
    let mut out: Vec<(u32, String, bool)> = to
        .map(|fs| owners_of(fs, changed))
        .unwrap_or_default()
        .into_iter()
        .map(|(i, p)| (i, p, false))
        .collect();
    let listed: std::collections::BTreeSet<(u32, String)> =
        out.iter().map(|f| (f.0, f.1.clone())).collect();
    if let Some(fs) = from {
        let gone = owners_of(fs, changed).into_iter();
        out.extend(
            gone.filter(|f| !listed.contains(f))
                .map(|(i, p)| (i, p, true)),
        );
    }
    out
}
