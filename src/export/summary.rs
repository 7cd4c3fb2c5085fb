//! What a run did: printed as warnings on stderr, optionally as JSON on stdout, and turned into
//! the exit status (0 complete, 3 complete except for the reported skipped parts).

use crate::copy::CopyStats;
use crate::exit::{EXIT_OK, EXIT_WARNINGS};
use crate::plan::{ExportPlan, Format, Output};
use ext::{BlockClass, Superblock, WalkResult, Warning};
use serde_json::{json, Map, Value};

/// The outcome of an export or conversion.
pub struct Summary {
    /// Problems that were skipped, with the state they were found in (when there are several).
    pub warnings: Vec<(Option<String>, Warning)>,
    /// Warnings left out of `warnings` (a few are kept per kind): the state they were found
    /// in (when there are several), the kind and the number.
    pub omitted: Vec<(Option<String>, String, u64)>,
    /// Informational notes.
    pub notes: Vec<String>,
    /// The JSON document (without the warnings, added at print time).
    json: Map<String, Value>,
}

impl Summary {
    /// Summary of an export: the current state's counts at the top level, and one entry per
    /// state under `states`.
    pub fn export(plan: &ExportPlan, f: ExportFacts<'_>) -> Summary {
        let mut m = Map::new();
        m.insert(
            "source".into(),
            json!(plan.source().path().display().to_string()),
        );
        m.insert("output".into(), json!(plan.output().display()));
        let format = if plan.format() == Format::Raw {
            "raw"
        } else {
            "qcow2"
        };
        m.insert("format".into(), json!(format));
        m.insert("data".into(), json!(plan.data()));
        m.insert("block_size".into(), json!(f.sb.block_size));
        m.insert("blocks_count".into(), json!(f.sb.s_blocks_count));
        m.insert("cluster_size".into(), json!(f.cluster_size));
        m.insert("blocks_copied".into(), class_counts(f.walked));
        m.insert(
            "blocks_copied_total".into(),
            json!(f.walked.blocks.block_count()),
        );
        m.insert("bytes_read".into(), json!(f.stats.bytes_copied));
        let written = bytes_written(plan.output(), f.stats, f.sb.size_bytes());
        m.insert("bytes_written".into(), json!(written));
        m.insert("inodes_in_use".into(), json!(f.walked.stats.inodes_in_use));
        m.insert("orphan_inodes".into(), json!(f.walked.stats.orphan_inodes));
        m.insert("ea_inodes".into(), json!(f.walked.stats.ea_inodes));
        for (k, v) in f.extra {
            m.insert(k, v);
        }
        if f.states.len() > 1 {
            m.insert(
                "states".into(),
                Value::Array(f.states.iter().map(StateReport::to_json).collect()),
            );
        }
        let single = f.states.len() <= 1;
        let warnings = f
            .warnings
            .into_iter()
            .map(|(state, w)| if single { (None, w) } else { (Some(state), w) })
            .collect();
        let mut notes = f.notes;
        notes.extend(f.walked.notes.iter().cloned());
        Summary {
            warnings,
            omitted: f
                .omitted
                .into_iter()
                .map(|(state, kind, n)| (if single { None } else { Some(state) }, kind, n))
                .collect(),
            notes,
            json: m,
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
        let mut m = Map::new();
        m.insert(
            "source".into(),
            json!(plan.source().path().display().to_string()),
        );
        m.insert("output".into(), json!(plan.output().display()));
        m.insert("format".into(), json!("raw"));
        m.insert("virtual_size".into(), json!(size));
        m.insert("bytes_read".into(), json!(stats.bytes_copied));
        m.insert(
            "bytes_written".into(),
            json!(bytes_written(plan.output(), stats, size)),
        );
        let warnings = warnings.into_iter().map(|w| (None, w)).collect();
        Summary {
            warnings,
            omitted,
            notes,
            json: m,
        }
    }

    /// Summary of a delta: the changed, discarded and unchanged bytes.
    pub fn delta(plan: &ExportPlan, f: DeltaFacts) -> Summary {
        let mut m = Map::new();
        m.insert(
            "source".into(),
            json!(plan.source().path().display().to_string()),
        );
        m.insert("output".into(), json!(plan.output().display()));
        m.insert("format".into(), json!("qcow2"));
        m.insert("data".into(), json!(plan.data()));
        m.insert("cluster_size".into(), json!(f.cluster_size));
        m.insert(
            "delta".into(),
            json!({
                "from": f.from, "to": f.to,
                "changed_clusters": f.changed_clusters,
                "discarded_clusters": f.discarded_clusters,
                "changed_bytes": f.changed_clusters * f.cluster_size,
                "discarded_bytes": f.discarded_clusters * f.cluster_size,
                "unchanged_bytes": f.unchanged_bytes,
            }),
        );
        m.insert(
            "bytes_written".into(),
            json!(bytes_written(plan.output(), CopyStats::default(), 0)),
        );
        let mut notes = f.notes;
        notes.push(format!(
            "delta {}..{}: {} bytes changed, {} discarded, {} unchanged",
            f.from,
            f.to,
            f.changed_clusters * f.cluster_size,
            f.discarded_clusters * f.cluster_size,
            f.unchanged_bytes
        ));
        Summary {
            warnings: f.warnings.into_iter().map(|w| (None, w)).collect(),
            omitted: Vec::new(),
            notes,
            json: m,
        }
    }

    /// A summary with nothing in it.
    pub fn empty() -> Summary {
        Summary {
            warnings: Vec::new(),
            omitted: Vec::new(),
            notes: Vec::new(),
            json: Map::new(),
        }
    }

    /// Prints the notes and warnings on stderr and, with `json`, the JSON document on stdout.
    pub fn print(&self, json: bool) {
        for n in &self.notes {
            eprintln!("e2image-rs: note: {n}");
        }
        for (state, w) in &self.warnings {
            match state {
                Some(s) => eprintln!("e2image-rs: warning: [{s}] {w}"),
                None => eprintln!("e2image-rs: warning: {w}"),
            }
        }
        for (state, kind, n) in &self.omitted {
            let at = state
                .as_ref()
                .map(|s| format!("[{s}] "))
                .unwrap_or_default();
            eprintln!("e2image-rs: warning: {at}… and {n} more of kind \"{kind}\" (not listed)");
        }
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&self.to_json()).unwrap_or_default()
            );
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
    pub fn to_json(&self) -> Value {
        let mut m = self.json.clone();
        let warnings: Vec<Value> = self
            .warnings
            .iter()
            .map(|(state, w)| {
                json!({
                    "state": state,
                    "inode": w.inode.map(|i| i.0),
                    "block": w.block.map(|b| b.0),
                    "offset": w.offset,
                    "reason": w.reason,
                })
            })
            .collect();
        m.insert("warnings".into(), Value::Array(warnings));
        let omitted: Vec<Value> = self
            .omitted
            .iter()
            .map(|(state, kind, count)| json!({ "state": state, "kind": kind, "count": count }))
            .collect();
        m.insert("warnings_omitted".into(), Value::Array(omitted));
        m.insert("notes".into(), json!(self.notes));
        m.insert("exit_status".into(), json!(self.exit_status()));
        Value::Object(m)
    }
}

/// Blocks copied per class, as a JSON object.
fn class_counts(walked: &WalkResult) -> Value {
    let counts = walked.blocks.counts();
    let mut classes = Map::new();
    for class in BlockClass::ALL {
        if let Some(n) = counts.get(&class) {
            classes.insert(class.name().to_string(), json!(n));
        }
    }
    Value::Object(classes)
}

/// What happened to one state of a multi-state export.
pub struct StateReport {
    /// Its name.
    pub name: String,
    /// Its date (seconds, nanoseconds).
    pub date: (u32, u32),
    /// Blocks copied per class, when it was written.
    pub blocks: Option<Value>,
    /// Blocks copied in all.
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
            date,
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
            date: (0, 0),
            blocks: None,
            total: 0,
            warnings: 1,
            error: Some(format!(
                "state {name} left out: cannot open its filesystem: {error}"
            )),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "date_sec": self.date.0,
            "date_nsec": self.date.1,
            "blocks_copied": self.blocks,
            "blocks_copied_total": self.total,
            "warnings": self.warnings,
            "error": self.error,
        })
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
