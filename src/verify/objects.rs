//! The ext objects that bad clusters hold: the state's filesystem opened through the QCOW2
//! layer, walked once (ext's walker classifies every metadata and data block), and the owner
//! inode of the blocks that belong to one (ext's `file_runs`).

use crate::qcow_view::{open_image, QcowView};
use ext::{BlockClass, Extent, Filesystem, OpenOptions, RunKind, WalkOptions};
use qcow::Layer;
use std::path::Path;

/// At most this many objects are named per cluster (a 64 KiB cluster holds 16 4 KiB blocks).
const MAX_NAMED: usize = 4;

/// For each guest byte range `(offset, len)` of state `layer` of `image`, the ext objects its
/// blocks hold ("inode table of group 3", "directory block of inode 12", ...), or `None` when
/// the state holds no readable filesystem or the blocks are free.
pub fn name_objects(image: &Path, layer: Layer, ranges: &[(u64, u64)]) -> Vec<Option<String>> {
    let none = vec![None; ranges.len()];
    let Ok(reader) = open_image(image, false) else {
        return none;
    };
    let Ok(lr) = reader.layer(layer) else {
        return none;
    };
    let view = QcowView::new(&lr, reader.virtual_size());
    let Ok(fs) = Filesystem::open(view, &OpenOptions::default()) else {
        return none;
    };
    let bs = u64::from(fs.sb.block_size);
    let blocks: Vec<(u64, u64)> = ranges
        .iter()
        .map(|&(g, len)| (g / bs, (g + len).div_ceil(bs)))
        .collect();
    let walk = ext::walk(
        &fs,
        &WalkOptions {
            data: true,
            no_snapshot_files: false,
        },
    );
    let hit = |p: u64, l: u64| blocks.iter().any(|&(a, b)| p < b && p + l > a);
    let (runs, _) = ext::file_runs(&fs, &hit);
    let extents = walk.blocks.extents();
    blocks
        .iter()
        .map(|&(a, b)| {
            let mut names: Vec<String> = Vec::new();
            for e in extents.iter().filter(|e| e.start < b && e.end() > a) {
                for name in describe(&fs.sb, e, a, b, &runs) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
            let more = names.len() > MAX_NAMED;
            names.truncate(MAX_NAMED);
            if more {
                names.push("…".into());
            }
            (!names.is_empty()).then(|| names.join("; "))
        })
        .collect()
}

/// What extent `e` holds within blocks `[a, b)`.
fn describe(
    sb: &ext::Superblock,
    e: &Extent,
    a: u64,
    b: u64,
    runs: &[ext::FileRun],
) -> Vec<String> {
    let first = e.start.max(a);
    let group = |blk: u64| {
        (blk.saturating_sub(u64::from(sb.s_first_data_block)))
            / u64::from(sb.s_blocks_per_group.max(1))
    };
    let per_group = |what: &str| vec![format!("{what} of group {}", group(first))];
    match e.class {
        BlockClass::Superblock => vec!["superblock".into()],
        BlockClass::GroupDescriptors => vec!["group descriptors".into()],
        BlockClass::BackupSuperblock => per_group("backup superblock"),
        BlockClass::BackupGroupDescriptors => per_group("backup group descriptors"),
        BlockClass::BlockBitmap => per_group("block bitmap"),
        BlockClass::InodeBitmap => per_group("inode bitmap"),
        BlockClass::InodeTable => per_group("inode table"),
        BlockClass::Journal => vec!["journal".into()],
        BlockClass::ReservedGdt => vec!["reserved GDT blocks".into()],
        _ => owners(e, first, e.end().min(b), runs),
    }
}

/// The inodes owning blocks `[a, b)` of extent `e`, by what the blocks are to them.
fn owners(e: &Extent, a: u64, b: u64, runs: &[ext::FileRun]) -> Vec<String> {
    let what = match e.class {
        BlockClass::Directory => "directory block",
        BlockClass::ExtentTree => "extent tree block",
        BlockClass::Indirect => "indirect block",
        BlockClass::Xattr => "xattr block",
        BlockClass::Data => "data",
        other => other.name(),
    };
    let mut out: Vec<String> = runs
        .iter()
        .filter(|r| r.physical < b && r.end() > a)
        .map(|r| match r.kind {
            RunKind::Data { .. } if e.class == BlockClass::Data => {
                let logical = r.logical + a.saturating_sub(r.physical);
                format!("data of inode {} (file block {logical})", r.ino.0)
            }
            _ => format!("{what} of inode {}", r.ino.0),
        })
        .collect();
    if out.is_empty() {
        out.push(what.to_string());
    }
    out
}
