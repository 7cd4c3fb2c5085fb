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
//! cluster size is the block size, so a delta stays as small as the change. With `--replay`,
//! both states are compared as the kernel would mount them: each one's journal is replayed
//! in memory first (`super::journal`), and the layers are read rather than compared by their
//! mappings (a replay changes blocks that two layers may map alike).

mod compare;

use super::cluster::choose_cluster_bits;
use super::states::Next3;
use super::summary::{DeltaFacts, Summary};
use crate::delta_record::{fingerprint, DeltaFlags, DeltaRecord, EXT_DELTA_RECORD};
use crate::plan::{DeltaPlan, ExportPlan, SourceKind, StateRef};
use crate::probe::is_qcow2;
use crate::qcow_view::{choose_layer, QcowView};
use crate::record::{ExportRecord, EXT_EXPORT_RECORD};
use crate::sink::{self, QcowOptions, Table, Target};
use anyhow::{bail, Context, Result};
use compare::{cluster_runs, compare_run, write_again, Diff, Geometry, Oracle};
use ext::{BlockView, FileView, Filesystem, OpenOptions, WalkOptions};
use qcow::{Layer, Reader, Version};
use sha2::Digest;
use std::path::Path;

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

/// Compares FROM with TO and writes the delta; with `--replay`, their replayed states.
fn build(
    from: &dyn BlockView,
    to: &dyn BlockView,
    oracle: &Oracle<'_>,
    plan: &ExportPlan,
    d: &DeltaPlan,
) -> Result<Summary> {
    if !plan.replay() {
        return compare_states(from, to, oracle, plan, d, Vec::new());
    }
    let external = match (plan.source().journal_dev(), &d.to) {
        (Some(p), StateRef::Current) => Some(super::journal::open_journal_dev(p)?),
        _ => None,
    };
    let ext_view = external.as_ref().map(|v| v as &dyn BlockView);
    let fj = super::journal::recover(from, None, &OpenOptions::default(), plan)?;
    let tj = super::journal::recover(to, ext_view, plan.source().open_options(), plan)?;
    let mut found = Vec::new();
    for (label, j) in [(d.from.label(), &fj), (d.to.label(), &tj)] {
        found.extend(j.notes.iter().map(|n| Found::Note(format!("{label}: {n}"))));
        found.extend(j.warnings.iter().cloned().map(Found::Warning));
    }
    let from_view: &dyn BlockView = fj.view.as_ref().map_or(from, |v| v);
    let to_view: &dyn BlockView = tj.view.as_ref().map_or(to, |v| v);
    compare_states(from_view, to_view, &Oracle::None, plan, d, found)
}

/// What the replays found, for the summary.
enum Found {
    Note(String),
    Warning(ext::Warning),
}

/// Compares the views of FROM and TO and writes the delta; `found` holds the replays' notes
/// and warnings.
fn compare_states(
    from: &dyn BlockView,
    to: &dyn BlockView,
    oracle: &Oracle<'_>,
    plan: &ExportPlan,
    d: &DeltaPlan,
    found: Vec<Found>,
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
    let mut warnings = Vec::new();
    for f in found {
        match f {
            Found::Note(n) => notes.push(n),
            Found::Warning(w) => warnings.push(w),
        }
    }
    // A QCOW2 stream plans first: the comparison runs once, fills the record, and the
    // clusters that differ are read again from TO to follow the tables (`write_again`).
    let two = out.sink.two_passes(1);
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
    if two {
        let needs = out.sink.plan(&table)?;
        let need = needs.first().map_or(&[][..], |n| n.as_slice());
        write_again(&geo, need, (to, &to_walk.blocks), out.sink.as_mut())?;
    }
    notes.extend(out.complete(&table, plan.sync())?.notes);
    warnings.extend(from_walk.warnings);
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
        replayed: plan.replay(),
    };
    let backing = match (&d.backing, plan.output()) {
        (Some(b), crate::plan::Output::File(out)) => Some(backing_of(b, out, from_fingerprint)?),
        (Some(b), crate::plan::Output::Stdout) => {
            Some(backing_of(b, Path::new("-"), from_fingerprint)?)
        }
        _ => None,
    };
    Ok(Target {
        size,
        block_size: to.sb.block_size,
        qcow: QcowOptions {
            cluster_bits: choose_cluster_bits(size, to.sb.block_size, false, requested)?,
            version: Version::V3,
            extensions: vec![(EXT_EXPORT_RECORD, record.encode().to_vec())],
            backing,
            compression: plan.compress().map(|c| c.compression),
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
