//! Inodes as the replay's kernel code holds them: `iget` reads the record and refuses what
//! `ext4_iget` refuses during a fast-commit replay (checksums and block maps are not checked
//! then), the in-memory copy is changed, and `mark_inode_dirty` writes it back as
//! `ext4_fill_raw_inode` encodes it (so a few fields are normalised: `i_blocks` and
//! HUGE_FILE, the high halves a feature does not allow, a zero `i_extra_isize` of a large
//! inode becomes 32, the owner's high halves of a deleted inode), then the checksum.

use super::store::{corrupt, FcError, Fr, Fs, Stamp, BG_INODE_TABLE};
use crate::bytes::{crc32c_raw, le16, le32};
use crate::features::{incompat, ro_compat};
use crate::superblock::{EXT2_GOOD_OLD_INODE_SIZE, EXT2_OS_HURD};

/// `i_flags` bits the replay looks at (kernel `EXT4_*_FL`).
pub(crate) const EXT4_INDEX_FL: u32 = 0x1000;
pub(crate) const EXT4_IMMUTABLE_FL: u32 = 0x10;
pub(crate) const EXT4_APPEND_FL: u32 = 0x20;
pub(crate) const EXT4_HUGE_FILE_FL: u32 = 0x40000;
pub(crate) const EXT4_EXTENTS_FL: u32 = 0x80000;
pub(crate) const EXT4_EA_INODE_FL: u32 = 0x200000;
pub(crate) const EXT4_INLINE_DATA_FL: u32 = 0x1000_0000;
pub(crate) const EXT4_CASEFOLD_FL: u32 = 0x4000_0000;
/// `sizeof(struct ext4_inode)` less the first 128 bytes: the kernel's `i_extra_isize` for a
/// large inode recorded with 0.
const DEFAULT_EXTRA_ISIZE: usize = 32;
/// Byte offsets in the inode record.
pub(crate) const I_MODE: usize = 0x00;
pub(crate) const I_SIZE_LO: usize = 0x04;
pub(crate) const I_CTIME: usize = 0x0C;
pub(crate) const I_MTIME: usize = 0x10;
pub(crate) const I_DTIME: usize = 0x14;
pub(crate) const I_LINKS: usize = 0x1A;
pub(crate) const I_BLOCKS_LO: usize = 0x1C;
pub(crate) const I_FLAGS: usize = 0x20;
pub(crate) const I_VERSION_LO: usize = 0x24;
pub(crate) const I_BLOCK: usize = 0x28;
pub(crate) const I_GENERATION: usize = 0x64;
pub(crate) const I_FILE_ACL_LO: usize = 0x68;
pub(crate) const I_SIZE_HIGH: usize = 0x6C;
const I_BLOCKS_HIGH: usize = 0x74;
const I_FILE_ACL_HIGH: usize = 0x76;
const I_UID_HIGH: usize = 0x78;
const I_GID_HIGH: usize = 0x7A;
const I_CHECKSUM_LO: usize = 0x7C;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;
const I_CTIME_EXTRA: usize = 0x84;
const I_MTIME_EXTRA: usize = 0x88;
const I_VERSION_HI: usize = 0x98;

/// `i_mode` file types.
pub(crate) const S_IFMT: u16 = 0xF000;
pub(crate) const S_IFDIR: u16 = 0x4000;
pub(crate) const S_IFREG: u16 = 0x8000;
pub(crate) const S_IFLNK: u16 = 0xA000;

/// Why `iget` failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Iget {
    /// `-ESTALE`: a deleted or never used inode.
    Stale,
    /// Any other refusal (the message says what).
    Bad(String),
}

/// An inode as the kernel holds it in memory between `iget` and `iput`.
#[derive(Clone, Debug)]
pub(crate) struct MemInode {
    pub(crate) ino: u32,
    /// The record as it would be written now.
    pub(crate) raw: Vec<u8>,
    /// The kernel's `ei->i_extra_isize`.
    extra: usize,
    /// The checksum seed (`ei->i_csum_seed`) of `iget`.
    pub(crate) seed: u32,
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

impl MemInode {
    pub(crate) fn mode(&self) -> u16 {
        le16(&self.raw, I_MODE)
    }
    pub(crate) fn is_dir(&self) -> bool {
        self.mode() & S_IFMT == S_IFDIR
    }
    pub(crate) fn is_reg(&self) -> bool {
        self.mode() & S_IFMT == S_IFREG
    }
    pub(crate) fn flags(&self) -> u32 {
        le32(&self.raw, I_FLAGS)
    }
    pub(crate) fn set_flags(&mut self, f: u32) {
        put32(&mut self.raw, I_FLAGS, f);
    }
    pub(crate) fn links(&self) -> u16 {
        le16(&self.raw, I_LINKS)
    }
    pub(crate) fn set_links(&mut self, n: u16) {
        put16(&mut self.raw, I_LINKS, n);
    }
    /// `i_disksize` (kernel `ext4_isize`: the high half only for regular files or with
    /// largedir).
    pub(crate) fn size(&self, fs: &Fs<'_>) -> u64 {
        let lo = u64::from(le32(&self.raw, I_SIZE_LO));
        if fs.sb.has_incompat(incompat::LARGEDIR) || self.is_reg() {
            lo | u64::from(le32(&self.raw, I_SIZE_HIGH)) << 32
        } else {
            lo
        }
    }
    pub(crate) fn set_size(&mut self, size: u64) {
        put32(&mut self.raw, I_SIZE_LO, size as u32);
        put32(&mut self.raw, I_SIZE_HIGH, (size >> 32) as u32);
    }
    /// `i_blocks` in 512-byte units (kernel `ext4_inode_blocks`).
    pub(crate) fn blocks512(&self, fs: &Fs<'_>) -> u64 {
        let lo = u64::from(le32(&self.raw, I_BLOCKS_LO));
        if !fs.sb.has_ro_compat(ro_compat::HUGE_FILE) {
            return lo;
        }
        let b = lo | u64::from(le16(&self.raw, I_BLOCKS_HIGH)) << 32;
        if self.flags() & EXT4_HUGE_FILE_FL != 0 {
            b << (fs.sb.s_log_block_size + 1)
        } else {
            b
        }
    }
    /// Sets `i_blocks` (512-byte units), as kernel `ext4_inode_blocks_set` encodes it.
    pub(crate) fn set_blocks512(&mut self, fs: &Fs<'_>, n: u64) -> Fr<()> {
        let flags = self.flags();
        if n <= u64::from(u32::MAX) {
            put32(&mut self.raw, I_BLOCKS_LO, n as u32);
            put16(&mut self.raw, I_BLOCKS_HIGH, 0);
            self.set_flags(flags & !EXT4_HUGE_FILE_FL);
            return Ok(());
        }
        if !fs.sb.has_ro_compat(ro_compat::HUGE_FILE) {
            return corrupt(format!("inode {}: {n} sectors without huge_file", self.ino));
        }
        let (n, f) = if n <= 0xFFFF_FFFF_FFFF {
            (n, flags & !EXT4_HUGE_FILE_FL)
        } else {
            (n >> (fs.sb.s_log_block_size + 1), flags | EXT4_HUGE_FILE_FL)
        };
        put32(&mut self.raw, I_BLOCKS_LO, n as u32);
        put16(&mut self.raw, I_BLOCKS_HIGH, (n >> 32) as u16);
        self.set_flags(f);
        Ok(())
    }
    pub(crate) fn file_acl(&self, fs: &Fs<'_>) -> u64 {
        let lo = u64::from(le32(&self.raw, I_FILE_ACL_LO));
        if fs.sb.has_incompat(incompat::BIT64) {
            lo | u64::from(le16(&self.raw, I_FILE_ACL_HIGH)) << 32
        } else {
            lo
        }
    }
    pub(crate) fn set_file_acl(&mut self, v: u64) {
        put32(&mut self.raw, I_FILE_ACL_LO, v as u32);
        put16(&mut self.raw, I_FILE_ACL_HIGH, (v >> 32) as u16);
    }
    pub(crate) fn set_dtime(&mut self, t: u32) {
        put32(&mut self.raw, I_DTIME, t);
    }
    fn fits(&self, field_end: usize) -> bool {
        field_end <= EXT2_GOOD_OLD_INODE_SIZE + self.extra
    }
    fn set_time(&mut self, at: usize, extra_at: usize, t: Stamp) {
        put32(&mut self.raw, at, t.secs);
        if self.raw.len() > EXT2_GOOD_OLD_INODE_SIZE && self.fits(extra_at + 4) {
            put32(&mut self.raw, extra_at, t.extra);
        }
    }
    /// `inode_set_ctime_current`.
    pub(crate) fn set_ctime(&mut self, t: Stamp) {
        self.set_time(I_CTIME, I_CTIME_EXTRA, t);
    }
    pub(crate) fn set_mtime(&mut self, t: Stamp) {
        self.set_time(I_MTIME, I_MTIME_EXTRA, t);
    }
    /// `inode_inc_iversion`: `l_i_version` and `i_version_hi` as one counter, plus one.
    pub(crate) fn inc_iversion(&mut self) {
        let big = self.raw.len() > EXT2_GOOD_OLD_INODE_SIZE && self.fits(I_VERSION_HI + 4);
        let hi = if big {
            le32(&self.raw, I_VERSION_HI)
        } else {
            0
        };
        let v = (u64::from(hi) << 32 | u64::from(le32(&self.raw, I_VERSION_LO))).wrapping_add(1);
        put32(&mut self.raw, I_VERSION_LO, v as u32);
        if big {
            put32(&mut self.raw, I_VERSION_HI, (v >> 32) as u32);
        }
    }
    /// The 60 bytes of `i_block`.
    pub(crate) fn i_block(&self) -> &[u8] {
        &self.raw[I_BLOCK..I_BLOCK + 60]
    }
    pub(crate) fn i_block_mut(&mut self) -> &mut [u8] {
        &mut self.raw[I_BLOCK..I_BLOCK + 60]
    }
    /// The kernel's `ei->i_extra_isize`.
    pub(crate) fn extra_isize(&self) -> usize {
        self.extra
    }
    /// Kernel `ext4_inode_is_fast_symlink` (without ea_inode): a symlink owning no block
    /// but its extended attribute block.
    pub(crate) fn is_fast_symlink(&self, fs: &Fs<'_>) -> bool {
        let ea = if self.file_acl(fs) != 0 {
            u64::from(fs.sb.block_size) >> 9
        } else {
            0
        };
        self.mode() & S_IFMT == S_IFLNK
            && !self.inline_data()
            && self.blocks512(fs).wrapping_sub(ea) == 0
    }
    pub(crate) fn has_extents(&self) -> bool {
        self.flags() & EXT4_EXTENTS_FL != 0
    }
    pub(crate) fn inline_data(&self) -> bool {
        self.flags() & EXT4_INLINE_DATA_FL != 0
    }
}

impl Fs<'_> {
    /// Block and offset of inode `ino`'s record (kernel `__ext4_get_inode_loc`).
    pub(crate) fn inode_loc(&mut self, ino: u32) -> Fr<(u64, usize)> {
        if ino < 2 || ino > self.sb.s_inodes_count {
            return corrupt(format!("inode {ino} is out of range"));
        }
        let (g, idx) = self.inode_group(ino);
        let table = self.desc_get(g, BG_INODE_TABLE)?;
        let isz = usize::from(self.sb.s_inode_size);
        let byte = idx as u64 * isz as u64;
        let block = table.saturating_add(byte / self.bs as u64);
        if table == 0 || block >= self.sb.s_blocks_count {
            return corrupt(format!("inode {ino}: inode table at block {table}"));
        }
        Ok((block, (byte % self.bs as u64) as usize))
    }

    /// The record of inode `ino`, as stored now.
    pub(crate) fn raw_inode(&mut self, ino: u32) -> Fr<Vec<u8>> {
        let (b, off) = self.inode_loc(ino)?;
        let isz = usize::from(self.sb.s_inode_size);
        Ok(self.block(b)?[off..off + isz].to_vec())
    }

    /// Stores `raw` as inode `ino`'s record, bytes as they are.
    pub(crate) fn put_raw_inode(&mut self, ino: u32, raw: &[u8]) -> Fr<()> {
        let (b, off) = self.inode_loc(ino)?;
        self.block_mut(b)?[off..off + raw.len()].copy_from_slice(raw);
        Ok(())
    }

    /// True for the inodes a normal `iget` refuses (kernel `is_special_ino`).
    fn special_ino(&self, ino: u32) -> bool {
        let sb = &self.sb;
        (ino < sb.s_first_ino && ino != 2)
            || [
                sb.s_usr_quota_inum,
                sb.s_grp_quota_inum,
                sb.s_prj_quota_inum,
            ]
            .contains(&ino)
            || (sb.s_orphan_file_inum != 0 && ino == sb.s_orphan_file_inum)
    }

    /// Kernel `ext4_iget(EXT4_IGET_NORMAL)` during a fast-commit replay: the inode, or why
    /// the kernel refuses it; only read errors and bounds are errors.
    pub(crate) fn iget(&mut self, ino: u32) -> Fr<Result<MemInode, Iget>> {
        if self.special_ino(ino) || ino < 2 || ino > self.sb.s_inodes_count {
            return Ok(Err(Iget::Bad(format!("inode {ino} is not a normal inode"))));
        }
        let raw = match self.raw_inode(ino) {
            Ok(r) => r,
            Err(FcError::Corrupt(m)) => return Ok(Err(Iget::Bad(m))),
            Err(e) => return Err(e),
        };
        let isz = raw.len();
        let mut extra = 0;
        if isz > EXT2_GOOD_OLD_INODE_SIZE {
            extra = usize::from(le16(&raw, I_EXTRA_ISIZE));
            if EXT2_GOOD_OLD_INODE_SIZE + extra > isz || extra & 3 != 0 {
                return Ok(Err(Iget::Bad(format!(
                    "inode {ino}: i_extra_isize {extra}"
                ))));
            }
        }
        let mut i = MemInode {
            ino,
            seed: self.inode_seed(ino, le32(&raw, I_GENERATION)),
            raw,
            extra,
        };
        if let Some(why) = self.iget_refusal(&i) {
            return Ok(Err(why));
        }
        if isz > EXT2_GOOD_OLD_INODE_SIZE && i.extra == 0 {
            i.extra = DEFAULT_EXTRA_ISIZE.min(isz - EXT2_GOOD_OLD_INODE_SIZE);
        }
        Ok(Ok(i))
    }

    /// What `ext4_iget` refuses in inode `i` once read.
    fn iget_refusal(&self, i: &MemInode) -> Option<Iget> {
        let ino = i.ino;
        let mode = i.mode();
        if i.links() == 0 {
            return Some(Iget::Stale);
        }
        let size = u64::from(le32(&i.raw, I_SIZE_LO))
            | if self.sb.has_incompat(incompat::LARGEDIR) || i.is_reg() {
                u64::from(le32(&i.raw, I_SIZE_HIGH)) << 32
            } else {
                0
            };
        let max = (u64::from(u32::MAX)) << (10 + self.sb.s_log_block_size);
        let bad = |m: String| Some(Iget::Bad(format!("inode {ino}: {m}")));
        if size > max {
            return bad(format!("i_size {size}"));
        }
        let flags = i.flags();
        if !self.sb.has_compat(crate::features::compat::DIR_INDEX)
            && self.metadata_csum()
            && flags & EXT4_INDEX_FL != 0
        {
            return bad("htree directory without dir_index".into());
        }
        let acl = i.file_acl(self);
        if acl != 0
            && !(acl > u64::from(self.sb.s_first_data_block) && acl < self.sb.s_blocks_count)
        {
            return bad(format!("extended attribute block {acl}"));
        }
        if flags & EXT4_EA_INODE_FL != 0 {
            return bad("unexpected EA_INODE flag".into());
        }
        if flags & EXT4_CASEFOLD_FL != 0 && !self.sb.has_incompat(incompat::CASEFOLD) {
            return bad("casefold flag without casefold".into());
        }
        match mode & S_IFMT {
            S_IFREG | S_IFDIR | 0x2000 | 0x6000 | 0x1000 | 0xC000 => None,
            S_IFLNK => self.symlink_refusal(i, size),
            _ => bad(format!("bogus i_mode {mode:o}")),
        }
    }

    fn symlink_refusal(&self, i: &MemInode, size: u64) -> Option<Iget> {
        let flags = i.flags();
        let bad = |m: &str| Some(Iget::Bad(format!("inode {}: {m}", i.ino)));
        if flags & (EXT4_IMMUTABLE_FL | EXT4_APPEND_FL) != 0 {
            return bad("immutable or append-only symlink");
        }
        if i.is_fast_symlink(self) {
            let len = i
                .i_block()
                .iter()
                .take(size as usize + 1)
                .take_while(|&&c| c != 0)
                .count();
            if size == 0 || size >= 60 || len as u64 != size {
                return bad("invalid fast symlink length");
            }
        }
        None
    }

    /// Kernel `ext4_mark_inode_dirty`: the in-memory inode `i` written to its record
    /// (module comment), checksum included.
    pub(crate) fn write_inode(&mut self, i: &MemInode) -> Fr<()> {
        let mut m = i.clone();
        m.set_blocks512(self, i.blocks512(self))?;
        m.set_size(i.size(self));
        let hurd = self.sb.s_creator_os == EXT2_OS_HURD;
        if !hurd {
            let acl = i.file_acl(self);
            put16(&mut m.raw, I_FILE_ACL_HIGH, (acl >> 32) as u16);
        }
        if le32(&m.raw, I_DTIME) != 0 {
            put16(&mut m.raw, I_UID_HIGH, 0);
            put16(&mut m.raw, I_GID_HIGH, 0);
        }
        if m.raw.len() > EXT2_GOOD_OLD_INODE_SIZE && m.extra != 0 && !hurd {
            put16(&mut m.raw, I_EXTRA_ISIZE, m.extra as u16);
        }
        self.inode_csum_set(i.ino, &mut m.raw, m.extra);
        self.put_raw_inode(i.ino, &m.raw)
    }

    /// Kernel `ext4_inode_csum_set` for inode `ino` (`extra`: its `i_extra_isize`), the seed
    /// taken from the record's generation.
    pub(crate) fn inode_csum_set(&self, ino: u32, raw: &mut [u8], extra: usize) {
        if !self.metadata_csum() || self.sb.s_creator_os != 0 {
            return;
        }
        let seed = self.inode_seed(ino, le32(raw, I_GENERATION));
        let isz = raw.len();
        let mut c = crc32c_raw(seed, &raw[..I_CHECKSUM_LO]);
        c = crc32c_raw(c, &[0, 0]);
        c = crc32c_raw(c, &raw[I_CHECKSUM_LO + 2..EXT2_GOOD_OLD_INODE_SIZE]);
        let hi_fits = I_CHECKSUM_HI + 2 <= EXT2_GOOD_OLD_INODE_SIZE + extra;
        if isz > EXT2_GOOD_OLD_INODE_SIZE {
            c = crc32c_raw(c, &raw[EXT2_GOOD_OLD_INODE_SIZE..I_CHECKSUM_HI]);
            let mut off = I_CHECKSUM_HI;
            if hi_fits {
                c = crc32c_raw(c, &[0, 0]);
                off += 2;
            }
            c = crc32c_raw(c, &raw[off..]);
        }
        put16(raw, I_CHECKSUM_LO, c as u16);
        if isz > EXT2_GOOD_OLD_INODE_SIZE && hi_fits {
            put16(raw, I_CHECKSUM_HI, (c >> 16) as u16);
        }
    }
}
