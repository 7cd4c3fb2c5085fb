//! `apply - TARGET`: the delta on standard input. A stream laid out for one pass (`e2image-rs
//! -Q -x … -`) is read as the pass goes, when the pass can take it in one go: a delta record
//! (whose digests are checked once every byte has arrived), clusters no larger than the
//! record's block size (larger ones need TO's copy set before the pass: the mask), its data in
//! guest order, and not a dry run (which reads TO's metadata through the delta, with no
//! patch to read it back from). Anything else is spooled to an unlinked temporary file in
//! `$TMPDIR` first and applied from there, with a note saying so.

use super::delta::Delta;
use crate::delta_record::DeltaRecord;
use crate::qcow_stdin::{self, StdinImage, STDIN};
use anyhow::Result;
use qcow::Layer;
use std::path::Path;

/// Opens the delta `path` (`-`: standard input).
///
/// # Errors
/// Those of [`Delta::open`]; standard input holds no usable QCOW2 image or ends inside its
/// tables.
pub fn open(path: &Path, dry_run: bool) -> Result<Delta> {
    if path.as_os_str() != "-" {
        return Delta::open(path);
    }
    let name = Path::new(STDIN);
    let img = match qcow_stdin::open()? {
        StdinImage::Stream(img) => match refusal(&img, dry_run)? {
            None => return Delta::streamed(*img, name),
            Some(why) => {
                let (consumed, input) = img.into_spool();
                qcow_stdin::spool(&consumed, input, &why)?
            }
        },
        other => other,
    };
    let StdinImage::File(file, note) = img else {
        anyhow::bail!("{STDIN}: the delta was neither streamed nor spooled");
    };
    if let Some(n) = note {
        crate::sys::report::note(&n);
    }
    Delta::from_file(file, name)
}

/// Why the stream cannot be applied as it arrives, if it cannot.
fn refusal(img: &qcow::StreamImage<qcow_stdin::Input>, dry_run: bool) -> Result<Option<String>> {
    if dry_run {
        return Ok(Some("a dry run reads TO through the delta".into()));
    }
    let r = img.reader();
    let Some(record) = DeltaRecord::of(r) else {
        return Ok(Some("it has no delta record".into()));
    };
    if r.cluster_size() > u64::from(record.block_size) {
        return Ok(Some(format!(
            "its {}-byte clusters span several {}-byte blocks",
            r.cluster_size(),
            record.block_size
        )));
    }
    if !img.in_guest_order(&r.layer(Layer::Active)?)? {
        return Ok(Some("its data is not in guest order".into()));
    }
    Ok(None)
}
