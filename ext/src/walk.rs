//! The copy set: which blocks of a filesystem state to copy, classified by what they hold.
//!
//! The set is the static metadata computed from the geometry (every superblock, descriptor
//! and reserved-GDT copy, bitmaps, used inode-table parts, MMP) plus what each in-use inode
//! owns, found by scanning the inode tables (not the directory tree, so that EA inodes,
//! orphans and special inodes are all seen). Groups are scanned in parallel, each rayon task
//! folding its groups into one collector; the results are merged in group order and
//! finished into a sorted [`BlockSet`]. Only the groups [`Filesystem::open`] kept (those
//! inside the source) are walked; the others are one warning.
//!
//! This module is the policy alone: which classes an inode's blocks get (`classify`), and
//! whether they are copied at all. Which inodes are in use is the inode-table scan's rule
//! (`itable`); the trees are walked by `extent` and `indirect`. Corruption never stops the
//! walk: it becomes a [`Warning`] naming the inode, block and offset, and only the damaged
//! part is skipped. Warnings are kept up to a few per kind and counted beyond, so memory stays
//! bounded. On the way every metadata checksum met is verified (`checksum`): the result is
//! [`WalkResult::checksums`], and each failure a warning; the checksums of the blocks a copy
//! reads anyway are left in [`WalkResult::pending`], for [`WalkResult::finish_checks`].

use crate::blockset::{BlockClass, BlockSet};
use crate::checksum::verify;
use crate::checksum::{Checks, ChecksumReport, PendingChecks, PendingTally};
use crate::collect::{Collector, TreeClasses, WalkStats};
use crate::error::CorruptKind;
use crate::extent::walk_extents;
use crate::features::{compat, incompat};
use crate::fs::Filesystem;
use crate::group_desc::{GroupDesc, EXT4_BG_BLOCK_UNINIT, EXT4_BG_INODE_UNINIT};
use crate::indirect::{snapshot_extra_roots, walk_indirect, walk_roots};
use crate::inode::{inode_flags, BlockMap, FileType, Inode};
use crate::itable::{inodes_left, scan_group};
use crate::layout::{static_regions, RegionKind};
use crate::superblock::{Superblock, EXT2_OS_HURD};
use crate::types::{
    InodeNr, EXT2_BAD_INO, EXT2_RESIZE_INO, EXT4_EXCLUDE_INO, EXT4_GRP_QUOTA_INO,
    EXT4_USR_QUOTA_INO,
};
use crate::view::BlockView;
use crate::warning::{Warning, WarningLog};
use rayon::prelude::*;

/// What to walk.
#[derive(Clone, Copy, Debug, Default)]
pub struct WalkOptions {
    /// Include the data blocks of regular files (e2image `-a`).
    pub data: bool,
    /// Leave out the blocks of snapshot files (next3 / ext4-snapshots).
    pub no_snapshot_files: bool,
}

/// The result of a walk.
#[derive(Clone, Debug, Default)]
pub struct WalkResult {
    /// The finished set of blocks to copy.
    pub blocks: BlockSet,
    /// Corrupt or unreadable parts that were skipped: the first
    /// 16 (`KEPT_PER_KIND`) of each kind, in the order found.
    pub warnings: Vec<Warning>,
    /// Per kind with more warnings than were kept: its label
    /// ([`crate::Corrupt::kind_label`]) and the number of warnings left out of `warnings`.
    pub omitted: Vec<(String, u64)>,
    /// Observations that do not affect completeness (e.g. a journal needing recovery).
    pub notes: Vec<String>,
    /// Counts.
    pub stats: WalkStats,
    /// The metadata checksums verified, and those that failed (each also a warning, or named
    /// by another warning: see [`ChecksumReport`]); without those still in `pending` until
    /// [`finish_checks`](Self::finish_checks).
    pub checksums: ChecksumReport,
    /// The checksums left to the reader of the blocks (inode records, directory, orphan-file
    /// and xattr blocks): verified by a copy with [`PendingChecks::verify`], the rest by
    /// [`finish_checks`](Self::finish_checks).
    pub pending: PendingChecks,
}

impl WalkResult {
    /// Completes `checksums` and the warnings with the pending checks: `tally`, what a copy
    /// verified as it read the blocks ([`PendingChecks::verify`], the tallies appended in
    /// block order), then every pending block the copy did not read, read now from `view`
    /// (the walked state's view). Nothing is pending afterwards; calling it again does
    /// nothing. Each failure is a warning of its kind ("inode checksum", "directory block
    /// checksum", ...), bounded per kind like the walk's.
    pub fn finish_checks(&mut self, view: &dyn BlockView, mut tally: PendingTally) {
        let pending = std::mem::take(&mut self.pending);
        pending.verify_rest(view, &mut tally);
        self.checksums.append(&tally.report);
        let (kept, omitted) = tally.warnings.into_parts();
        self.warnings.extend(kept);
        self.omitted.extend(omitted);
    }
}

/// What part of the walk found; parts are merged in group order.
#[derive(Default)]
struct Found {
    set: BlockSet,
    warnings: WarningLog,
    stats: WalkStats,
    checks: Checks,
}

impl Found {
    fn of(c: Collector<'_>) -> Found {
        Found {
            set: c.set,
            warnings: c.warnings,
            stats: c.stats,
            checks: c.checks.map(|b| *b).unwrap_or_default(),
        }
    }

    fn append(mut self, mut later: Found) -> Found {
        self.set.append(&mut later.set);
        self.warnings.append(later.warnings);
        self.stats.add(&later.stats);
        self.checks.append(later.checks);
        self
    }
}

/// Walks `fs` and returns the finished block set, the warnings and counts, and the checksum
/// report with the checksums left pending (see [`WalkResult::finish_checks`]). Groups past
/// the end of the source (see [`Filesystem::groups_past_source`]) are not walked; they are
/// one warning.
pub fn walk<V: BlockView>(fs: &Filesystem<V>, opts: &WalkOptions) -> WalkResult {
    let sb = &fs.sb;
    let view: &dyn BlockView = fs.view();
    let groups = &fs.groups;
    let sb_block = fs.sb_block.0;
    let mut top = Collector::verifying(view, sb);
    add_static(&mut top, groups.len() as u32);
    warn_past_source(&mut top, fs);
    verify::superblocks(&mut top, sb_block);
    verify::mmp(&mut top);
    // Each rayon task folds its groups into one collector, so memory does not grow with the
    // number of groups; `reduce` keeps the group order.
    let found = (0..groups.len() as u32)
        .into_par_iter()
        .with_min_len(16)
        .fold(
            || Collector::verifying(view, sb),
            |mut c, g| {
                let gd = &groups[g as usize];
                verify::group(&mut c, g, gd, sb_block);
                walk_group(&mut c, g, gd, opts);
                c
            },
        )
        .map(Found::of)
        .reduce(Found::default, Found::append);
    let found = Found::of(top).append(found);
    let pending = PendingChecks::new(
        found.checks.pending,
        sb.block_size,
        sb.s_inode_size,
        sb.metadata_csum_seed(),
    );
    let (warnings, omitted) = found.warnings.into_parts();
    let mut result = WalkResult {
        blocks: found.set,
        warnings,
        omitted,
        notes: notes(fs, view),
        stats: found.stats,
        checksums: found.checks.report,
        pending,
    };
    if result.stats.linked_but_free > 0 {
        result.notes.push(format!(
            "{} inodes have a non-zero link count but are free in the inode bitmap; their blocks were copied too",
            result.stats.linked_but_free
        ));
    }
    result.blocks.finish(sb.cluster_ratio, sb.s_blocks_count);
    result
}

/// One warning for the groups [`Filesystem::open`] left out because they start past the end
/// of the source.
fn warn_past_source<V: BlockView>(c: &mut Collector<'_>, fs: &Filesystem<V>) {
    let past = fs.groups_past_source();
    if past == 0 {
        return;
    }
    let first = fs.groups.len() as u32;
    c.warn(
        CorruptKind::PastSource(format!(
            "groups {first}..={} ({past} groups, from block {}) start past the end of the source ({} bytes) and were not walked",
            fs.sb.group_count - 1,
            fs.sb.group_first_block(first),
            fs.view().size()
        )),
        None,
        None,
    );
}

fn notes(fs: &Filesystem<impl BlockView>, view: &dyn BlockView) -> Vec<String> {
    let sb = &fs.sb;
    let mut v = Vec::new();
    if view.size() < sb.size_bytes() {
        v.push(format!(
            "the source ({} bytes) is shorter than the filesystem ({} bytes); the missing part reads as zeros",
            view.size(),
            sb.size_bytes()
        ));
    }
    v
}

/// Superblocks, descriptor tables, reserved GDT blocks (of the first `groups` groups), block 0
/// and the MMP block.
fn add_static(c: &mut Collector<'_>, groups: u32) {
    let sb = c.sb;
    c.add(
        0,
        1,
        if sb.block_size == 1024 {
            BlockClass::Boot
        } else {
            BlockClass::Superblock
        },
    );
    for r in static_regions(sb, groups) {
        let class = match r.kind {
            RegionKind::PrimarySuperblock => BlockClass::Superblock,
            RegionKind::BackupSuperblock => BlockClass::BackupSuperblock,
            RegionKind::PrimaryGdt => BlockClass::GroupDescriptors,
            RegionKind::BackupGdt => BlockClass::BackupGroupDescriptors,
            RegionKind::ReservedGdt => BlockClass::ReservedGdt,
        };
        let end = (r.start + r.len).min(sb.s_blocks_count);
        if r.start < end {
            c.add(r.start, end - r.start, class);
        }
    }
    if sb.has_incompat(incompat::MMP) {
        let b = sb.s_mmp_block;
        c.add_checked(b, 1, BlockClass::Mmp, CorruptKind::Pointer, || {
            "s_mmp_block".into()
        });
    }
}

/// Bitmaps, the used inode table and the inodes of group `g`.
fn walk_group(c: &mut Collector<'_>, g: u32, gd: &GroupDesc, opts: &WalkOptions) {
    let sb = c.sb;
    if !gd.has_flag(sb, EXT4_BG_BLOCK_UNINIT) {
        c.add_checked(
            gd.bg_block_bitmap,
            1,
            BlockClass::BlockBitmap,
            CorruptKind::GroupMetadata,
            || format!("group {g}: bg_block_bitmap"),
        );
    }
    if !gd.has_flag(sb, EXT4_BG_INODE_UNINIT) {
        c.add_checked(
            gd.bg_inode_bitmap,
            1,
            BlockClass::InodeBitmap,
            CorruptKind::GroupMetadata,
            || format!("group {g}: bg_inode_bitmap"),
        );
    }
    if sb.has_compat(compat::EXCLUDE_BITMAP) && gd.bg_exclude_bitmap != 0 {
        c.add_checked(
            gd.bg_exclude_bitmap,
            1,
            BlockClass::ExcludeBitmap,
            CorruptKind::GroupMetadata,
            || format!("group {g}: bg_exclude_bitmap"),
        );
    }
    let itable_blocks = u64::from(gd.used_inode_table_blocks(sb));
    if itable_blocks > 0
        && c.check_range(gd.bg_inode_table, u64::from(sb.inode_table_blocks))
            .is_ok()
    {
        c.add(gd.bg_inode_table, itable_blocks, BlockClass::InodeTable);
    }
    let used = gd.used_inodes(sb).min(inodes_left(sb, g));
    verify::defer_inode_table(c, g, gd, used);
    scan_group(c, g, gd, &mut |c, ino, inode| {
        process_inode(c, ino, inode, opts)
    });
}

/// Adds the blocks one in-use inode owns.
fn process_inode(c: &mut Collector<'_>, ino: InodeNr, inode: &Inode, opts: &WalkOptions) {
    if ino == EXT2_BAD_INO {
        let classes = TreeClasses {
            tree: BlockClass::BadBlocksTree,
            data: None,
        };
        if !inode.has_flag(inode_flags::EXTENTS) {
            walk_indirect(c, ino, inode, classes);
        }
        return;
    }
    if inode.is_blank() {
        return;
    }
    c.stats.inodes_in_use += 1;
    let orphan = inode.i_links_count == 0;
    c.stats.orphan_inodes += u64::from(orphan);
    add_xattr_blocks(c, ino, inode);
    let Some(classes) = classify(c, ino, inode, opts) else {
        return;
    };
    c.begin_inode(ino, inode.i_generation);
    let role = verify::role(c, ino, inode);
    if let (Some((_, below)), Some(checks)) = (role, c.checks.as_deref_mut()) {
        checks.capture_below(below);
    }
    walk_tree(c, ino, inode, classes);
    if let (Some((role, _)), Some(checks)) = (role, c.checks.as_deref_mut()) {
        let runs = checks.take_captured();
        verify::captured(c, ino, role, &runs);
    }
}

/// Walks the block map of in-use inode `ino`, with the classes of its blocks.
fn walk_tree(c: &mut Collector<'_>, ino: InodeNr, inode: &Inode, classes: TreeClasses) {
    let sb = c.sb;
    let orphan = inode.i_links_count == 0;
    let classes = if orphan {
        TreeClasses {
            tree: BlockClass::Orphan,
            ..classes
        }
    } else {
        classes
    };
    match inode.block_map(sb) {
        BlockMap::None => {}
        BlockMap::Extents => walk_extents(c, ino, &inode.i_block, classes),
        BlockMap::Indirect => {
            walk_indirect(c, ino, inode, classes);
            if classes.data == Some(BlockClass::SnapshotFile) {
                // Snapshot files of filesystems over 2^20 + 2^30 blocks keep further TIND
                // trees in i_block[0..3].
                let extra = snapshot_extra_roots(sb.block_size);
                walk_roots(c, ino, inode, &extra, classes);
            }
        }
    }
}

/// The inode's extended-attribute block (`i_file_acl`) and, on Hurd, its translator block
/// (`osd1`), each when set and inside the filesystem.
fn add_xattr_blocks(c: &mut Collector<'_>, ino: InodeNr, inode: &Inode) {
    if inode.i_file_acl != 0 {
        c.add_checked(
            inode.i_file_acl,
            1,
            BlockClass::Xattr,
            CorruptKind::Pointer,
            || format!("inode {ino}: i_file_acl"),
        );
        if c.check_range(inode.i_file_acl, 1).is_ok() {
            verify::defer_xattr_block(c, inode.i_file_acl, ino);
        }
    }
    if c.sb.s_creator_os == EXT2_OS_HURD && inode.osd1 != 0 {
        c.add_checked(
            u64::from(inode.osd1),
            1,
            BlockClass::Xattr,
            CorruptKind::Pointer,
            || format!("inode {ino}: Hurd translator"),
        );
    }
}

/// Classes of an inode's tree and mapped blocks, or `None` to skip the inode's blocks:
/// the reserved and special inodes first ([`special_classes`]), then snapshot files (left out
/// with [`WalkOptions::no_snapshot_files`]), EA inodes, and by file type; regular file data
/// only with [`WalkOptions::data`].
fn classify(
    c: &mut Collector<'_>,
    ino: InodeNr,
    inode: &Inode,
    opts: &WalkOptions,
) -> Option<TreeClasses> {
    if let Some(classes) = special_classes(c.sb, ino) {
        return Some(classes);
    }
    if inode.is_snapshot_file() {
        c.stats.snapshot_files += 1;
        return if opts.no_snapshot_files {
            None
        } else {
            Some(all(BlockClass::SnapshotFile))
        };
    }
    if inode.has_flag(inode_flags::EA_INODE) {
        c.stats.ea_inodes += 1;
        return Some(all(BlockClass::EaInode));
    }
    let tree = if inode.has_flag(inode_flags::EXTENTS) {
        BlockClass::ExtentTree
    } else {
        BlockClass::Indirect
    };
    let data = match inode.file_type() {
        FileType::Directory => Some(BlockClass::Directory),
        FileType::Symlink => Some(BlockClass::Symlink),
        _ if opts.data => Some(BlockClass::Data),
        _ => None,
    };
    Some(TreeClasses { tree, data })
}

/// Tree and mapped blocks both of `class`.
fn all(class: BlockClass) -> TreeClasses {
    TreeClasses {
        tree: class,
        data: Some(class),
    }
}

/// Classes of the inodes with a role of their own: the resize inode, the journal
/// (`s_journal_inum`, with or without COMPAT_HAS_JOURNAL), quota files, the orphan file and the
/// snapshot exclude inode (these with their feature).
fn special_classes(sb: &Superblock, ino: InodeNr) -> Option<TreeClasses> {
    let n = ino.0;
    if ino == EXT2_RESIZE_INO {
        return Some(TreeClasses {
            tree: BlockClass::ResizeInode,
            data: Some(BlockClass::ReservedGdt),
        });
    }
    // The journal inode whatever COMPAT_HAS_JOURNAL says (as e2image does): with the flag
    // clear (e.g. `debugfs feature ^has_journal`) the inode and its blocks are still there.
    if n != 0 && n == sb.s_journal_inum {
        return Some(all(BlockClass::Journal));
    }
    let quota = [
        EXT4_USR_QUOTA_INO.0,
        EXT4_GRP_QUOTA_INO.0,
        sb.s_usr_quota_inum,
        sb.s_grp_quota_inum,
        sb.s_prj_quota_inum,
    ];
    if quota.contains(&n) {
        return Some(all(BlockClass::Quota));
    }
    if n == sb.s_orphan_file_inum && sb.has_compat(compat::ORPHAN_FILE) {
        return Some(all(BlockClass::OrphanFile));
    }
    if ino == EXT4_EXCLUDE_INO && sb.has_compat(compat::EXCLUDE_INODE) {
        return Some(all(BlockClass::ExcludeBitmap));
    }
    None
}
