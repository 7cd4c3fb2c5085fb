//! Log blocks of a jbd2 journal: the 12-byte header every metadata block starts with (jbd2
//! `journal_header_t`), descriptor blocks and their tags (`journal_block_tag_t`,
//! `journal_block_tag3_t`), revoke blocks (`jbd2_journal_revoke_header_t`), commit blocks
//! (`struct commit_header`), and their checksums. Decoding only, no I/O.
//!
//! Tags start at byte 12 and stop at LAST_TAG or where the next tag would not fit before the
//! block's end less the 4-byte checksum tail (v2/v3); a tag without SAME_UUID is followed by a
//! 16-byte UUID. So the tag count of a descriptor is bounded by its block size.

use super::superblock::{jbd2_feature as f, JournalSuperblock, JBD2_MAGIC_NUMBER};
use crate::bytes::{be16, be32, be64, crc32c_raw};

/// Size of the block header (`h_magic`, `h_blocktype`, `h_sequence`), in bytes.
pub(crate) const HEADER_SIZE: usize = 12;
/// Size of the revoke header (block header + `r_count`), in bytes.
const REVOKE_HEADER_SIZE: usize = 16;
/// Size of the v2/v3 checksum tail of descriptor and revoke blocks (`jbd2_journal_block_tail`).
const TAIL_SIZE: usize = 4;
/// Byte offset of `h_chksum_type`, `h_chksum_size`, `h_chksum[0]` and `h_commit_sec` in a
/// commit block.
const H_CHKSUM_TYPE: usize = 0x0C;
const H_CHKSUM_SIZE: usize = 0x0D;
const H_CHKSUM: usize = 0x10;
const H_COMMIT_SEC: usize = 0x30;

/// Tag flag bits (jbd2 `JBD2_FLAG_*`).
pub(crate) mod tag_flags {
    /// `JBD2_FLAG_ESCAPE`: the block began with the jbd2 magic, zeroed in the log copy.
    pub(crate) const ESCAPE: u16 = 0x1;
    /// `JBD2_FLAG_SAME_UUID`: no 16-byte UUID follows the tag.
    pub(crate) const SAME_UUID: u16 = 0x2;
    /// `JBD2_FLAG_LAST_TAG`: the descriptor's last tag.
    pub(crate) const LAST_TAG: u16 = 0x8;
}

/// The header of a log block: `h_magic` checked, `h_blocktype` and `h_sequence` (the tid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) blocktype: u32,
    pub(crate) sequence: u32,
}

/// The header of `block`, or `None` when it does not start with the jbd2 magic.
pub(crate) fn header(block: &[u8]) -> Option<Header> {
    (be32(block, 0) == JBD2_MAGIC_NUMBER).then(|| Header {
        blocktype: be32(block, 4),
        sequence: be32(block, 8),
    })
}

/// How tags are laid out, from the journal features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TagFormat {
    /// Bytes of one tag (jbd2 `journal_tag_bytes`): 8, 12, 10, 14 or 16.
    pub(crate) bytes: usize,
    /// `t_blocknr_high` is used (INCOMPAT_64BIT).
    pub(crate) is64: bool,
    /// 16-byte tags with a 32-bit checksum (CSUM_V3).
    pub(crate) v3: bool,
    /// 16-bit tag checksums (CSUM_V2).
    pub(crate) v2: bool,
}

impl TagFormat {
    pub(crate) fn of(jsb: &JournalSuperblock) -> TagFormat {
        let is64 = jsb.has_incompat(f::INCOMPAT_64BIT);
        let v3 = jsb.has_incompat(f::INCOMPAT_CSUM_V3);
        let v2 = jsb.has_incompat(f::INCOMPAT_CSUM_V2);
        let bytes = if v3 {
            16
        } else {
            let base = if v2 { 14 } else { 12 };
            if is64 {
                base
            } else {
                base - 4
            }
        };
        TagFormat {
            bytes,
            is64,
            v3,
            v2,
        }
    }

    /// Bytes at the end of a descriptor or revoke block kept for the checksum tail.
    pub(crate) fn tail(&self) -> usize {
        if self.v2 || self.v3 {
            TAIL_SIZE
        } else {
            0
        }
    }
}

/// One descriptor tag: the filesystem block `t_blocknr` the next logged block belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tag {
    /// `t_blocknr | t_blocknr_high << 32` (high half with 64BIT only).
    pub(crate) blocknr: u64,
    /// `t_flags` ([`tag_flags`]).
    pub(crate) flags: u16,
    /// `t_checksum`: 32 bits (v3), 16 bits (v2), unused otherwise.
    pub(crate) checksum: u32,
    /// Byte offset of the tag in its descriptor block.
    pub(crate) offset: usize,
}

/// The tags of descriptor block `block` (jbd2 `count_tags` and the replay loop).
pub(crate) fn tags(block: &[u8], fmt: TagFormat) -> Vec<Tag> {
    let limit = block.len().saturating_sub(fmt.tail());
    let mut out = Vec::new();
    let mut at = HEADER_SIZE;
    while at + fmt.bytes <= limit {
        let t = &block[at..at + fmt.bytes];
        // Flags are a BE u16 at tag offset 6 in every layout (the low half of tag3's u32).
        let flags = be16(t, 6);
        let (high, checksum) = if fmt.v3 {
            (be32(t, 8), be32(t, 12))
        } else {
            let high = if fmt.is64 { be32(t, 8) } else { 0 };
            (high, u32::from(be16(t, 4)))
        };
        let high = if fmt.is64 { high } else { 0 };
        out.push(Tag {
            blocknr: u64::from(be32(t, 0)) | (u64::from(high) << 32),
            flags,
            checksum,
            offset: at,
        });
        at += fmt.bytes;
        if flags & tag_flags::SAME_UUID == 0 {
            at += 16;
        }
        if flags & tag_flags::LAST_TAG != 0 {
            break;
        }
    }
    out
}

/// The block numbers of revoke block `block`, or an error when `r_count` does not fit in the
/// block (jbd2 `scan_revoke_records`: -EINVAL).
pub(crate) fn revoke_records(block: &[u8], fmt: TagFormat) -> Result<Vec<u64>, String> {
    let r_count = be32(block, HEADER_SIZE) as usize;
    let room = block.len() - fmt.tail();
    if r_count > room {
        return Err(format!(
            "revoke r_count {r_count} is past the block's {room} usable bytes"
        ));
    }
    let rec = if fmt.is64 { 8 } else { 4 };
    let mut out = Vec::new();
    let mut at = REVOKE_HEADER_SIZE;
    while at + rec <= r_count {
        out.push(if fmt.is64 {
            be64(block, at)
        } else {
            u64::from(be32(block, at))
        });
        at += rec;
    }
    Ok(out)
}

/// The fields of a commit block the scan uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Commit {
    pub(crate) h_chksum_type: u8,
    pub(crate) h_chksum_size: u8,
    /// `h_chksum[0]`.
    pub(crate) h_chksum: u32,
    /// `h_commit_sec`.
    pub(crate) h_commit_sec: u64,
}

pub(crate) fn commit(block: &[u8]) -> Commit {
    Commit {
        h_chksum_type: block[H_CHKSUM_TYPE],
        h_chksum_size: block[H_CHKSUM_SIZE],
        h_chksum: be32(block, H_CHKSUM),
        h_commit_sec: be64(block, H_COMMIT_SEC),
    }
}

/// True if the v2/v3 tail checksum of descriptor or revoke block `block` matches (jbd2
/// `jbd2_descriptor_block_csum_verify`): crc32c from `seed` over the block with the tail
/// zeroed.
pub(crate) fn tail_checksum_ok(block: &[u8], seed: u32) -> bool {
    let at = block.len() - TAIL_SIZE;
    let mut b = block.to_vec();
    b[at..].fill(0);
    crc32c_raw(seed, &b) == be32(block, at)
}

/// True if the v2/v3 commit checksum `h_chksum[0]` matches (jbd2
/// `jbd2_commit_block_csum_verify`): crc32c from `seed` over the block with it zeroed.
pub(crate) fn commit_checksum_ok(block: &[u8], seed: u32) -> bool {
    let mut b = block.to_vec();
    b[H_CHKSUM..H_CHKSUM + 4].fill(0);
    crc32c_raw(seed, &b) == be32(block, H_CHKSUM)
}

/// True if `tag`'s checksum matches the logged block `data` (as stored, i.e. escaped) of
/// transaction `tid` (jbd2 `jbd2_block_tag_csum_verify`); always true without v2/v3.
pub(crate) fn tag_checksum_ok(tag: &Tag, data: &[u8], tid: u32, seed: u32, fmt: TagFormat) -> bool {
    if !fmt.v2 && !fmt.v3 {
        return true;
    }
    let c = crc32c_raw(crc32c_raw(seed, &tid.to_be_bytes()), data);
    if fmt.v3 {
        c == tag.checksum
    } else {
        c & 0xFFFF == tag.checksum
    }
}

/// CRC-32 big-endian (Linux `crc32_be`): polynomial 0x04C11DB7, not reflected, no final
/// inversion; the v1 (COMPAT_CHECKSUM) transaction checksum chains it from `~0` over every
/// descriptor and logged block of a transaction.
pub(crate) fn crc32_be(mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        crc = CRC32_BE_TABLE[((crc >> 24) as u8 ^ byte) as usize] ^ (crc << 8);
    }
    crc
}

const CRC32_BE_TABLE: [u32; 256] = crc32_be_table();

const fn crc32_be_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(bytes: usize, is64: bool, v2: bool, v3: bool) -> TagFormat {
        TagFormat {
            bytes,
            is64,
            v2,
            v3,
        }
    }

    #[test]
    fn tag_sizes_follow_the_features() {
        use crate::journal::superblock::tests::sample;
        let size = |incompat| {
            TagFormat::of(&JournalSuperblock::parse(&sample(incompat), 1024).unwrap()).bytes
        };
        assert_eq!(size(0), 8);
        assert_eq!(size(f::INCOMPAT_64BIT), 12);
        assert_eq!(size(f::INCOMPAT_CSUM_V2), 10);
        assert_eq!(size(f::INCOMPAT_CSUM_V2 | f::INCOMPAT_64BIT), 14);
        assert_eq!(size(f::INCOMPAT_CSUM_V3), 16);
        assert_eq!(size(f::INCOMPAT_CSUM_V3 | f::INCOMPAT_64BIT), 16);
    }

    fn descriptor(tags: &[&[u8]]) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[0..4].copy_from_slice(&JBD2_MAGIC_NUMBER.to_be_bytes());
        let mut at = 12;
        for t in tags {
            b[at..at + t.len()].copy_from_slice(t);
            at += t.len();
        }
        b
    }

    #[test]
    fn tags_of_every_layout() {
        // 32-bit: blocknr 5, then a UUID, then blocknr 6 SAME_UUID|LAST_TAG.
        let mut t1 = vec![0, 0, 0, 5, 0, 0, 0, 0];
        t1.extend([0u8; 16]);
        let b = descriptor(&[&t1, &[0, 0, 0, 6, 0, 0, 0, 0x0A], &[0, 0, 0, 9, 0, 0, 0, 2]]);
        let t = tags(&b, fmt(8, false, false, false));
        assert_eq!(t.iter().map(|t| t.blocknr).collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(t[1].offset, 12 + 24);
        // 64-bit csum v2: high word after the flags (unaligned), checksum 16 bits.
        let b = descriptor(&[&[0, 0, 0, 1, 0xAB, 0xCD, 0, 0x0B, 0, 0, 0, 2, 0, 0]]);
        let t = tags(&b, fmt(14, true, true, false));
        assert_eq!(
            (t[0].blocknr, t[0].checksum, t.len()),
            ((2 << 32) | 1, 0xABCD, 1)
        );
        assert_eq!(t[0].flags & tag_flags::ESCAPE, 1);
        // v3 without 64BIT: the high word is ignored.
        let b = descriptor(&[&[0, 0, 0, 3, 0, 0, 0, 0x0A, 0, 0, 0, 7, 1, 2, 3, 4]]);
        let t = tags(&b, fmt(16, false, false, true));
        assert_eq!((t[0].blocknr, t[0].checksum), (3, 0x0102_0304));
    }

    #[test]
    fn tags_stop_before_the_tail() {
        // No LAST_TAG anywhere: SAME_UUID 8-byte tags fill the block up to the tail.
        let mut b = vec![0u8; 1024];
        for at in (12..1024).step_by(10) {
            if at + 8 <= 1024 {
                b[at + 7] = 2;
            }
        }
        let n = tags(&b, fmt(10, false, true, false)).len();
        assert_eq!(n, (1024 - 4 - 12) / 10);
    }

    #[test]
    fn revoke_counts_are_bounded() {
        let mut b = vec![0u8; 1024];
        b[12..16].copy_from_slice(&24u32.to_be_bytes());
        b[16..20].copy_from_slice(&7u32.to_be_bytes());
        b[20..24].copy_from_slice(&9u32.to_be_bytes());
        let f32 = fmt(8, false, false, false);
        assert_eq!(revoke_records(&b, f32).unwrap(), vec![7, 9]);
        assert_eq!(
            revoke_records(&b, fmt(12, true, false, false)).unwrap(),
            vec![(7 << 32) | 9]
        );
        b[12..16].copy_from_slice(&1022u32.to_be_bytes());
        assert!(revoke_records(&b, fmt(16, false, false, true)).is_err());
        assert_eq!(revoke_records(&b, f32).unwrap().len(), (1022 - 16) / 4);
    }

    #[test]
    fn crc32_be_check_value() {
        // CRC-32/MPEG-2 ("123456789") = 0x0376E6E7: init ~0, no final xor.
        assert_eq!(crc32_be(!0, b"123456789"), 0x0376_E6E7);
    }
}
