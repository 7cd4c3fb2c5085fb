//! The walker over the e2fsprogs test-suite images in `../shared/corpus/e2fsprogs` (skipped
//! when absent): it must never panic or hang, and where `e2image -r` succeeds our block set
//! must contain every non-zero block it copies.
//!
//! One deliberate difference: e2image ignores a bad superblock checksum (it opens with
//! EXT2_FLAG_IGNORE_CSUM_ERRORS), we refuse the primary like the kernel does and suggest a
//! backup. There the image is opened through the suggested backup and compared the same way.

use crate::common::{corpus_images, gunzip, missing_blocks, require_for, shared_corpus, Scratch};
use ext::{walk, Error, FileView, Filesystem, OpenOptions, WalkOptions};
use std::path::Path;
use std::process::Command;

/// Opens `img` through its primary superblock or, when only its checksum is wrong, through
/// the backup the error suggests (which must exist).
fn open_or_backup(img: &Path) -> Result<Filesystem<FileView>, Error> {
    let view = || FileView::open(img).unwrap();
    match Filesystem::open(view(), &OpenOptions::default()) {
        Err(Error::BadPrimary { reason, suggestion }) if reason.contains("s_checksum ") => {
            let (block, bs) = suggestion.expect("a backup superblock for a bad checksum");
            eprintln!("{}: {reason}; opened with -b {block}", img.display());
            let opts = OpenOptions {
                superblock: Some(block),
                block_size: Some(bs),
            };
            Filesystem::open(view(), &opts)
        }
        other => other,
    }
}

#[test]
fn corpus_never_panics_and_is_superset_of_e2image() {
    let Some(dir) = shared_corpus() else {
        return;
    };
    let have_e2image = require_for("the comparison with e2image -r", &["e2image"]);
    let tmp = Scratch::new("corpus", "images");
    let mut failures = Vec::new();
    for gz in corpus_images(&dir) {
        failures.extend(check_image(&gz, &tmp.0, have_e2image));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Opens and walks one corpus image (unpacked into `tmp`) and, where `e2image -r` succeeds,
/// compares the block sets; returns the failure, if any.
fn check_image(gz: &Path, tmp: &Path, have_e2image: bool) -> Option<String> {
    let name = gz.file_stem().unwrap().to_string_lossy().into_owned();
    let img = tmp.join(&name);
    gunzip(gz, &img);
    let opened = open_or_backup(&img);
    let raw = tmp.join(format!("{name}.raw"));
    let e2i_ok = have_e2image
        && Command::new("e2image")
            .arg("-r")
            .arg(&img)
            .arg(&raw)
            .output()
            .is_ok_and(|o| o.status.success());
    let failure = match opened {
        Err(e) => {
            eprintln!("{name}: cannot open: {e}");
            e2i_ok.then(|| format!("{name}: e2image succeeds but we cannot open: {e}"))
        }
        Ok(fs) => {
            let res = walk(&fs, &WalkOptions::default());
            eprintln!(
                "{name}: {} blocks, {} warnings",
                res.blocks.block_count(),
                res.warnings.len()
            );
            for w in res.warnings.iter().take(3) {
                eprintln!("    {w}");
            }
            let bs = fs.sb.block_size as usize;
            let missing = if e2i_ok {
                missing_blocks(&std::fs::read(&raw).unwrap(), bs, &res.blocks)
            } else {
                Vec::new()
            };
            (!missing.is_empty()).then(|| {
                format!(
                    "{name}: {} blocks missing, first {:?}",
                    missing.len(),
                    &missing[..missing.len().min(8)]
                )
            })
        }
    };
    let _ = std::fs::remove_file(&img);
    let _ = std::fs::remove_file(&raw);
    failure
}
