//! Directory entries as the fast-commit replay changes them: kernel `ext4_find_entry` (a
//! scan of the directory's blocks), `ext4_delete_entry` (the previous entry absorbs the
//! deleted one, or the first entry of a block is emptied), `ext4_add_entry` into a linear
//! directory (`ext4_find_dest_de`, `ext4_insert_dentry`, a new block appended when every
//! block is full) or an htree leaf (`dx`), and the first block of a new directory
//! (`ext4_init_new_dir`); directory-block checksums (the 12-byte tail, crc32c seeded by the
//! directory inode).
//!
//! Htree directories are in `dx`.

use super::extents::{NewExt, Tree};
use super::inode::{EXT4_INDEX_FL, S_IFMT};
use super::store::{corrupt, FcError, Fr, Fs};
use crate::bytes::{crc32c_raw, le16, le32};
use crate::features::{compat, incompat};

/// Size of `struct ext4_dir_entry_tail`, in bytes.
pub(crate) const TAIL: usize = 12;
/// `det_reserved_ft` of the tail (`EXT4_FT_DIR_CSUM`).
const EXT4_FT_DIR_CSUM: u8 = 0xDE;

/// `ext4_dir_rec_len(name_len)`: 8 bytes and the name, rounded up to 4.
pub(crate) fn rec_len_for(name_len: usize) -> usize {
    (name_len + 8 + 3) & !3
}

fn rec_len(b: &[u8], off: usize) -> usize {
    let r = usize::from(le16(b, off + 4));
    if b.len() >= 65536 && (r == 0 || r == 65535) {
        65536
    } else {
        r
    }
}

/// `ext4_rec_len_to_disk`.
fn rec_len_disk(len: usize, bs: usize) -> u16 {
    if bs >= 65536 && len == 65536 {
        if bs == 65536 {
            65535
        } else {
            0
        }
    } else {
        len as u16
    }
}

/// The file type of a mode (`fs_umode_to_ftype`).
pub(crate) fn ftype(mode: u16) -> u8 {
    match mode & S_IFMT {
        0x8000 => 1,
        0x4000 => 2,
        0x2000 => 3,
        0x6000 => 4,
        0x1000 => 5,
        0xC000 => 6,
        0xA000 => 7,
        _ => 0,
    }
}

/// Where an entry is: the directory block and the byte offset.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub(crate) block: u64,
    pub(crate) off: usize,
    pub(crate) ino: u32,
}

/// What adding an entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Added {
    /// As the kernel adds it.
    Exact,
    /// The name is there already (`-EEXIST`).
    Exists,
}

impl Fs<'_> {
    fn csum_size(&self) -> usize {
        if self.metadata_csum() {
            TAIL
        } else {
            0
        }
    }

    /// Kernel `ext4_check_dir_entry` of the entry at `off` (`size`: the bytes of entries).
    pub(crate) fn check_de(&self, b: &[u8], off: usize, size: usize) -> Fr<usize> {
        let r = rec_len(b, off);
        let name_len = usize::from(b[off + 6]);
        let next = off + r;
        let ok = r >= rec_len_for(1)
            && r.is_multiple_of(4)
            && r >= rec_len_for(name_len)
            && next <= size
            && (next == size || next <= size - rec_len_for(1))
            && le32(b, off) <= self.sb.s_inodes_count;
        if !ok {
            return corrupt(format!("directory entry at offset {off}: rec_len {r}"));
        }
        Ok(r)
    }

    /// Kernel `ext4_dirblock_csum_set` of directory block `b` of inode seed `seed`.
    pub(crate) fn dirblock_csum_set(&mut self, b: u64, seed: u32) -> Fr<()> {
        if !self.metadata_csum() {
            return Ok(());
        }
        let bs = self.bs;
        let blk = self.block_mut(b)?;
        let t = bs - TAIL;
        if le32(blk, t) != 0 || le16(blk, t + 4) != TAIL as u16 || blk[t + 7] != EXT4_FT_DIR_CSUM {
            return corrupt(format!("directory block {b} has no checksum tail"));
        }
        let c = crc32c_raw(seed, &blk[..t]);
        blk[t + 8..t + 12].copy_from_slice(&c.to_le_bytes());
        Ok(())
    }

    /// A directory block read for entries: its checksum checked (`ext4_read_dirblock`).
    fn dir_block(&mut self, b: u64, seed: u32) -> Fr<Vec<u8>> {
        let bs = self.bs;
        let csum = self.metadata_csum();
        let blk = self.block(b)?.to_vec();
        if csum {
            let t = bs - TAIL;
            let tail_ok = le16(&blk, t + 4) == TAIL as u16 && blk[t + 7] == EXT4_FT_DIR_CSUM;
            if tail_ok && le32(&blk, t + 8) != crc32c_raw(seed, &blk[..t]) {
                return corrupt(format!("directory block {b}: checksum mismatch"));
            }
        }
        Ok(blk)
    }
}

impl Tree<'_, '_> {
    /// The directory's blocks (logical → device), `i_size` long; holes as `None`.
    fn dir_blocks(&mut self) -> Fr<Vec<Option<u64>>> {
        if self.i.inline_data() {
            return Err(FcError::Unsupported(format!(
                "directory {} holds inline data",
                self.i.ino
            )));
        }
        let bits = 10 + self.fs.sb.s_log_block_size;
        let n = self.i.size(self.fs) >> bits;
        if n > u64::from(u32::MAX) || n as usize > super::store::MAX_BLOCKS {
            return corrupt(format!("directory {}: {n} blocks", self.i.ino));
        }
        let mut out = Vec::with_capacity(n as usize);
        for l in 0..n as u32 {
            let m = self.map(l, 1)?;
            out.push((m.ret > 0).then_some(m.pblk));
        }
        Ok(out)
    }

    /// Kernel `ext4_find_entry` of `name` (entries naming inode 0 are not matches).
    pub(crate) fn find_entry(&mut self, name: &[u8]) -> Fr<Option<Slot>> {
        let seed = self.i.seed;
        for b in self.dir_blocks()?.into_iter().flatten() {
            let blk = self.fs.dir_block(b, seed)?;
            let mut off = 0;
            while off + 8 < blk.len() {
                let nl = usize::from(blk[off + 6]);
                let ino = le32(&blk, off);
                if off + 8 + nl <= blk.len() && ino != 0 && &blk[off + 8..off + 8 + nl] == name {
                    self.fs.check_de(&blk, off, blk.len())?;
                    return Ok(Some(Slot { block: b, off, ino }));
                }
                let r = rec_len(&blk, off);
                if r == 0 {
                    return corrupt(format!("directory block {b}: rec_len 0 at {off}"));
                }
                off += r;
            }
        }
        Ok(None)
    }

    /// Kernel `ext4_delete_entry` of the entry at `slot`.
    pub(crate) fn delete_entry(&mut self, slot: Slot) -> Fr<()> {
        let bs = self.fs.bs;
        let size = bs - self.fs.csum_size();
        let blk = self.fs.block(slot.block)?.to_vec();
        let (mut off, mut prev) = (0usize, None);
        while off < size {
            let r = self.fs.check_de(&blk, off, bs)?;
            if off == slot.off {
                let m = self.fs.block_mut(slot.block)?;
                match prev {
                    Some(p) => {
                        let merged = rec_len(&blk, p) + r;
                        m[p + 4..p + 6].copy_from_slice(&rec_len_disk(merged, bs).to_le_bytes());
                        m[off..off + r].fill(0);
                    }
                    None => {
                        m[off..off + 4].fill(0);
                        m[off + 6..off + r].fill(0);
                    }
                }
                self.i.inc_iversion();
                return self.fs.dirblock_csum_set(slot.block, self.i.seed);
            }
            prev = Some(off);
            off += r;
        }
        corrupt(format!(
            "directory {}: entry not found for deletion",
            self.i.ino
        ))
    }

    /// Kernel `ext4_add_entry` of `name` → inode `target` (of mode `mode`).
    pub(crate) fn add_entry(&mut self, name: &[u8], target: u32, mode: u16) -> Fr<Added> {
        let dx = self.fs.sb.has_compat(compat::DIR_INDEX) && self.i.flags() & EXT4_INDEX_FL != 0;
        if self.i.flags() & super::inode::EXT4_CASEFOLD_FL != 0
            || self.fs.sb.has_incompat(incompat::ENCRYPT)
        {
            return Err(FcError::Unsupported(format!(
                "directory {} is casefolded or encrypted",
                self.i.ino
            )));
        }
        let mut fallback = false;
        if dx {
            if let Some(a) = self.dx_add_entry(name, target, mode)? {
                return Ok(a);
            }
            if self.fs.metadata_csum() {
                return corrupt(format!(
                    "directory {} has a corrupted htree index",
                    self.i.ino
                ));
            }
            let f = self.i.flags() & !EXT4_INDEX_FL;
            self.i.set_flags(f);
            self.fs.write_inode(self.i)?;
            fallback = true;
        }
        let blocks = self.dir_blocks()?;
        let count = blocks.len();
        for (l, b) in blocks.into_iter().enumerate() {
            let Some(b) = b else {
                let nb = self.alloc_dir_block(l as u32)?;
                return self
                    .add_to_new_block(nb, name, target, mode)
                    .map(|()| Added::Exact);
            };
            match self.add_to_block(b, name, target, mode)? {
                Some(a) => return Ok(a),
                None if count == 1 && !fallback && self.fs.sb.has_compat(compat::DIR_INDEX) => {
                    return self
                        .make_indexed_dir(b, name, target, mode)
                        .map(|()| Added::Exact);
                }
                None => {}
            }
        }
        self.append_entry(name, target, mode).map(|()| Added::Exact)
    }

    /// `ext4_append` then the entry in the new block.
    pub(crate) fn append_entry(&mut self, name: &[u8], target: u32, mode: u16) -> Fr<()> {
        let size = self.i.size(self.fs);
        let nb = self.append_block(size)?;
        self.add_to_new_block(nb, name, target, mode)
    }

    /// Kernel `ext4_append` to a directory of `size` bytes (the kernel's in-memory
    /// `i_size`): the block at `size` allocated, the size grown by a block.
    pub(crate) fn append_block(&mut self, size: u64) -> Fr<u64> {
        let bits = 10 + self.fs.sb.s_log_block_size;
        let l = u32::try_from(size >> bits)
            .map_err(|_| FcError::Corrupt(format!("directory {}: too large", self.i.ino)))?;
        if self.map(l, 1)?.ret > 0 {
            return corrupt(format!(
                "directory {}: block {l} already allocated",
                self.i.ino
            ));
        }
        let nb = self.alloc_dir_block(l)?;
        self.i.set_size(size + self.fs.bs as u64);
        self.fs.write_inode(self.i)?;
        Ok(nb)
    }

    /// `ext4_bread(.., EXT4_GET_BLOCKS_CREATE)` of logical block `l`: a block from the
    /// allocator mapped there, zeroed.
    fn alloc_dir_block(&mut self, l: u32) -> Fr<u64> {
        let path = self.find(l)?;
        let goal = self.find_goal(&path, l)?;
        let b = self.fs.new_block(goal)?;
        let new = NewExt {
            lblk: l,
            raw_len: 1,
            pblk: b,
        };
        self.insert_extent(path, new, false)?;
        self.fs.put_block(b, vec![0u8; self.fs.bs])?;
        Ok(b)
    }

    /// `add_to_new_block:` one empty entry spanning the block, the tail, then the entry.
    fn add_to_new_block(&mut self, b: u64, name: &[u8], target: u32, mode: u16) -> Fr<()> {
        let bs = self.fs.bs;
        let cs = self.fs.csum_size();
        let m = self.fs.block_mut(b)?;
        m[0..4].fill(0);
        m[4..6].copy_from_slice(&rec_len_disk(bs - cs, bs).to_le_bytes());
        if cs > 0 {
            init_tail(m);
        }
        self.insert_at(b, 0, name, target, mode)
    }

    /// `add_dirent_to_buf` searching block `b`: `None` when the block has no room.
    pub(crate) fn add_to_block(
        &mut self,
        b: u64,
        name: &[u8],
        target: u32,
        mode: u16,
    ) -> Fr<Option<Added>> {
        let seed = self.i.seed;
        let blk = self.fs.dir_block(b, seed)?;
        let size = self.fs.bs - self.fs.csum_size();
        let need = rec_len_for(name.len());
        let mut off = 0;
        while off + need <= size {
            let r = self.fs.check_de(&blk, off, size)?;
            let nl = usize::from(blk[off + 6]);
            let ino = le32(&blk, off);
            if ino != 0 && &blk[off + 8..off + 8 + nl] == name {
                return Ok(Some(Added::Exists));
            }
            let free = if ino != 0 { r - rec_len_for(nl) } else { r };
            if free >= need {
                self.insert_at(b, off, name, target, mode)?;
                return Ok(Some(Added::Exact));
            }
            off += r;
        }
        Ok(None)
    }

    /// Kernel `ext4_insert_dentry` at `off` of block `b`, then the directory's times,
    /// version, inode and the block's checksum (`add_dirent_to_buf`).
    pub(crate) fn insert_at(
        &mut self,
        b: u64,
        off: usize,
        name: &[u8],
        target: u32,
        mode: u16,
    ) -> Fr<()> {
        let bs = self.fs.bs;
        let filetype = self.fs.sb.has_incompat(incompat::FILETYPE);
        let m = self.fs.block_mut(b)?;
        let mut de = off;
        let r = rec_len(m, de);
        let used = if le32(m, de) != 0 {
            rec_len_for(usize::from(m[de + 6]))
        } else {
            0
        };
        if de + r > bs || used + rec_len_for(name.len()) > r {
            return corrupt(format!("directory block {b}: no room at offset {off}"));
        }
        if le32(m, de) != 0 {
            let nlen = rec_len_for(usize::from(m[de + 6]));
            m[de + 4..de + 6].copy_from_slice(&rec_len_disk(nlen, bs).to_le_bytes());
            de += nlen;
            m[de + 4..de + 6].copy_from_slice(&rec_len_disk(r - nlen, bs).to_le_bytes());
        }
        m[de..de + 4].copy_from_slice(&target.to_le_bytes());
        m[de + 6] = name.len() as u8;
        m[de + 7] = if filetype { ftype(mode) } else { 0 };
        m[de + 8..de + 8 + name.len()].copy_from_slice(name);
        let now = self.fs.now;
        self.i.set_ctime(now);
        self.i.set_mtime(now);
        self.update_dx_flag();
        self.i.inc_iversion();
        self.fs.write_inode(self.i)?;
        self.fs.dirblock_csum_set(b, self.i.seed)
    }

    /// Kernel `ext4_update_dx_flag`: without dir_index the htree flag goes.
    pub(crate) fn update_dx_flag(&mut self) {
        if !self.fs.sb.has_compat(compat::DIR_INDEX) {
            let f = self.i.flags() & !EXT4_INDEX_FL;
            self.i.set_flags(f);
        }
    }
}

/// `ext4_initialize_dirent_tail` in the last 12 bytes of `blk`.
pub(crate) fn init_tail(blk: &mut [u8]) {
    let t = blk.len() - TAIL;
    blk[t..].fill(0);
    blk[t + 4..t + 6].copy_from_slice(&(TAIL as u16).to_le_bytes());
    blk[t + 7] = EXT4_FT_DIR_CSUM;
}

/// The first block of new directory `dir` (of parent `parent`): `.` and `..`
/// (kernel `ext4_init_dirblock`).
pub(crate) fn init_dirblock(
    bs: usize,
    dir: u32,
    parent: u32,
    filetype: bool,
    csum: bool,
) -> Vec<u8> {
    let mut b = vec![0u8; bs];
    let cs = if csum { TAIL } else { 0 };
    b[0..4].copy_from_slice(&dir.to_le_bytes());
    b[4..6].copy_from_slice(&(rec_len_for(1) as u16).to_le_bytes());
    b[6] = 1;
    b[7] = if filetype { 2 } else { 0 };
    b[8] = b'.';
    let d = rec_len_for(1);
    b[d..d + 4].copy_from_slice(&parent.to_le_bytes());
    let r = bs - cs - rec_len_for(1);
    b[d + 4..d + 6].copy_from_slice(&rec_len_disk(r, bs).to_le_bytes());
    b[d + 6] = 2;
    b[d + 7] = if filetype { 2 } else { 0 };
    b[d + 8] = b'.';
    b[d + 9] = b'.';
    if csum {
        init_tail(&mut b);
    }
    b
}

/// Kernel `ext4_init_new_dir`: link count 2, the first block allocated (`ext4_append`) and
/// filled with `.` and `..`.
pub(crate) fn init_new_dir(t: &mut Tree<'_, '_>, parent: u32) -> Fr<()> {
    t.i.set_links(2);
    let b = t.append_block(0)?;
    let fs: &mut Fs<'_> = t.fs;
    let blk = init_dirblock(
        fs.bs,
        t.i.ino,
        parent,
        fs.sb.has_incompat(incompat::FILETYPE),
        fs.metadata_csum(),
    );
    fs.put_block(b, blk)?;
    fs.dirblock_csum_set(b, t.i.seed)
}
