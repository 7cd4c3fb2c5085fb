//! `-r -c` (and `-n`): e2image's compare mode. The raw image is written in place onto an
//! existing OUT (a block device or an image file, e.g. a flash disk holding an earlier copy),
//! and each block is compared with what OUT holds first: only the blocks that differ are
//! written. `-n` writes nothing and reports how many blocks would be. In e2image-rs `-c` with
//! `-Q` compresses (QCOW2 clusters); with `-r` it is e2image's compare.

use super::{usage, Format, Mode, Output, UsageError};
use crate::cli::ExportArgs;

/// `-r -c [-n]`: OUT is compared block by block and written in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compare {
    /// `-n`: compare only; write nothing.
    pub dry_run: bool,
}

/// Validates `-c` with `-r` and `-n`: `None` unless `-r -c`; OUT must exist (a regular file or
/// a block device, not standard output), and the run must be an export of a filesystem or a
/// QCOW2 → raw conversion.
///
/// # Errors
/// [`UsageError`]: `-n` without `-r -c`, compression options with `-r`, OUT absent or `-`,
/// another mode.
pub fn compare_of(
    a: &ExportArgs,
    format: Format,
    mode: &Mode,
    output: &Output,
) -> Result<Option<Compare>, UsageError> {
    let wanted = a.compress && format == Format::Raw;
    if !wanted {
        if a.no_write {
            return Err(usage(
                "-n goes with -r -c (e2image's compare mode: report the blocks that differ from OUT, write nothing)",
            ));
        }
        return Ok(None);
    }
    if a.compression_type.is_some() || a.compression_level.is_some() {
        return Err(usage(
            "-r -c compares with OUT (e2image's -c) and compresses nothing: --compression-type and --compression-level go with -Q -c",
        ));
    }
    if !matches!(mode, Mode::Export { .. } | Mode::Convert) {
        return Err(usage("-r -c writes one raw image onto an existing OUT"));
    }
    match output {
        Output::Device(_) => Ok(Some(Compare { dry_run: a.no_write })),
        Output::File(p) if p.is_file() => Ok(Some(Compare { dry_run: a.no_write })),
        Output::File(p) => Err(usage(&format!(
            "-r -c compares each block with OUT and writes only those that differ, in place: OUT {} does not exist (without -c, -r writes a new image)",
            p.display()
        ))),
        Output::Stdout | Output::Archive(_) => Err(usage(
            "-r -c compares each block with OUT, in place: OUT must be an existing device or image file, not standard output",
        )),
    }
}
