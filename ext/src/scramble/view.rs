//! The scrambled view itself: the device as it is, with the rewritten blocks of the
//! pre-pass, the journal's log as zeros, and every inode-table block rewritten as it is read
//! (the scrambled records of symlinks and inline directories put in; `i_block` and the
//! in-inode xattr area of the inodes not in use zeroed, their checksum stored again when it
//! verified). An inode is in use as the walk decides (`itable`): its inode bitmap bit set
//! or a non-zero link count, below the group's `bg_itable_unused` tail.

use super::inodes::{clear_unused, store_csum};
use super::Found;
use crate::bytes::le16;
use crate::fs::Filesystem;
use crate::group_desc::EXT4_BG_INODE_UNINIT;
use crate::orphan::csum::Csum;
use crate::view::BlockView;
use std::collections::BTreeMap;
use std::io;

/// Byte offset of `i_links_count` in the inode record.
const I_LINKS_COUNT: usize = 0x1A;

/// One group's inode table, as the view needs it.
struct Table {
    /// First block of the table.
    start: u64,
    /// Group number.
    group: u32,
    /// Inodes that may be in use (`s_inodes_per_group - bg_itable_unused`; 0 uninit).
    used: u32,
    /// The inode bitmap, when readable.
    bitmap: Option<Vec<u8>>,
}

/// A read-only view of the scrambled filesystem (module comment of `scramble`).
pub struct ScrambledView<'v> {
    base: &'v dyn BlockView,
    block_size: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
    records: BTreeMap<u32, Vec<u8>>,
    /// Block ranges (first, count) reading as zeros, sorted.
    zeroed: Vec<(u64, u64)>,
    /// Inode tables sorted by first block.
    tables: Vec<Table>,
    table_blocks: u64,
    inodes_per_group: u32,
    inodes_count: u32,
    inode_size: usize,
    csum: Csum,
}

impl<'v> ScrambledView<'v> {
    pub(super) fn new(
        fs: &Filesystem<&'v dyn BlockView>,
        found: Found,
        csum: Csum,
    ) -> ScrambledView<'v> {
        let sb = &fs.sb;
        let bs = sb.block_size as usize;
        let mut tables = Vec::new();
        for (g, gd) in (0..sb.group_count).zip(&fs.groups) {
            let uninit = gd.has_flag(sb, EXT4_BG_INODE_UNINIT);
            let mut bitmap = None;
            if !uninit && gd.bg_inode_bitmap < sb.s_blocks_count {
                let mut b = vec![0u8; bs];
                if fs
                    .read_blocks(crate::types::BlockNr(gd.bg_inode_bitmap), &mut b)
                    .is_ok()
                {
                    bitmap = Some(b);
                }
            }
            tables.push(Table {
                start: gd.bg_inode_table,
                group: g,
                used: gd.used_inodes(sb),
                bitmap,
            });
        }
        tables.sort_by_key(|t| t.start);
        ScrambledView {
            base: *fs.view(),
            block_size: u64::from(sb.block_size),
            blocks: found.blocks,
            records: found.records,
            zeroed: found.zeroed,
            tables,
            table_blocks: u64::from(sb.inode_table_blocks),
            inodes_per_group: sb.s_inodes_per_group,
            inodes_count: sb.s_inodes_count,
            inode_size: usize::from(sb.s_inode_size),
            csum,
        }
    }

    /// The bytes of block `b` as this view shows them, if they differ from the device's
    /// (`None`: as on the device).
    fn block(&self, b: u64) -> io::Result<Option<Vec<u8>>> {
        if let Some(v) = self.blocks.get(&b) {
            return Ok(Some(v.clone()));
        }
        let i = self.zeroed.partition_point(|z| z.0 <= b);
        if i > 0 && b - self.zeroed[i - 1].0 < self.zeroed[i - 1].1 {
            return Ok(Some(vec![0u8; self.block_size as usize]));
        }
        let t = self.tables.partition_point(|t| t.start <= b);
        if t == 0 || b - self.tables[t - 1].start >= self.table_blocks {
            return Ok(None);
        }
        let table = &self.tables[t - 1];
        let mut buf = vec![0u8; self.block_size as usize];
        self.base.read_at(b * self.block_size, &mut buf)?;
        let changed = self.itable_block(table, b - table.start, &mut buf);
        Ok(changed.then_some(buf))
    }

    /// Rewrites inode-table block `k` of `table` (module comment); true if changed.
    fn itable_block(&self, table: &Table, k: u64, buf: &mut [u8]) -> bool {
        let per_block = buf.len() / self.inode_size;
        let mut changed = false;
        for (j, raw) in buf.chunks_exact_mut(self.inode_size).enumerate() {
            let Ok(idx) = u32::try_from(k * per_block as u64 + j as u64) else {
                break;
            };
            let ino =
                u64::from(table.group) * u64::from(self.inodes_per_group) + u64::from(idx) + 1;
            let Ok(ino) = u32::try_from(ino) else { break };
            if idx >= self.inodes_per_group || ino > self.inodes_count {
                break;
            }
            if let Some(r) = self.records.get(&ino) {
                raw.copy_from_slice(r);
                changed = true;
                continue;
            }
            let in_bitmap = table
                .bitmap
                .as_ref()
                .is_some_and(|b| b[(idx / 8) as usize] & (1 << (idx % 8)) != 0);
            let in_use = idx < table.used && (in_bitmap || le16(raw, I_LINKS_COUNT) != 0);
            if !in_use {
                let before = self.csum.inode_ok(ino, raw);
                if clear_unused(raw) {
                    store_csum(&self.csum, ino, raw, before);
                    changed = true;
                }
            }
        }
        changed
    }
}

impl BlockView for ScrambledView<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.base.read_at(offset, buf)?;
        if buf.is_empty() {
            return Ok(());
        }
        let bs = self.block_size;
        let end = offset.saturating_add(buf.len() as u64);
        for b in offset / bs..end.div_ceil(bs) {
            let Some(bytes) = self.block(b)? else {
                continue;
            };
            let from = (b * bs).max(offset);
            let to = ((b + 1) * bs).min(end);
            let src = &bytes[(from - b * bs) as usize..(to - b * bs) as usize];
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.base.size()
    }
}
