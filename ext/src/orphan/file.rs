//! The orphan file (COMPAT_ORPHAN_FILE, inode `s_orphan_file_inum`): `i_size / block_size`
//! blocks, each an array of `(block_size - 8) / 4` inode numbers (0: a free slot) followed
//! by a tail `{ob_magic 0x0b10ca04, ob_checksum}` (kernel `struct ext4_orphan_block_tail`);
//! with metadata_csum the checksum covers the entries, seeded with the orphan file's inode
//! number, generation and the block's physical number. The kernel refuses to mount when a
//! block's magic or checksum is wrong; orphan processing stops before the file then.

use super::csum::ORPHAN_TAIL;
use super::edits::Edits;
use super::{stop, Stop};
use crate::blockmap::inode_runs;
use crate::bytes::le32;
use crate::collect::RunKind;
use crate::features::compat;
use crate::inode::Inode;
use crate::types::InodeNr;
use crate::view::BlockView;

/// `ob_magic` (kernel `EXT4_ORPHAN_BLOCK_MAGIC`).
const EXT4_ORPHAN_BLOCK_MAGIC: u32 = 0x0B10_CA04;

/// The orphan file's blocks, validated.
pub(super) struct OrphanFile {
    /// Its inode.
    pub(super) ino: InodeNr,
    gen: u32,
    /// Its blocks as runs (first physical block, blocks), in file order.
    runs: Vec<(u64, u64)>,
}

impl OrphanFile {
    /// The orphan file of the filesystem, its blocks validated (module comment); `None`
    /// without COMPAT_ORPHAN_FILE.
    ///
    /// # Errors
    /// A bad inode number, size, map, magic or checksum.
    pub(super) fn open<V: BlockView>(ed: &Edits<'_, V>) -> Result<Option<OrphanFile>, Stop> {
        let sb = &ed.fs.sb;
        if !sb.has_compat(compat::ORPHAN_FILE) {
            return Ok(None);
        }
        let ino = InodeNr(sb.s_orphan_file_inum);
        let bad = |why: String| stop(Some(ino), None, None, format!("orphan file: {why}"));
        let inode = Inode::parse(&ed.read_inode(ino)?, sb);
        let bs = u64::from(sb.block_size);
        if !inode.i_size.is_multiple_of(bs) || inode.i_size / bs > sb.s_blocks_count {
            return Err(bad(format!(
                "i_size {} is not a whole number of blocks of the filesystem",
                inode.i_size
            )));
        }
        let count = inode.i_size / bs;
        let (mut runs, warnings) = inode_runs(ed.fs, ino, &inode);
        if let Some(w) = warnings.into_iter().next() {
            return Err(w);
        }
        runs.retain(|r| matches!(r.kind, RunKind::Data { .. }) && r.logical < count);
        runs.sort_by_key(|r| r.logical);
        let mut next = 0u64;
        let mut out = Vec::with_capacity(runs.len());
        for r in runs {
            if r.logical != next {
                return Err(bad(format!("block {next} of the file is not mapped")));
            }
            let len = r.len.min(count - next);
            out.push((r.physical, len));
            next += len;
        }
        if next != count {
            return Err(bad(format!("block {next} of the file is not mapped")));
        }
        let f = OrphanFile {
            ino,
            gen: inode.i_generation,
            runs: out,
        };
        for b in f.blocks() {
            f.check(ed, b)?;
        }
        Ok(Some(f))
    }

    /// The physical blocks of the file, in order.
    pub(super) fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|&(p, n)| p..p + n)
    }

    /// Block `b` of the file has its magic and (metadata_csum) checksum.
    fn check<V: BlockView>(&self, ed: &Edits<'_, V>, b: u64) -> Result<(), Stop> {
        let buf = ed.read(Some(self.ino), b)?;
        let tail = buf.len() - ORPHAN_TAIL;
        let bad = |why: &str| {
            stop(
                Some(self.ino),
                Some(b),
                Some(tail as u32),
                format!("orphan file block: {why}"),
            )
        };
        if le32(&buf, tail) != EXT4_ORPHAN_BLOCK_MAGIC {
            return Err(bad("bad ob_magic"));
        }
        if ed
            .csum
            .orphan_block(self.ino.0, self.gen, b, &buf)
            .is_some_and(|c| c != le32(&buf, tail + 4))
        {
            return Err(bad("it fails its checksum"));
        }
        Ok(())
    }

    /// The non-zero entries of block `b`: (slot, inode number).
    pub(super) fn entries<V: BlockView>(
        &self,
        ed: &Edits<'_, V>,
        b: u64,
    ) -> Result<Vec<(usize, u32)>, Stop> {
        let buf = ed.read(Some(self.ino), b)?;
        let n = (buf.len() - ORPHAN_TAIL) / 4;
        Ok((0..n)
            .map(|i| (i, le32(&buf, 4 * i)))
            .filter(|e| e.1 != 0)
            .collect())
    }

    /// Clears slot `slot` of block `b` (in `ed`'s transaction), its checksum recomputed.
    pub(super) fn clear<V: BlockView>(
        &self,
        ed: &mut Edits<'_, V>,
        b: u64,
        slot: usize,
    ) -> Result<(), Stop> {
        let mut buf = ed.read(Some(self.ino), b)?;
        buf[4 * slot..4 * slot + 4].fill(0);
        let tail = buf.len() - ORPHAN_TAIL;
        if let Some(c) = ed.csum.orphan_block(self.ino.0, self.gen, b, &buf) {
            buf[tail + 4..tail + 8].copy_from_slice(&c.to_le_bytes());
        }
        ed.put(b, buf);
        Ok(())
    }
}
