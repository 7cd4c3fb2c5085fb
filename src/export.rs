//! The export pipeline: source → walk (what to copy) → parallel copy → QCOW2 or raw sink.
//!
//! The source is opened read-only. The image is written under a temporary name and renamed
//! only when complete. Corrupt parts found by the walk or unreadable blocks found by the copy
//! are reported on stderr and counted; they make the exit status 3.

use crate::cli::{Compat, ExportArgs};
use crate::copy::{copy_runs, CopyStats, Progress};
use crate::output::TempOutput;
use crate::qcow_view::QcowView;
use crate::sink::{QcowSink, RawSink};
use crate::summary::Summary;
use anyhow::{bail, Context, Result};
use ext::{BlockSet, BlockView, FileView, Filesystem, OpenOptions, WalkOptions};
use qcow::{Layer, Reader, Version, Writer, WriterOptions};
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
    if !args.snapshots.is_empty() {
        bail!("--snapshot is not supported yet");
    }
    if is_qcow2(source)? {
        let file = std::fs::File::open(source)
            .with_context(|| format!("cannot open {}", source.display()))?;
        let reader = Reader::open(file)
            .with_context(|| format!("{}: invalid QCOW2 image", source.display()))?;
        if args.raw {
            return crate::convert::qcow_to_raw(&reader, source, output, args);
        }
        let layer = reader.layer(Layer::Active)?;
        let view = QcowView::new(&layer, reader.virtual_size());
        return export_view(&view, source, output, args);
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
    export_view(&view, source, output, args)
}

/// Opens the filesystem on `view`, walks it and writes the image.
fn export_view(
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
    let walk_opts = WalkOptions {
        data: args.data,
        no_snapshot_files: args.no_snapshots,
    };
    let walked = ext::walk(&fs, &walk_opts);
    let (temp, file) = TempOutput::create(output)?;
    let background = crate::output::BackgroundSync::start(&file);
    let progress = Progress::new(
        args.progress,
        walked.blocks.block_count() * u64::from(fs.sb.block_size),
        "copying",
    );
    let mut warnings = walked.warnings.clone();
    let size = fs.sb.size_bytes();
    let (stats, cluster_size) = if args.raw {
        let mut sink = RawSink::new(file, size)?;
        let stats = copy_blocks(
            view,
            &fs.sb,
            &walked.blocks,
            &mut sink,
            &progress,
            &mut warnings,
        )?;
        drop(background);
        sink.finish()?;
        (stats, None)
    } else {
        let cb = choose_cluster_bits(size, fs.sb.block_size, args.data, args.cluster_size)?;
        let version = if args.compat == Compat::V2 {
            Version::V2
        } else {
            Version::V3
        };
        let mut writer = Writer::create(
            file,
            WriterOptions {
                cluster_bits: cb,
                virtual_size: size,
                version,
            },
        )?;
        let state = writer.new_state();
        let mut sink = QcowSink::new(&mut writer, state, None);
        let stats = copy_blocks(
            view,
            &fs.sb,
            &walked.blocks,
            &mut sink,
            &progress,
            &mut warnings,
        )?;
        sink.finish()?;
        drop(background);
        writer
            .finish(state, &[])
            .context("cannot finish the QCOW2 image")?;
        (stats, Some(1u64 << cb))
    };
    progress.finish();
    temp.commit()?;
    Ok(Summary::export(
        source,
        output,
        &fs.sb,
        &walked,
        warnings,
        stats,
        cluster_size,
        args,
    ))
}

/// Copies the walked blocks.
fn copy_blocks(
    view: &dyn BlockView,
    sb: &ext::Superblock,
    blocks: &BlockSet,
    sink: &mut (dyn crate::sink::Sink + Send),
    progress: &Progress,
    warnings: &mut Vec<ext::Warning>,
) -> Result<CopyStats> {
    let runs = blocks.extents().iter().map(|e| (e.start, e.len));
    copy_runs(view, sb.block_size, runs, sink, progress, warnings)
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
