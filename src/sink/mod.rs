//! Image writers behind one interface: the copy engine hands over runs of bytes at device
//! offsets, in increasing order within a state, and the sink lays them out.
//!
//! One file per sink: `raw` (a sparse regular file), `device` (a block device written in
//! place), `stream` (standard output, sequential), `qcow` (QCOW2, any number of states),
//! `qcow_stream` (QCOW2 on standard output, in one pass: planned first, see
//! [`Sink::two_passes`]), `archive` (a state appended to an existing QCOW2 archive in place);
//! the QCOW2 sinks share `clusters` (guest clusters, zero clusters, dedup) and `compress`
//! (`-c`: clusters compressed on all cores, written in guest order).
//! [`open`] picks the sink from the plan's output; adding a sink is one file and one line
//! there; [`open_append`] wraps an archive the pipeline opened and checked. Files are written
//! under a temporary name (`crate::sys::output`) and renamed by [`Opened::complete`]; devices
//! and streams are written directly.
//!
//! Sinks only write: what to copy, what is unchanged and may be shared, what an archive holds
//! are decided above them (they never read a filesystem).

mod archive;
mod clusters;
mod compare;
mod compress;
mod device;
mod qcow;
mod qcow_stream;
mod raw;
mod shifted;
mod spool;
mod state_target;
mod stream;

use crate::plan::{ExportPlan, Format, Output};
use crate::sys::output::{BackgroundSync, TempOutput};
use anyhow::{Context, Result};

pub use archive::Append;
pub use qcow::QcowOptions;

/// A guest cluster of the state being written that holds the same bytes as the base state's
/// cluster at the same place (an archive append): mapped to it without its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedCluster {
    /// The guest cluster number.
    pub guest: u64,
    /// True if it holds blocks of the state's copy set (a zero cluster is recorded when the
    /// base holds zeros there); false if it holds none (left unallocated then).
    pub copied: bool,
}

/// Where copied bytes go.
pub trait Sink: Send {
    /// Starts the next state. States come newest first; the first becomes the active layer.
    /// Sinks that hold one state refuse a second.
    ///
    /// # Errors
    /// A second state for a single-state sink; write errors.
    fn begin_state(&mut self) -> Result<()>;

    /// Writes `data` at byte `offset` of the current state's disk. Calls come in strictly
    /// increasing, non-overlapping offset order within a state.
    ///
    /// # Errors
    /// Write errors, naming the offset.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()>;

    /// Ends the current state.
    ///
    /// # Errors
    /// Write errors.
    fn end_state(&mut self) -> Result<()>;

    /// Hands over the guest clusters (sorted) of the state just begun that equal the base
    /// state's and are mapped to it without their bytes; the pipeline leaves their blocks out
    /// of the copy. Only a sink writing against an earlier state (an archive append) takes
    /// them.
    ///
    /// # Errors
    /// A sink without a base state; clusters out of order or handed over twice.
    fn share(&mut self, _clusters: Vec<SharedCluster>) -> Result<()> {
        anyhow::bail!("this output has no earlier state to share clusters with")
    }

    /// True for a sink that lays the whole image out before writing any byte of it (a QCOW2
    /// stream). The pipeline then hands every state over twice: first to plan (`states` of
    /// them, in order; nothing is written), then [`Sink::plan`] with the table, then again
    /// with only the guest byte ranges `plan` returned, then [`Sink::finish`] with the same
    /// table. Other sinks take one pass.
    fn two_passes(&mut self, _states: usize) -> bool {
        false
    }

    /// Ends the planning pass: the image's layout is fixed with `table` (and its tables may be
    /// written). Returns, per state in order, the guest byte ranges (sorted, whole clusters)
    /// whose bytes the second pass must hand over again.
    ///
    /// # Errors
    /// An invalid table; write errors; a sink taking one pass.
    fn plan(&mut self, _table: &Table) -> Result<Vec<Vec<std::ops::Range<u64>>>> {
        anyhow::bail!("this output is written in one pass")
    }

    /// Completes the image: the snapshot table (QCOW2; ignored by single-state sinks) and
    /// the final flush (`sync`: to stable storage).
    ///
    /// # Errors
    /// Write errors; an invalid table.
    fn finish(self: Box<Self>, table: &Table, sync: bool) -> Result<Finished>;
}

/// What a finished sink reports.
#[derive(Debug, Default)]
pub struct Finished {
    /// The QCOW2 cluster size in bytes.
    pub cluster_size: Option<u64>,
    /// Notes for the summary.
    pub notes: Vec<String>,
    /// Extra members of the JSON summary.
    pub json: Vec<(String, serde_json::Value)>,
}

impl Finished {
    /// A finished QCOW2 image of `cluster_size` bytes per cluster, or a raw one.
    pub fn with_cluster_size(cluster_size: Option<u64>) -> Finished {
        Finished {
            cluster_size,
            ..Finished::default()
        }
    }
}

/// What the output is for: the disk size and how to write QCOW2.
#[derive(Clone, Debug)]
pub struct Target {
    /// Disk size in bytes.
    pub size: u64,
    /// The unit `-r -c` compares and counts in, in bytes: the filesystem's block size (4096
    /// for a QCOW2 → raw conversion).
    pub block_size: u32,
    /// How to write a new QCOW2 image.
    pub qcow: QcowOptions,
}

/// What a QCOW2 image gets when it is finished: which written state (by its index in writing
/// order) is the active layer, one entry per internal snapshot, and header extensions known
/// only at the end (a delta's record).
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Index of the active state.
    pub active: usize,
    /// Snapshot entries, in table order.
    pub entries: Vec<TableEntry>,
    /// Private header extensions to add: (type, data).
    pub extensions: Vec<(u32, Vec<u8>)>,
}

impl Table {
    /// The active state and the snapshot specs, with the written states' indices mapped to
    /// the writer's `ids` (index `i` of the table is `ids[i]`).
    ///
    /// # Errors
    /// An index with no id: that state was not `what` (written, planned).
    pub fn resolve(
        &self,
        ids: &[::qcow::StateId],
        what: &str,
    ) -> Result<(::qcow::StateId, Vec<::qcow::SnapshotSpec>)> {
        let at = |i: usize| {
            ids.get(i)
                .copied()
                .with_context(|| format!("state {i} was not {what}"))
        };
        let specs = self
            .entries
            .iter()
            .map(|e| {
                Ok(::qcow::SnapshotSpec {
                    state: at(e.state)?,
                    id: e.id.clone(),
                    name: e.name.clone(),
                    date_sec: e.date.0,
                    date_nsec: e.date.1,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((at(self.active)?, specs))
    }
}

/// One internal snapshot.
#[derive(Clone, Debug)]
pub struct TableEntry {
    /// Index of the written state it shows.
    pub state: usize,
    /// Snapshot id (QEMU's `-l` looks ids up first).
    pub id: String,
    /// Snapshot name.
    pub name: String,
    /// Date: seconds and nanoseconds since the epoch.
    pub date: (u32, u32),
}

/// True if every byte is zero (16 bytes at a time, which the compiler vectorises).
pub fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.as_chunks::<16>();
    words.iter().all(|w| u128::from_ne_bytes(*w) == 0) && rest.iter().all(|&x| x == 0)
}

/// An output being written.
pub struct Opened {
    /// The sink.
    pub sink: Box<dyn Sink>,
    temp: Option<TempOutput>,
    background: BackgroundSync,
}

impl Opened {
    /// Notes on stale temporaries removed when the output was created.
    pub fn notes(&self) -> Vec<String> {
        self.temp
            .as_ref()
            .map(|t| t.swept().to_vec())
            .unwrap_or_default()
    }

    /// Finishes the sink and, for a file, renames it into place.
    ///
    /// # Errors
    /// Those of [`Sink::finish`] and of the rename.
    pub fn complete(self, table: &Table, sync: bool) -> Result<Finished> {
        drop(self.background);
        let finished = self.sink.finish(table, sync)?;
        if let Some(t) = self.temp {
            t.commit(sync)?;
        }
        Ok(finished)
    }
}

/// Opens the output the plan names for `target` (an archive to append to is opened by the
/// pipeline: [`open_append`]).
///
/// # Errors
/// The output cannot be created; a device is mounted, busy or too small; the plan's output
/// is an archive.
pub fn open(plan: &ExportPlan, target: &Target) -> Result<Opened> {
    let qcow = &target.qcow;
    let by = plan.dest_offset();
    let size = target
        .size
        .checked_add(by)
        .context("-O: the offset plus the image overflows")?;
    let (sink, temp, background): (Box<dyn Sink>, _, _) = match (plan.output(), plan.format()) {
        (Output::File(p) | Output::Device(p), _) if plan.compare().is_some() => {
            let dry = plan.compare().is_some_and(|c| c.dry_run);
            let sink = compare::CompareSink::open(p, size, target.block_size, dry, by)?;
            (Box::new(sink), None, None)
        }
        (Output::Stdout, Format::Raw) => (Box::new(stream::StreamSink::new(size)), None, None),
        (Output::Stdout, Format::Qcow2 { .. }) => (
            Box::new(qcow_stream::QcowStreamSink::new(size, qcow)?),
            None,
            None,
        ),
        (Output::Device(p), _) => (Box::new(device::DeviceSink::open(p, size)?), None, None),
        (Output::Archive(p), _) => anyhow::bail!(
            "{}: an archive is opened by the append (sink::open_append)",
            p.display()
        ),
        (Output::File(p), format) => {
            let (temp, file) = TempOutput::create(p)?;
            if by > 0 {
                shifted::copy_prefix(p, &file, by)?;
            }
            let bg = BackgroundSync::start(&file, plan.sync());
            let sink: Box<dyn Sink> = match format {
                Format::Raw => Box::new(raw::RawSink::new(file, size)?),
                Format::Qcow2 { .. } => Box::new(qcow::QcowSink::create(file, size, qcow)?),
            };
            (sink, Some(temp), Some(bg))
        }
    };
    let sink = match by {
        0 => sink,
        _ => Box::new(shifted::Shifted::new(sink, by)),
    };
    Ok(Opened {
        sink,
        temp,
        background: background.unwrap_or_else(BackgroundSync::start_none),
    })
}

/// The output of an append: `archive`, opened and checked by the pipeline, written as
/// `append` says.
///
/// # Errors
/// The base state cannot be loaded.
pub fn open_append(archive: crate::archive::OpenArchive, append: Append) -> Result<Opened> {
    Ok(Opened {
        sink: Box::new(archive::ArchiveSink::new(archive, append)?),
        temp: None,
        background: BackgroundSync::start_none(),
    })
}

/// Refusal of a second state by a single-state sink.
fn one_state_only(states: &mut u32) -> Result<()> {
    *states += 1;
    anyhow::ensure!(*states == 1, "a raw image holds one state only");
    Ok(())
}
