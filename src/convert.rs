//! QCOW2 → raw conversion (`e2image-rs -r IMAGE.qcow2 OUT.raw`): every allocated cluster of
//! the active layer (or of an internal snapshot chosen with `--from-snapshot`), whatever wrote the image (v2 or v3, any cluster size, compressed and zero
//! clusters), through the same parallel copy engine as the export.

use crate::cli::ExportArgs;
use crate::copy::{copy_runs, Progress};
use crate::output::TempOutput;
use crate::qcow_view::QcowView;
use crate::sink::RawSink;
use crate::summary::Summary;
use anyhow::{Context, Result};
use qcow::{ClusterMapping, Layer, Reader};
use std::path::Path;

/// Converts one layer of `reader` (whose guest disk is `size` bytes) into a sparse raw file
/// at `output`.
pub fn qcow_to_raw(
    reader: &Reader,
    layer: Layer,
    size: u64,
    source: &Path,
    output: &Path,
    args: &ExportArgs,
) -> Result<Summary> {
    let layer = reader.layer(layer).context("cannot read the L1 table")?;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    layer.for_each_allocated(|gc, m| {
        if !matches!(m, ClusterMapping::Zero | ClusterMapping::Unallocated) {
            match runs.last_mut() {
                Some((s, n)) if *s + *n == gc => *n += 1,
                _ => runs.push((gc, 1)),
            }
        }
        Ok(())
    })?;
    let cluster = u32::try_from(reader.cluster_size()).context("cluster size over 4 GiB")?;
    let view = QcowView::new(&layer, size);
    let (temp, file) = TempOutput::create(output)?;
    let total: u64 = runs.iter().map(|r| r.1).sum::<u64>() * u64::from(cluster);
    let progress = Progress::new(args.progress, total, "converting");
    let mut sink = RawSink::new(file, size)?;
    let mut warnings = Vec::new();
    let stats = copy_runs(
        &view,
        cluster,
        runs.into_iter(),
        &mut sink,
        &progress,
        &mut warnings,
    )?;
    sink.finish(args.sync)?;
    progress.finish();
    temp.commit(args.sync)?;
    Ok(Summary::conversion(source, output, size, warnings, stats))
}
