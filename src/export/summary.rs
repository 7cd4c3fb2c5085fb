//! What a run did: printed as warnings on stderr, optionally as JSON on stdout, and turned into
//! the exit status (0 complete, 3 complete except for the reported skipped parts). The JSON
//! document is one of the serde structures below (export, conversion or delta, then the
//! warnings, notes and exit status common to all), written by `sys::report`.

use crate::copy::CopyStats;
use crate::exit::{EXIT_OK, EXIT_WARNINGS};
use crate::plan::{ExportPlan, Format, Output};
use crate::sys::report;
use crate::text::{size, Date};
use ext::{BlockClass, ChecksumReport, Superblock, WalkResult, Warning};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The outcome of an export or conversion.
pub struct Summary {
    /// Problems that were skipped, with the state they were found in (when there are several).
    pub warnings: Vec<(Option<String>, Warning)>,
    /// Warnings left out of `warnings` (a few are kept per kind): the state they were found
    /// in (when there are several), the kind and the number.
    pub omitted: Vec<(Option<String>, String, u64)>,
    /// Informational notes.
    pub notes: Vec<String>,
    /// What the JSON document says besides the warnings, notes and exit status.
    doc: Option<Doc>,
}

/// The part of the JSON document that depends on what was run.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Doc {
    Export(ExportDoc),
    Conversion(ConversionDoc),
    Delta(DeltaDoc),
}

/// An export's JSON document (the current state's counts at the top level).
#[derive(Debug, Serialize)]
struct ExportDoc {
    source: String,
    output: String,
    format: &'static str,
    data: bool,
    /// Filesystem block size, bytes.
    block_size: u32,
    blocks_count: u64,
    /// The filesystem's size, bytes (`blocks_count` blocks).
    fs_bytes: u64,
    /// QCOW2 cluster size, bytes (absent for raw).
    cluster_size: Option<u64>,
    blocks_copied: BTreeMap<&'static str, u64>,
    blocks_copied_total: u64,
    bytes_read: u64,
    bytes_written: u64,
    inodes_in_use: u64,
    orphan_inodes: u64,
    ea_inodes: u64,
    checksums: ChecksumsDoc,
    #[serde(skip_serializing_if = "Option::is_none")]
    states: Option<Vec<StateReport>>,
    /// Members the sink adds (an append's `state_name` and `pruned`).
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// The current state's metadata checksums (`checksums`): counts over every kind and per kind
/// (exact), and the failed ones (the first 16 of each kind).
#[derive(Debug, Serialize)]
struct ChecksumsDoc {
    /// Checksums compared, matching or not.
    verified: u64,
    /// Of those, the ones that did not match.
    failed: u64,
    /// Per kind met: its counts.
    by_kind: BTreeMap<&'static str, KindDoc>,
    bad: Vec<BadDoc>,
}

/// The checksums of one kind.
#[derive(Debug, Serialize)]
struct KindDoc {
    verified: u64,
    failed: u64,
}

/// One failed checksum.
#[derive(Debug, Serialize)]
struct BadDoc {
    kind: &'static str,
    block: Option<u64>,
    inode: Option<u64>,
}

impl ChecksumsDoc {
    fn of(r: &ChecksumReport) -> ChecksumsDoc {
        ChecksumsDoc {
            verified: r.verified(),
            failed: r.failed(),
            by_kind: r
                .counts()
                .into_iter()
                .map(|(k, c)| {
                    let doc = KindDoc {
                        verified: c.verified,
                        failed: c.failed,
                    };
                    (k.name(), doc)
                })
                .collect(),
            bad: r
                .bad
                .iter()
                .map(|b| BadDoc {
                    kind: b.kind.name(),
                    block: b.block.map(|b| b.0),
                    inode: b.inode.map(|i| u64::from(i.0)),
                })
                .collect(),
        }
    }
}

/// The note summing up the checksums (none when the filesystem has none).
fn checksum_note(r: &ChecksumReport) -> Option<String> {
    let (verified, failed) = (r.verified(), r.failed());
    match (verified, failed) {
        (0, _) => None,
        (n, 0) => Some(format!("metadata checksums: {n} verified, all match")),
        (n, f) => Some(format!(
            "metadata checksums: {n} verified, {f} do not match (see the warnings)"
        )),
    }
}

/// A QCOW2 → raw conversion's JSON document.
#[derive(Debug, Serialize)]
struct ConversionDoc {
    source: String,
    output: String,
    format: &'static str,
    /// The disk's size, bytes.
    virtual_size: u64,
    bytes_read: u64,
    bytes_written: u64,
}

/// A delta's JSON document.
#[derive(Debug, Serialize)]
struct DeltaDoc {
    source: String,
    output: String,
    format: &'static str,
    data: bool,
    cluster_size: u64,
    delta: DeltaCounts,
    bytes_written: u64,
}

/// What a delta holds, in clusters and bytes.
#[derive(Debug, Serialize)]
struct DeltaCounts {
    from: String,
    to: String,
    changed_clusters: u64,
    discarded_clusters: u64,
    changed_bytes: u64,
    discarded_bytes: u64,
    unchanged_bytes: u64,
}

/// The whole JSON document: what was run, then the members every summary has.
#[derive(Serialize)]
struct Full<'a> {
    #[serde(flatten)]
    doc: &'a Option<Doc>,
    warnings: Vec<WarningDoc<'a>>,
    warnings_omitted: Vec<OmittedDoc<'a>>,
    notes: &'a [String],
    exit_status: i32,
}

/// One listed warning.
#[derive(Serialize)]
struct WarningDoc<'a> {
    state: Option<&'a str>,
    inode: Option<u64>,
    block: Option<u64>,
    offset: Option<u32>,
    reason: &'a str,
}

/// Warnings of one kind left out of the list.
#[derive(Serialize)]
struct OmittedDoc<'a> {
    state: Option<&'a str>,
    kind: &'a str,
    count: u64,
}

/// `plan.source` and `plan.output` as text.
fn paths(plan: &ExportPlan) -> (String, String) {
    (
        plan.source().path().display().to_string(),
        plan.output().display(),
    )
}

impl Summary {
    /// Summary of an export: the current state's counts at the top level, and one entry per
    /// state under `states`.
    pub fn export(plan: &ExportPlan, f: ExportFacts<'_>) -> Summary {
        let (source, output) = paths(plan);
        let format = if plan.format() == Format::Raw {
            "raw"
        } else {
            "qcow2"
        };
        let single = f.states.len() <= 1;
        let doc = ExportDoc {
            source,
            output,
            format,
            data: plan.data(),
            block_size: f.sb.block_size,
            blocks_count: f.sb.s_blocks_count,
            fs_bytes: f.sb.size_bytes(),
            cluster_size: f.cluster_size,
            blocks_copied: class_counts(f.walked),
            blocks_copied_total: f.walked.blocks.block_count(),
            bytes_read: f.stats.bytes_copied,
            bytes_written: bytes_written(plan.output(), f.stats, f.sb.size_bytes()),
            inodes_in_use: f.walked.stats.inodes_in_use,
            orphan_inodes: f.walked.stats.orphan_inodes,
            ea_inodes: f.walked.stats.ea_inodes,
            checksums: ChecksumsDoc::of(&f.walked.checksums),
            states: (!single).then_some(f.states),
            extra: f.extra.into_iter().collect(),
        };
        let warnings = f
            .warnings
            .into_iter()
            .map(|(state, w)| if single { (None, w) } else { (Some(state), w) })
            .collect();
        let mut notes = f.notes;
        notes.extend(f.walked.notes.iter().cloned());
        notes.extend(checksum_note(&f.walked.checksums));
        Summary {
            warnings,
            omitted: f
                .omitted
                .into_iter()
                .map(|(state, kind, n)| (if single { None } else { Some(state) }, kind, n))
                .collect(),
            notes,
            doc: Some(Doc::Export(doc)),
        }
    }

    /// Summary of a QCOW2 → raw conversion of a `size`-byte disk.
    pub fn conversion(
        plan: &ExportPlan,
        size: u64,
        warnings: Vec<Warning>,
        stats: CopyStats,
        notes: Vec<String>,
    ) -> Summary {
        let omitted = unreadable_omitted(stats, warnings.len())
            .map(|(kind, n)| (None, kind, n))
            .into_iter()
            .collect();
        let (source, output) = paths(plan);
        let doc = ConversionDoc {
            source,
            output,
            format: "raw",
            virtual_size: size,
            bytes_read: stats.bytes_copied,
            bytes_written: bytes_written(plan.output(), stats, size),
        };
        Summary {
            warnings: warnings.into_iter().map(|w| (None, w)).collect(),
            omitted,
            notes,
            doc: Some(Doc::Conversion(doc)),
        }
    }

    /// Summary of a delta: the changed, discarded and unchanged bytes.
    pub fn delta(plan: &ExportPlan, f: DeltaFacts) -> Summary {
        let (source, output) = paths(plan);
        let (changed, discarded) = (
            f.changed_clusters * f.cluster_size,
            f.discarded_clusters * f.cluster_size,
        );
        let mut notes = f.notes;
        notes.push(format!(
            "delta {}..{}: {} changed, {} discarded, {} unchanged",
            f.from,
            f.to,
            size(changed),
            size(discarded),
            size(f.unchanged_bytes)
        ));
        let doc = DeltaDoc {
            source,
            output,
            format: "qcow2",
            data: plan.data(),
            cluster_size: f.cluster_size,
            delta: DeltaCounts {
                from: f.from,
                to: f.to,
                changed_clusters: f.changed_clusters,
                discarded_clusters: f.discarded_clusters,
                changed_bytes: changed,
                discarded_bytes: discarded,
                unchanged_bytes: f.unchanged_bytes,
            },
            bytes_written: bytes_written(plan.output(), CopyStats::default(), 0),
        };
        Summary {
            warnings: f.warnings.into_iter().map(|w| (None, w)).collect(),
            omitted: Vec::new(),
            notes,
            doc: Some(Doc::Delta(doc)),
        }
    }

    /// A summary with nothing in it.
    pub fn empty() -> Summary {
        Summary {
            warnings: Vec::new(),
            omitted: Vec::new(),
            notes: Vec::new(),
            doc: None,
        }
    }

    /// Prints the notes and warnings on stderr and, with `json`, the JSON document on stdout
    /// (through `sys::report`: the run's work is committed by now).
    pub fn print(&self, json: bool) {
        for n in &self.notes {
            report::note(n);
        }
        for (state, w) in &self.warnings {
            match state {
                Some(s) => report::warning(&format!("[{s}] {w}")),
                None => report::warning(&w.to_string()),
            }
        }
        for (state, kind, n) in &self.omitted {
            let at = state
                .as_ref()
                .map(|s| format!("[{s}] "))
                .unwrap_or_default();
            report::warning(&format!(
                "{at}… and {n} more of kind \"{kind}\" (not listed)"
            ));
        }
        if json {
            report::json(&self.document());
        }
    }

    /// The exit status this outcome maps to.
    pub fn exit_status(&self) -> i32 {
        if self.warnings.is_empty() && self.omitted.is_empty() {
            EXIT_OK
        } else {
            EXIT_WARNINGS
        }
    }

    /// The JSON document.
    fn document(&self) -> Full<'_> {
        let warnings = self
            .warnings
            .iter()
            .map(|(state, w)| WarningDoc {
                state: state.as_deref(),
                inode: w.inode.map(|i| u64::from(i.0)),
                block: w.block.map(|b| b.0),
                offset: w.offset,
                reason: &w.reason,
            })
            .collect();
        let omitted = self
            .omitted
            .iter()
            .map(|(state, kind, count)| OmittedDoc {
                state: state.as_deref(),
                kind,
                count: *count,
            })
            .collect();
        Full {
            doc: &self.doc,
            warnings,
            warnings_omitted: omitted,
            notes: &self.notes,
            exit_status: self.exit_status(),
        }
    }
}

/// Blocks copied per class.
fn class_counts(walked: &WalkResult) -> BTreeMap<&'static str, u64> {
    let counts = walked.blocks.counts();
    BlockClass::ALL
        .iter()
        .filter_map(|c| counts.get(c).map(|&n| (c.name(), n)))
        .collect()
}

/// What happened to one state of a multi-state export (an entry of the JSON `states`).
#[derive(Debug, Serialize)]
pub struct StateReport {
    /// Its name.
    pub name: String,
    /// Its date (`date`, `date_sec`, `date_nsec`; the epoch for a state left out).
    #[serde(flatten)]
    pub date: Date,
    /// Blocks copied per class, when it was written.
    #[serde(rename = "blocks_copied")]
    pub blocks: Option<BTreeMap<&'static str, u64>>,
    /// Blocks copied in all.
    #[serde(rename = "blocks_copied_total")]
    pub total: u64,
    /// Warnings found in it (listed or omitted).
    pub warnings: usize,
    /// Why it could not be written, if it was not.
    pub error: Option<String>,
}

impl StateReport {
    /// A state that was walked and written; `warnings` listed, plus those the walk omitted.
    pub fn walked(
        name: &str,
        date: (u32, u32),
        walked: &WalkResult,
        warnings: usize,
    ) -> StateReport {
        let omitted: u64 = walked.omitted.iter().map(|(_, n)| n).sum();
        StateReport {
            name: name.to_string(),
            date: Date::new(i64::from(date.0), date.1),
            blocks: Some(class_counts(walked)),
            total: walked.blocks.block_count(),
            warnings: warnings.saturating_add(usize::try_from(omitted).unwrap_or(usize::MAX)),
            error: None,
        }
    }

    /// A state whose filesystem could not be opened (it is left out of the image).
    pub fn unopenable(name: &str, error: &str) -> StateReport {
        StateReport {
            name: name.to_string(),
            date: Date::new(0, 0),
            blocks: None,
            total: 0,
            warnings: 1,
            error: Some(format!(
                "state {name} left out: cannot open its filesystem: {error}"
            )),
        }
    }
}

/// Bytes the output holds: a file's length, what was written onto a device, the whole
/// stream.
fn bytes_written(out: &Output, stats: CopyStats, size: u64) -> u64 {
    match out {
        Output::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        Output::Device(_) => stats.bytes_copied,
        Output::Stdout => size,
        Output::Archive(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
    }
}

/// What an export found and did, for [`Summary::export`].
pub struct ExportFacts<'a> {
    /// The current state's superblock.
    pub sb: &'a Superblock,
    /// The current state's walk.
    pub walked: &'a WalkResult,
    /// Every warning, with the state it was found in.
    pub warnings: Vec<(String, Warning)>,
    /// Copy counts over all states.
    pub stats: CopyStats,
    /// The QCOW2 cluster size in bytes.
    pub cluster_size: Option<u64>,
    /// One report per state.
    pub states: Vec<StateReport>,
    /// Notes of the run (besides the walk's).
    pub notes: Vec<String>,
    /// Warnings not listed: (state, kind, number), over every state.
    pub omitted: Vec<(String, String, u64)>,
    /// Extra members of the JSON document (from the sink).
    pub extra: Vec<(String, Value)>,
}

/// What a delta found, for [`Summary::delta`].
pub struct DeltaFacts {
    /// FROM's name.
    pub from: String,
    /// TO's name.
    pub to: String,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Clusters stored with TO's bytes.
    pub changed_clusters: u64,
    /// Zero clusters (FROM's blocks TO frees).
    pub discarded_clusters: u64,
    /// Bytes of TO's copy set not in a changed cluster.
    pub unchanged_bytes: u64,
    /// Corrupt parts the walks skipped.
    pub warnings: Vec<Warning>,
    /// Notes of the run.
    pub notes: Vec<String>,
}

/// Kind label of unreadable source blocks beyond those listed.
pub const UNREADABLE_KIND: &str = "unreadable source block";

/// The unreadable units a copy counted beyond the `listed` ones, as (kind, number).
pub fn unreadable_omitted(stats: CopyStats, listed: usize) -> Option<(String, u64)> {
    let n = stats.unreadable_units.saturating_sub(listed as u64);
    (n > 0).then(|| (UNREADABLE_KIND.to_string(), n))
}
