//! What an export's output is for and the snapshot tables it ends with: the disk size and
//! the QCOW2 options (cluster size, export record), the inverted chain's table, a new
//! archive's, and a given table moved onto the states actually written.

use super::cluster::choose_cluster_bits;
use super::StateInput;
use crate::plan::{ExportPlan, Format};
use crate::record::{ExportRecord, EXT_EXPORT_RECORD};
use crate::sink::{QcowOptions, Table, TableEntry, Target};
use anyhow::{Context, Result};
use ext::{BlockView, Filesystem};
use qcow::Version;

/// What the output is for: the largest state's size, the first state's filesystem.
pub(super) fn target_of(
    opened: &[Option<Filesystem<&dyn BlockView>>],
    plan: &ExportPlan,
) -> Result<Target> {
    let first = opened[0]
        .as_ref()
        .context("the current state cannot be opened")?;
    let size = opened
        .iter()
        .flatten()
        .map(|f| f.sb.size_bytes())
        .max()
        .unwrap_or(0);
    Ok(Target {
        size,
        block_size: first.sb.block_size,
        qcow: qcow_options(plan, size, first.sb.block_size)?,
    })
}

/// How to write QCOW2: the cluster size for a `size`-byte disk, the export record, and how
/// clusters are compressed (`-c`).
fn qcow_options(plan: &ExportPlan, size: u64, block_size: u32) -> Result<QcowOptions> {
    let Format::Qcow2 {
        version,
        cluster_size,
    } = plan.format()
    else {
        return Ok(QcowOptions::default());
    };
    let record = ExportRecord {
        file_data: plan.data(),
        snapshot_files: !plan.no_snapshots(),
        zeros_recorded: version == Version::V3,
        replayed: plan.replay(),
    };
    // -d and -c take QEMU's default 64 KiB clusters: larger reads for data, and for -c the
    // size qemu-img convert -c gives (compressing block-sized clusters leaves about 1.5× it).
    let large = plan.data() || plan.compress().is_some();
    Ok(QcowOptions {
        cluster_bits: choose_cluster_bits(size, block_size, large, cluster_size)?,
        version,
        extensions: vec![(EXT_EXPORT_RECORD, record.encode().to_vec())],
        backing: None,
        compression: plan.compress().map(|c| c.compression),
    })
}

/// The inverted chain's table: with several written states, one snapshot per state (ids
/// 1..n in order, the current state first); the first written state is active.
pub(super) fn chain_table(states: &[StateInput<'_>], written: &[bool]) -> Table {
    let names: Vec<&StateInput<'_>> = states
        .iter()
        .zip(written)
        .filter(|(_, w)| **w)
        .map(|(s, _)| s)
        .collect();
    let entries = if names.len() > 1 {
        names
            .iter()
            .enumerate()
            .map(|(k, s)| TableEntry {
                state: k,
                id: (k + 1).to_string(),
                name: s.name.clone(),
                date: s.date,
            })
            .collect()
    } else {
        Vec::new()
    };
    Table {
        active: 0,
        entries,
        extensions: Vec::new(),
    }
}

/// A new archive's table: its only state, named `name`, dated now, id 1.
pub(super) fn archive_table(name: &str) -> Table {
    let (date, _) = crate::text::now_and_name();
    Table {
        active: 0,
        entries: vec![TableEntry {
            state: 0,
            id: "1".into(),
            name: name.to_string(),
            date,
        }],
        extensions: Vec::new(),
    }
}

/// A table given over the input states, moved onto the written ones: entries of states that
/// were left out (and already reported) are dropped.
pub(super) fn remap_table(t: Table, written: &[bool]) -> Table {
    let index: Vec<Option<usize>> = written
        .iter()
        .scan(0usize, |n, &w| {
            let i = w.then_some(*n);
            *n += usize::from(w);
            Some(i)
        })
        .collect();
    Table {
        active: index[t.active].unwrap_or(0),
        entries: t
            .entries
            .into_iter()
            .filter_map(|e| index[e.state].map(|s| TableEntry { state: s, ..e }))
            .collect(),
        extensions: t.extensions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_follow_the_written_states() {
        let t = Table {
            extensions: Vec::new(),
            active: 0,
            entries: (0..3)
                .map(|s| TableEntry {
                    state: s,
                    id: s.to_string(),
                    name: format!("n{s}"),
                    date: (0, 0),
                })
                .collect(),
        };
        let r = remap_table(t, &[true, false, true]);
        let got: Vec<(usize, &str)> = r.entries.iter().map(|e| (e.state, e.id.as_str())).collect();
        assert_eq!(got, vec![(0, "0"), (1, "2")]);
    }
}
