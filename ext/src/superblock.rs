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

use crate::bytes::{crc32c_raw, join, le16, le32, le64};
use crate::error::Error;
use crate::features::{incompat, ro_compat};
use edit::{
    S_CHECKSUM_OFFSET, S_FEATURE_COMPAT_OFFSET, S_FEATURE_INCOMPAT_OFFSET,
    S_FEATURE_RO_COMPAT_OFFSET, S_MAGIC_OFFSET, S_STATE_OFFSET,
};

mod edit;
mod special;

pub use edit::{SuperblockBytes, LAST_MOUNTED_MAX};

/// Size of the on-disk superblock (`struct ext4_super_block`), in bytes.
pub const SUPERBLOCK_SIZE: usize = 1024;
/// Byte offset of the primary superblock on the device, whatever the block size.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// `s_magic` of every ext2/3/4 superblock (kernel `EXT4_SUPER_MAGIC`).
pub const EXT4_SUPER_MAGIC: u16 = 0xEF53;
/// `s_state` bit: cleanly unmounted (kernel `EXT2_VALID_FS`).
pub const EXT2_VALID_FS: u16 = 0x1;

/// `s_rev_level` of the original format (fixed inode size and first inode).
const EXT2_GOOD_OLD_REV: u32 = 0;
/// `s_rev_level` with dynamic inode sizes and feature bits; the highest there is.
const EXT2_DYNAMIC_REV: u32 = 1;
/// `s_first_ino` of a revision 0 filesystem (kernel `EXT2_GOOD_OLD_FIRST_INO`).
const EXT2_GOOD_OLD_FIRST_INO: u32 = 11;
/// Inode record size of a revision 0 filesystem, and the base every larger inode record
/// starts with, in bytes (kernel `EXT2_GOOD_OLD_INODE_SIZE`).
pub(crate) const EXT2_GOOD_OLD_INODE_SIZE: usize = 128;
/// Descriptor size without INCOMPAT_64BIT, in bytes (kernel `EXT2_MIN_DESC_SIZE`).
const EXT2_MIN_DESC_SIZE: u32 = 32;
/// Largest `s_log_block_size`: 64 KiB blocks (the kernel's EXT4_MAX_BLOCK_LOG_SIZE).
const MAX_LOG_BLOCK_SIZE: u32 = 6;
/// Largest `s_log_cluster_size` we accept (bigalloc clusters up to 2^30 bytes, the kernel's
/// limit of 2^16 blocks per cluster at 64 KiB blocks).
const MAX_LOG_CLUSTER_SIZE: u32 = 20;
/// Byte offset of `s_checksum_seed` (u32, meaningful with INCOMPAT_CSUM_SEED).
const S_CHECKSUM_SEED_OFFSET: usize = 0x270;
/// `s_checksum_type` for crc32c, the only one defined (kernel `EXT4_CRC32C_CHKSUM`).
pub(crate) const EXT4_CRC32C_CHKSUM: u8 = 1;
/// Largest `s_log_groups_per_flex` e2fsprogs accepts.
const MAX_LOG_GROUPS_PER_FLEX: u8 = 31;

/// `s_creator_os` value for GNU Hurd (changes the meaning of osd1/osd2 inode fields).
pub(crate) const EXT2_OS_HURD: u32 = 1;

/// The `s_checksum` that the superblock bytes `raw` (at least `S_CHECKSUM_OFFSET`, 0x3FC,
/// bytes) should carry with metadata_csum: the raw CRC-32C (seed ~0, no final inversion) of
/// the bytes before it, as the kernel (`ext4_superblock_csum`) and e2fsprogs compute it.
///
/// # Panics
/// If `raw` is shorter than 0x3FC bytes.
pub(crate) fn superblock_checksum(raw: &[u8]) -> u32 {
    crc32c_raw(!0, &raw[..S_CHECKSUM_OFFSET])
}

/// A validated superblock (kernel `struct ext4_super_block`) with the derived geometry.
///
/// Fields keep the kernel's names and units; `_lo`/`_hi` halves are joined. Counts of blocks
/// and block numbers are in filesystem blocks of [`block_size`](Self::block_size) bytes.
#[derive(Clone, Debug, Default)]
pub struct Superblock {
    /// The raw 1024 bytes, as read.
    pub raw: Vec<u8>,
    /// `s_inodes_count`: inodes in the filesystem (validated: group count ×
    /// `s_inodes_per_group`).
    pub s_inodes_count: u32,
    /// `s_blocks_count_lo | s_blocks_count_hi << 32` (hi only with INCOMPAT_64BIT): blocks in
    /// the filesystem.
    pub s_blocks_count: u64,
    /// `s_first_data_block`: block of group 0's start (1 with 1 KiB blocks, else 0).
    pub s_first_data_block: u32,
    /// `s_log_block_size`: block size is `1024 << s_log_block_size` bytes.
    pub s_log_block_size: u32,
    /// `s_log_cluster_size`: cluster size is `1024 << s_log_cluster_size` bytes (bigalloc).
    pub s_log_cluster_size: u32,
    /// `s_blocks_per_group`: blocks per block group.
    pub s_blocks_per_group: u32,
    /// `s_clusters_per_group`: clusters per block group (= blocks without bigalloc).
    pub s_clusters_per_group: u32,
    /// `s_inodes_per_group`: inodes per block group.
    pub s_inodes_per_group: u32,
    /// `s_mtime`: last mount time, seconds since the epoch.
    pub s_mtime: u32,
    /// `s_wtime`: last write time, seconds since the epoch.
    pub s_wtime: u32,
    /// `s_state`: [`EXT2_VALID_FS`] when cleanly unmounted, plus error bits.
    pub s_state: u16,
    /// `s_creator_os`: 0 Linux, 1 Hurd, ...
    pub s_creator_os: u32,
    /// `s_rev_level`: 0 (original) or 1 (dynamic inode sizes and features).
    pub s_rev_level: u32,
    /// `s_first_ino`: first non-reserved inode (11 on revision 0).
    pub s_first_ino: u32,
    /// `s_inode_size`: inode record size in bytes (128 on revision 0).
    pub s_inode_size: u16,
    /// `s_block_group_nr`: group holding this superblock copy.
    pub s_block_group_nr: u16,
    /// `s_feature_compat`: [`compat`](crate::compat) bits (0 on revision 0).
    pub s_feature_compat: u32,
    /// `s_feature_incompat`: [`incompat`] bits (0 on revision 0).
    pub s_feature_incompat: u32,
    /// `s_feature_ro_compat`: [`ro_compat`] bits (0 on revision 0).
    pub s_feature_ro_compat: u32,
    /// `s_uuid`: the filesystem's UUID.
    pub s_uuid: [u8; 16],
    /// `s_reserved_gdt_blocks`: GDT blocks reserved for growth after each GDT copy.
    pub s_reserved_gdt_blocks: u16,
    /// `s_journal_uuid`: the UUID of the external journal device; all zero for an internal
    /// journal (see [`has_external_journal`](Self::has_external_journal)).
    pub s_journal_uuid: [u8; 16],
    /// `s_journal_inum`: the journal's inode with COMPAT_HAS_JOURNAL.
    pub s_journal_inum: u32,
    /// `s_journal_dev`: device number of the external journal (a hint; the UUID decides).
    pub s_journal_dev: u32,
    /// `s_last_orphan`: head of the orphan inode list.
    pub s_last_orphan: u32,
    /// Descriptor size in bytes: 32, or `s_desc_size` with INCOMPAT_64BIT.
    pub desc_size: u32,
    /// `s_first_meta_bg`: first meta group with meta_bg (descriptor blocks before it are
    /// classic).
    pub s_first_meta_bg: u32,
    /// `s_mkfs_time`: creation time, seconds since the epoch.
    pub s_mkfs_time: u32,
    /// `s_mmp_block`: the multi-mount protection block with INCOMPAT_MMP.
    pub s_mmp_block: u64,
    /// `s_log_groups_per_flex`: a flex group is `2^s_log_groups_per_flex` groups.
    pub s_log_groups_per_flex: u8,
    /// `s_checksum_type`: checksum algorithm (1 = crc32c), meaningful with metadata_csum.
    pub s_checksum_type: u8,
    /// `s_checksum`: the CRC-32C of the raw bytes before it (kernel `ext4_superblock_csum`),
    /// meaningful with metadata_csum.
    pub s_checksum: u32,
    /// `s_snapshot_inum` (next3): inode of the active snapshot.
    pub s_snapshot_inum: u32,
    /// `s_snapshot_id` (next3): id of the active snapshot.
    pub s_snapshot_id: u32,
    /// `s_snapshot_list` (next3): inode of the newest snapshot, head of the list.
    pub s_snapshot_list: u32,
    /// `s_usr_quota_inum`: user quota inode.
    pub s_usr_quota_inum: u32,
    /// `s_grp_quota_inum`: group quota inode.
    pub s_grp_quota_inum: u32,
    /// `s_prj_quota_inum`: project quota inode.
    pub s_prj_quota_inum: u32,
    /// `s_backup_bgs`: the two groups holding backups with COMPAT_SPARSE_SUPER2.
    pub s_backup_bgs: [u32; 2],
    /// `s_orphan_file_inum`: the orphan file's inode with COMPAT_ORPHAN_FILE.
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
        let magic = le16(b, S_MAGIC_OFFSET);
        if magic != EXT4_SUPER_MAGIC {
            return Err(Error::NotExt(format!(
                "bad magic {magic:#06x} (want {EXT4_SUPER_MAGIC:#06x})"
            )));
        }
        let rev = le32(b, 0x4C);
        if rev > EXT2_DYNAMIC_REV {
            return Err(bad(&format!(
                "s_rev_level {rev} is above 1 (EXT2_DYNAMIC_REV)"
            )));
        }
        let mut sb = Superblock::read_fields(b, rev);
        sb.verify_checksum()?;
        sb.check_features()?;
        sb.derive_geometry()?;
        sb.check_consistency()?;
        Ok(sb)
    }

    /// The fields of the 1024 bytes `b` of a revision `rev` superblock, as they are (with the
    /// revision 0 defaults where the field did not exist yet); the geometry is left to
    /// [`derive_geometry`](Self::derive_geometry).
    fn read_fields(b: &[u8], rev: u32) -> Superblock {
        let is64 = le32(b, S_FEATURE_INCOMPAT_OFFSET) & incompat::BIT64 != 0;
        let uuid_at = |at: usize| -> [u8; 16] {
            let mut u = [0u8; 16];
            u.copy_from_slice(&b[at..at + 16]);
            u
        };
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
            s_state: le16(b, S_STATE_OFFSET),
            s_creator_os: le32(b, 0x48),
            s_rev_level: rev,
            s_first_ino: le32(b, 0x54),
            s_inode_size: le16(b, 0x58),
            s_block_group_nr: le16(b, 0x5A),
            s_feature_compat: le32(b, S_FEATURE_COMPAT_OFFSET),
            s_feature_incompat: le32(b, S_FEATURE_INCOMPAT_OFFSET),
            s_feature_ro_compat: le32(b, S_FEATURE_RO_COMPAT_OFFSET),
            s_uuid: uuid_at(0x68),
            s_reserved_gdt_blocks: le16(b, 0xCE),
            s_journal_uuid: uuid_at(0xD0),
            s_journal_inum: le32(b, 0xE0),
            s_journal_dev: le32(b, 0xE4),
            s_last_orphan: le32(b, 0xE8),
            desc_size: if is64 {
                u32::from(le16(b, 0xFE))
            } else {
                EXT2_MIN_DESC_SIZE
            },
            s_first_meta_bg: le32(b, 0x104),
            s_mkfs_time: le32(b, 0x108),
            s_mmp_block: le64(b, 0x168),
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
            cluster_ratio: 1,
            ..Superblock::default()
        };
        if rev == EXT2_GOOD_OLD_REV {
            sb.good_old_defaults();
        }
        sb
    }

    /// Revision 0 has a fixed first inode and inode size, and no feature fields.
    fn good_old_defaults(&mut self) {
        self.s_first_ino = EXT2_GOOD_OLD_FIRST_INO;
        self.s_inode_size = EXT2_GOOD_OLD_INODE_SIZE as u16;
        self.s_feature_compat = 0;
        self.s_feature_incompat = 0;
        self.s_feature_ro_compat = 0;
    }

    /// With metadata_csum: `s_checksum_type` must be crc32c and `s_checksum` the
    /// [`superblock_checksum`] of the bytes, as the kernel and e2fsprogs check.
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
        let computed = superblock_checksum(&self.raw);
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

    /// Checks the geometry fields, in this order: block size, clusters and blocks per group,
    /// inodes per group, inode and descriptor sizes, filesystem size; then derives the
    /// geometry (group count, descriptor and inode-table blocks).
    fn derive_geometry(&mut self) -> Result<(), Error> {
        self.check_block_size()?;
        self.check_blocks_per_group()?;
        self.check_record_sizes()?;
        self.check_size()?;
        let groups = (self.s_blocks_count - u64::from(self.s_first_data_block))
            .div_ceil(u64::from(self.s_blocks_per_group));
        self.group_count = u32::try_from(groups)
            .map_err(|_| bad(&format!("{groups} block groups is more than 2^32")))?;
        let bs = self.block_size;
        self.descs_per_block = bs / self.desc_size;
        self.desc_blocks = self.group_count.div_ceil(self.descs_per_block);
        self.inodes_per_block = bs / u32::from(self.s_inode_size);
        self.inode_table_blocks = self.s_inodes_per_group.div_ceil(self.inodes_per_block);
        Ok(())
    }

    /// `s_log_block_size` at most 64 KiB; sets [`block_size`](Self::block_size).
    fn check_block_size(&mut self) -> Result<(), Error> {
        if self.s_log_block_size > MAX_LOG_BLOCK_SIZE {
            return Err(bad(&format!(
                "s_log_block_size {} > 6",
                self.s_log_block_size
            )));
        }
        self.block_size = 1024 << self.s_log_block_size;
        Ok(())
    }

    /// With bigalloc, the cluster size and `s_clusters_per_group` (setting
    /// [`cluster_ratio`](Self::cluster_ratio)) and `s_blocks_per_group` following from them;
    /// without, `s_blocks_per_group` at most one bitmap block's bits. At least 8 either way.
    fn check_blocks_per_group(&mut self) -> Result<(), Error> {
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
        Ok(())
    }

    /// `s_inodes_per_group` at most one bitmap block's bits; `s_inode_size` a power of two
    /// from 128 to the block size; the descriptor size 32, or a power of two from 64 to 1024
    /// and at most the block size.
    fn check_record_sizes(&self) -> Result<(), Error> {
        let bs = self.block_size;
        let ipg = self.s_inodes_per_group;
        if ipg == 0 || ipg > bs * 8 {
            return Err(bad(&format!("s_inodes_per_group {ipg} is invalid")));
        }
        let isz = u32::from(self.s_inode_size);
        if isz < 128 || isz > bs || !isz.is_power_of_two() {
            return Err(bad(&format!("s_inode_size {isz} is invalid")));
        }
        let ds = self.desc_size;
        let ds_ok = ds == EXT2_MIN_DESC_SIZE
            || ((64..=1024).contains(&ds) && ds.is_power_of_two() && ds <= bs);
        if !ds_ok {
            return Err(bad(&format!("s_desc_size {ds} is invalid")));
        }
        Ok(())
    }

    /// `s_first_data_block` inside the filesystem, and its size in bytes within 64 bits.
    fn check_size(&self) -> Result<(), Error> {
        let first = u64::from(self.s_first_data_block);
        if first >= self.s_blocks_count {
            return Err(bad(&format!(
                "s_first_data_block {first} >= s_blocks_count {}",
                self.s_blocks_count
            )));
        }
        if self
            .s_blocks_count
            .checked_mul(u64::from(self.block_size))
            .is_none()
        {
            return Err(bad("filesystem size in bytes overflows 64 bits"));
        }
        Ok(())
    }

    /// True if the COMPAT bit (a [`compat`](crate::compat) constant) is set.
    pub fn has_compat(&self, bit: u32) -> bool {
        self.s_feature_compat & bit != 0
    }

    /// True if the INCOMPAT bit (an [`incompat`] constant) is set.
    pub fn has_incompat(&self, bit: u32) -> bool {
        self.s_feature_incompat & bit != 0
    }

    /// True if the RO_COMPAT bit (a [`ro_compat`] constant) is set.
    pub fn has_ro_compat(&self, bit: u32) -> bool {
        self.s_feature_ro_compat & bit != 0
    }

    /// True if group descriptors carry checksums (gdt_csum or metadata_csum), which is when
    /// the lazy-init flags and `bg_itable_unused` are meaningful.
    pub fn has_group_desc_csum(&self) -> bool {
        self.has_ro_compat(ro_compat::GDT_CSUM) || self.has_ro_compat(ro_compat::METADATA_CSUM)
    }

    /// True with RO_COMPAT_METADATA_CSUM: crc32c checksums on every metadata structure.
    pub fn has_metadata_csum(&self) -> bool {
        self.has_ro_compat(ro_compat::METADATA_CSUM)
    }

    /// The seed of the metadata_csum checksums (all but the superblock's own, ext4-on-disk
    /// §13): `s_checksum_seed` with INCOMPAT_CSUM_SEED, else the raw crc32c of `s_uuid` from
    /// `~0` (kernel `s_csum_seed`).
    pub(crate) fn metadata_csum_seed(&self) -> u32 {
        if self.has_incompat(incompat::CSUM_SEED) {
            le32(&self.raw, S_CHECKSUM_SEED_OFFSET)
        } else {
            crc32c_raw(!0, &self.s_uuid)
        }
    }

    /// Filesystem size in bytes (`s_blocks_count` × block size; validated not to overflow).
    pub fn size_bytes(&self) -> u64 {
        self.s_blocks_count * u64::from(self.block_size)
    }

    /// First block of group `g` (`s_first_data_block + g × s_blocks_per_group`), as a raw
    /// block number for the layout arithmetic.
    pub fn group_first_block(&self, g: u32) -> u64 {
        u64::from(self.s_first_data_block) + u64::from(g) * u64::from(self.s_blocks_per_group)
    }

    /// Number of blocks in group `g` (the last group may be short).
    pub fn group_block_count(&self, g: u32) -> u64 {
        let start = self.group_first_block(g);
        (self.s_blocks_count - start.min(self.s_blocks_count))
            .min(u64::from(self.s_blocks_per_group))
    }
}

fn bad(msg: &str) -> Error {
    Error::bad_superblock(msg)
}

#[cfg(test)]
pub(crate) mod tests;
