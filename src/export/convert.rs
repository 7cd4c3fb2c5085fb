//! QCOW2 → raw conversion (`e2image-rs -r IMAGE.qcow2 OUT.raw`): every allocated cluster of
//! the active layer (or of an internal snapshot chosen with `--from-snapshot`), whatever wrote
//! the image (v2 or v3, any cluster size, compressed and zero clusters), through the same
//! parallel copy engine and sinks as the export. A raw image holds one state: the other
//! internal snapshots are named in a note.

use super::summary::Summary;
use crate::copy::{copy_runs, Progress};
use crate::plan::ExportPlan;
use crate::qcow_view::{check_state_size, choose_layer, QcowView};
use crate::record::ExportRecord;
use crate::sink::{self, QcowOptions, Table, Target};
use anyhow::{Context, Result};
use qcow::{ClusterMapping, Reader};

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
