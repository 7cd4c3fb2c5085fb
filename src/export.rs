//! The export pipeline: source → states (the current filesystem and any older ones) → walk
//! each state (what to copy) → parallel copy → sink (QCOW2, raw file, device or stream).
//!
//! The source is opened read-only. With several states, the current one is written in full
//! and becomes the active layer; each older state is written after it, newest first, sharing
//! every cluster equal to the next newer state's (an inverted chain of QCOW2 internal
//! snapshots). A QCOW2 source keeps its internal snapshots: each is walked and written as a
//! state under its own id, name and date. Corrupt parts found by a walk, states that cannot be
//! opened and unreadable blocks are reported and counted; they make the exit status 3.

use crate::copy::{copy_runs, CopyStats, Progress};
use crate::export_record::{ExportRecord, EXT_EXPORT_RECORD};
use crate::plan::{ExportPlan, Format, Older, UsageError};
use crate::qcow_view::QcowView;
use crate::sink::{self, QcowOptions, Sink, Table, TableEntry};
use crate::states::{plan as plan_states, Next3, Older as OlderStates, CURRENT};
use crate::summary::{ExportFacts, StateReport, Summary};
use anyhow::{bail, Context, Result};
use ext::{BlockView, FileView, Filesystem, OpenOptions, WalkOptions, Warning};
use qcow::{Layer, LayerReader, Reader, Version};
use std::path::Path;

/// Smallest and largest QCOW2 cluster sizes QEMU accepts, as log2 of bytes.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Default cluster size with `-d`: 64 KiB, QEMU's default.
const DATA_CLUSTER_BITS: u32 = 16;

/// Largest virtual size QEMU addresses with cluster_bits `cb`: 4 Mi L1 entries (its 32 MiB L1
/// limit) × C/8 L2 entries × C bytes = 2^(2·cb + 19) bytes.
pub fn max_virtual_size(cb: u32) -> u64 {
    1u64.checked_shl(2 * cb + 19).unwrap_or(u64::MAX)
}

/// The cluster size for an image of `size` bytes: the requested one (a power of two from 512
/// to 2 MiB, checked by the command line), else the filesystem block size (`-Q`) or 64 KiB
/// (`-d`), grown until QEMU's L1 limit allows `size`.
///
/// # Errors
/// A requested cluster size with which QEMU cannot address `size` bytes.
pub fn choose_cluster_bits(
    size: u64,
    block_size: u32,
    data: bool,
    requested: Option<u64>,
) -> Result<u32> {
    if let Some(c) = requested {
        let cb = c.trailing_zeros().clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
        if max_virtual_size(cb) < size {
            return Err(UsageError(format!("--cluster-size {c}: QEMU cannot address a {size}-byte image with it (L1 table over 32 MiB); use a larger one")).into());
        }
        return Ok(cb);
    }
    let mut cb = if data {
        DATA_CLUSTER_BITS
    } else {
        block_size.trailing_zeros()
    };
    cb = cb.clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
    while max_virtual_size(cb) < size && cb < MAX_CLUSTER_BITS {
        cb += 1;
    }
    Ok(cb)
}

/// True if the file starts with the QCOW2 magic.
///
/// # Errors
/// The file cannot be opened or read.
pub fn is_qcow2(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(n == 4 && magic == qcow::QCOW2_MAGIC)
}

/// Runs the export (or QCOW2 → raw conversion) the plan describes.
///
/// # Errors
/// Anything that stops the run; nothing is left under OUT (a file) then.
pub fn run(plan: &ExportPlan) -> Result<Summary> {
    if is_qcow2(&plan.source)? {
        return from_qcow2(plan);
    }
    if !plan.force {
        if let Some(mnt) = crate::sys::mounted::mounted_rw(&plan.source) {
            bail!(
                "{} is mounted read-write on {}; the image could be inconsistent. Use -f to image it anyway",
                plan.source.display(),
                mnt.display()
            );
        }
    }
    let view = FileView::open(&plan.source)
        .with_context(|| format!("cannot open {} read-only", plan.source.display()))?;
    export_fs(&view, plan)
}

/// A QCOW2 source: converted to raw, one state exported, or every state carried across.
fn from_qcow2(plan: &ExportPlan) -> Result<Summary> {
    let file = std::fs::File::open(&plan.source)
        .with_context(|| format!("cannot open {}", plan.source.display()))?;
    let reader = Reader::open(file)
        .with_context(|| format!("{}: invalid QCOW2 image", plan.source.display()))?;
    if plan.format == Format::Raw {
        return crate::convert::qcow_to_raw(&reader, plan);
    }
    if let Some(name) = &plan.from_snapshot {
        let (layer, size, date) = qcow_layer(&reader, Some(name), &plan.source)?;
        let layer = reader.layer(layer)?;
        let view = QcowView::new(&layer, size);
        let states = [StateInput {
            name: name.clone(),
            date,
            view: &view,
        }];
        return write_states(&states, plan, Vec::new(), None);
    }
    if reader.snapshots().is_empty() {
        let layer = reader.layer(Layer::Active)?;
        return export_fs(&QcowView::new(&layer, reader.virtual_size()), plan);
    }
    if plan.older != Older::None {
        bail!(
            "{} has {} internal snapshots, which the export keeps as its older states; --snapshot and --fs-snapshots cannot add others to them (export one state with --from-snapshot)",
            plan.source.display(),
            reader.snapshots().len()
        );
    }
    carry_states(&reader, plan)
}

/// The layer of a QCOW2 source to read (`wanted` selects an internal snapshot by id or name),
/// its guest size in bytes and its date.
///
/// # Errors
/// No snapshot has that id or name.
pub fn qcow_layer(
    reader: &Reader,
    wanted: Option<&str>,
    source: &Path,
) -> Result<(Layer, u64, (u32, u32))> {
    let Some(name) = wanted else {
        return Ok((Layer::Active, reader.virtual_size(), (0, 0)));
    };
    let i = reader.find_snapshot(name).with_context(|| {
        format!(
            "{}: no internal snapshot with id or name {name:?}",
            source.display()
        )
    })?;
    let s = &reader.snapshots()[i];
    let size = s.disk_size.unwrap_or(reader.virtual_size());
    Ok((Layer::Snapshot(i), size, (s.date_sec, s.date_nsec)))
}

/// Every state of a QCOW2 source with internal snapshots: the active layer, then the snapshots
/// newest first; layers with the same L2 tables are written once and shared. The snapshot
/// table keeps the source's ids, names and dates.
fn carry_states(reader: &Reader, plan: &ExportPlan) -> Result<Summary> {
    let snaps = reader.snapshots();
    let mut layers: Vec<LayerReader<'_>> = vec![reader.layer(Layer::Active)?];
    for (i, s) in snaps.iter().enumerate() {
        layers.push(
            reader
                .layer(Layer::Snapshot(i))
                .with_context(|| format!("snapshot {} ({})", s.id, s.name))?,
        );
    }
    let mut order: Vec<usize> = (1..layers.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse((snaps[k - 1].date_sec, snaps[k - 1].date_nsec)));
    order.insert(0, 0);
    let (mut written, mut state_of) = (Vec::new(), vec![0; layers.len()]);
    for &k in &order {
        match written
            .iter()
            .position(|&w: &usize| layers[w].same_tables(&layers[k]))
        {
            Some(j) => state_of[k] = j,
            None => {
                state_of[k] = written.len();
                written.push(k);
            }
        }
    }
    let size_of = |k: usize| match k {
        0 => reader.virtual_size(),
        _ => snaps[k - 1].disk_size.unwrap_or(reader.virtual_size()),
    };
    let views: Vec<QcowView<'_>> = written
        .iter()
        .map(|&k| QcowView::new(&layers[k], size_of(k)))
        .collect();
    let states: Vec<StateInput<'_>> = written
        .iter()
        .zip(&views)
        .map(|(&k, v)| StateInput {
            name: match k {
                0 => CURRENT.to_string(),
                _ => snaps[k - 1].name.clone(),
            },
            date: match k {
                0 => (0, 0),
                _ => (snaps[k - 1].date_sec, snaps[k - 1].date_nsec),
            },
            view: v,
        })
        .collect();
    let table = Table {
        active: state_of[0],
        entries: snaps
            .iter()
            .enumerate()
            .map(|(i, s)| TableEntry {
                state: state_of[i + 1],
                id: s.id.clone(),
                name: s.name.clone(),
                date: (s.date_sec, s.date_nsec),
            })
            .collect(),
    };
    write_states(&states, plan, Vec::new(), Some(table))
}

/// Opens the filesystem on `view`, plans its states and writes the image.
fn export_fs(view: &dyn BlockView, plan: &ExportPlan) -> Result<Summary> {
    let fs = Filesystem::open(view, &plan.open)
        .with_context(|| format!("{}: cannot open the filesystem", plan.source.display()))?;
    if let Some(name) = &plan.from_snapshot {
        let next3 = Next3::read(&fs);
        let i = next3.find(&fs, name).with_context(|| {
            format!(
                "{}: no filesystem snapshot with name or id {name:?}",
                plan.source.display()
            )
        })?;
        let snap = next3.view(&fs, i);
        let states = [StateInput {
            name: name.clone(),
            date: (0, 0),
            view: &snap,
        }];
        return write_states(&states, plan, next3.warnings.clone(), None);
    }
    let images = match &plan.older {
        Older::Images(v) => v.as_slice(),
        _ => &[],
    };
    let sp = plan_states(&fs, plan.older == Older::FsSnapshots, images, plan.force)?;
    let snap_views: Vec<_> = match &sp.older {
        OlderStates::Next3(n) => n.exported.iter().map(|&i| n.view(&fs, i)).collect(),
        _ => Vec::new(),
    };
    let mut views: Vec<&dyn BlockView> = vec![view];
    match &sp.older {
        OlderStates::Next3(_) => views.extend(snap_views.iter().map(|v| v as &dyn BlockView)),
        OlderStates::Images(images) => {
            views.extend(images.iter().map(|(_, v)| v as &dyn BlockView))
        }
        OlderStates::None => {}
    }
    let early = match &sp.older {
        OlderStates::Next3(n) => n.warnings.clone(),
        _ => Vec::new(),
    };
    let states: Vec<StateInput<'_>> = views
        .into_iter()
        .enumerate()
        .map(|(k, v)| StateInput {
            name: sp.names[k].clone(),
            date: sp.dates[k],
            view: v,
        })
        .collect();
    write_states(&states, plan, early, None)
}

/// One state to write: its view, name and date.
struct StateInput<'a> {
    name: String,
    date: (u32, u32),
    view: &'a dyn BlockView,
}

/// Writes the states (the first is the active layer unless `table` says otherwise) to OUT.
/// Without a `table`, several states make the inverted chain: one snapshot per state, ids
/// 1..n in writing order.
fn write_states(
    states: &[StateInput<'_>],
    plan: &ExportPlan,
    early_warnings: Vec<Warning>,
    table: Option<Table>,
) -> Result<Summary> {
    let (opened, mut reports, mut warnings) = open_states(states, plan)?;
    warnings.splice(
        0..0,
        early_warnings
            .into_iter()
            .map(|w| (states[0].name.clone(), w)),
    );
    let first = opened[0]
        .as_ref()
        .context("the current state cannot be opened")?;
    let size = opened
        .iter()
        .flatten()
        .map(|f| f.sb.size_bytes())
        .max()
        .unwrap_or(0);
    let mut out = sink::open(plan, size, &qcow_options(plan, size, first.sb.block_size)?)?;
    let notes = out.notes();
    let walk_opts = WalkOptions {
        data: plan.data,
        no_snapshot_files: plan.no_snapshots,
    };
    let mut main_walk = None;
    let mut stats_total = CopyStats::default();
    let count = opened.iter().flatten().count();
    let mut k = 0;
    for (state, fs) in states.iter().zip(&opened) {
        let Some(fs) = fs else { continue };
        k += 1;
        let label = match count {
            1 => state.name.clone(),
            n => format!("state {k}/{n}: {}", state.name),
        };
        let walked = ext::walk(fs, &walk_opts);
        let (stats, copy_warnings) =
            copy_state(out.sink.as_mut(), state, fs, &walked, plan.progress, &label)?;
        stats_total.bytes_copied += stats.bytes_copied;
        let all: Vec<Warning> = walked
            .warnings
            .iter()
            .cloned()
            .chain(copy_warnings)
            .collect();
        reports.push(StateReport::walked(
            &state.name,
            state.date,
            &walked,
            all.len(),
        ));
        warnings.extend(all.into_iter().map(|w| (state.name.clone(), w)));
        if main_walk.is_none() {
            main_walk = Some((walked, fs.sb.clone()));
        }
    }
    let written: Vec<bool> = opened.iter().map(Option::is_some).collect();
    let table = match table {
        Some(t) => remap_table(t, &written),
        None => chain_table(states, &written),
    };
    let cluster_size = out.complete(&table, plan.sync)?;
    let (walked, sb) = main_walk.context("the current state was not written")?;
    reports.sort_by_key(|r| states.iter().position(|s| s.name == r.name));
    Ok(Summary::export(
        plan,
        ExportFacts {
            sb: &sb,
            walked: &walked,
            warnings,
            stats: stats_total,
            cluster_size,
            states: reports,
            notes,
        },
    ))
}

/// How to write QCOW2: the cluster size for a `size`-byte disk and the export record.
fn qcow_options(plan: &ExportPlan, size: u64, block_size: u32) -> Result<QcowOptions> {
    let Format::Qcow2 {
        version,
        cluster_size,
    } = plan.format
    else {
        return Ok(QcowOptions::default());
    };
    let record = ExportRecord {
        file_data: plan.data,
        snapshot_files: !plan.no_snapshots,
        zeros_recorded: version == Version::V3,
    };
    Ok(QcowOptions {
        cluster_bits: choose_cluster_bits(size, block_size, plan.data, cluster_size)?,
        version,
        extensions: vec![(EXT_EXPORT_RECORD, record.encode().to_vec())],
    })
}

/// The inverted chain's table: with several written states, one snapshot per state (ids
/// 1..n in order, the current state first); the first written state is active.
fn chain_table(states: &[StateInput<'_>], written: &[bool]) -> Table {
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
    Table { active: 0, entries }
}

/// A table given over the input states, moved onto the written ones: entries of states that
/// were left out (and already reported) are dropped.
fn remap_table(t: Table, written: &[bool]) -> Table {
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
    }
}

/// Opened filesystems of the states (`None` for an older state that cannot be opened), the
/// reports of those left out and a warning for each.
type Opened<'a> = (
    Vec<Option<Filesystem<&'a dyn BlockView>>>,
    Vec<StateReport>,
    Vec<(String, Warning)>,
);

/// Opens every state's filesystem. The first state must open (it uses `-b`/`-B`); another
/// one that does not is reported and left out.
fn open_states<'a>(states: &[StateInput<'a>], plan: &ExportPlan) -> Result<Opened<'a>> {
    let (mut opened, mut reports, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    for (k, s) in states.iter().enumerate() {
        let opts = if k == 0 {
            plan.open
        } else {
            OpenOptions::default()
        };
        match Filesystem::open(s.view, &opts) {
            Ok(fs) => opened.push(Some(fs)),
            Err(e) if k == 0 => bail!("{}: cannot open the filesystem: {e}", plan.source.display()),
            Err(e) => {
                let report = StateReport::unopenable(&s.name, &e.to_string());
                let reason = report.error.clone().unwrap_or_default();
                warnings.push((
                    s.name.clone(),
                    Warning {
                        inode: None,
                        block: None,
                        offset: None,
                        reason,
                    },
                ));
                reports.push(report);
                opened.push(None);
            }
        }
    }
    Ok((opened, reports, warnings))
}

/// Copies one walked state into the sink as its next state. Returns the counts and the
/// unreadable blocks.
fn copy_state(
    sink: &mut dyn Sink,
    state: &StateInput<'_>,
    fs: &Filesystem<&dyn BlockView>,
    walked: &ext::WalkResult,
    progress: bool,
    label: &str,
) -> Result<(CopyStats, Vec<Warning>)> {
    let bs = fs.sb.block_size;
    let bytes = walked.blocks.block_count() * u64::from(bs);
    let progress = Progress::new(progress, bytes, label);
    let mut warnings = Vec::new();
    let runs = walked.blocks.extents().iter().map(|e| (e.start, e.len));
    sink.begin_state()?;
    let stats = copy_runs(state.view, bs, runs, sink, &progress, &mut warnings)?;
    sink.end_state()?;
    progress.finish();
    Ok((stats, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_size_follows_block_size_until_l1_limit() {
        const T: u64 = 1 << 40;
        assert_eq!(
            choose_cluster_bits(64 << 20, 4096, false, None).unwrap(),
            12
        );
        assert_eq!(choose_cluster_bits(8 * T, 4096, false, None).unwrap(), 12);
        assert_eq!(choose_cluster_bits(15 * T, 4096, false, None).unwrap(), 13);
        assert_eq!(
            choose_cluster_bits(600 << 30, 1024, false, None).unwrap(),
            11
        );
        assert_eq!(choose_cluster_bits(64 << 20, 1024, true, None).unwrap(), 16);
        assert_eq!(
            choose_cluster_bits(64 << 20, 65536, false, None).unwrap(),
            16
        );
    }

    #[test]
    fn requested_cluster_size_is_checked_against_the_l1_limit() {
        assert_eq!(
            choose_cluster_bits(1 << 30, 4096, false, Some(512)).unwrap(),
            9
        );
        assert!(choose_cluster_bits(16 << 40, 4096, false, Some(4096)).is_err());
    }

    #[test]
    fn tables_follow_the_written_states() {
        let t = Table {
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
