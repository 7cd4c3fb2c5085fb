//! The metadata walker: which blocks of a filesystem state to copy.
//!
//! The set is the static metadata computed from the geometry (every superblock, descriptor
//! and reserved-GDT copy, bitmaps, used inode-table parts, MMP) plus what each in-use inode
//! owns, found by scanning the inode tables (not the directory tree, so that EA inodes,
//! orphans and special inodes are all seen). Groups are scanned in parallel, each rayon task
//! folding its groups into one [`Collector`]; the results are merged in group order and
//! finished into a sorted [`BlockSet`]. Only the groups [`Filesystem::open`] kept (those
//! inside the source) are walked; the others are one warning.
//!
//! An inode is in use when its bit is set in the inode bitmap, or when its link count is
//! non-zero (e2image's rule, kept so that our set is a superset of e2image's on corrupt
//! filesystems). Corruption never stops the walk: it becomes a [`Warning`] naming the inode,
//! block and offset, and only the damaged part is skipped. Warnings are kept up to a few per
//! kind and counted beyond ([`crate::warning`]), so memory stays bounded.
//!
//! The inode scan ([`scan_group`]) is shared with the block-owner scan of [`crate::owners`],
//! which uses a [`Collector`] in run-recording mode: the tree walkers then report each run
//! with its owner-relative meaning (logical block, tree, xattr) instead of a block class.

use crate::blockset::{BlockClass, BlockSet};
pub use crate::collector::Collector;
use crate::error::CorruptKind;
use crate::extent::{walk_extents, TreeClasses};
use crate::fs::Filesystem;
use crate::group_desc::{GroupDesc, EXT4_BG_BLOCK_UNINIT, EXT4_BG_INODE_UNINIT};
use crate::indirect::{snapshot_extra_roots, walk_indirect, walk_roots};
use crate::inode::{flags, BlockMap, FileType, Inode};
use crate::layout::{static_regions, RegionKind};
use crate::superblock::{compat, incompat, Superblock, EXT2_OS_HURD};
use crate::view::BlockView;
pub use crate::warning::Warning;
use crate::warning::WarningLog;
use crate::InodeNr;
use rayon::prelude::*;

/// Bytes of inode table read at once while scanning (bounds memory per thread).
const ITABLE_CHUNK_BYTES: usize = 4 << 20;
/// Reserved inode numbers with fixed roles.
const EXT2_BAD_INO: u32 = 1;
const EXT4_USR_QUOTA_INO: u32 = 3;
const EXT4_GRP_QUOTA_INO: u32 = 4;
const EXT2_RESIZE_INO: u32 = 7;
const EXT4_EXCLUDE_INO: u32 = 9;

/// What to walk.
#[derive(Clone, Copy, Debug, Default)]
pub struct WalkOptions {
    /// Include the data blocks of regular files (e2image `-a`).
    pub data: bool,
    /// Leave out the blocks of snapshot files (next3 / ext4-snapshots).
    pub no_snapshot_files: bool,
}

/// Counts gathered during the walk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Inodes processed as in use.
    pub inodes_in_use: u64,
    /// In-use inodes with link count 0 (orphans).
    pub orphan_inodes: u64,
    /// EA inodes.
    pub ea_inodes: u64,
    /// Inodes followed because their link count is non-zero although the inode bitmap says
    /// they are free.
    pub linked_but_free: u64,
    /// Snapshot files seen.
    pub snapshot_files: u64,
}

impl WalkStats {
    fn add(&mut self, o: &WalkStats) {
        self.inodes_in_use += o.inodes_in_use;
        self.orphan_inodes += o.orphan_inodes;
        self.ea_inodes += o.ea_inodes;
        self.linked_but_free += o.linked_but_free;
        self.snapshot_files += o.snapshot_files;
    }
}

/// The result of a walk.
#[derive(Clone, Debug, Default)]
pub struct WalkResult {
    /// The finished set of blocks to copy.
    pub blocks: BlockSet,
    /// Corrupt or unreadable parts that were skipped: the first
    /// [`KEPT_PER_KIND`](crate::warning::KEPT_PER_KIND) of each kind, in the order found.
    pub warnings: Vec<Warning>,
    /// Per kind with more warnings than were kept: its label
    /// ([`crate::Corrupt::kind_label`]) and the number of warnings left out of `warnings`.
    pub omitted: Vec<(String, u64)>,
    /// Observations that do not affect completeness (e.g. a journal needing recovery).
    pub notes: Vec<String>,
    /// Counts.
    pub stats: WalkStats,
}

/// What part of the walk found; parts are merged in group order.
#[derive(Default)]
struct Found {
    set: BlockSet,
    warnings: WarningLog,
    stats: WalkStats,
}

impl Found {
    fn of(c: Collector<'_>) -> Found {
        Found {
            set: c.set,
            warnings: c.warnings,
            stats: c.stats,
        }
    }

    fn append(mut self, mut later: Found) -> Found {
        self.set.append(&mut later.set);
        self.warnings.append(later.warnings);
        self.stats.add(&later.stats);
        self
    }
}

/// Walks `fs` and returns the finished block set, the warnings and counts. Groups past the
/// end of the source (see [`Filesystem::groups_past_source`]) are not walked; they are one
/// warning.
pub fn walk<V: BlockView>(fs: &Filesystem<V>, opts: &WalkOptions) -> WalkResult {
    let sb = &fs.sb;
    let view: &dyn BlockView = fs.view();
    let groups = &fs.groups;
    let mut top = Collector::new(view, sb);
    add_static(&mut top, groups.len() as u32);
    warn_past_source(&mut top, fs);
    // Each rayon task folds its groups into one collector, so memory does not grow with the
    // number of groups; `reduce` keeps the group order.
    let found = (0..groups.len() as u32)
        .into_par_iter()
        .with_min_len(16)
        .fold(
            || Collector::new(view, sb),
            |mut c, g| {
                walk_group(&mut c, g, &groups[g as usize], opts);
                c
            },
        )
        .map(Found::of)
        .reduce(Found::default, Found::append);
    let found = Found::of(top).append(found);
    let (warnings, omitted) = found.warnings.into_parts();
    let mut result = WalkResult {
        blocks: found.set,
        warnings,
        omitted,
        notes: notes(fs, view),
        stats: found.stats,
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
    if sb.has_incompat(incompat::RECOVER) {
        v.push("the journal needs recovery; metadata is exported as it is on disk, with the whole journal".into());
    }
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
    scan_group(c, g, gd, &mut |c, ino, inode| {
        process_inode(c, ino, inode, opts)
    });
}

/// Calls `f` for every in-use inode of group `g` (see the module comment for "in use"):
/// nothing for an INODE_UNINIT group, only the first `used_inodes` (`bg_itable_unused`)
/// inodes otherwise. An inode table outside the filesystem or unreadable is reported.
pub(crate) fn scan_group<'v>(
    c: &mut Collector<'v>,
    g: u32,
    gd: &GroupDesc,
    f: &mut dyn FnMut(&mut Collector<'v>, InodeNr, &Inode),
) {
    let sb = c.sb;
    let inode_uninit = gd.has_flag(sb, EXT4_BG_INODE_UNINIT);
    let bitmap_ok = !inode_uninit && c.check_range(gd.bg_inode_bitmap, 1).is_ok();
    if gd.used_inode_table_blocks(sb) == 0 {
        return;
    }
    if c.check_range(gd.bg_inode_table, u64::from(sb.inode_table_blocks))
        .is_err()
    {
        let kind = CorruptKind::GroupMetadata(format!(
            "group {g}: bg_inode_table {} is outside the filesystem; the group's {} inodes are skipped",
            gd.bg_inode_table, sb.s_inodes_per_group
        ));
        c.warn(kind, None, None);
        return;
    }
    let bitmap = if bitmap_ok {
        read_inode_bitmap(c, g, gd)
    } else {
        None
    };
    scan_inodes(c, g, gd, bitmap.as_deref(), f);
}

/// Calls `f` for every in-use inode of the filesystem, group by group, in inode order.
pub(crate) fn scan_all<'v>(
    c: &mut Collector<'v>,
    groups: &[GroupDesc],
    f: &mut dyn FnMut(&mut Collector<'v>, InodeNr, &Inode),
) {
    for (g, gd) in (0..c.sb.group_count).zip(groups) {
        scan_group(c, g, gd, f);
    }
}

fn read_inode_bitmap(c: &mut Collector<'_>, g: u32, gd: &GroupDesc) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; c.sb.block_size as usize];
    match c
        .view
        .read_blocks(c.sb.block_size, gd.bg_inode_bitmap, &mut buf)
    {
        Ok(()) => Some(buf),
        Err(e) => {
            let kind = CorruptKind::Unreadable(format!("group {g}: inode bitmap unreadable: {e}"));
            c.warn(kind, None, Some(gd.bg_inode_bitmap));
            None
        }
    }
}

/// Reads the used part of the inode table in chunks and calls `f` for every in-use inode.
fn scan_inodes<'v>(
    c: &mut Collector<'v>,
    g: u32,
    gd: &GroupDesc,
    bitmap: Option<&[u8]>,
    f: &mut dyn FnMut(&mut Collector<'v>, InodeNr, &Inode),
) {
    let sb = c.sb;
    let isz = usize::from(sb.s_inode_size);
    let bs = sb.block_size as usize;
    let used = gd.used_inodes(sb).min(inodes_left(sb, g));
    let chunk_blocks = (ITABLE_CHUNK_BYTES / bs).max(1) as u32;
    let mut index = 0u32;
    while index < used {
        let first_block = index / sb.inodes_per_block;
        let nblocks = chunk_blocks.min((used - index).div_ceil(sb.inodes_per_block));
        let mut buf = vec![0u8; nblocks as usize * bs];
        let table_block = gd.bg_inode_table + u64::from(first_block);
        if let Err(e) = c.view.read_blocks(sb.block_size, table_block, &mut buf) {
            let kind = CorruptKind::Unreadable(format!("group {g}: inode table unreadable: {e}"));
            c.warn(kind, None, Some(table_block));
            index += nblocks * sb.inodes_per_block;
            continue;
        }
        let count = (nblocks * sb.inodes_per_block).min(used - index);
        for k in 0..count {
            let i = index + k;
            let raw = &buf[k as usize * isz..(k as usize + 1) * isz];
            // Below s_inodes_count (see `inodes_left`), so this cannot overflow.
            let ino = g * sb.s_inodes_per_group + i + 1;
            let in_bitmap = bitmap.is_some_and(|b| b[(i / 8) as usize] & (1 << (i % 8)) != 0);
            let inode = Inode::parse(raw, sb);
            if !in_bitmap && inode.i_links_count == 0 {
                continue;
            }
            if !in_bitmap && bitmap.is_some() && !inode.is_blank() {
                c.stats.linked_but_free += 1;
            }
            f(c, InodeNr(ino), &inode);
        }
        index += count;
    }
}

/// Inodes of `s_inodes_count` numbered from group `g`'s first inode on (0 past the end).
pub(crate) fn inodes_left(sb: &Superblock, g: u32) -> u32 {
    let first = u64::from(g) * u64::from(sb.s_inodes_per_group);
    u32::try_from(u64::from(sb.s_inodes_count).saturating_sub(first)).unwrap_or(u32::MAX)
}

/// Adds the blocks one in-use inode owns.
fn process_inode(c: &mut Collector<'_>, ino: InodeNr, inode: &Inode, opts: &WalkOptions) {
    let sb = c.sb;
    if ino.0 == EXT2_BAD_INO {
        let classes = TreeClasses {
            tree: BlockClass::BadBlocksTree,
            data: None,
        };
        if !inode.has_flag(flags::EXTENTS) {
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
    if inode.i_file_acl != 0 {
        c.add_checked(
            inode.i_file_acl,
            1,
            BlockClass::Xattr,
            CorruptKind::Pointer,
            || format!("inode {ino}: i_file_acl"),
        );
    }
    if sb.s_creator_os == EXT2_OS_HURD && inode.osd1 != 0 {
        c.add_checked(
            u64::from(inode.osd1),
            1,
            BlockClass::Xattr,
            CorruptKind::Pointer,
            || format!("inode {ino}: Hurd translator"),
        );
    }
    let Some(classes) = classify(c, ino, inode, opts) else {
        return;
    };
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

/// Classes of an inode's tree and mapped blocks, or `None` to skip the inode's blocks.
fn classify(
    c: &mut Collector<'_>,
    ino: InodeNr,
    inode: &Inode,
    opts: &WalkOptions,
) -> Option<TreeClasses> {
    let sb = c.sb;
    let n = ino.0;
    let tree = if inode.has_flag(flags::EXTENTS) {
        BlockClass::ExtentTree
    } else {
        BlockClass::Indirect
    };
    let all = |class: BlockClass| {
        Some(TreeClasses {
            tree: class,
            data: Some(class),
        })
    };
    if n == EXT2_RESIZE_INO {
        return Some(TreeClasses {
            tree: BlockClass::ResizeInode,
            data: Some(BlockClass::ReservedGdt),
        });
    }
    if n == sb.s_journal_inum && sb.has_compat(compat::HAS_JOURNAL) {
        return all(BlockClass::Journal);
    }
    let quota = [
        EXT4_USR_QUOTA_INO,
        EXT4_GRP_QUOTA_INO,
        sb.s_usr_quota_inum,
        sb.s_grp_quota_inum,
        sb.s_prj_quota_inum,
    ];
    if quota.contains(&n) {
        return all(BlockClass::Quota);
    }
    if n == sb.s_orphan_file_inum && sb.has_compat(compat::ORPHAN_FILE) {
        return all(BlockClass::OrphanFile);
    }
    if n == EXT4_EXCLUDE_INO && sb.has_compat(compat::EXCLUDE_INODE) {
        return all(BlockClass::ExcludeBitmap);
    }
    if inode.has_flag(flags::SNAPFILE) && inode.file_type() == FileType::Regular {
        c.stats.snapshot_files += 1;
        return if opts.no_snapshot_files {
            None
        } else {
            all(BlockClass::SnapshotFile)
        };
    }
    if inode.has_flag(flags::EA_INODE) {
        c.stats.ea_inodes += 1;
        return all(BlockClass::EaInode);
    }
    let data = match inode.file_type() {
        FileType::Directory => Some(BlockClass::Directory),
        FileType::Symlink => Some(BlockClass::Symlink),
        _ if opts.data => Some(BlockClass::Data),
        _ => None,
    };
    Some(TreeClasses { tree, data })
}
