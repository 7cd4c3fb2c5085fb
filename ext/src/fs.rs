//! Opening a filesystem: superblock (primary, or a backup chosen with `-b`/`-B`), then the
//! group descriptor table found through it.
//!
//! Opening reads only the superblock and the descriptor table. Sizes are bounded before
//! anything is allocated: the table must fit in the source. When the primary superblock is
//! unusable (it does not parse, fails its metadata_csum checksum or contradicts itself, see
//! [`Superblock::parse`]), the error names a backup superblock that does parse, for `-b`.
//!
//! **A filesystem larger than its source.** A source shorter than `s_blocks_count` says is
//! either a truncated dump or a superblock whose block count is corrupt (a forged
//! `s_blocks_count_hi` can claim millions of groups on a small image). Refusing would lose the
//! useful image of a truncated dump, so it is opened, but only the groups that lie inside the
//! source are read and walked: those that start inside it, plus, with flex_bg, the rest of the
//! last flex group starting inside it (its groups keep their bitmaps and inode tables at its
//! start, inside the source). Everything of the other groups would read as zeros. They are not
//! given descriptors ([`Filesystem::groups`] is shorter than the group count, see
//! [`Filesystem::groups_past_source`]) and the walker reports them as one warning. So memory
//! for descriptors, per-group work and warnings is bounded by the source size, not by what the
//! superblock claims. A descriptor table larger than the whole source is still an error: no
//! truncated dump lacks part of its own primary descriptor table.

use crate::error::{Corrupt, CorruptKind, Error};
use crate::features::incompat;
use crate::group_desc::GroupDesc;
use crate::layout::{desc_block_location, group_base_block};
use crate::superblock::{Superblock, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::types::{BlockNr, InodeNr};
use crate::view::BlockView;

/// Block sizes probed for backup superblocks, in bytes.
const PROBE_BLOCK_SIZES: [u32; 7] = [1024, 2048, 4096, 8192, 16384, 32768, 65536];

/// How to find the superblock.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Block number of a backup superblock (e2image `-b`), in units of the block size.
    pub superblock: Option<BlockNr>,
    /// Block size in bytes to interpret `superblock` with (e2image `-B`); probed when absent.
    pub block_size: Option<u32>,
}

/// An opened filesystem: validated superblock and group descriptors over a block view.
pub struct Filesystem<V> {
    view: V,
    /// The superblock in use.
    pub sb: Superblock,
    /// Block the superblock was read from (the primary's is 0 or 1).
    pub sb_block: BlockNr,
    /// One descriptor per group inside the source: every group, unless the source is shorter
    /// than the filesystem (module comment).
    pub(crate) groups: Vec<GroupDesc>,
}

impl<V: BlockView> Filesystem<V> {
    /// Opens the filesystem on `view`.
    ///
    /// # Errors
    /// [`Error::BadPrimary`] (with a suggested backup) when the primary superblock does not
    /// parse; the superblock's own errors for a backup; [`Error::Io`] on read failures;
    /// [`Error::Corrupt`] when the descriptor table cannot fit in the source.
    pub fn open(view: V, opts: &OpenOptions) -> Result<Filesystem<V>, Error> {
        let (sb, sb_block) = match opts.superblock {
            None => {
                let sb = open_primary(&view)?;
                let block = BlockNr(group_base_block(&sb, 0));
                (sb, block)
            }
            Some(b) => open_backup(&view, b, opts.block_size)?,
        };
        let kept = groups_in_source(&sb, view.size());
        let groups = read_group_descs(&view, &sb, sb_block.0, kept)?;
        Ok(Filesystem {
            view,
            sb,
            sb_block,
            groups,
        })
    }

    /// Opens the filesystem on `view` like [`open`](Self::open), except that when the
    /// primary superblock is unusable ([`Error::BadPrimary`]) and no backup was chosen in
    /// `opts`, it opens through the first backup superblock that validates (probed at the
    /// usual places of groups 1, 3, 5, 7, 9, 25, 27, 49 and 81 for every block size) and says
    /// which one in [`BackupUsed`]. The primary superblock's bytes are not changed: a walk
    /// still lists its block, so an export copies it as it is. With `opts.superblock` set,
    /// that backup is used as with [`open`](Self::open), never another.
    ///
    /// # Errors
    /// As [`open`](Self::open); [`Error::BadPrimary`] when no backup validates either.
    pub fn open_with_fallback(
        view: V,
        opts: &OpenOptions,
    ) -> Result<(Filesystem<V>, Option<BackupUsed>), Error> {
        if opts.superblock.is_some() {
            return Filesystem::open(view, opts).map(|fs| (fs, None));
        }
        let reason = match open_primary(&view) {
            Ok(_) => return Filesystem::open(view, opts).map(|fs| (fs, None)),
            Err(Error::BadPrimary { reason, .. }) => reason,
            Err(e) => return Err(e),
        };
        for (block, bs) in backup_candidates(&view) {
            let Ok((sb, sb_block)) = open_backup(&view, block, Some(bs)) else {
                continue;
            };
            let kept = groups_in_source(&sb, view.size());
            let Ok(groups) = read_group_descs(&view, &sb, sb_block.0, kept) else {
                continue;
            };
            let used = BackupUsed {
                block,
                block_size: bs,
                primary_error: reason,
            };
            let fs = Filesystem {
                view,
                sb,
                sb_block,
                groups,
            };
            return Ok((fs, Some(used)));
        }
        Err(Error::BadPrimary {
            reason,
            suggestion: None,
        })
    }

    /// Number of groups left out because they lie past the end of the source (module
    /// comment); 0 when the source holds the whole filesystem.
    pub fn groups_past_source(&self) -> u32 {
        self.sb.group_count.saturating_sub(self.groups.len() as u32)
    }

    /// The underlying view.
    pub fn view(&self) -> &V {
        &self.view
    }

    /// Consumes the filesystem, returning its view.
    pub fn into_view(self) -> V {
        self.view
    }

    /// Reads blocks `[first, first + buf.len() / block_size)` (`buf` holds whole blocks).
    ///
    /// # Errors
    /// [`Error::Io`] naming the byte offset.
    pub fn read_blocks(&self, first: BlockNr, buf: &mut [u8]) -> Result<(), Error> {
        let bs = self.sb.block_size;
        let first = first.0;
        self.view
            .read_blocks(bs, first, buf)
            .map_err(|source| Error::Io {
                offset: first.saturating_mul(u64::from(bs)),
                source,
            })
    }

    /// Block numbers of the descriptor table this filesystem was opened with (the primary's,
    /// or the backup's with `-b`), in order: `desc_blocks` of them, meta_bg aware.
    pub fn descriptor_blocks(&self) -> Vec<BlockNr> {
        (0..self.sb.desc_blocks)
            .map(|i| BlockNr(desc_block_location(&self.sb, self.sb_block.0, i)))
            .collect()
    }

    /// Reads the raw record of inode `ino` (`s_inode_size` bytes).
    ///
    /// # Errors
    /// [`Error::Corrupt`] when `ino` is out of range or its group's inode table pointer is
    /// outside the filesystem; [`Error::Io`] on read failure.
    pub fn read_inode_raw(&self, ino: InodeNr) -> Result<Vec<u8>, Error> {
        let sb = &self.sb;
        let bad =
            |what: String| Error::Corrupt(Corrupt::new(CorruptKind::Inode(what)).at_inode(ino));
        let ino = ino.0;
        if ino == 0 || ino > sb.s_inodes_count {
            return Err(bad(format!(
                "inode number out of range 1..={}",
                sb.s_inodes_count
            )));
        }
        let g = (ino - 1) / sb.s_inodes_per_group;
        let idx = (ino - 1) % sb.s_inodes_per_group;
        let Some(gd) = self.groups.get(g as usize) else {
            return Err(bad(format!("group {g} lies past the end of the source")));
        };
        let isz = u64::from(sb.s_inode_size);
        let table_end = gd
            .bg_inode_table
            .checked_add(u64::from(sb.inode_table_blocks));
        if gd.bg_inode_table == 0 || table_end.is_none_or(|e| e > sb.s_blocks_count) {
            return Err(bad(format!(
                "group {g}: bg_inode_table {} is outside the filesystem",
                gd.bg_inode_table
            )));
        }
        let offset = gd.bg_inode_table * u64::from(sb.block_size) + u64::from(idx) * isz;
        let mut buf = vec![0u8; isz as usize];
        self.view
            .read_at(offset, &mut buf)
            .map_err(|source| Error::Io { offset, source })?;
        Ok(buf)
    }
}

fn read_sb_at<V: BlockView>(view: &V, offset: u64) -> Result<Superblock, Error> {
    let mut buf = vec![0u8; SUPERBLOCK_SIZE];
    view.read_at(offset, &mut buf)
        .map_err(|source| Error::Io { offset, source })?;
    Superblock::parse(&buf)
}

fn open_primary<V: BlockView>(view: &V) -> Result<Superblock, Error> {
    match read_sb_at(view, SUPERBLOCK_OFFSET) {
        Ok(sb) => Ok(sb),
        Err(e @ Error::Io { .. }) | Err(e @ Error::Unsupported(_)) => Err(e),
        Err(e) => Err(Error::BadPrimary {
            reason: e.to_string(),
            suggestion: probe_backup(view),
        }),
    }
}

/// The backup superblock used by [`Filesystem::open_with_fallback`] because the primary is
/// unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupUsed {
    /// Block of the backup superblock, in units of `block_size`.
    pub block: BlockNr,
    /// The block size it was read with, in bytes.
    pub block_size: u32,
    /// Why the primary superblock was refused.
    pub primary_error: String,
}

/// Groups whose backup superblocks are probed: those of sparse_super up to 81 (group 1 is
/// also sparse_super2's default first backup).
const PROBE_GROUPS: [u64; 9] = [1, 3, 5, 7, 9, 25, 27, 49, 81];

/// Backup superblocks that parse and sit where their geometry puts them, at e2fsprogs'
/// default geometry (8 × block size blocks per group): (block, block size in bytes).
fn backup_candidates<V: BlockView>(view: &V) -> Vec<(BlockNr, u32)> {
    let mut out = Vec::new();
    for bs in PROBE_BLOCK_SIZES {
        for g in PROBE_GROUPS {
            let block = g * u64::from(bs) * 8 + u64::from(bs == 1024);
            let Ok(sb) = read_sb_at(view, block * u64::from(bs)) else {
                continue;
            };
            let at_home = u32::try_from(g)
                .is_ok_and(|g| g < sb.group_count && sb.group_first_block(g) == block);
            if sb.block_size == bs && at_home {
                out.push((BlockNr(block), bs));
            }
        }
    }
    out
}

/// Looks for group 1's backup superblock for each candidate block size (e2fsprogs' default
/// geometry: 8 × block size blocks per group): (its block, the block size in bytes).
fn probe_backup<V: BlockView>(view: &V) -> Option<(BlockNr, u32)> {
    for bs in PROBE_BLOCK_SIZES {
        let block = u64::from(bs) * 8 + u64::from(bs == 1024);
        let Ok(sb) = read_sb_at(view, block * u64::from(bs)) else {
            continue;
        };
        if sb.block_size == bs && sb.group_first_block(1) == block {
            return Some((BlockNr(block), bs));
        }
    }
    None
}

fn open_backup<V: BlockView>(
    view: &V,
    block: BlockNr,
    bs: Option<u32>,
) -> Result<(Superblock, BlockNr), Error> {
    let sizes: Vec<u32> = match bs {
        Some(bs) => vec![bs],
        None => PROBE_BLOCK_SIZES.to_vec(),
    };
    let mut last = None;
    for bs in sizes {
        let Some(offset) = block.0.checked_mul(u64::from(bs)) else {
            continue;
        };
        match read_sb_at(view, offset) {
            Ok(sb) if sb.block_size == bs => return Ok((sb, block)),
            Ok(sb) => {
                last = Some(Error::NotExt(format!(
                    "superblock at block {block} says block size {} (read with {bs})",
                    sb.block_size
                )))
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::NotExt(format!("no superblock at block {block}"))))
}

/// Upper bound for the descriptor table: it must fit in the source, and we never allocate
/// more than 1 GiB for it (2^24 groups of 64 bytes is a 2 PiB filesystem at 4 KiB blocks).
const MAX_GDT_BYTES: u64 = 1 << 30;

/// Number of groups whose descriptors are read and walked for a source of `source_bytes`
/// bytes: all when the source holds the whole filesystem; otherwise those starting inside it
/// (at least group 0) and, with flex_bg, the rest of the last flex group starting inside it,
/// as far as their bitmaps and inode tables could fit in the source (module comment).
fn groups_in_source(sb: &Superblock, source_bytes: u64) -> u32 {
    let bs = u64::from(sb.block_size);
    let source_blocks = source_bytes.div_ceil(bs);
    if source_blocks >= sb.s_blocks_count {
        return sb.group_count;
    }
    let bpg = u64::from(sb.s_blocks_per_group);
    let first = u64::from(sb.s_first_data_block);
    let starting = source_blocks.saturating_sub(first).div_ceil(bpg).max(1);
    let mut kept = starting;
    if sb.has_incompat(incompat::FLEX_BG) && sb.s_log_groups_per_flex > 0 {
        // s_log_groups_per_flex <= 31 (Superblock::parse).
        let flex = 1u64 << sb.s_log_groups_per_flex;
        let flex_end = starting.div_ceil(flex).saturating_mul(flex);
        // Each group needs two bitmaps and its inode table inside the source.
        let per_group = 2 + u64::from(sb.inode_table_blocks);
        kept = flex_end.min(starting.saturating_add(source_blocks / per_group));
    }
    u32::try_from(kept.min(u64::from(sb.group_count))).unwrap_or(sb.group_count)
}

/// Reads the descriptors of the first `groups` groups, verifying their checksums.
fn read_group_descs<V: BlockView>(
    view: &V,
    sb: &Superblock,
    sb_block: u64,
    groups: u32,
) -> Result<Vec<GroupDesc>, Error> {
    let bs = u64::from(sb.block_size);
    let gdt_bytes = u64::from(sb.desc_blocks) * bs;
    if gdt_bytes > MAX_GDT_BYTES || gdt_bytes > view.size() {
        return Err(Error::bad_superblock(&format!(
            "{} groups need a {gdt_bytes}-byte descriptor table, more than the source holds ({} bytes)",
            sb.group_count,
            view.size()
        )));
    }
    let groups = groups.min(sb.group_count);
    let needed = groups.div_ceil(sb.descs_per_block);
    let mut table = vec![0u8; needed as usize * bs as usize];
    let mut i = 0u32;
    while i < needed {
        // Coalesce descriptor blocks that are contiguous on disk into one read.
        let start = desc_block_location(sb, sb_block, i);
        let mut n = 1u32;
        while i + n < needed && desc_block_location(sb, sb_block, i + n) == start + u64::from(n) {
            n += 1;
        }
        let lo = i as usize * bs as usize;
        let hi = (i + n) as usize * bs as usize;
        let offset = start.saturating_mul(bs);
        view.read_at(offset, &mut table[lo..hi])
            .map_err(|source| Error::Io { offset, source })?;
        i += n;
    }
    let ds = sb.desc_size as usize;
    Ok((0..groups as usize)
        .map(|g| GroupDesc::parse_verified(&table[g * ds..(g + 1) * ds], sb, g as u32))
        .collect())
}
