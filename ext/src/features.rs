//! Feature bits of the superblock (kernel `EXT4_FEATURE_COMPAT_*`, `EXT4_FEATURE_INCOMPAT_*`,
//! `EXT4_FEATURE_RO_COMPAT_*`), one namespace per field: `compat::HAS_JOURNAL` is the
//! kernel's `EXT4_FEATURE_COMPAT_HAS_JOURNAL`, a bit of `s_feature_compat`.

/// COMPAT feature bits (`s_feature_compat`): a kernel that does not know one may still mount
/// the filesystem read-write.
pub mod compat {
    /// `COMPAT_HAS_JOURNAL`: an internal journal in inode `s_journal_inum`.
    pub const HAS_JOURNAL: u32 = 0x4;
    /// `COMPAT_EXT_ATTR`: extended attributes.
    pub const EXT_ATTR: u32 = 0x8;
    /// `COMPAT_RESIZE_INODE`: reserved GDT blocks owned by the resize inode.
    pub const RESIZE_INODE: u32 = 0x10;
    /// `COMPAT_DIR_INDEX`: htree directories.
    pub const DIR_INDEX: u32 = 0x20;
    /// Snapshots (next3 / ext4-snapshots): inode 9 owns the exclude bitmaps.
    pub const EXCLUDE_INODE: u32 = 0x80;
    /// Snapshots: group descriptors carry `bg_exclude_bitmap`.
    pub const EXCLUDE_BITMAP: u32 = 0x100;
    /// `COMPAT_SPARSE_SUPER2`: backup superblocks only in the groups of `s_backup_bgs`.
    pub const SPARSE_SUPER2: u32 = 0x200;
    /// `COMPAT_FAST_COMMIT`: fast-commit journal area.
    pub const FAST_COMMIT: u32 = 0x400;
    /// `COMPAT_ORPHAN_FILE`: an orphan file in inode `s_orphan_file_inum`.
    pub const ORPHAN_FILE: u32 = 0x1000;
}

/// INCOMPAT feature bits (`s_feature_incompat`): a reader that does not know one must not
/// read the filesystem.
pub mod incompat {
    /// `INCOMPAT_COMPRESSION`: never finished; refused.
    pub const COMPRESSION: u32 = 0x1;
    /// `INCOMPAT_FILETYPE`: directory entries carry the file type.
    pub const FILETYPE: u32 = 0x2;
    /// `INCOMPAT_RECOVER`: the journal needs recovery.
    pub const RECOVER: u32 = 0x4;
    /// `INCOMPAT_JOURNAL_DEV`: this is an external journal device, not a filesystem.
    pub const JOURNAL_DEV: u32 = 0x8;
    /// `INCOMPAT_META_BG`: descriptor blocks spread over meta groups.
    pub const META_BG: u32 = 0x10;
    /// `INCOMPAT_EXTENTS`: inodes may map their blocks with extent trees.
    pub const EXTENTS: u32 = 0x40;
    /// `INCOMPAT_64BIT`: block numbers above 2^32 and `s_desc_size` descriptors.
    pub const BIT64: u32 = 0x80;
    /// `INCOMPAT_MMP`: multi-mount protection block `s_mmp_block`.
    pub const MMP: u32 = 0x100;
    /// `INCOMPAT_FLEX_BG`: bitmaps and inode tables of a flex group packed together.
    pub const FLEX_BG: u32 = 0x200;
    /// `INCOMPAT_EA_INODE`: extended attribute values in inodes.
    pub const EA_INODE: u32 = 0x400;
    /// `INCOMPAT_DIRDATA`: data in directory entries.
    pub const DIRDATA: u32 = 0x1000;
    /// `INCOMPAT_CSUM_SEED`: metadata checksum seed in the superblock.
    pub const CSUM_SEED: u32 = 0x2000;
    /// `INCOMPAT_LARGEDIR`: directories over 2 GiB, three-level htrees.
    pub const LARGEDIR: u32 = 0x4000;
    /// `INCOMPAT_INLINE_DATA`: file data in the inode.
    pub const INLINE_DATA: u32 = 0x8000;
    /// `INCOMPAT_ENCRYPT`: encrypted files.
    pub const ENCRYPT: u32 = 0x10000;
    /// `INCOMPAT_CASEFOLD`: case-insensitive directories.
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

/// RO_COMPAT feature bits (`s_feature_ro_compat`): a kernel that does not know one may only
/// mount the filesystem read-only.
pub mod ro_compat {
    /// `RO_COMPAT_SPARSE_SUPER`: backup superblocks only in groups 0, 1 and powers of 3, 5, 7.
    pub const SPARSE_SUPER: u32 = 0x1;
    /// `RO_COMPAT_LARGE_FILE`: files over 2 GiB.
    pub const LARGE_FILE: u32 = 0x2;
    /// `RO_COMPAT_HUGE_FILE`: `i_blocks` in filesystem blocks for HUGE_FILE inodes.
    pub const HUGE_FILE: u32 = 0x8;
    /// `RO_COMPAT_GDT_CSUM`: group descriptor checksums (crc16).
    pub const GDT_CSUM: u32 = 0x10;
    /// `RO_COMPAT_DIR_NLINK`: directories over 65000 links.
    pub const DIR_NLINK: u32 = 0x20;
    /// `RO_COMPAT_EXTRA_ISIZE`: large inodes reserve `s_min_extra_isize` bytes.
    pub const EXTRA_ISIZE: u32 = 0x40;
    /// next3 / ext4-snapshots: the filesystem holds snapshots.
    pub const HAS_SNAPSHOT: u32 = 0x80;
    /// `RO_COMPAT_QUOTA`: quota inodes.
    pub const QUOTA: u32 = 0x100;
    /// `RO_COMPAT_BIGALLOC`: blocks allocated in clusters of `2^(s_log_cluster_size -
    /// s_log_block_size)` blocks.
    pub const BIGALLOC: u32 = 0x200;
    /// `RO_COMPAT_METADATA_CSUM`: crc32c checksums of the metadata, the superblock included
    /// (`s_checksum`).
    pub const METADATA_CSUM: u32 = 0x400;
    /// `RO_COMPAT_REPLICA`.
    pub const REPLICA: u32 = 0x800;
    /// `RO_COMPAT_READONLY`: never mount read-write.
    pub const READONLY: u32 = 0x1000;
    /// `RO_COMPAT_PROJECT`: project quota.
    pub const PROJECT: u32 = 0x2000;
    /// `RO_COMPAT_SHARED_BLOCKS`: blocks may be shared between files.
    pub const SHARED_BLOCKS: u32 = 0x4000;
    /// `RO_COMPAT_VERITY`: fs-verity files.
    pub const VERITY: u32 = 0x8000;
    /// `RO_COMPAT_ORPHAN_PRESENT`: the orphan file holds entries.
    pub const ORPHAN_PRESENT: u32 = 0x10000;
}
