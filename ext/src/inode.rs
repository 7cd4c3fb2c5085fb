//! Inodes (kernel `struct ext4_inode`): the fields the walker needs and the decision of where an inode's blocks are (extent tree, indirect map, or
//! nowhere: inline data, fast symlinks, device files).

use crate::bytes::{crc32c_raw, join, le16, le32};
use crate::checksum::Check;
use crate::extent_header;
use crate::features::ro_compat;
use crate::superblock::{Superblock, EXT2_GOOD_OLD_INODE_SIZE, EXT2_OS_HURD};

/// Byte offset of `osd1` (`l_i_version`, `i_next_snapshot`, the Hurd translator) in the
/// inode record.
pub(crate) const OSD1_OFFSET: usize = 0x24;
/// Byte offset of `i_block` (the block map: extent tree root or 15 block pointers) in the
/// inode record.
pub(crate) const I_BLOCK_OFFSET: usize = 0x28;
/// Bytes of `i_block` (15 × u32).
pub(crate) const I_BLOCK_SIZE: usize = 60;
/// Byte offset of `i_file_acl_lo` (the extended-attribute block) in the inode record.
pub(crate) const I_FILE_ACL_OFFSET: usize = 0x68;

/// Byte offset of `l_i_checksum_lo` (u16) in the inode record.
const I_CHECKSUM_LO_AT: usize = 0x7C;
/// Byte offset of `i_checksum_hi` (u16), there when `i_extra_isize` ≥ 4.
const I_CHECKSUM_HI_AT: usize = 0x82;
/// Byte offset of `i_generation`.
const I_GENERATION_AT: usize = 0x64;

/// The seed of the checksums that belong to inode `ino` (its record, extent tree blocks,
/// directory blocks, orphan-file blocks): the raw crc32c of le32 `ino` then le32
/// `i_generation` from the metadata_csum seed `fs_seed` (kernel `ei->i_csum_seed`).
pub(crate) fn inode_csum_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    crc32c_raw(
        crc32c_raw(fs_seed, &ino.to_le_bytes()),
        &generation.to_le_bytes(),
    )
}

/// The metadata_csum checksum of inode record `raw` (`s_inode_size` bytes, at least 128) of
/// inode `ino`: the crc32c from [`inode_csum_seed`] of the whole record with its checksum
/// fields taken as zero, against `l_i_checksum_lo | i_checksum_hi << 16`; 16 bits only when
/// the record has no `i_checksum_hi` (128-byte inodes, `i_extra_isize` < 4). `None` for an
/// all-zero record, which is accepted as e2fsprogs does (ext4-on-disk §13). `scratch` is a
/// buffer for the bytes hashed (one crc32c call over le32 `ino`, le32 `i_generation` and the
/// record is cheaper than several over its pieces).
///
/// # Panics
/// If `raw` is shorter than 128 bytes.
pub(crate) fn inode_checksum(
    fs_seed: u32,
    ino: u32,
    raw: &[u8],
    scratch: &mut Vec<u8>,
) -> Option<Check> {
    let has_hi = raw.len() >= I_CHECKSUM_HI_AT + 2
        && usize::from(le16(raw, EXT2_GOOD_OLD_INODE_SIZE))
            >= I_CHECKSUM_HI_AT + 2 - EXT2_GOOD_OLD_INODE_SIZE;
    let lo = u32::from(le16(raw, I_CHECKSUM_LO_AT));
    if lo == 0 && raw.iter().all(|&b| b == 0) {
        return None;
    }
    scratch.clear();
    scratch.extend_from_slice(&ino.to_le_bytes());
    scratch.extend_from_slice(&raw[I_GENERATION_AT..I_GENERATION_AT + 4]);
    scratch.extend_from_slice(raw);
    scratch[8 + I_CHECKSUM_LO_AT..8 + I_CHECKSUM_LO_AT + 2].fill(0);
    let stored = if has_hi {
        scratch[8 + I_CHECKSUM_HI_AT..8 + I_CHECKSUM_HI_AT + 2].fill(0);
        lo | (u32::from(le16(raw, I_CHECKSUM_HI_AT)) << 16)
    } else {
        lo
    };
    let computed = crc32c_raw(fs_seed, scratch);
    Some(Check {
        stored,
        computed: if has_hi { computed } else { computed & 0xFFFF },
    })
}

/// `i_flags` bits (kernel `EXT4_*_FL`): `inode_flags::EXTENTS` is `EXT4_EXTENTS_FL`.
pub(crate) mod inode_flags {
    /// `EXT4_HUGE_FILE_FL`: `i_blocks` in filesystem blocks (with RO_COMPAT_HUGE_FILE).
    pub(crate) const HUGE_FILE: u32 = 0x40000;
    /// `EXT4_EXTENTS_FL`: `i_block` holds an extent tree root.
    pub(crate) const EXTENTS: u32 = 0x80000;
    /// `EXT4_EA_INODE_FL`: the inode holds an extended attribute value.
    pub(crate) const EA_INODE: u32 = 0x200000;
    /// next3 / ext4-snapshots snapshot file.
    pub(crate) const SNAPFILE: u32 = 0x0100_0000;
    /// Snapshot file deleted, kept only as a link for older snapshots.
    pub(crate) const SNAPFILE_DELETED: u32 = 0x0400_0000;
    /// `EXT4_INLINE_DATA_FL`: data in `i_block` and the `system.data` xattr.
    pub(crate) const INLINE_DATA: u32 = 0x1000_0000;
}

/// File type from `i_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    /// `S_IFREG`.
    Regular,
    /// `S_IFDIR`.
    Directory,
    /// `S_IFLNK`.
    Symlink,
    /// `S_IFCHR`.
    CharDevice,
    /// `S_IFBLK`.
    BlockDevice,
    /// `S_IFIFO`.
    Fifo,
    /// `S_IFSOCK`.
    Socket,
    /// `i_mode` type bits 0 (unused reserved inodes, the bad-blocks inode) or invalid.
    Unknown,
}

/// The fields of one inode the walker uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// `i_mode`: file type (top four bits, see [`Inode::file_type`]) and permissions.
    pub i_mode: u16,
    /// `i_size_lo | i_size_high << 32`.
    pub i_size: u64,
    /// Inode change time, seconds (the low 32 bits, signed; see [`Inode::ctime`]).
    pub i_ctime: u32,
    /// Data modification time, seconds (see [`Inode::mtime`]).
    pub i_mtime: u32,
    /// `i_dtime`: deletion time, seconds (or the next orphan's inode number).
    pub i_dtime: u32,
    /// `i_links_count`: hard links (0 for an orphan or a free inode).
    pub i_links_count: u16,
    /// `i_blocks_lo | l_i_blocks_hi << 32`, in 512-byte units unless HUGE_FILE.
    pub i_blocks: u64,
    /// `i_flags`: kernel `EXT4_*_FL` bits.
    pub i_flags: u32,
    /// osd1: `l_i_version`, or `i_next_snapshot` on snapshot files, or the Hurd translator.
    pub osd1: u32,
    /// `i_block`: the raw block map (extent tree root, 15 block pointers, inline data or a
    /// fast symlink's target).
    pub i_block: [u8; I_BLOCK_SIZE],
    /// `i_generation`: file version (the snapshot id on snapshot files).
    pub i_generation: u32,
    /// `i_file_acl_lo | l_i_file_acl_high << 32` (no high half on Hurd).
    pub i_file_acl: u64,
    /// Bytes of the large inode past the first 128, clamped to the record (0 for 128-byte
    /// records). The `_extra` fields and `i_crtime` are read only where it covers them.
    pub i_extra_isize: u16,
    /// Epoch bits (low 2) and nanoseconds (high 30) of `i_ctime`; 0 when not covered.
    pub i_ctime_extra: u32,
    /// Epoch bits and nanoseconds of `i_mtime`; 0 when not covered.
    pub i_mtime_extra: u32,
    /// Creation time, seconds; 0 when not covered (see [`Inode::crtime`]).
    pub i_crtime: u32,
    /// Epoch bits and nanoseconds of `i_crtime`; 0 when not covered.
    pub i_crtime_extra: u32,
}

/// Byte offsets of the large-inode fields (kernel `struct ext4_inode`).
const I_CTIME_EXTRA_AT: usize = 0x84;
const I_MTIME_EXTRA_AT: usize = 0x88;
const I_CRTIME_AT: usize = 0x90;
const I_CRTIME_EXTRA_AT: usize = 0x94;

/// An inode timestamp as the kernel decodes it: the 32-bit seconds field taken as signed,
/// plus the extra field's two epoch bits as bits 32..33, and its nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeTime {
    /// Seconds since 1970-01-01 00:00:00 UTC.
    pub secs: i64,
    /// Nanoseconds (0 without an extra field).
    pub nsecs: u32,
}

impl InodeTime {
    /// Decodes a seconds field and its extra field (0 when absent).
    pub fn decode(secs: u32, extra: u32) -> InodeTime {
        let epoch = i64::from(extra & 3) << 32;
        InodeTime {
            secs: i64::from(secs as i32) + epoch,
            nsecs: extra >> 2,
        }
    }
}

impl Inode {
    /// Parses an inode record; `raw` is at least 128 bytes (the caller slices the inode table
    /// by `s_inode_size`, which is validated to be ≥ 128).
    ///
    /// # Panics
    /// If `raw` is shorter than 128 bytes.
    pub fn parse(raw: &[u8], sb: &Superblock) -> Inode {
        let hurd = sb.s_creator_os == EXT2_OS_HURD;
        let mut i_block = [0u8; I_BLOCK_SIZE];
        i_block.copy_from_slice(&raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE]);
        let blocks_hi = if hurd { 0 } else { u32::from(le16(raw, 0x74)) };
        let acl_hi = if hurd { 0 } else { u32::from(le16(raw, 0x76)) };
        let room = raw.len().saturating_sub(EXT2_GOOD_OLD_INODE_SIZE);
        let extra = if room >= 2 {
            le16(raw, 0x80).min(u16::try_from(room).unwrap_or(u16::MAX))
        } else {
            0
        };
        // A field is there when i_extra_isize (clamped to the record) covers all of it.
        let field = |at: usize| {
            if at + 4 <= EXT2_GOOD_OLD_INODE_SIZE + usize::from(extra) {
                le32(raw, at)
            } else {
                0
            }
        };
        Inode {
            i_mode: le16(raw, 0x00),
            i_size: join(le32(raw, 0x04), le32(raw, 0x6C)),
            i_ctime: le32(raw, 0x0C),
            i_mtime: le32(raw, 0x10),
            i_dtime: le32(raw, 0x14),
            i_links_count: le16(raw, 0x1A),
            i_blocks: join(le32(raw, 0x1C), blocks_hi),
            i_flags: le32(raw, 0x20),
            osd1: le32(raw, OSD1_OFFSET),
            i_block,
            i_generation: le32(raw, I_GENERATION_AT),
            i_file_acl: join(le32(raw, I_FILE_ACL_OFFSET), acl_hi),
            i_extra_isize: extra,
            i_ctime_extra: field(I_CTIME_EXTRA_AT),
            i_mtime_extra: field(I_MTIME_EXTRA_AT),
            i_crtime: field(I_CRTIME_AT),
            i_crtime_extra: field(I_CRTIME_EXTRA_AT),
        }
    }

    /// The inode change time (`i_ctime` with `i_ctime_extra`).
    pub fn ctime(&self) -> InodeTime {
        InodeTime::decode(self.i_ctime, self.i_ctime_extra)
    }

    /// The data modification time (`i_mtime` with `i_mtime_extra`).
    pub fn mtime(&self) -> InodeTime {
        InodeTime::decode(self.i_mtime, self.i_mtime_extra)
    }

    /// The creation time (`i_crtime` with `i_crtime_extra`), when `i_extra_isize` covers
    /// `i_crtime` (ext4 large inodes).
    pub fn crtime(&self) -> Option<InodeTime> {
        (usize::from(self.i_extra_isize) + EXT2_GOOD_OLD_INODE_SIZE >= I_CRTIME_AT + 4)
            .then(|| InodeTime::decode(self.i_crtime, self.i_crtime_extra))
    }

    /// The file type from the top four bits of `i_mode`.
    pub fn file_type(&self) -> FileType {
        match self.i_mode & 0xF000 {
            0x8000 => FileType::Regular,
            0x4000 => FileType::Directory,
            0xA000 => FileType::Symlink,
            0x2000 => FileType::CharDevice,
            0x6000 => FileType::BlockDevice,
            0x1000 => FileType::Fifo,
            0xC000 => FileType::Socket,
            _ => FileType::Unknown,
        }
    }

    /// True if the [`inode_flags`] bit is set.
    pub(crate) fn has_flag(&self, bit: u32) -> bool {
        self.i_flags & bit != 0
    }

    /// True for a next3 / ext4-snapshots snapshot file: a regular file with the SNAPFILE
    /// `i_flags` bit (0x0100_0000). Its blocks are old copies of the filesystem's, not user
    /// data; see also [`Superblock::is_special_inode`].
    pub fn is_snapshot_file(&self) -> bool {
        self.has_flag(inode_flags::SNAPFILE) && self.file_type() == FileType::Regular
    }

    /// `i_block[n]` as a 32-bit block pointer (n < 15).
    pub fn block_ptr(&self, n: usize) -> u32 {
        le32(&self.i_block, n * 4)
    }

    /// `i_blocks` in filesystem blocks.
    pub fn blocks_in_fs_blocks(&self, sb: &Superblock) -> u64 {
        if sb.has_ro_compat(ro_compat::HUGE_FILE) && self.has_flag(inode_flags::HUGE_FILE) {
            self.i_blocks
        } else {
            self.i_blocks / (u64::from(sb.block_size) / 512)
        }
    }

    /// True if the inode record is entirely unused (mode, links and pointers all zero).
    pub fn is_blank(&self) -> bool {
        self.i_mode == 0
            && self.i_links_count == 0
            && self.i_block.iter().all(|&b| b == 0)
            && self.i_file_acl == 0
    }

    /// Where this inode's blocks are, following the kernel's rules: inline data and device
    /// files have none; symlinks are fast (target in `i_block`) unless they have blocks.
    pub(crate) fn block_map(&self, sb: &Superblock) -> BlockMap {
        if self.has_flag(inode_flags::INLINE_DATA) {
            return BlockMap::None;
        }
        match self.file_type() {
            FileType::CharDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => {
                return BlockMap::None
            }
            FileType::Symlink if self.is_fast_symlink(sb) => return BlockMap::None,
            _ => {}
        }
        if self.has_flag(inode_flags::EXTENTS) {
            BlockMap::Extents
        } else {
            BlockMap::Indirect
        }
    }

    /// Fast-symlink test: the target lives in `i_block`. An extent-flagged symlink is fast only
    /// if `i_block` does not start with an extent header; otherwise a symlink shorter than 60
    /// bytes is fast when it owns no blocks besides its xattr block.
    fn is_fast_symlink(&self, sb: &Superblock) -> bool {
        if self.has_flag(inode_flags::EXTENTS) {
            return !extent_header::has_magic(&self.i_block) && self.i_size < I_BLOCK_SIZE as u64;
        }
        if self.i_size >= I_BLOCK_SIZE as u64 {
            return false;
        }
        let ea_blocks = if self.i_file_acl != 0 {
            u64::from(sb.cluster_ratio)
        } else {
            0
        };
        self.blocks_in_fs_blocks(sb).saturating_sub(ea_blocks) == 0
    }
}

/// How an inode maps its logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockMap {
    /// No blocks (inline data, fast symlink, device, fifo, socket).
    None,
    /// An extent tree rooted in `i_block`.
    Extents,
    /// Direct, IND, DIND, TIND pointers in `i_block`.
    Indirect,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock::parse(&crate::superblock::tests::sample()).unwrap()
    }

    fn inode(mode: u16, size: u32, blocks: u32, flags_: u32) -> Inode {
        let mut raw = vec![0u8; 256];
        raw[0..2].copy_from_slice(&mode.to_le_bytes());
        raw[4..8].copy_from_slice(&size.to_le_bytes());
        raw[0x1C..0x20].copy_from_slice(&blocks.to_le_bytes());
        raw[0x20..0x24].copy_from_slice(&flags_.to_le_bytes());
        Inode::parse(&raw, &sb())
    }

    #[test]
    fn snapshot_files_are_flagged_regular_files() {
        assert!(inode(0x8180, 0, 0, inode_flags::SNAPFILE).is_snapshot_file());
        assert!(!inode(0x8180, 0, 0, 0).is_snapshot_file());
        assert!(
            !inode(0x41ED, 0, 0, inode_flags::SNAPFILE).is_snapshot_file(),
            "a directory"
        );
    }

    #[test]
    fn fast_symlink_has_no_blocks() {
        assert_eq!(inode(0xA1FF, 20, 0, 0).block_map(&sb()), BlockMap::None);
    }

    #[test]
    fn slow_symlink_is_block_mapped() {
        assert_eq!(
            inode(0xA1FF, 131, 8, 0).block_map(&sb()),
            BlockMap::Indirect
        );
        assert_eq!(inode(0xA1FF, 20, 8, 0).block_map(&sb()), BlockMap::Indirect);
    }

    #[test]
    fn extent_flagged_fast_symlink_without_header() {
        assert_eq!(
            inode(0xA1FF, 20, 0, inode_flags::EXTENTS).block_map(&sb()),
            BlockMap::None
        );
    }

    #[test]
    fn inline_data_and_devices_have_no_blocks() {
        assert_eq!(
            inode(0x81A4, 20, 0, inode_flags::INLINE_DATA).block_map(&sb()),
            BlockMap::None
        );
        assert_eq!(inode(0x2180, 0, 0, 0).block_map(&sb()), BlockMap::None);
        assert_eq!(inode(0x1180, 0, 0, 0).block_map(&sb()), BlockMap::None);
    }

    #[test]
    fn times_only_where_i_extra_isize_covers_them() {
        let mut raw = vec![0u8; 256];
        let put =
            |raw: &mut [u8], o: usize, v: u32| raw[o..o + 4].copy_from_slice(&v.to_le_bytes());
        put(&mut raw, 0x0C, 0x8000_0000); // i_ctime: negative as i32
        put(&mut raw, 0x10, 1_704_067_200); // i_mtime
        put(&mut raw, 0x84, (7 << 2) | 1); // i_ctime_extra: 7 ns, epoch 1
        put(&mut raw, 0x88, 5 << 2); // i_mtime_extra
        put(&mut raw, 0x90, 1_700_000_000); // i_crtime
        put(&mut raw, 0x94, 9 << 2); // i_crtime_extra
        raw[0x80] = 32;
        let i = Inode::parse(&raw, &sb());
        assert_eq!(
            i.ctime(),
            InodeTime {
                secs: -(1 << 31) + (1 << 32),
                nsecs: 7
            }
        );
        assert_eq!(i.mtime().nsecs, 5);
        assert_eq!(
            i.crtime(),
            Some(InodeTime {
                secs: 1_700_000_000,
                nsecs: 9
            })
        );
        // i_extra_isize 20 covers i_crtime but not i_crtime_extra; 16 not i_crtime.
        raw[0x80] = 20;
        let i = Inode::parse(&raw, &sb());
        assert_eq!(
            i.crtime().map(|t| (t.secs, t.nsecs)),
            Some((1_700_000_000, 0))
        );
        raw[0x80] = 16;
        let i = Inode::parse(&raw, &sb());
        assert_eq!((i.crtime(), i.mtime().nsecs), (None, 5));
        // Larger than the record: clamped; a 128-byte record has no extra fields.
        raw[0x80] = 0xFF;
        raw[0x81] = 0xFF;
        assert_eq!(Inode::parse(&raw, &sb()).i_extra_isize, 128);
        let i = Inode::parse(&raw[..128], &sb());
        assert_eq!((i.i_extra_isize, i.crtime(), i.i_ctime_extra), (0, None, 0));
    }

    #[test]
    fn regular_file_maps() {
        assert_eq!(
            inode(0x81A4, 20, 8, inode_flags::EXTENTS).block_map(&sb()),
            BlockMap::Extents
        );
        assert_eq!(inode(0x81A4, 20, 8, 0).block_map(&sb()), BlockMap::Indirect);
    }
}
