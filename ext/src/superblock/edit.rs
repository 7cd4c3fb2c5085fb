//! The superblock's bytes, read and edited field by field in a caller's buffer: the one place
//! that knows where the fields a recovery, a rollback or an apply changes live (kernel
//! `struct ext4_super_block`, notes ext4-on-disk.md §1).
//!
//! Editing a buffer is not writing: the crate still never writes to a device. The journal's
//! [`ReplayedView`](crate::ReplayedView) edits the superblock it shows in memory; the binary
//! edits the bytes it then writes itself.
//!
//! A setter changes its field and nothing else: with metadata_csum, `s_checksum` is stale
//! until [`SuperblockBytes::update_checksum`] is called after the last edit.

use super::{superblock_checksum, SUPERBLOCK_SIZE};
use crate::bytes::{le16, le32};
use crate::error::Error;
use crate::features::ro_compat;

/// Byte offset of `s_magic` (u16).
pub(crate) const S_MAGIC_OFFSET: usize = 0x38;
/// Byte offset of `s_state` (u16).
pub(crate) const S_STATE_OFFSET: usize = 0x3A;
/// Byte offset of `s_feature_compat` (u32).
pub(crate) const S_FEATURE_COMPAT_OFFSET: usize = 0x5C;
/// Byte offset of `s_feature_incompat` (u32).
pub(crate) const S_FEATURE_INCOMPAT_OFFSET: usize = 0x60;
/// Byte offset of `s_feature_ro_compat` (u32).
pub(crate) const S_FEATURE_RO_COMPAT_OFFSET: usize = 0x64;
/// Byte offset of `s_last_mounted` (`char[64]`, NUL-padded).
pub(crate) const S_LAST_MOUNTED_OFFSET: usize = 0x88;
/// Size of `s_last_mounted`, in bytes.
pub(crate) const S_LAST_MOUNTED_SIZE: usize = 64;
/// Byte offset of `s_free_blocks_count_lo` (u32); `_hi` at 0x158 with INCOMPAT_64BIT.
pub(crate) const S_FREE_BLOCKS_COUNT_LO_OFFSET: usize = 0x0C;
/// Byte offset of `s_free_blocks_count_hi` (u32).
pub(crate) const S_FREE_BLOCKS_COUNT_HI_OFFSET: usize = 0x158;
/// Byte offset of `s_free_inodes_count` (u32).
pub(crate) const S_FREE_INODES_COUNT_OFFSET: usize = 0x10;
/// Byte offset of `s_last_orphan` (u32), the head of the orphan list.
pub(crate) const S_LAST_ORPHAN_OFFSET: usize = 0xE8;
/// Byte offset of `s_checksum` (u32), the end of the bytes it covers.
pub(crate) const S_CHECKSUM_OFFSET: usize = 0x3FC;

/// Longest text [`SuperblockBytes::set_last_mounted`] accepts, in bytes: the 64-byte
/// `s_last_mounted` less the terminating NUL the kernel keeps.
pub const LAST_MOUNTED_MAX: usize = S_LAST_MOUNTED_SIZE - 1;

/// The 1024 bytes of a superblock (kernel `struct ext4_super_block`) in a buffer `B`: a
/// `&[u8]` or `Vec<u8>` to read fields, a `&mut [u8]` (or `&mut [u8; 1024]`) to edit them.
///
/// Nothing is validated but the length: the getters read whatever the bytes hold, the
/// setters change only their field (module comment; [`crate::Superblock::parse`] validates).
#[derive(Clone, Debug)]
pub struct SuperblockBytes<B> {
    buf: B,
}

impl<B: AsRef<[u8]>> SuperblockBytes<B> {
    /// The superblock held by `buf`, which must be exactly [`SUPERBLOCK_SIZE`] (1024) bytes
    /// (slice a block at the superblock's offset inside it).
    ///
    /// # Errors
    /// [`Error::Corrupt`] (bad superblock) when `buf` is not 1024 bytes long.
    pub fn new(buf: B) -> Result<SuperblockBytes<B>, Error> {
        let len = buf.as_ref().len();
        if len != SUPERBLOCK_SIZE {
            return Err(Error::bad_superblock(&format!(
                "a superblock buffer of {len} bytes (want {SUPERBLOCK_SIZE})"
            )));
        }
        Ok(SuperblockBytes { buf })
    }

    /// The buffer back.
    pub fn into_inner(self) -> B {
        self.buf
    }

    /// The 1024 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// `s_magic` ([`EXT4_SUPER_MAGIC`](crate::EXT4_SUPER_MAGIC) on a filesystem).
    pub fn s_magic(&self) -> u16 {
        le16(self.as_bytes(), S_MAGIC_OFFSET)
    }

    /// `s_state`: [`EXT2_VALID_FS`](crate::EXT2_VALID_FS) when cleanly unmounted, plus error
    /// bits.
    pub fn s_state(&self) -> u16 {
        le16(self.as_bytes(), S_STATE_OFFSET)
    }

    /// `s_feature_compat`: [`compat`](crate::compat) bits.
    pub fn s_feature_compat(&self) -> u32 {
        le32(self.as_bytes(), S_FEATURE_COMPAT_OFFSET)
    }

    /// `s_feature_incompat`: [`incompat`](crate::incompat) bits.
    pub fn s_feature_incompat(&self) -> u32 {
        le32(self.as_bytes(), S_FEATURE_INCOMPAT_OFFSET)
    }

    /// `s_feature_ro_compat`: [`ro_compat`](crate::ro_compat) bits.
    pub fn s_feature_ro_compat(&self) -> u32 {
        le32(self.as_bytes(), S_FEATURE_RO_COMPAT_OFFSET)
    }

    /// `s_last_mounted` up to its first NUL (all 64 bytes when it has none), as stored.
    pub fn s_last_mounted(&self) -> &[u8] {
        let f =
            &self.as_bytes()[S_LAST_MOUNTED_OFFSET..S_LAST_MOUNTED_OFFSET + S_LAST_MOUNTED_SIZE];
        let end = f.iter().position(|&c| c == 0).unwrap_or(f.len());
        &f[..end]
    }

    /// `s_last_orphan`: the head of the orphan list (0: empty).
    pub fn s_last_orphan(&self) -> u32 {
        le32(self.as_bytes(), S_LAST_ORPHAN_OFFSET)
    }

    /// `s_checksum` as stored (meaningful with metadata_csum).
    pub fn s_checksum(&self) -> u32 {
        le32(self.as_bytes(), S_CHECKSUM_OFFSET)
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> SuperblockBytes<B> {
    fn put16(&mut self, at: usize, v: u16) {
        self.buf.as_mut()[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, at: usize, v: u32) {
        self.buf.as_mut()[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Sets `s_magic` to `magic` (e2undo's superblock record stores it inverted).
    pub fn set_s_magic(&mut self, magic: u16) {
        self.put16(S_MAGIC_OFFSET, magic);
    }

    /// Sets the `s_state` bits `bits` (e.g. kernel `EXT2_ERROR_FS`, 0x2), leaving the others.
    pub fn set_state_bits(&mut self, bits: u16) {
        let v = self.s_state() | bits;
        self.put16(S_STATE_OFFSET, v);
    }

    /// Clears the `s_state` bits `bits` (e.g. [`EXT2_VALID_FS`](crate::EXT2_VALID_FS): "not
    /// cleanly unmounted"), leaving the others.
    pub fn clear_state_bits(&mut self, bits: u16) {
        let v = self.s_state() & !bits;
        self.put16(S_STATE_OFFSET, v);
    }

    /// Clears the INCOMPAT feature bits `bits` (an [`incompat`](crate::incompat) constant,
    /// e.g. `RECOVER` after a journal replay) in `s_feature_incompat`.
    pub fn clear_incompat(&mut self, bits: u32) {
        let v = self.s_feature_incompat() & !bits;
        self.put32(S_FEATURE_INCOMPAT_OFFSET, v);
    }

    /// Clears the RO_COMPAT feature bits `bits` (a [`ro_compat`] constant, e.g.
    /// `ORPHAN_PRESENT` once the orphan file is empty) in `s_feature_ro_compat`.
    pub fn clear_ro_compat(&mut self, bits: u32) {
        let v = self.s_feature_ro_compat() & !bits;
        self.put32(S_FEATURE_RO_COMPAT_OFFSET, v);
    }

    /// Sets `s_free_blocks_count` (in blocks; clusters with bigalloc) to `count`: its `_lo`
    /// half, and its `_hi` half when INCOMPAT_64BIT is set in the bytes (without it, the
    /// low 32 bits are stored).
    pub fn set_free_blocks_count(&mut self, count: u64) {
        self.put32(S_FREE_BLOCKS_COUNT_LO_OFFSET, count as u32);
        if self.s_feature_incompat() & crate::features::incompat::BIT64 != 0 {
            self.put32(S_FREE_BLOCKS_COUNT_HI_OFFSET, (count >> 32) as u32);
        }
    }

    /// Sets `s_free_inodes_count` to `count`.
    pub fn set_free_inodes_count(&mut self, count: u32) {
        self.put32(S_FREE_INODES_COUNT_OFFSET, count);
    }

    /// Sets `s_last_orphan`, the head of the orphan list (0: empty), to `ino`.
    pub fn set_last_orphan(&mut self, ino: u32) {
        self.put32(S_LAST_ORPHAN_OFFSET, ino);
    }

    /// Sets `s_last_mounted` to `text`, NUL-padded to its 64 bytes.
    ///
    /// # Errors
    /// [`Error::BadValue`] when `text` is longer than [`LAST_MOUNTED_MAX`]
    /// (63) bytes or holds a NUL; the field is then left as it was.
    pub fn set_last_mounted(&mut self, text: &[u8]) -> Result<(), Error> {
        let bad = |reason: String| Error::BadValue {
            field: "s_last_mounted",
            reason,
        };
        if text.len() > LAST_MOUNTED_MAX {
            return Err(bad(format!(
                "{} bytes is more than the {} that fit",
                text.len(),
                LAST_MOUNTED_MAX
            )));
        }
        if text.contains(&0) {
            return Err(bad("the text holds a NUL byte".into()));
        }
        let f = &mut self.buf.as_mut()
            [S_LAST_MOUNTED_OFFSET..S_LAST_MOUNTED_OFFSET + S_LAST_MOUNTED_SIZE];
        f.fill(0);
        f[..text.len()].copy_from_slice(text);
        Ok(())
    }

    /// With RO_COMPAT_METADATA_CSUM set in the bytes, sets `s_checksum` to the CRC-32C of the
    /// bytes before it (kernel `ext4_superblock_csum`); without, leaves it. Call it after the
    /// last edit. Returns whether the checksum was written.
    pub fn update_checksum(&mut self) -> bool {
        if self.s_feature_ro_compat() & ro_compat::METADATA_CSUM == 0 {
            return false;
        }
        let c = superblock_checksum(self.as_bytes());
        self.put32(S_CHECKSUM_OFFSET, c);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{sample, with_csum};
    use super::*;
    use crate::features::incompat;
    use crate::superblock::{Superblock, EXT2_VALID_FS};

    #[test]
    fn only_a_1024_byte_buffer_is_a_superblock() {
        assert!(SuperblockBytes::new(&[0u8; 1023][..]).is_err());
        assert!(SuperblockBytes::new(vec![0u8; 1025]).is_err());
        let sb = SuperblockBytes::new(sample()).unwrap();
        assert_eq!(sb.s_magic(), crate::superblock::EXT4_SUPER_MAGIC);
        assert_eq!(sb.into_inner(), sample());
    }

    /// `edit` applied to `with_csum()`: the result parses (checksum fixed) and differs from
    /// the original only in `fields` (byte ranges) and `s_checksum`.
    fn edited(edit: impl FnOnce(&mut SuperblockBytes<&mut Vec<u8>>)) -> (Superblock, Vec<u8>) {
        let mut b = with_csum();
        let before = b.clone();
        let mut e = SuperblockBytes::new(&mut b).unwrap();
        edit(&mut e);
        assert!(e.update_checksum());
        let sb = Superblock::parse(&b).expect("parses after update_checksum");
        assert_eq!(sb.s_checksum, superblock_checksum(&b));
        (sb, before)
    }

    fn differ(a: &[u8], b: &[u8]) -> Vec<usize> {
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }

    #[test]
    fn state_bits_set_and_cleared() {
        let (sb, before) = edited(|e| {
            e.set_state_bits(EXT2_VALID_FS | 0x2);
            e.clear_state_bits(EXT2_VALID_FS);
        });
        assert_eq!(sb.s_state, 0x2);
        let d = differ(&sb.raw, &before);
        assert!(
            d.iter()
                .all(|&i| i == S_STATE_OFFSET || i >= S_CHECKSUM_OFFSET),
            "{d:?}"
        );
    }

    #[test]
    fn incompat_bit_cleared_alone() {
        let mut b = with_csum();
        let inc = incompat::RECOVER | incompat::EXTENTS;
        b[S_FEATURE_INCOMPAT_OFFSET..][..4].copy_from_slice(&inc.to_le_bytes());
        SuperblockBytes::new(&mut b).unwrap().update_checksum();
        let mut e = SuperblockBytes::new(&mut b).unwrap();
        e.clear_incompat(incompat::RECOVER);
        assert_eq!(e.s_feature_incompat(), incompat::EXTENTS);
        e.update_checksum();
        let sb = Superblock::parse(&b).unwrap();
        assert!(!sb.has_incompat(incompat::RECOVER) && sb.has_incompat(incompat::EXTENTS));
    }

    #[test]
    fn last_mounted_nul_padded_and_length_checked() {
        let (sb, before) = edited(|e| {
            e.set_last_mounted(&[b'x'; 40]).unwrap();
            e.set_last_mounted(b"/mnt/a").unwrap();
            assert_eq!(e.s_last_mounted(), b"/mnt/a");
        });
        assert_eq!(&sb.raw[S_LAST_MOUNTED_OFFSET..][..7], b"/mnt/a\0");
        assert!(sb.raw[S_LAST_MOUNTED_OFFSET + 6..][..58]
            .iter()
            .all(|&c| c == 0));
        let d = differ(&sb.raw, &before);
        let field = S_LAST_MOUNTED_OFFSET..S_LAST_MOUNTED_OFFSET + S_LAST_MOUNTED_SIZE;
        assert!(d
            .iter()
            .all(|&i| field.contains(&i) || i >= S_CHECKSUM_OFFSET));
        let mut b = sample();
        let mut e = SuperblockBytes::new(&mut b).unwrap();
        let max = LAST_MOUNTED_MAX;
        e.set_last_mounted(&vec![b'y'; max]).unwrap();
        assert_eq!(e.s_last_mounted().len(), 63);
        let long = e.set_last_mounted(&vec![b'z'; max + 1]).unwrap_err();
        assert!(
            long.to_string().contains("s_last_mounted: 64 bytes"),
            "{long}"
        );
        assert!(e.set_last_mounted(b"a\0b").is_err());
        assert_eq!(e.s_last_mounted(), &[b'y'; 63][..], "left as it was");
    }

    #[test]
    fn counts_orphan_head_and_ro_compat_bits_set_alone() {
        let (sb, before) = edited(|e| {
            e.set_free_blocks_count((7 << 32) | 12);
            e.set_free_inodes_count(34);
            e.set_last_orphan(56);
            assert_eq!(e.s_last_orphan(), 56);
            e.clear_ro_compat(ro_compat::METADATA_CSUM);
            assert_eq!(e.s_feature_ro_compat() & ro_compat::METADATA_CSUM, 0);
            let ro = e.s_feature_ro_compat() | ro_compat::METADATA_CSUM;
            e.put32(S_FEATURE_RO_COMPAT_OFFSET, ro);
        });
        assert_eq!(sb.s_last_orphan, 56);
        let raw = &sb.raw;
        assert_eq!(le32(raw, S_FREE_BLOCKS_COUNT_LO_OFFSET), 12);
        assert_eq!(le32(raw, S_FREE_INODES_COUNT_OFFSET), 34);
        // Without INCOMPAT_64BIT the high half is not written.
        assert_eq!(le32(raw, S_FREE_BLOCKS_COUNT_HI_OFFSET), 0);
        let fields = [
            S_FREE_BLOCKS_COUNT_LO_OFFSET,
            S_FREE_INODES_COUNT_OFFSET,
            S_LAST_ORPHAN_OFFSET,
        ];
        let d = differ(raw, &before);
        assert!(
            d.iter()
                .all(|&i| fields.iter().any(|&f| (f..f + 4).contains(&i)) || i >= S_CHECKSUM_OFFSET),
            "{d:?}"
        );
        let mut b = sample();
        let inc = le32(&b, S_FEATURE_INCOMPAT_OFFSET) | incompat::BIT64;
        b[S_FEATURE_INCOMPAT_OFFSET..][..4].copy_from_slice(&inc.to_le_bytes());
        SuperblockBytes::new(&mut b)
            .unwrap()
            .set_free_blocks_count((7 << 32) | 12);
        assert_eq!(le32(&b, S_FREE_BLOCKS_COUNT_HI_OFFSET), 7);
    }

    #[test]
    fn magic_set() {
        let mut b = sample();
        let mut e = SuperblockBytes::new(&mut b).unwrap();
        e.set_s_magic(!crate::superblock::EXT4_SUPER_MAGIC);
        assert_eq!(e.s_magic(), 0x10AC);
        assert!(Superblock::parse(&b).is_err());
        SuperblockBytes::new(&mut b)
            .unwrap()
            .set_s_magic(crate::superblock::EXT4_SUPER_MAGIC);
        assert_eq!(b, sample());
    }

    #[test]
    fn checksum_left_alone_without_metadata_csum() {
        let mut b = sample();
        b[S_CHECKSUM_OFFSET] = 0x55;
        let mut e = SuperblockBytes::new(&mut b).unwrap();
        assert!(!e.update_checksum());
        assert_eq!(e.s_checksum(), 0x55);
        assert_eq!(e.s_feature_ro_compat(), 0);
        assert_eq!(e.s_feature_compat(), 0);
    }
}
