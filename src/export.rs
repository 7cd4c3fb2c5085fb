//! The export pipeline: source → states (the current filesystem and any older ones) → walk
//! each state (what to copy) → parallel copy → QCOW2 or raw sink.
//!
//! The source is opened read-only. The image is written under a temporary name and renamed
//! only when complete. With several states, the current one is written in full and becomes
//! the active layer; each older state is written after it, newest first, sharing every cluster
//! equal to the next newer state's (an inverted chain of QCOW2 internal snapshots). Corrupt
//! parts found by a walk, states that cannot be opened and unreadable blocks are reported and
//! counted; they make the exit status 3.

use crate::cli::{Compat, ExportArgs};
use crate::copy::{copy_runs, CopyStats, Progress};
use crate::export_record::{ExportRecord, EXT_EXPORT_RECORD};
use crate::output::{BackgroundSync, TempOutput};
use crate::qcow_view::QcowView;
use crate::sink::{QcowSink, RawSink, Sink};
use crate::states::{plan, Next3, Older};
use crate::summary::{StateReport, Summary};
use anyhow::{bail, Context, Result};
use ext::{BlockView, FileView, Filesystem, OpenOptions, WalkOptions, Warning};
use qcow::{Layer, Reader, SnapshotSpec, Version, Writer, WriterOptions};
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

/// The cluster size for an image of `size` bytes: the requested one (checked), else the
/// filesystem block size (`-Q`) or 64 KiB (`-d`), grown until QEMU's L1 limit allows `size`.
pub fn choose_cluster_bits(
    size: u64,
    block_size: u32,
    data: bool,
    requested: Option<u64>,
) -> Result<u32> {
    if let Some(c) = requested {
        if !c.is_power_of_two()
            || !(1u64 << MIN_CLUSTER_BITS..=1u64 << MAX_CLUSTER_BITS).contains(&c)
        {
            bail!("--cluster-size {c}: must be a power of two from 512 to 2097152");
        }
        let cb = c.trailing_zeros();
        if max_virtual_size(cb) < size {
            bail!("--cluster-size {c}: QEMU cannot address a {size}-byte image with it (L1 table over 32 MiB)");
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
pub fn is_qcow2(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(n == 4 && magic == qcow::header::QCOW2_MAGIC)
}

/// Runs the export (or QCOW2 → raw conversion) the arguments ask for.
pub fn run(args: &ExportArgs) -> Result<Summary> {
    let source = args.source.as_deref().context("no SOURCE given")?;
    let output = args.output.as_deref().context("no OUT given")?;
    if is_qcow2(source)? {
        let file = std::fs::File::open(source)
            .with_context(|| format!("cannot open {}", source.display()))?;
        let reader = Reader::open(file)
            .with_context(|| format!("{}: invalid QCOW2 image", source.display()))?;
        let (layer, size) = qcow_layer(&reader, args.from_snapshot.as_deref(), source)?;
        if args.raw {
            return crate::convert::qcow_to_raw(&reader, layer, size, source, output, args);
        }
        let layer = reader.layer(layer)?;
        let view = QcowView::new(&layer, size);
        return export_fs(&view, source, output, args);
    }
    if !args.force {
        if let Some(mnt) = crate::mounted::mounted_rw(source) {
            bail!(
                "{} is mounted read-write on {}; the image could be inconsistent. Use -f to image it anyway",
                source.display(),
                mnt.display()
            );
        }
    }
    let view = FileView::open(source)
        .with_context(|| format!("cannot open {} read-only", source.display()))?;
    export_fs(&view, source, output, args)
}

/// The layer of a QCOW2 source to read (`--from-snapshot` selects an internal snapshot) and
/// its guest size in bytes.
fn qcow_layer(reader: &Reader, wanted: Option<&str>, source: &Path) -> Result<(Layer, u64)> {
    let Some(name) = wanted else {
        return Ok((Layer::Active, reader.virtual_size()));
    };
    let i = reader.find_snapshot(name).with_context(|| {
        format!(
            "{}: no internal snapshot with id or name {name:?}",
            source.display()
        )
    })?;
    let size = reader.snapshots()[i]
        .disk_size
        .unwrap_or(reader.virtual_size());
    Ok((Layer::Snapshot(i), size))
}

/// Opens the filesystem on `view`, plans its states and writes the image.
fn export_fs(
    view: &dyn BlockView,
    source: &Path,
    output: &Path,
    args: &ExportArgs,
) -> Result<Summary> {
    let opts = OpenOptions {
        superblock: args.superblock,
        block_size: args.block_size,
    };
    let fs = Filesystem::open(view, &opts)
        .with_context(|| format!("{}: cannot open the filesystem", source.display()))?;
    if let Some(name) = &args.from_snapshot {
        let next3 = Next3::read(&fs);
        let i = next3.find(&fs, name).with_context(|| {
            format!(
                "{}: no filesystem snapshot with name or id {name:?}",
                source.display()
            )
        })?;
        let snap = next3.view(&fs, i);
        let states = [StateInput {
            name: name.clone(),
            date: (0, 0),
            view: &snap,
        }];
        return write_image(&states, source, output, args, next3.warnings.clone());
    }
    let plan = plan(&fs, args.fs_snapshots, &args.snapshots, args.force)?;
    let snap_views: Vec<_> = match &plan.older {
        Older::Next3(n) => n.exported.iter().map(|&i| n.view(&fs, i)).collect(),
        _ => Vec::new(),
    };
    let mut views: Vec<&dyn BlockView> = vec![view];
    match &plan.older {
        Older::Next3(_) => views.extend(snap_views.iter().map(|v| v as &dyn BlockView)),
        Older::Images(images) => views.extend(images.iter().map(|(_, v)| v as &dyn BlockView)),
        Older::None => {}
    }
    let early = match &plan.older {
        Older::Next3(n) => n.warnings.clone(),
        _ => Vec::new(),
    };
    let states: Vec<StateInput<'_>> = views
        .into_iter()
        .enumerate()
        .map(|(k, v)| StateInput {
            name: plan.names[k].clone(),
            date: plan.dates[k],
            view: v,
        })
        .collect();
    write_image(&states, source, output, args, early)
}

/// One state to write: its view, name and date.
struct StateInput<'a> {
    name: String,
    date: (u32, u32),
    view: &'a dyn BlockView,
}

/// Writes the states (newest first; the first is the active layer) to OUT.
fn write_image(
    states: &[StateInput<'_>],
    source: &Path,
    output: &Path,
    args: &ExportArgs,
    early_warnings: Vec<Warning>,
) -> Result<Summary> {
    let (opened, mut reports, mut warnings) = open_states(states, source, args)?;
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
    let (temp, file) = TempOutput::create(output)?;
    let background = BackgroundSync::start(&file, args.sync);
    let mut out = Out::create(file, size, first.sb.block_size, args)?;
    let walk_opts = WalkOptions {
        data: args.data,
        no_snapshot_files: args.no_snapshots,
    };
    let mut main_walk = None;
    let mut stats_total = CopyStats::default();
    for (k, (state, fs)) in states.iter().zip(&opened).enumerate() {
        let Some(fs) = fs else { continue };
        let walked = ext::walk(fs, &walk_opts);
        let (stats, copy_warnings) = out.copy_state(state, fs, &walked, args.progress)?;
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
        if k == 0 {
            main_walk = Some((walked, fs.sb.clone()));
        }
    }
    let cluster_size = finish_output(out, states, &opened, background, args.sync)?;
    temp.commit(args.sync)?;
    let (walked, sb) = main_walk.context("the current state was not written")?;
    reports.sort_by_key(|r| states.iter().position(|s| s.name == r.name));
    Ok(Summary::export(
        source,
        output,
        &sb,
        &walked,
        warnings,
        stats_total,
        cluster_size,
        reports,
        args,
    ))
}

/// Opened filesystems of the states (`None` for an older state that cannot be opened), the
/// reports of those left out and a warning for each.
type Opened<'a> = (
    Vec<Option<Filesystem<&'a dyn BlockView>>>,
    Vec<StateReport>,
    Vec<(String, Warning)>,
);

/// Opens every state's filesystem. The current state must open (it uses `-b`/`-B`); an
/// older one that does not is reported and left out.
fn open_states<'a>(
    states: &[StateInput<'a>],
    source: &Path,
    args: &ExportArgs,
) -> Result<Opened<'a>> {
    let (mut opened, mut reports, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    for (k, s) in states.iter().enumerate() {
        let opts = if k == 0 {
            OpenOptions {
                superblock: args.superblock,
                block_size: args.block_size,
            }
        } else {
            OpenOptions::default()
        };
        match Filesystem::open(s.view, &opts) {
            Ok(fs) => opened.push(Some(fs)),
            Err(e) if k == 0 => bail!("{}: cannot open the filesystem: {e}", source.display()),
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

/// The output being written.
enum Out {
    Raw(RawSink),
    /// The writer and the writer's state of each written state, in order.
    Qcow(Box<Writer>, Vec<qcow::StateId>),
}

impl Out {
    /// A raw sink, or a QCOW2 writer for a virtual size of `size` bytes.
    fn create(file: std::fs::File, size: u64, block_size: u32, args: &ExportArgs) -> Result<Out> {
        if args.raw {
            return Ok(Out::Raw(RawSink::new(file, size)?));
        }
        let cluster_bits = choose_cluster_bits(size, block_size, args.data, args.cluster_size)?;
        let version = if args.compat == Compat::V2 {
            Version::V2
        } else {
            Version::V3
        };
        let opts = WriterOptions {
            cluster_bits,
            virtual_size: size,
            version,
        };
        let mut writer = Writer::create(file, opts)?;
        writer.set_sync(args.sync);
        let record = ExportRecord {
            file_data: args.data,
            snapshot_files: !args.no_snapshots,
            zeros_recorded: version == Version::V3,
        };
        writer.add_header_extension(EXT_EXPORT_RECORD, &record.encode())?;
        Ok(Out::Qcow(Box::new(writer), Vec::new()))
    }

    /// Copies one walked state; in QCOW2 it becomes a new state that shares every cluster
    /// equal to the previous (next newer) state's. Returns the counts and the unreadable
    /// blocks.
    fn copy_state(
        &mut self,
        state: &StateInput<'_>,
        fs: &Filesystem<&dyn BlockView>,
        walked: &ext::WalkResult,
        progress: bool,
    ) -> Result<(CopyStats, Vec<Warning>)> {
        let bytes = walked.blocks.block_count() * u64::from(fs.sb.block_size);
        let progress = Progress::new(progress, bytes, &state.name);
        let mut warnings = Vec::new();
        let runs = walked.blocks.extents().iter().map(|e| (e.start, e.len));
        let bs = fs.sb.block_size;
        let stats = match self {
            Out::Raw(sink) => copy_runs(state.view, bs, runs, sink, &progress, &mut warnings)?,
            Out::Qcow(writer, ids) => {
                let id = writer.new_state();
                let mut sink = QcowSink::new(writer, id, ids.last().copied());
                let stats = copy_runs(
                    state.view,
                    bs,
                    runs,
                    &mut sink as &mut (dyn Sink + Send),
                    &progress,
                    &mut warnings,
                )?;
                sink.finish()?;
                ids.push(id);
                stats
            }
        };
        progress.finish();
        Ok((stats, warnings))
    }
}

/// Syncs and closes the output: for QCOW2, writes the snapshot table (one entry per written
/// state when there are older states) with the current state as the active layer. Returns
/// the QCOW2 cluster size.
fn finish_output(
    out: Out,
    states: &[StateInput<'_>],
    opened: &[Option<Filesystem<&dyn BlockView>>],
    background: BackgroundSync,
    sync: bool,
) -> Result<Option<u64>> {
    match out {
        Out::Raw(sink) => {
            drop(background);
            sink.finish(sync)?;
            Ok(None)
        }
        Out::Qcow(writer, ids) => {
            drop(background);
            let cluster = writer.cluster_size();
            let written: Vec<&StateInput<'_>> = states
                .iter()
                .zip(opened)
                .filter(|(_, f)| f.is_some())
                .map(|(s, _)| s)
                .collect();
            let specs: Vec<SnapshotSpec> = if written.len() > 1 {
                written
                    .iter()
                    .zip(&ids)
                    .enumerate()
                    .map(|(k, (s, &id))| SnapshotSpec {
                        state: id,
                        id: (k + 1).to_string(),
                        name: s.name.clone(),
                        date_sec: s.date.0,
                        date_nsec: s.date.1,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            writer
                .finish(ids[0], &specs)
                .context("cannot finish the QCOW2 image")?;
            Ok(Some(cluster))
        }
    }
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
    fn requested_cluster_size_is_checked() {
        assert_eq!(
            choose_cluster_bits(1 << 30, 4096, false, Some(512)).unwrap(),
            9
        );
        assert!(choose_cluster_bits(1 << 30, 4096, false, Some(3000)).is_err());
        assert!(choose_cluster_bits(1 << 30, 4096, false, Some(256)).is_err());
        assert!(choose_cluster_bits(16 << 40, 4096, false, Some(4096)).is_err());
    }
}
