//! Deltas (`-Q [-d] -x FROM..TO SOURCE DELTA`, `--base BASE`): a QCOW2 v3 image of the
//! filesystem's size that maps a guest cluster only where state TO differs from state FROM.
//!
//! For every cluster touching either state's copy set (metadata; with `-d` file data too), TO's
//! bytes (its copy set's blocks, zeros elsewhere) are compared with FROM's (the same for FROM):
//! a cluster that differs is stored with TO's bytes (all zeros: a zero cluster); a cluster
//! holding none of TO's copy set but some of FROM's is a zero cluster (a discard: FROM used
//! those blocks, TO frees them); every other cluster is unallocated. Over a full export of FROM
//! as backing file (`--backing`), QEMU reads the delta as TO on TO's copy set. The delta record
//! (`crate::delta_record`) names both states and pins FROM down for `apply`. The default
//! cluster size is the block size, so a delta stays as small as the change.

use super::cluster::choose_cluster_bits;
use super::states::Next3;
use super::summary::{DeltaFacts, Summary};
use crate::delta_record::{fingerprint, ClusterDigest, DeltaFlags, DeltaRecord, EXT_DELTA_RECORD};
use crate::plan::{DeltaPlan, ExportPlan, SourceKind, StateRef};
use crate::probe::is_qcow2;
use crate::qcow_view::{choose_layer, QcowView};
use crate::record::{ExportRecord, EXT_EXPORT_RECORD};
use crate::sink::{self, QcowOptions, Sink, Table, Target};
use anyhow::{bail, Context, Result};
use ext::{
    BlockSet, BlockSource, BlockView, FileView, Filesystem, OpenOptions, SnapshotView, WalkOptions,
};
use qcow::{Layer, LayerReader, Reader, Version};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::path::Path;

/// Guest clusters compared per batch (bounds the two buffers to about 2 MiB each).
const BATCH_BYTES: u64 = 2 << 20;

/// Writes the delta the plan describes.
///
/// # Errors
/// A state that does not exist, states of two filesystems, read and write errors.
pub(super) fn run(plan: &ExportPlan, d: &DeltaPlan) -> Result<Summary> {
    if matches!(d.to, StateRef::Image { .. }) {
        bail!("TO is a state of SOURCE");
    }
    let source = plan.source();
    if source.kind() == SourceKind::Qcow2 {
        return from_qcow(plan, d);
    }
    source.check_not_mounted("the delta")?;
    from_device(&source.file_view()?, plan, d)
}

/// States of a QCOW2 SOURCE: internal snapshots and the active layer.
fn from_qcow(plan: &ExportPlan, d: &DeltaPlan) -> Result<Summary> {
    let reader = plan.source().qcow_reader()?;
    let source = plan.source().path();
    let to_layer = reader.layer(qcow_layer(&reader, &d.to, source)?)?;
    let to_view = QcowView::new(&to_layer, reader.virtual_size());
    if let StateRef::Image { path, snapshot } = &d.from {
        return with_image(path, snapshot.as_deref(), &|from| {
            build(from, &to_view, &Oracle::None, plan, d)
        });
    }
    let from_layer = reader.layer(qcow_layer(&reader, &d.from, source)?)?;
    let from_view = QcowView::new(&from_layer, reader.virtual_size());
    let oracle = Oracle::Qcow {
        from: &from_layer,
        to: &to_layer,
        cluster: reader.cluster_size(),
    };
    build(&from_view, &to_view, &oracle, plan, d)
}

/// States of a device or image file: its next3 snapshots and the live state.
fn from_device(file: &FileView, plan: &ExportPlan, d: &DeltaPlan) -> Result<Summary> {
    let source = plan.source().path();
    let fs = Filesystem::open(file, plan.source().open_options())
        .with_context(|| format!("{}: cannot open the filesystem", source.display()))?;
    let next3 = Next3::read(&fs);
    let find = |r: &StateRef| -> Result<Option<usize>> {
        match r {
            StateRef::Named(n) => next3.find(&fs, n).map(Some).with_context(|| {
                format!(
                    "{}: no filesystem snapshot with name or id {n:?}",
                    source.display()
                )
            }),
            _ => Ok(None),
        }
    };
    let (fi, ti) = (find(&d.from)?, find(&d.to)?);
    let snap = |i: Option<usize>| i.map(|i| next3.view(&fs, i));
    let (from_snap, to_snap) = (snap(fi), snap(ti));
    let to_view: &dyn BlockView = match &to_snap {
        Some(v) => v,
        None => file,
    };
    if let StateRef::Image { path, snapshot } = &d.from {
        return with_image(path, snapshot.as_deref(), &|from| {
            build(from, to_view, &Oracle::None, plan, d)
        });
    }
    let from_view: &dyn BlockView = match &from_snap {
        Some(v) => v,
        None => file,
    };
    let oracle = Oracle::Next3 {
        from: from_snap.as_ref(),
        to: to_snap.as_ref(),
    };
    build(from_view, to_view, &oracle, plan, d)
}

fn open_qcow(path: &Path) -> Result<Reader> {
    crate::qcow_view::open_image(path, true)
}

/// The layer of a QCOW2 SOURCE a state names (`current`: the active layer).
fn qcow_layer(reader: &Reader, r: &StateRef, source: &Path) -> Result<Layer> {
    let name = match r {
        StateRef::Named(n) => Some(n.as_str()),
        _ => None,
    };
    Ok(choose_layer(reader, name)
        .with_context(|| source.display().to_string())?
        .layer)
}

/// Runs `f` on a view of an image: a raw image, a QCOW2 image's active layer or snapshot.
fn with_image(
    path: &Path,
    snapshot: Option<&str>,
    f: &dyn Fn(&dyn BlockView) -> Result<Summary>,
) -> Result<Summary> {
    if is_qcow2(path)? {
        let reader = open_qcow(path)?;
        let chosen = choose_layer(&reader, snapshot).with_context(|| path.display().to_string())?;
        let layer = reader.layer(chosen.layer)?;
        return f(&QcowView::new(&layer, chosen.size));
    }
    if let Some(s) = snapshot {
        bail!(
            "--base {}@{s}: a raw image has no snapshots",
            path.display()
        );
    }
    let view = FileView::open(path)
        .with_context(|| format!("cannot open {} read-only", path.display()))?;
    f(&view)
}

/// Compares FROM with TO and writes the delta.
fn build(
    from: &dyn BlockView,
    to: &dyn BlockView,
    oracle: &Oracle<'_>,
    plan: &ExportPlan,
    d: &DeltaPlan,
) -> Result<Summary> {
    let (fl, tl) = (d.from.label(), d.to.label());
    let from_fs = Filesystem::open(from, &OpenOptions::default())
        .with_context(|| format!("FROM ({fl}): cannot open the filesystem"))?;
    let to_fs = Filesystem::open(to, plan.source().open_options())
        .with_context(|| format!("TO ({tl}): cannot open the filesystem"))?;
    same_filesystem(&from_fs, &to_fs, &fl, &tl)?;
    let opts = WalkOptions {
        data: plan.data(),
        no_snapshot_files: plan.no_snapshots(),
    };
    let (from_walk, to_walk) = (ext::walk(&from_fs, &opts), ext::walk(&to_fs, &opts));
    let from_fingerprint = fingerprint(&from_fs)?;
    let target = delta_target(plan, d, &to_fs, &from_fingerprint)?;
    let geo = Geometry {
        cluster: 1u64 << target.qcow.cluster_bits,
        block: u64::from(to_fs.sb.block_size),
        size: target.size,
    };
    let mut out = sink::open(plan, &target)?;
    let mut notes = out.notes();
    out.sink.begin_state()?;
    let mut diff = Diff::default();
    for run in cluster_runs(&geo, &from_walk.blocks, &to_walk.blocks) {
        let states = ((from, &from_walk.blocks), (to, &to_walk.blocks));
        compare_run(&geo, run, states, oracle, out.sink.as_mut(), &mut diff)?;
    }
    out.sink.end_state()?;
    let to_fingerprint = fingerprint(&to_fs)?;
    let record = record_of(
        plan,
        d,
        &to_fs.sb,
        [from_fingerprint, to_fingerprint],
        &diff,
    );
    let table = record_table(&record);
    notes.extend(out.complete(&table, plan.sync())?.notes);
    let mut warnings = from_walk.warnings;
    warnings.extend(to_walk.warnings);
    Ok(Summary::delta(
        plan,
        DeltaFacts {
            from: fl,
            to: tl,
            cluster_size: geo.cluster,
            changed_clusters: diff.changed_clusters,
            discarded_clusters: diff.discarded_clusters,
            unchanged_bytes: (to_walk.blocks.block_count() * geo.block)
                .saturating_sub(diff.to_bytes_replaced),
            warnings,
            notes,
        },
    ))
}

/// The delta record: the filesystem, both states' fingerprints (FROM, TO), FROM's digest.
fn record_of(
    plan: &ExportPlan,
    d: &DeltaPlan,
    sb: &ext::Superblock,
    [from_fingerprint, to_fingerprint]: [[u8; 32]; 2],
    diff: &Diff,
) -> DeltaRecord {
    DeltaRecord {
        flags: flags(plan, d),
        fs_uuid: sb.s_uuid,
        block_size: sb.block_size,
        blocks_count: sb.s_blocks_count,
        from_fingerprint,
        to_fingerprint,
        from_digest: diff.digest.clone().finalize().into(),
        to_digest: Some(diff.to_digest.clone().finish()),
        replaced_clusters: diff.changed_clusters + diff.discarded_clusters,
        from_name: d.from.record_name(),
        to_name: d.to.record_name(),
    }
}

/// The table that adds the delta record to the image.
fn record_table(record: &DeltaRecord) -> Table {
    Table {
        extensions: vec![(EXT_DELTA_RECORD, record.encode())],
        ..Table::default()
    }
}

/// Refuses two states that are not states of one filesystem.
fn same_filesystem<V: BlockView>(
    from: &Filesystem<V>,
    to: &Filesystem<V>,
    fl: &str,
    tl: &str,
) -> Result<()> {
    let (a, b) = (&from.sb, &to.sb);
    if a.s_uuid != b.s_uuid || a.block_size != b.block_size || a.s_blocks_count != b.s_blocks_count
    {
        bail!(
            "FROM ({fl}) and TO ({tl}) are not states of one filesystem: UUID {} vs {}, block size {} vs {}, block count {} vs {}",
            crate::text::uuid(&a.s_uuid),
            crate::text::uuid(&b.s_uuid),
            a.block_size,
            b.block_size,
            a.s_blocks_count,
            b.s_blocks_count
        );
    }
    Ok(())
}

/// The delta record's flags.
fn flags(plan: &ExportPlan, d: &DeltaPlan) -> DeltaFlags {
    DeltaFlags::ZEROS_RECORDED
        .with(DeltaFlags::FILE_DATA, plan.data())
        .with(DeltaFlags::SNAPSHOT_FILES, !plan.no_snapshots())
        .with(DeltaFlags::BACKING, d.backing.is_some())
}

/// The output of a delta: v3, the block size as cluster size (grown for QEMU's L1 limit)
/// unless `--cluster-size` says otherwise, the export record and the backing file.
fn delta_target<V: BlockView>(
    plan: &ExportPlan,
    d: &DeltaPlan,
    to: &Filesystem<V>,
    from_fingerprint: &[u8; 32],
) -> Result<Target> {
    let size = to.sb.size_bytes();
    let requested = match plan.format() {
        crate::plan::Format::Qcow2 { cluster_size, .. } => cluster_size,
        crate::plan::Format::Raw => None,
    };
    if let Some(c) = requested.filter(|&c| c < u64::from(to.sb.block_size)) {
        return Err(crate::exit::UsageError(format!(
            "--cluster-size {c}: a delta's clusters hold whole blocks (at least {} bytes)",
            to.sb.block_size
        ))
        .into());
    }
    let record = ExportRecord {
        file_data: plan.data(),
        snapshot_files: !plan.no_snapshots(),
        zeros_recorded: true,
        replayed: false,
    };
    let backing = match (&d.backing, plan.output()) {
        (Some(b), crate::plan::Output::File(out)) => Some(backing_of(b, out, from_fingerprint)?),
        _ => None,
    };
    Ok(Target {
        size,
        qcow: QcowOptions {
            cluster_bits: choose_cluster_bits(size, to.sb.block_size, false, requested)?,
            version: Version::V3,
            extensions: vec![(EXT_EXPORT_RECORD, record.encode().to_vec())],
            backing,
        },
    })
}

/// The backing file's stored name (as given) and format, after checking that it holds FROM
/// (same superblock and group descriptors).
fn backing_of(name: &Path, delta: &Path, from_fingerprint: &[u8; 32]) -> Result<(String, String)> {
    let path = crate::plan::backing_path(name, delta);
    if crate::sys::identity::same_target(&path, delta) {
        return Err(crate::exit::UsageError(format!(
            "--backing {} is the delta itself",
            name.display()
        ))
        .into());
    }
    let check = |v: &dyn BlockView| -> Result<Summary> {
        let fs = Filesystem::open(v, &OpenOptions::default())?;
        if &fingerprint(&fs)? != from_fingerprint {
            bail!(
                "--backing {} does not hold FROM (its superblock or group descriptors differ)",
                name.display()
            );
        }
        Ok(Summary::empty())
    };
    with_image(&path, None, &check).with_context(|| format!("--backing {}", name.display()))?;
    let format = if is_qcow2(&path)? { "qcow2" } else { "raw" };
    Ok((name.to_string_lossy().into_owned(), format.to_string()))
}

/// Cluster and block sizes (bytes) and the disk size.
struct Geometry {
    cluster: u64,
    block: u64,
    size: u64,
}

impl Geometry {
    /// The blocks of guest clusters `c` (partial blocks included).
    fn blocks(&self, c: Range<u64>) -> Range<u64> {
        c.start * self.cluster / self.block..(c.end * self.cluster).div_ceil(self.block)
    }
}

/// What the comparison found.
#[derive(Default)]
struct Diff {
    changed_clusters: u64,
    discarded_clusters: u64,
    /// Bytes of TO's copy set inside changed clusters.
    to_bytes_replaced: u64,
    /// SHA-256 of FROM's bytes on the replaced clusters (delta_record's definition).
    digest: Sha256,
    /// The delta's bytes on the replaced clusters (the record's `to_digest`).
    to_digest: ClusterDigest,
}

/// Runs of guest clusters touching either copy set, in order.
fn cluster_runs(g: &Geometry, from: &BlockSet, to: &BlockSet) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    let mut exts: Vec<Range<u64>> = from
        .extents()
        .iter()
        .chain(to.extents())
        .map(|e| e.start * g.block / g.cluster..(e.end() * g.block).div_ceil(g.cluster))
        .collect();
    exts.sort_unstable_by_key(|r| r.start);
    let last = g.size.div_ceil(g.cluster);
    for r in exts {
        let r = r.start.min(last)..r.end.min(last);
        if !r.is_empty() {
            crate::ranges::push(&mut runs, r);
        }
    }
    runs
}

/// The copy set's blocks of `set` within `blocks`, as runs.
fn set_runs(set: &BlockSet, blocks: Range<u64>) -> Vec<Range<u64>> {
    let ext = set.extents();
    let i = ext.partition_point(|e| e.end() <= blocks.start);
    ext[i..]
        .iter()
        .take_while(|e| e.start < blocks.end)
        .map(|e| e.start.max(blocks.start)..e.end().min(blocks.end))
        .collect()
}

/// Reads the copy-set blocks of `set` within `blocks` from `view` into `buf` (zeros
/// elsewhere); returns them as runs.
fn read_state(
    view: &dyn BlockView,
    set: &BlockSet,
    blocks: Range<u64>,
    block: u64,
    buf: &mut [u8],
) -> Result<Vec<Range<u64>>> {
    buf.fill(0);
    let runs = set_runs(set, blocks.clone());
    for r in &runs {
        let at = ((r.start - blocks.start) * block) as usize;
        let len = ((r.end - r.start) * block) as usize;
        view.read_blocks(block as u32, r.start, &mut buf[at..at + len])
            .with_context(|| format!("cannot read blocks {}..{}", r.start, r.end))?;
    }
    Ok(runs)
}

/// Says, without reading, where two states hold the same bytes.
pub(super) enum Oracle<'a> {
    /// Nothing known: read both.
    None,
    /// Two layers of one QCOW2 image: a guest cluster mapped alike in both (the same host
    /// cluster, or zero, or unallocated) holds the same bytes. `cluster` is the image's.
    Qcow {
        from: &'a LayerReader<'a>,
        to: &'a LayerReader<'a>,
        cluster: u64,
    },
    /// Two states of one next3 device (`None`: the live state): a block read from the same
    /// source holds the same bytes.
    Next3 {
        from: Option<&'a SnapshotView<'a>>,
        to: Option<&'a SnapshotView<'a>>,
    },
}

impl Oracle<'_> {
    /// True if both states surely hold the same bytes on disk bytes `r`.
    fn same(&self, r: Range<u64>, block: u64) -> bool {
        match self {
            Oracle::None => false,
            Oracle::Qcow { from, to, cluster } => (r.start / cluster..r.end.div_ceil(*cluster))
                .all(|c| matches!((from.mapping(c), to.mapping(c)), (Ok(a), Ok(b)) if a == b)),
            Oracle::Next3 { from, to } => {
                let src = |v: &Option<&SnapshotView<'_>>, b: u64| match v {
                    Some(v) => v.source(b),
                    None => BlockSource::Device(b),
                };
                (r.start / block..r.end.div_ceil(block)).all(|b| src(from, b) == src(to, b))
            }
        }
    }
}

/// Compares one run of guest clusters, batch by batch, and hands TO's bytes of the clusters
/// that differ (zeros for the discards) to the sink. A batch whose clusters the oracle knows
/// to be equal (with the same copy-set blocks in both states) is not read.
fn compare_run(
    g: &Geometry,
    run: Range<u64>,
    ((from, from_set), (to, to_set)): StatePair<'_>,
    oracle: &Oracle<'_>,
    sink: &mut dyn Sink,
    diff: &mut Diff,
) -> Result<()> {
    let per = (BATCH_BYTES / g.cluster).max(1);
    let (mut fb, mut tb) = (Vec::new(), Vec::new());
    let mut c = run.start;
    while c < run.end {
        let n = per.min(run.end - c);
        let todo: Vec<u64> = (c..c + n)
            .filter(|&k| {
                let cb = g.blocks(k..k + 1);
                set_runs(from_set, cb.clone()) != set_runs(to_set, cb)
                    || !oracle.same(k * g.cluster..(k + 1) * g.cluster, g.block)
            })
            .collect();
        if !todo.is_empty() {
            let blocks = g.blocks(c..c + n);
            let len = ((blocks.end - blocks.start) * g.block) as usize;
            fb.resize(len, 0);
            tb.resize(len, 0);
            let from_runs = read_state(from, from_set, blocks.clone(), g.block, &mut fb)?;
            let to_runs = read_state(to, to_set, blocks.clone(), g.block, &mut tb)?;
            let batch = Batch {
                first_block: blocks.start,
                from: (&fb, &from_runs, from_set),
                to: (&tb, &to_runs),
            };
            for k in todo {
                compare_cluster(g, k, &batch, sink, diff)?;
            }
        }
        c += n;
    }
    Ok(())
}

/// FROM's and TO's views with their copy sets.
type StatePair<'a> = (
    (&'a dyn BlockView, &'a BlockSet),
    (&'a dyn BlockView, &'a BlockSet),
);

/// One batch read from both states: its first block, each state's bytes and copy-set runs.
struct Batch<'b> {
    first_block: u64,
    from: (&'b [u8], &'b [Range<u64>], &'b BlockSet),
    to: (&'b [u8], &'b [Range<u64>]),
}

/// Compares guest cluster `k` of a batch and writes it if it changed or is discarded.
fn compare_cluster(
    g: &Geometry,
    k: u64,
    b: &Batch<'_>,
    sink: &mut dyn Sink,
    diff: &mut Diff,
) -> Result<()> {
    let cb = g.blocks(k..k + 1);
    let at = ((cb.start - b.first_block) * g.block) as usize;
    let end = ((cb.end - b.first_block) * g.block) as usize;
    let (fb, from_runs, from_set) = b.from;
    let (tb, to_runs) = b.to;
    let has = |runs: &[Range<u64>]| runs.iter().any(|r| r.start < cb.end && cb.start < r.end);
    let (has_from, has_to) = (has(from_runs), has(to_runs));
    let changed = has_to && fb[at..end] != tb[at..end];
    let discard = !has_to && has_from;
    if !changed && !discard {
        return Ok(());
    }
    let offset = k * g.cluster;
    let keep = ((g.size - offset).min(g.cluster) as usize).min(end - at);
    let bytes: std::borrow::Cow<'_, [u8]> = if changed {
        diff.changed_clusters += 1;
        diff.to_bytes_replaced += covered(to_runs, cb.clone()) * g.block;
        (&tb[at..at + keep]).into()
    } else {
        diff.discarded_clusters += 1;
        vec![0u8; keep].into()
    };
    sink.write(offset, &bytes)?;
    diff.to_digest.add(k, &bytes);
    for blk in set_runs(from_set, cb).into_iter().flatten() {
        let i = ((blk - b.first_block) * g.block) as usize;
        diff.digest.update(blk.to_be_bytes());
        diff.digest.update(&fb[i..i + g.block as usize]);
    }
    Ok(())
}

/// Blocks of `runs` inside `blocks`.
fn covered(runs: &[Range<u64>], blocks: Range<u64>) -> u64 {
    runs.iter()
        .map(|r| {
            r.end
                .min(blocks.end)
                .saturating_sub(r.start.max(blocks.start))
        })
        .sum()
}
