//! QCOW2 → raw conversion (`e2image-rs -r IMAGE.qcow2 OUT.raw`): every allocated cluster of
//! the active layer (or of an internal snapshot chosen with `--from-snapshot`), whatever wrote
//! the image (v2 or v3, any cluster size, compressed and zero clusters), through the same
//! parallel copy engine and sinks as the export. A raw image holds one state: the other
//! internal snapshots are named in a note.
//!
//! From standard input (`-r - OUT`, [`from_stdin`]): a stream laid out for one pass is read
//! cluster by cluster in guest order, as its data arrives (the chosen layer's data must lie in
//! increasing host order: the active layer of an `e2image-rs -Q … -` stream does); anything
//! else is spooled to a temporary file first and converted from there (`crate::qcow_stdin`).
//! The state's size is not checked against its superblock before a stream's data arrives.

use super::summary::Summary;
use crate::copy::{copy_runs, CopyStats, Progress};
use crate::plan::ExportPlan;
use crate::qcow_stdin::{self, StdinImage, STDIN};
use crate::qcow_view::{check_state_size, choose_layer, QcowView};
use crate::record::ExportRecord;
use crate::sink::{self, QcowOptions, Table, Target};
use anyhow::{Context, Result};
use qcow::{ClusterMapping, Reader, StreamImage};

/// Converts one layer of `reader` into a raw image at the plan's output.
///
/// # Errors
/// Unknown snapshot; read errors of the L1/L2 tables; write errors.
pub fn qcow_to_raw(reader: &Reader, plan: &ExportPlan) -> Result<Summary> {
    let source = plan.source().path();
    let wanted = plan.source().view().snapshot();
    let chosen = choose_layer(reader, wanted).with_context(|| source.display().to_string())?;
    let size = chosen.size;
    let layer = reader
        .layer(chosen.layer)
        .context("cannot read the L1 table")?;
    let label = format!("{}: {}", source.display(), chosen.label);
    check_state_size(
        reader,
        &layer,
        size,
        &label,
        ExportRecord::of(reader).is_some(),
    )?;
    let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
    layer.for_each_allocated(|gc, m| {
        if !matches!(m, ClusterMapping::Zero | ClusterMapping::Unallocated) {
            crate::ranges::push(&mut runs, gc..gc + 1);
        }
        Ok(())
    })?;
    let cluster = u32::try_from(reader.cluster_size()).context("cluster size over 4 GiB")?;
    let view = QcowView::new(&layer, size);
    let target = Target {
        size,
        block_size: 4096,
        qcow: QcowOptions::default(),
    };
    let mut out = sink::open(plan, &target)?;
    let mut notes = out.notes();
    let others = reader.snapshots().len();
    if wanted.is_none() && others > 0 {
        notes.push(format!(
            "{} has {others} internal snapshot(s); a raw image holds one state, so only the active layer was converted (choose another with --from-snapshot)",
            source.display()
        ));
    }
    let total: u64 = crate::ranges::total(&runs) * u64::from(cluster);
    let progress = Progress::new(plan.progress(), total, "converting");
    let mut warnings = Vec::new();
    out.sink.begin_state()?;
    let stats = copy_runs(
        &view,
        cluster,
        runs.into_iter().map(|r| (r.start, r.end - r.start)),
        out.sink.as_mut(),
        &progress,
        &mut warnings,
    )?;
    out.sink.end_state()?;
    progress.finish();
    notes.extend(out.complete(&Table::default(), plan.sync())?.notes);
    Ok(Summary::conversion(plan, size, warnings, stats, notes))
}

/// `-r - OUT`: the QCOW2 image on standard input, read in one pass when it can be, else
/// spooled first (see the module comment).
///
/// # Errors
/// Those of [`qcow_to_raw`]; a stream that ends early (the message says after how many
/// bytes) or is corrupt.
pub fn from_stdin(plan: &ExportPlan) -> Result<Summary> {
    let wanted = plan.source().view().snapshot();
    let img = match qcow_stdin::open()? {
        StdinImage::Stream(img) => {
            let chosen = choose_layer(img.reader(), wanted).context(STDIN)?;
            let layer = img.reader().layer(chosen.layer)?;
            if img.in_guest_order(&layer)? {
                drop(layer);
                return stream_to_raw(*img, plan);
            }
            drop(layer);
            let (consumed, input) = img.into_spool();
            let why = format!("{}'s data is not in guest order", chosen.label);
            qcow_stdin::spool(&consumed, input, &why)?
        }
        other => other,
    };
    let StdinImage::File(file, note) = img else {
        anyhow::bail!("{STDIN}: the image was neither streamed nor spooled");
    };
    let reader = crate::qcow_view::open_image_file(file, std::path::Path::new(STDIN), true)?;
    let mut s = qcow_to_raw(&reader, plan)?;
    s.notes.extend(note);
    Ok(s)
}

/// Converts the chosen layer of a one-pass stream, cluster by cluster in guest order.
fn stream_to_raw(img: StreamImage<qcow_stdin::Input>, plan: &ExportPlan) -> Result<Summary> {
    let wanted = plan.source().view().snapshot();
    let (reader, mut data) = img.into_parts();
    let chosen = choose_layer(&reader, wanted).context(STDIN)?;
    let size = chosen.size;
    anyhow::ensure!(
        size <= reader.virtual_size(),
        "{STDIN}: {}: its disk is larger than the image's virtual size",
        chosen.label
    );
    let layer = reader.layer(chosen.layer)?;
    let mut clusters = Vec::new();
    layer.for_each_allocated(|gc, m| {
        if !matches!(m, ClusterMapping::Zero | ClusterMapping::Unallocated) {
            clusters.push(gc);
        }
        Ok(())
    })?;
    let c = reader.cluster_size();
    let target = Target {
        size,
        block_size: 4096,
        qcow: QcowOptions::default(),
    };
    let mut out = sink::open(plan, &target)?;
    let mut notes = out.notes();
    let total = clusters.len() as u64 * c;
    let progress = Progress::new(plan.progress(), total, "converting");
    let mut buf = vec![0u8; c as usize];
    let mut stats = CopyStats::default();
    out.sink.begin_state()?;
    for g in clusters.into_iter().filter(|&g| g * c < size) {
        data.read_cluster(&layer, g, &mut buf)
            .with_context(|| format!("{STDIN}: guest cluster {g}"))?;
        let keep = (size - g * c).min(c) as usize;
        out.sink.write(g * c, &buf[..keep])?;
        stats.bytes_copied += keep as u64;
        progress.inc(c);
    }
    out.sink.end_state()?;
    progress.finish();
    let n = data.drain().context(STDIN)?;
    if wanted.is_none() && !reader.snapshots().is_empty() {
        notes.push(format!(
            "{STDIN} has {} internal snapshot(s); a raw image holds one state, so only the active layer was converted (choose another with --from-snapshot)",
            reader.snapshots().len()
        ));
    }
    notes.push(format!("read {n} bytes from {STDIN} in one pass"));
    notes.extend(out.complete(&Table::default(), plan.sync())?.notes);
    Ok(Summary::conversion(plan, size, Vec::new(), stats, notes))
}
