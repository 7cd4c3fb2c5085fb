//! The jbd2 journal superblock (jbd2 `journal_superblock_t`), journal block 0 of an internal
//! journal, big-endian like every jbd2 structure.
//!
//! [`JournalSuperblock::parse`] checks what jbd2's `journal_get_superblock` checks before a
//! recovery: magic, block type (v1 or v2), block size against the filesystem's, known feature
//! bits, the checksum rules (v2 and v3 exclusive, neither with v1's COMPAT_CHECKSUM, type
//! crc32c, `s_checksum`). The geometry against the journal's mapped size is checked where the
//! size is known (`locate`). A v1 superblock has no feature fields: they read as zero.

use crate::bytes::{be32, crc32c_raw};
use crate::checksum::Check;

/// `h_magic` of every jbd2 block header (jbd2 `JBD2_MAGIC_NUMBER`).
pub(super) const JBD2_MAGIC_NUMBER: u32 = 0xC03B_3998;
/// Size of the journal superblock, in bytes.
pub(super) const JOURNAL_SUPERBLOCK_SIZE: usize = 1024;
/// Byte offset of `s_sequence` (u32 BE).
pub(super) const JSB_S_SEQUENCE_OFFSET: usize = 0x18;
/// Byte offset of `s_start` (u32 BE).
pub(super) const JSB_S_START_OFFSET: usize = 0x1C;
/// Byte offset of `s_errno` (i32 BE).
const S_ERRNO_OFFSET: usize = 0x20;
/// Byte offset of the journal superblock's `s_checksum` (u32 BE).
pub(super) const JSB_S_CHECKSUM_OFFSET: usize = 0xFC;

/// `h_blocktype` values (jbd2 `JBD2_*_BLOCK`).
pub(super) mod blocktype {
    /// `JBD2_DESCRIPTOR_BLOCK`: tags, then the logged blocks.
    pub(crate) const DESCRIPTOR: u32 = 1;
    /// `JBD2_COMMIT_BLOCK`: ends a transaction.
    pub(crate) const COMMIT: u32 = 2;
    /// `JBD2_SUPERBLOCK_V1`.
    pub(crate) const SUPERBLOCK_V1: u32 = 3;
    /// `JBD2_SUPERBLOCK_V2`: with feature fields.
    pub(crate) const SUPERBLOCK_V2: u32 = 4;
    /// `JBD2_REVOKE_BLOCK`: revoke records.
    pub(crate) const REVOKE: u32 = 5;
}

/// jbd2 feature bits of the journal superblock (`JBD2_FEATURE_*`).
pub(super) mod jbd2_feature {
    /// COMPAT `JBD2_FEATURE_COMPAT_CHECKSUM`: v1 transaction checksums (crc32_be).
    pub(crate) const COMPAT_CHECKSUM: u32 = 0x1;
    /// INCOMPAT `JBD2_FEATURE_INCOMPAT_REVOKE`: revoke blocks.
    pub(crate) const INCOMPAT_REVOKE: u32 = 0x1;
    /// INCOMPAT `JBD2_FEATURE_INCOMPAT_64BIT`: 64-bit block numbers in tags and revokes.
    pub(crate) const INCOMPAT_64BIT: u32 = 0x2;
    /// INCOMPAT `JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT`: a bad commit does not end the scan.
    pub(crate) const INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
    /// INCOMPAT `JBD2_FEATURE_INCOMPAT_CSUM_V2`: crc32c checksums, 16-bit tag checksums.
    pub(crate) const INCOMPAT_CSUM_V2: u32 = 0x8;
    /// INCOMPAT `JBD2_FEATURE_INCOMPAT_CSUM_V3`: crc32c checksums, 16-byte tags.
    pub(crate) const INCOMPAT_CSUM_V3: u32 = 0x10;
    /// INCOMPAT `JBD2_FEATURE_INCOMPAT_FAST_COMMIT`: a fast-commit area after the log.
    pub(crate) const INCOMPAT_FAST_COMMIT: u32 = 0x20;
    /// Every INCOMPAT bit this reader understands.
    pub(crate) const INCOMPAT_KNOWN: u32 = INCOMPAT_REVOKE
        | INCOMPAT_64BIT
        | INCOMPAT_ASYNC_COMMIT
        | INCOMPAT_CSUM_V2
        | INCOMPAT_CSUM_V3
        | INCOMPAT_FAST_COMMIT;
}

use jbd2_feature as f;

/// `s_checksum_type` of crc32c (jbd2 `JBD2_CRC32C_CHKSUM`).
const JBD2_CRC32C_CHKSUM: u8 = 4;
/// Fast-commit blocks when `s_num_fc_blks` is 0 (jbd2 `JBD2_DEFAULT_FAST_COMMIT_BLOCKS`).
pub(crate) const JBD2_DEFAULT_FAST_COMMIT_BLOCKS: u32 = 256;

/// A validated journal superblock. Block numbers and counts are in journal blocks
/// (`s_blocksize` bytes, equal to the filesystem block size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JournalSuperblock {
    /// The raw 1024 bytes, as read.
    pub raw: Vec<u8>,
    /// `h_blocktype`: 3 (v1) or 4 (v2).
    pub h_blocktype: u32,
    /// `s_blocksize`: the journal block size in bytes.
    pub s_blocksize: u32,
    /// `s_maxlen`: journal blocks in total (the log, plus the fast-commit area).
    pub s_maxlen: u32,
    /// `s_first`: first block of the log.
    pub s_first: u32,
    /// `s_sequence`: the tid expected at `s_start`.
    pub s_sequence: u32,
    /// `s_start`: block of the oldest live transaction; 0 = the journal is empty (clean).
    pub s_start: u32,
    /// `s_errno`: the errno of an aborted journal (0 normally).
    pub s_errno: i32,
    /// `s_feature_compat` (0 on v1).
    pub s_feature_compat: u32,
    /// `s_feature_incompat` (0 on v1).
    pub s_feature_incompat: u32,
    /// `s_feature_ro_compat` (0 on v1).
    pub s_feature_ro_compat: u32,
    /// `s_uuid`: seeds the v2/v3 checksums.
    pub s_uuid: [u8; 16],
    /// `s_nr_users`: filesystems sharing the journal (external journals).
    pub s_nr_users: u32,
    /// `s_checksum_type` (4 = crc32c with v2/v3).
    pub s_checksum_type: u8,
    /// `s_num_fc_blks`: fast-commit blocks (0 = the default 256 with FAST_COMMIT).
    pub s_num_fc_blks: u32,
    /// `s_checksum`: [`journal_superblock_checksum`] with v2/v3.
    pub s_checksum: u32,
}

/// crc32c of the journal superblock's 1024 bytes with `s_checksum` taken as zero, seeded with
/// `~0` (jbd2 `jbd2_superblock_csum`).
pub(super) fn journal_superblock_checksum(raw: &[u8]) -> u32 {
    let mut b = raw[..JOURNAL_SUPERBLOCK_SIZE].to_vec();
    b[JSB_S_CHECKSUM_OFFSET..JSB_S_CHECKSUM_OFFSET + 4].fill(0);
    crc32c_raw(!0, &b)
}

/// The v2/v3 checksum of the journal superblock in `raw` (journal block 0): `None` unless
/// `raw` holds a v2 journal superblock (magic, `h_blocktype` 4) with CSUM_V2 or CSUM_V3. A
/// mismatch is what [`JournalSuperblock::parse`] refuses (the walk counts it; the journal
/// lookup reports it).
pub(crate) fn superblock_checksum_check(raw: &[u8]) -> Option<Check> {
    if raw.len() < JOURNAL_SUPERBLOCK_SIZE
        || be32(raw, 0) != JBD2_MAGIC_NUMBER
        || be32(raw, 4) != blocktype::SUPERBLOCK_V2
    {
        return None;
    }
    let jsb = JournalSuperblock::read_fields(&raw[..JOURNAL_SUPERBLOCK_SIZE]);
    jsb.has_csum_v2_or_v3().then(|| Check {
        stored: jsb.s_checksum,
        computed: journal_superblock_checksum(&jsb.raw),
    })
}

impl JournalSuperblock {
    /// Parses and validates the journal superblock in `raw` (at least 1024 bytes) of a
    /// journal on a filesystem of `block_size`-byte blocks.
    ///
    /// # Errors
    /// A description of the first rule broken (module comment).
    pub(crate) fn parse(raw: &[u8], block_size: u32) -> Result<JournalSuperblock, String> {
        if raw.len() < JOURNAL_SUPERBLOCK_SIZE {
            return Err("journal superblock shorter than 1024 bytes".into());
        }
        let b = &raw[..JOURNAL_SUPERBLOCK_SIZE];
        let magic = be32(b, 0);
        if magic != JBD2_MAGIC_NUMBER {
            return Err(format!(
                "bad journal magic {magic:#010x} (want {JBD2_MAGIC_NUMBER:#010x})"
            ));
        }
        let jsb = JournalSuperblock::read_fields(b);
        if jsb.h_blocktype != blocktype::SUPERBLOCK_V1
            && jsb.h_blocktype != blocktype::SUPERBLOCK_V2
        {
            return Err(format!(
                "h_blocktype {} is not a journal superblock (3 or 4)",
                jsb.h_blocktype
            ));
        }
        if jsb.s_blocksize != block_size {
            return Err(format!(
                "s_blocksize {} differs from the filesystem block size {block_size}",
                jsb.s_blocksize
            ));
        }
        jsb.check_features()?;
        jsb.check_checksum()?;
        Ok(jsb)
    }

    fn read_fields(b: &[u8]) -> JournalSuperblock {
        let v2 = be32(b, 4) == blocktype::SUPERBLOCK_V2;
        let v2_field = |off: usize| if v2 { be32(b, off) } else { 0 };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x30..0x40]);
        JournalSuperblock {
            raw: b.to_vec(),
            h_blocktype: be32(b, 4),
            s_blocksize: be32(b, 0x0C),
            s_maxlen: be32(b, 0x10),
            s_first: be32(b, 0x14),
            s_sequence: be32(b, JSB_S_SEQUENCE_OFFSET),
            s_start: be32(b, JSB_S_START_OFFSET),
            s_errno: be32(b, S_ERRNO_OFFSET) as i32,
            s_feature_compat: v2_field(0x24),
            s_feature_incompat: v2_field(0x28),
            s_feature_ro_compat: v2_field(0x2C),
            s_uuid: uuid,
            s_nr_users: v2_field(0x40),
            s_checksum_type: if v2 { b[0x50] } else { 0 },
            s_num_fc_blks: v2_field(0x54),
            s_checksum: v2_field(JSB_S_CHECKSUM_OFFSET),
        }
    }

    fn check_features(&self) -> Result<(), String> {
        let unknown = self.s_feature_incompat & !f::INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(format!(
                "unknown journal INCOMPAT feature bits {unknown:#x}"
            ));
        }
        if self.s_feature_ro_compat != 0 {
            return Err(format!(
                "unknown journal RO_COMPAT feature bits {:#x}",
                self.s_feature_ro_compat
            ));
        }
        if self.has_incompat(f::INCOMPAT_CSUM_V2) && self.has_incompat(f::INCOMPAT_CSUM_V3) {
            return Err("both CSUM_V2 and CSUM_V3 are set".into());
        }
        if self.has_csum_v2_or_v3() && self.has_compat(f::COMPAT_CHECKSUM) {
            return Err("v1 COMPAT_CHECKSUM is set together with CSUM_V2/V3".into());
        }
        Ok(())
    }

    fn check_checksum(&self) -> Result<(), String> {
        if !self.has_csum_v2_or_v3() {
            return Ok(());
        }
        if self.s_checksum_type != JBD2_CRC32C_CHKSUM {
            return Err(format!(
                "s_checksum_type {} is not 4 (crc32c)",
                self.s_checksum_type
            ));
        }
        let computed = journal_superblock_checksum(&self.raw);
        if computed != self.s_checksum {
            return Err(format!(
                "journal superblock s_checksum {:#010x} does not match (crc32c {computed:#010x})",
                self.s_checksum
            ));
        }
        Ok(())
    }

    /// True if the COMPAT bit (a [`jbd2_feature`] `COMPAT_*` constant) is set.
    pub(crate) fn has_compat(&self, bit: u32) -> bool {
        self.s_feature_compat & bit != 0
    }

    /// True if the INCOMPAT bit (a [`jbd2_feature`] `INCOMPAT_*` constant) is set.
    pub(crate) fn has_incompat(&self, bit: u32) -> bool {
        self.s_feature_incompat & bit != 0
    }

    /// True with CSUM_V2 or CSUM_V3 (crc32c checksums on every log block).
    pub(crate) fn has_csum_v2_or_v3(&self) -> bool {
        self.has_incompat(f::INCOMPAT_CSUM_V2 | f::INCOMPAT_CSUM_V3)
    }

    /// Fast-commit blocks after the log: 0 without FAST_COMMIT, else `s_num_fc_blks` or the
    /// default 256 (jbd2 `jbd2_journal_get_num_fc_blks`).
    pub(crate) fn fast_commit_blocks(&self) -> u32 {
        if !self.has_incompat(f::INCOMPAT_FAST_COMMIT) {
            return 0;
        }
        match self.s_num_fc_blks {
            0 => JBD2_DEFAULT_FAST_COMMIT_BLOCKS,
            n => n,
        }
    }

    /// The checksum seed of v2/v3 log blocks: crc32c of `s_uuid` from `~0` (jbd2
    /// `j_csum_seed`).
    pub(crate) fn checksum_seed(&self) -> u32 {
        crc32c_raw(!0, &self.s_uuid)
    }

    /// These bytes with `s_start` = 0, `s_sequence` = `sequence` and `s_errno` = 0, the
    /// checksum recomputed with v2/v3: the superblock e2fsprogs writes after a recovery.
    pub(crate) fn emptied(&self, sequence: u32) -> Vec<u8> {
        let mut b = self.raw.clone();
        b[S_ERRNO_OFFSET..S_ERRNO_OFFSET + 4].fill(0);
        b[JSB_S_SEQUENCE_OFFSET..JSB_S_SEQUENCE_OFFSET + 4]
            .copy_from_slice(&sequence.to_be_bytes());
        b[JSB_S_START_OFFSET..JSB_S_START_OFFSET + 4].fill(0);
        if self.h_blocktype == blocktype::SUPERBLOCK_V2 && self.has_csum_v2_or_v3() {
            let c = journal_superblock_checksum(&b);
            b[JSB_S_CHECKSUM_OFFSET..JSB_S_CHECKSUM_OFFSET + 4].copy_from_slice(&c.to_be_bytes());
        }
        b
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A v2 superblock of a 1024-block journal of 1 KiB blocks, with `incompat` features
    /// (checksum fixed up when they include v2/v3).
    pub(crate) fn sample(incompat: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        let put = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_be_bytes());
        put(&mut b, 0, JBD2_MAGIC_NUMBER);
        put(&mut b, 4, blocktype::SUPERBLOCK_V2);
        put(&mut b, 0x0C, 1024);
        put(&mut b, 0x10, 1024);
        put(&mut b, 0x14, 1);
        put(&mut b, 0x18, 7);
        put(&mut b, 0x28, incompat);
        b[0x30..0x40].copy_from_slice(&[0x5A; 16]);
        put(&mut b, 0x40, 1);
        if incompat & (f::INCOMPAT_CSUM_V2 | f::INCOMPAT_CSUM_V3) != 0 {
            b[0x50] = JBD2_CRC32C_CHKSUM;
            let c = journal_superblock_checksum(&b);
            put(&mut b, JSB_S_CHECKSUM_OFFSET, c);
        }
        b
    }

    #[test]
    fn parses_v2_with_checksum() {
        let jsb = JournalSuperblock::parse(&sample(f::INCOMPAT_CSUM_V3), 1024).unwrap();
        assert_eq!((jsb.s_maxlen, jsb.s_first, jsb.s_sequence), (1024, 1, 7));
        assert!(jsb.has_csum_v2_or_v3());
        assert_eq!(jsb.fast_commit_blocks(), 0);
    }

    #[test]
    fn refuses_bad_magic_blocksize_checksum_and_features() {
        let mut b = sample(f::INCOMPAT_CSUM_V3);
        b[0x1F] ^= 1;
        let e = JournalSuperblock::parse(&b, 1024).unwrap_err();
        assert!(e.contains("s_checksum"), "{e}");
        assert!(JournalSuperblock::parse(&sample(0), 4096)
            .unwrap_err()
            .contains("s_blocksize"));
        let both = f::INCOMPAT_CSUM_V2 | f::INCOMPAT_CSUM_V3;
        assert!(JournalSuperblock::parse(&sample(both), 1024).is_err());
        assert!(JournalSuperblock::parse(&sample(0x100), 1024)
            .unwrap_err()
            .contains("unknown"));
        let mut b = sample(0);
        b[0] = 0;
        assert!(JournalSuperblock::parse(&b, 1024)
            .unwrap_err()
            .contains("magic"));
    }

    #[test]
    fn v1_has_no_features_and_fast_commit_defaults() {
        let mut b = sample(0x10);
        b[7] = 3; // h_blocktype v1: the feature words are ignored
        let jsb = JournalSuperblock::parse(&b, 1024).unwrap();
        assert_eq!(jsb.s_feature_incompat, 0);
        let jsb = JournalSuperblock::parse(&sample(f::INCOMPAT_FAST_COMMIT), 1024).unwrap();
        assert_eq!(jsb.fast_commit_blocks(), 256);
    }

    #[test]
    fn emptied_resets_start_and_sequence_with_checksum() {
        let mut b = sample(f::INCOMPAT_CSUM_V2);
        b[JSB_S_START_OFFSET + 3] = 5;
        let c = journal_superblock_checksum(&b);
        b[JSB_S_CHECKSUM_OFFSET..JSB_S_CHECKSUM_OFFSET + 4].copy_from_slice(&c.to_be_bytes());
        let jsb = JournalSuperblock::parse(&b, 1024).unwrap();
        let e = JournalSuperblock::parse(&jsb.emptied(9), 1024).unwrap();
        assert_eq!((e.s_start, e.s_sequence), (0, 9));
    }
}
