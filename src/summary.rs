//! What a run did: printed as warnings on stderr, optionally as JSON on stdout, and turned into
//! the exit status (0 complete, 3 complete except for the reported skipped parts).

use crate::cli::ExportArgs;
use crate::copy::CopyStats;
use ext::{BlockClass, Superblock, WalkResult, Warning};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Exit status: exported completely.
pub const EXIT_OK: i32 = 0;
/// Exit status: failed, nothing written under OUT.
pub const EXIT_FAILED: i32 = 1;
/// Exit status: usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: exported, but corrupt or unreadable parts were skipped and reported.
pub const EXIT_WARNINGS: i32 = 3;

/// The outcome of an export or conversion.
pub struct Summary {
    /// Problems that were skipped, with the state they were found in (when there are several).
    pub warnings: Vec<(Option<String>, Warning)>,
    /// Warnings of the current state left out of `warnings` (the walker keeps a few per
    /// kind): kind label and number.
    pub omitted: Vec<(String, u64)>,
    /// Informational notes.
    pub notes: Vec<String>,
    /// The JSON document (without the warnings, added at print time).
    json: Map<String, Value>,
}

impl Summary {
    /// Summary of an export: the current state's counts at the top level, and one entry per
    /// state under `states`.
    #[allow(clippy::too_many_arguments)]
    pub fn export(
        source: &Path,
        output: &Path,
        sb: &Superblock,
        walked: &WalkResult,
        warnings: Vec<(String, Warning)>,
        stats: CopyStats,
        cluster_size: Option<u64>,
        states: Vec<StateReport>,
        args: &ExportArgs,
    ) -> Summary {
        let mut m = Map::new();
        m.insert("source".into(), json!(source.display().to_string()));
        m.insert("output".into(), json!(output.display().to_string()));
        m.insert(
            "format".into(),
            json!(if args.raw { "raw" } else { "qcow2" }),
        );
        m.insert("data".into(), json!(args.data));
        m.insert("block_size".into(), json!(sb.block_size));
        m.insert("blocks_count".into(), json!(sb.s_blocks_count));
        m.insert("cluster_size".into(), json!(cluster_size));
        m.insert("blocks_copied".into(), class_counts(walked));
        m.insert(
            "blocks_copied_total".into(),
            json!(walked.blocks.block_count()),
        );
        m.insert("bytes_read".into(), json!(stats.bytes_copied));
        m.insert("bytes_written".into(), json!(file_size(output)));
        m.insert("inodes_in_use".into(), json!(walked.stats.inodes_in_use));
        m.insert("orphan_inodes".into(), json!(walked.stats.orphan_inodes));
        m.insert("ea_inodes".into(), json!(walked.stats.ea_inodes));
        if states.len() > 1 {
            m.insert(
                "states".into(),
                Value::Array(states.iter().map(StateReport::to_json).collect()),
            );
        }
        let single = states.len() <= 1;
        let warnings = warnings
            .into_iter()
            .map(|(state, w)| if single { (None, w) } else { (Some(state), w) })
            .collect();
        Summary {
            warnings,
            omitted: walked.omitted.clone(),
            notes: walked.notes.clone(),
            json: m,
        }
    }

    /// Summary of a QCOW2 → raw conversion.
    pub fn conversion(
        source: &Path,
        output: &Path,
        size: u64,
        warnings: Vec<Warning>,
        stats: CopyStats,
    ) -> Summary {
        let mut m = Map::new();
        m.insert("source".into(), json!(source.display().to_string()));
        m.insert("output".into(), json!(output.display().to_string()));
        m.insert("format".into(), json!("raw"));
        m.insert("virtual_size".into(), json!(size));
        m.insert("bytes_read".into(), json!(stats.bytes_copied));
        m.insert("bytes_written".into(), json!(file_size(output)));
        let warnings = warnings.into_iter().map(|w| (None, w)).collect();
        Summary {
            warnings,
            omitted: Vec::new(),
            notes: Vec::new(),
            json: m,
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
            .map(|(kind, count)| json!({ "kind": kind, "count": count }))
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

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
