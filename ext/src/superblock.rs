//! The ext2/3/4 superblock (kernel `struct ext4_super_block`), 1024 bytes at byte 1024.
//!
//! [`Superblock::parse`] checks every field the walker relies on (magic, block and cluster
//! size, group geometry, inode size, descriptor size, feature bits) and derives the geometry
//! (group count, descriptor blocks). Anything it accepts can be used for arithmetic without
//! further overflow checks on these fields.
//!
//! It also refuses what e2fsprogs' `ext2fs_open` refuses (checked against e2fsprogs 1.47 with
//! byte-patched superblocks whose checksum was fixed up): a revision level above 1; with
//! metadata_csum, an `s_checksum_type` other than crc32c or an `s_checksum` that does not match
//! the bytes; without bigalloc, cluster fields that differ from the block fields; an
//! `s_inodes_count` other than group count × `s_inodes_per_group` (which catches a corrupt
//! `s_blocks_count`, the group count following from it); `s_log_groups_per_flex` above 31; with
//! meta_bg, `s_first_meta_bg` past the descriptor table. The error names the fields, so that
//! [`crate::Filesystem::open`] can report the primary unusable and suggest a backup.

use crate::bytes::{crc32c_raw, join, le16, le32};
use crate::error::{Corrupt, CorruptKind, Error};

/// Size of the on-disk superblock in bytes.
pub const SUPERBLOCK_SIZE: usize = 1024;
/// Byte offset of the primary superblock on the device.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// `s_magic`.
pub const EXT4_SUPER_MAGIC: u16 = 0xEF53;
/// Largest `s_log_block_size`: 64 KiB blocks (the kernel's EXT4_MAX_BLOCK_LOG_SIZE).
pub const MAX_LOG_BLOCK_SIZE: u32 = 6;
/// Largest `s_log_cluster_size` we accept (bigalloc clusters up to 2^30 bytes, the kernel's
/// limit of 2^16 blocks per cluster at 64 KiB blocks).
pub const MAX_LOG_CLUSTER_SIZE: u32 = 20;

/// COMPAT feature bits (`s_feature_compat`).
pub mod compat {
    pub const HAS_JOURNAL: u32 = 0x4;
    pub const EXT_ATTR: u32 = 0x8;
    pub const RESIZE_INODE: u32 = 0x10;
    pub const DIR_INDEX: u32 = 0x20;
    /// Snapshots: inode 9 owns the exclude bitmaps.
    pub const EXCLUDE_INODE: u32 = 0x80;
    /// Snapshots: group descriptors carry `bg_exclude_bitmap`.
    pub const EXCLUDE_BITMAP: u32 = 0x100;
    pub const SPARSE_SUPER2: u32 = 0x200;
    pub const FAST_COMMIT: u32 = 0x400;
    pub const ORPHAN_FILE: u32 = 0x1000;
}

/// INCOMPAT feature bits (`s_feature_incompat`).
pub mod incompat {
    pub const COMPRESSION: u32 = 0x1;
    pub const FILETYPE: u32 = 0x2;
    pub const RECOVER: u32 = 0x4;
    pub const JOURNAL_DEV: u32 = 0x8;
    pub const META_BG: u32 = 0x10;
    pub const EXTENTS: u32 = 0x40;
    pub const BIT64: u32 = 0x80;
    pub const MMP: u32 = 0x100;
    pub const FLEX_BG: u32 = 0x200;
    pub const EA_INODE: u32 = 0x400;
    pub const DIRDATA: u32 = 0x1000;
    pub const CSUM_SEED: u32 = 0x2000;
    pub const LARGEDIR: u32 = 0x4000;
    pub const INLINE_DATA: u32 = 0x8000;
    pub const ENCRYPT: u32 = 0x10000;
    pub const CASEFOLD: u32 = 0x20000;
    /// Every INCOMPAT bit whose block layout this crate understands.
    pub const KNOWN: u32 = FILETYPE
        | RECOVER
        | META_BG
        | EXTENTS
        | BIT64
        | MMP
        | FLEX_BG
        | EA_INODE
        | DIRDATA
        | CSUM_SEED
        | LARGEDIR
        | INLINE_DATA
        | ENCRYPT
        | CASEFOLD;
}

/// RO_COMPAT feature bits (`s_feature_ro_compat`).
pub mod ro_compat {
    pub const SPARSE_SUPER: u32 = 0x1;
    pub const LARGE_FILE: u32 = 0x2;
    pub const HUGE_FILE: u32 = 0x8;
    pub const GDT_CSUM: u32 = 0x10;
    pub const DIR_NLINK: u32 = 0x20;
    pub const EXTRA_ISIZE: u32 = 0x40;
    /// next3 / ext4-snapshots: the filesystem holds snapshots.
    pub const HAS_SNAPSHOT: u32 = 0x80;
    pub const QUOTA: u32 = 0x100;
    pub const BIGALLOC: u32 = 0x200;
    pub const METADATA_CSUM: u32 = 0x400;
    pub const REPLICA: u32 = 0x800;
    pub const READONLY: u32 = 0x1000;
    pub const PROJECT: u32 = 0x2000;
    pub const SHARED_BLOCKS: u32 = 0x4000;
    pub const VERITY: u32 = 0x8000;
    pub const ORPHAN_PRESENT: u32 = 0x10000;
}

/// Byte offset of `s_checksum`, the end of the bytes it covers.
pub const S_CHECKSUM_OFFSET: usize = 0x3FC;
/// `s_checksum_type` for crc32c, the only one defined.
pub const EXT4_CRC32C_CHKSUM: u8 = 1;
/// Largest `s_log_groups_per_flex` e2fsprogs accepts.
pub const MAX_LOG_GROUPS_PER_FLEX: u8 = 31;

/// `s_creator_os` value for GNU Hurd (changes the meaning of osd1/osd2 inode fields).
pub const EXT2_OS_HURD: u32 = 1;

/// A validated superblock with the derived geometry.
#[derive(Clone, Debug)]
pub struct Superblock {
    /// The raw 1024 bytes, as read.
    pub raw: Vec<u8>,
    pub s_inodes_count: u32,
    /// `s_blocks_count_lo | s_blocks_count_hi << 32` (hi only with INCOMPAT_64BIT).
    pub s_blocks_count: u64,
    pub s_first_data_block: u32,
    pub s_log_block_size: u32,
    pub s_log_cluster_size: u32,
    pub s_blocks_per_group: u32,
    pub s_clusters_per_group: u32,
    pub s_inodes_per_group: u32,
    pub s_mtime: u32,
    pub s_wtime: u32,
    pub s_state: u16,
    pub s_creator_os: u32,
    pub s_rev_level: u32,
    pub s_first_ino: u32,
    pub s_inode_size: u16,
    pub s_block_group_nr: u16,
    pub s_feature_compat: u32,
    pub s_feature_incompat: u32,
    pub s_feature_ro_compat: u32,
    pub s_uuid: [u8; 16],
    pub s_reserved_gdt_blocks: u16,
    pub s_journal_inum: u32,
    pub s_last_orphan: u32,
    /// Descriptor size in bytes: 32, or `s_desc_size` with INCOMPAT_64BIT.
    pub desc_size: u32,
    pub s_first_meta_bg: u32,
    pub s_mkfs_time: u32,
    pub s_mmp_block: u64,
    pub s_log_groups_per_flex: u8,
    /// Checksum algorithm (1 = crc32c), meaningful with metadata_csum.
    pub s_checksum_type: u8,
    /// CRC-32C of the first 0x3FC bytes, meaningful with metadata_csum.
    pub s_checksum: u32,
    pub s_snapshot_inum: u32,
    pub s_snapshot_id: u32,
    pub s_snapshot_list: u32,
    pub s_usr_quota_inum: u32,
    pub s_grp_quota_inum: u32,
    pub s_prj_quota_inum: u32,
    pub s_backup_bgs: [u32; 2],
    pub s_orphan_file_inum: u32,
    /// Block size in bytes (1024 << `s_log_block_size`).
    pub block_size: u32,
    /// Blocks per allocation cluster (1 unless bigalloc).
    pub cluster_ratio: u32,
    /// Number of block groups.
    pub group_count: u32,
    /// Group descriptors per descriptor block.
    pub descs_per_block: u32,
    /// Blocks of one full copy of the group descriptor table.
    pub desc_blocks: u32,
    /// Inodes per inode-table block.
    pub inodes_per_block: u32,
    /// Blocks of one group's inode table.
    pub inode_table_blocks: u32,
}

impl Superblock {
    /// Parses and validates a superblock from its 1024 bytes.
    ///
    /// # Errors
    /// [`Error::NotExt`] when the magic is wrong; [`Error::Corrupt`] when a geometry field is
    /// impossible, fields contradict each other or the metadata_csum checksum does not match
    /// (see the module comment); [`Error::Unsupported`] for unknown INCOMPAT bits,
    /// compression, or an external journal device.
    pub fn parse(raw: &[u8]) -> Result<Superblock, Error> {
        if raw.len() < SUPERBLOCK_SIZE {
            return Err(bad("superblock shorter than 1024 bytes"));
        }
        let b = &raw[..SUPERBLOCK_SIZE];
        if le16(b, 0x38) != EXT4_SUPER_MAGIC {
            return Err(Error::NotExt(format!(
                "bad magic {:#06x} (want {EXT4_SUPER_MAGIC:#06x})",
                le16(b, 0x38)
            )));
        }
        let incompat = le32(b, 0x60);
        let is64 = incompat & incompat::BIT64 != 0;
        let rev = le32(b, 0x4C);
        if rev > 1 {
            return Err(bad(&format!(
                "s_rev_level {rev} is above 1 (EXT2_DYNAMIC_REV)"
            )));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        let mut sb = Superblock {
            raw: b.to_vec(),
            s_inodes_count: le32(b, 0x00),
            s_blocks_count: join(le32(b, 0x04), if is64 { le32(b, 0x150) } else { 0 }),
            s_first_data_block: le32(b, 0x14),
            s_log_block_size: le32(b, 0x18),
            s_log_cluster_size: le32(b, 0x1C),
            s_blocks_per_group: le32(b, 0x20),
            s_clusters_per_group: le32(b, 0x24),
            s_inodes_per_group: le32(b, 0x28),
            s_mtime: le32(b, 0x2C),
            s_wtime: le32(b, 0x30),
            s_state: le16(b, 0x3A),
            s_creator_os: le32(b, 0x48),
            s_rev_level: rev,
            s_first_ino: if rev == 0 { 11 } else { le32(b, 0x54) },
            s_inode_size: if rev == 0 { 128 } else { le16(b, 0x58) },
            s_block_group_nr: le16(b, 0x5A),
            s_feature_compat: if rev == 0 { 0 } else { le32(b, 0x5C) },
            s_feature_incompat: if rev == 0 { 0 } else { incompat },
            s_feature_ro_compat: if rev == 0 { 0 } else { le32(b, 0x64) },
            s_uuid: uuid,
            s_reserved_gdt_blocks: le16(b, 0xCE),
            s_journal_inum: le32(b, 0xE0),
            s_last_orphan: le32(b, 0xE8),
            desc_size: if is64 { u32::from(le16(b, 0xFE)) } else { 32 },
            s_first_meta_bg: le32(b, 0x104),
            s_mkfs_time: le32(b, 0x108),
            s_mmp_block: crate::bytes::le64(b, 0x168),
            s_log_groups_per_flex: b[0x174],
            s_checksum_type: b[0x175],
            s_checksum: le32(b, S_CHECKSUM_OFFSET),
            s_snapshot_inum: le32(b, 0x180),
            s_snapshot_id: le32(b, 0x184),
            s_snapshot_list: le32(b, 0x190),
            s_usr_quota_inum: le32(b, 0x240),
            s_grp_quota_inum: le32(b, 0x244),
            s_prj_quota_inum: le32(b, 0x26C),
            s_backup_bgs: [le32(b, 0x24C), le32(b, 0x250)],
            s_orphan_file_inum: le32(b, 0x280),
            block_size: 0,
            cluster_ratio: 1,
            group_count: 0,
            descs_per_block: 0,
            desc_blocks: 0,
            inodes_per_block: 0,
            inode_table_blocks: 0,
        };
        sb.verify_checksum()?;
        sb.check_features()?;
        sb.derive_geometry()?;
        sb.check_consistency()?;
        Ok(sb)
    }

    /// With metadata_csum: `s_checksum_type` must be crc32c and `s_checksum` the raw CRC-32C
    /// (seed ~0, no final inversion) of the bytes before it, as the kernel and e2fsprogs check.
    fn verify_checksum(&self) -> Result<(), Error> {
        if !self.has_ro_compat(ro_compat::METADATA_CSUM) {
            return Ok(());
        }
        if self.s_checksum_type != EXT4_CRC32C_CHKSUM {
            return Err(bad(&format!(
                "s_checksum_type {} is not 1 (crc32c)",
                self.s_checksum_type
            )));
        }
        let computed = crc32c_raw(!0, &self.raw[..S_CHECKSUM_OFFSET]);
        if self.s_checksum != computed {
            return Err(bad(&format!(
                "s_checksum {:#010x} does not match the superblock (crc32c {computed:#010x})",
                self.s_checksum
            )));
        }
        Ok(())
    }

    /// Cross-field checks of e2fsprogs' `ext2fs_open` (module comment), after the geometry.
    fn check_consistency(&self) -> Result<(), Error> {
        if !self.has_ro_compat(ro_compat::BIGALLOC) {
            let (lc, lb) = (self.s_log_cluster_size, self.s_log_block_size);
            if lc != lb {
                return Err(bad(&format!(
                    "s_log_cluster_size {lc} != s_log_block_size {lb} without bigalloc"
                )));
            }
            let (cpg, bpg) = (self.s_clusters_per_group, self.s_blocks_per_group);
            if cpg != bpg {
                return Err(bad(&format!(
                    "s_clusters_per_group {cpg} != s_blocks_per_group {bpg} without bigalloc"
                )));
            }
        }
        let inodes = u64::from(self.group_count) * u64::from(self.s_inodes_per_group);
        if inodes != u64::from(self.s_inodes_count) {
            return Err(bad(&format!(
                "s_inodes_count {} is not the {} groups (from s_blocks_count {}, \
                 s_first_data_block {}, s_blocks_per_group {}) × s_inodes_per_group {} = {inodes}",
                self.s_inodes_count,
                self.group_count,
                self.s_blocks_count,
                self.s_first_data_block,
                self.s_blocks_per_group,
                self.s_inodes_per_group
            )));
        }
        if self.s_log_groups_per_flex > MAX_LOG_GROUPS_PER_FLEX {
            return Err(bad(&format!(
                "s_log_groups_per_flex {} is above {MAX_LOG_GROUPS_PER_FLEX}",
                self.s_log_groups_per_flex
            )));
        }
        if self.has_incompat(incompat::META_BG) && self.s_first_meta_bg > self.desc_blocks {
            return Err(bad(&format!(
                "s_first_meta_bg {} is past the {} descriptor blocks",
                self.s_first_meta_bg, self.desc_blocks
            )));
        }
        Ok(())
    }

    fn check_features(&self) -> Result<(), Error> {
        let incompat = self.s_feature_incompat;
        if incompat & incompat::JOURNAL_DEV != 0 {
            return Err(Error::Unsupported(
                "this is an external journal device, not a filesystem".into(),
            ));
        }
        if incompat & incompat::COMPRESSION != 0 {
            return Err(Error::Unsupported("INCOMPAT_COMPRESSION is set".into()));
        }
        let unknown = incompat & !incompat::KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "unknown INCOMPAT feature bits {unknown:#x}"
            )));
        }
        Ok(())
    }

    fn derive_geometry(&mut self) -> Result<(), Error> {
        if self.s_log_block_size > MAX_LOG_BLOCK_SIZE {
            return Err(bad(&format!(
                "s_log_block_size {} > 6",
                self.s_log_block_size
            )));
        }
        self.block_size = 1024 << self.s_log_block_size;
        let bs = self.block_size;
        if self.has_ro_compat(ro_compat::BIGALLOC) {
            let lc = self.s_log_cluster_size;
            if lc < self.s_log_block_size || lc > MAX_LOG_CLUSTER_SIZE {
                return Err(bad(&format!("s_log_cluster_size {lc} is invalid")));
            }
            self.cluster_ratio = 1 << (lc - self.s_log_block_size);
            let cpg = self.s_clusters_per_group;
            if cpg == 0 || cpg > bs * 8 {
                return Err(bad(&format!("s_clusters_per_group {cpg} is invalid")));
            }
            let bpg = u64::from(cpg) * u64::from(self.cluster_ratio);
            if u64::from(self.s_blocks_per_group) != bpg {
                return Err(bad(&format!(
                    "s_blocks_per_group {} != clusters_per_group × cluster ratio",
                    self.s_blocks_per_group
                )));
            }
        } else if self.s_blocks_per_group == 0 || self.s_blocks_per_group > bs * 8 {
            return Err(bad(&format!(
                "s_blocks_per_group {} is invalid",
                self.s_blocks_per_group
            )));
        }
        if self.s_blocks_per_group < 8 {
            return Err(bad(&format!(
                "s_blocks_per_group {} is too small",
                self.s_blocks_per_group
            )));
        }
        let ipg = self.s_inodes_per_group;
        if ipg == 0 || ipg > bs * 8 {
            return Err(bad(&format!("s_inodes_per_group {ipg} is invalid")));
        }
        let isz = u32::from(self.s_inode_size);
        if isz < 128 || isz > bs || !isz.is_power_of_two() {
            return Err(bad(&format!("s_inode_size {isz} is invalid")));
        }
        let ds = self.desc_size;
        let ds_ok = ds == 32 || ((64..=1024).contains(&ds) && ds.is_power_of_two() && ds <= bs);
        if !ds_ok {
            return Err(bad(&format!("s_desc_size {ds} is invalid")));
        }
        let first = u64::from(self.s_first_data_block);
        if first >= self.s_blocks_count {
            return Err(bad(&format!(
                "s_first_data_block {first} >= s_blocks_count {}",
                self.s_blocks_count
            )));
        }
        if self.s_blocks_count.checked_mul(u64::from(bs)).is_none() {
            return Err(bad("filesystem size in bytes overflows 64 bits"));
        }
        let groups = (self.s_blocks_count - first).div_ceil(u64::from(self.s_blocks_per_group));
        self.group_count = u32::try_from(groups)
            .map_err(|_| bad(&format!("{groups} block groups is more than 2^32")))?;
        self.descs_per_block = bs / ds;
        self.desc_blocks = self.group_count.div_ceil(self.descs_per_block);
        self.inodes_per_block = bs / isz;
        self.inode_table_blocks = ipg.div_ceil(self.inodes_per_block);
        Ok(())
    }

    /// True if the COMPAT bit is set.
    pub fn has_compat(&self, bit: u32) -> bool {
        self.s_feature_compat & bit != 0
    }

    /// True if the INCOMPAT bit is set.
    pub fn has_incompat(&self, bit: u32) -> bool {
        self.s_feature_incompat & bit != 0
    }

    /// True if the RO_COMPAT bit is set.
    pub fn has_ro_compat(&self, bit: u32) -> bool {
        self.s_feature_ro_compat & bit != 0
    }

    /// True if group descriptors carry checksums (gdt_csum or metadata_csum), which is when
    /// the lazy-init flags and `bg_itable_unused` are meaningful.
    pub fn has_group_desc_csum(&self) -> bool {
        self.has_ro_compat(ro_compat::GDT_CSUM) || self.has_ro_compat(ro_compat::METADATA_CSUM)
    }

    /// Filesystem size in bytes (`s_blocks_count` × block size; validated not to overflow).
    pub fn size_bytes(&self) -> u64 {
        self.s_blocks_count * u64::from(self.block_size)
    }

    /// First block of group `g`.
    pub fn group_first_block(&self, g: u32) -> u64 {
        u64::from(self.s_first_data_block) + u64::from(g) * u64::from(self.s_blocks_per_group)
    }

    /// Number of blocks in group `g` (the last group may be short).
    pub fn group_block_count(&self, g: u32) -> u64 {
        let start = self.group_first_block(g);
        (self.s_blocks_count - start.min(self.s_blocks_count))
            .min(u64::from(self.s_blocks_per_group))
    }

    /// Block number holding byte `offset` of the device.
    pub fn block_of_byte(&self, offset: u64) -> u64 {
        offset / u64::from(self.block_size)
    }
}

fn bad(msg: &str) -> Error {
    Error::Corrupt(Corrupt::new(CorruptKind::Superblock(msg.to_string())))
}

#[cfg(test)]
mod tests;
