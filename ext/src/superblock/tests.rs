//! Unit tests of superblock parsing and validation.

use super::*;

/// A minimal valid 4 KiB-block superblock: 32768 blocks, one group.
pub(crate) fn sample() -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    let put32 = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put32(&mut b, 0x00, 8192); // s_inodes_count
    put32(&mut b, 0x04, 32768); // s_blocks_count_lo
    put32(&mut b, 0x18, 2); // 4 KiB
    put32(&mut b, 0x1C, 2);
    put32(&mut b, 0x20, 32768);
    put32(&mut b, 0x24, 32768);
    put32(&mut b, 0x28, 8192);
    b[0x38..0x3A].copy_from_slice(&EXT4_SUPER_MAGIC.to_le_bytes());
    put32(&mut b, 0x4C, 1);
    put32(&mut b, 0x54, 11);
    b[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
    b
}

fn patch32(o: usize, v: u32) -> Result<Superblock, Error> {
    let mut b = sample();
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    Superblock::parse(&b)
}

#[test]
fn sample_parses_with_derived_geometry() {
    let sb = Superblock::parse(&sample()).unwrap();
    assert_eq!(sb.block_size, 4096);
    assert_eq!(sb.group_count, 1);
    assert_eq!(sb.desc_blocks, 1);
    assert_eq!(sb.inode_table_blocks, 512);
    assert_eq!(sb.size_bytes(), 32768 * 4096);
}

#[test]
fn bad_magic_is_not_ext() {
    let mut b = sample();
    b[0x38] = 0;
    assert!(matches!(Superblock::parse(&b), Err(Error::NotExt(_))));
}

#[test]
fn short_buffer_is_corrupt() {
    assert!(matches!(
        Superblock::parse(&[0u8; 100]),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn block_size_too_large() {
    assert!(matches!(patch32(0x18, 7), Err(Error::Corrupt(_))));
}

#[test]
fn zero_blocks_per_group() {
    assert!(matches!(patch32(0x20, 0), Err(Error::Corrupt(_))));
}

#[test]
fn blocks_per_group_beyond_bitmap() {
    assert!(matches!(
        patch32(0x20, 4096 * 8 + 1),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn zero_inodes_per_group() {
    assert!(matches!(patch32(0x28, 0), Err(Error::Corrupt(_))));
}

#[test]
fn inode_size_not_power_of_two() {
    let mut b = sample();
    b[0x58..0x5A].copy_from_slice(&200u16.to_le_bytes());
    assert!(matches!(Superblock::parse(&b), Err(Error::Corrupt(_))));
}

#[test]
fn first_data_block_past_end() {
    assert!(matches!(patch32(0x14, 40000), Err(Error::Corrupt(_))));
}

#[test]
fn unknown_incompat_refused() {
    assert!(matches!(
        patch32(0x60, 0x4000_0000),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn journal_device_refused() {
    assert!(matches!(
        patch32(0x60, incompat::JOURNAL_DEV),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn bad_desc_size_with_64bit() {
    let mut b = sample();
    b[0x60..0x64].copy_from_slice(&incompat::BIT64.to_le_bytes());
    b[0xFE..0x100].copy_from_slice(&48u16.to_le_bytes());
    assert!(matches!(Superblock::parse(&b), Err(Error::Corrupt(_))));
}

#[test]
fn bigalloc_cluster_ratio() {
    let mut b = sample();
    b[0x64..0x68].copy_from_slice(&ro_compat::BIGALLOC.to_le_bytes());
    b[0x1C..0x20].copy_from_slice(&4u32.to_le_bytes()); // 16 KiB clusters
    b[0x24..0x28].copy_from_slice(&8192u32.to_le_bytes());
    let sb = Superblock::parse(&b).unwrap();
    assert_eq!(sb.cluster_ratio, 4);
}

#[test]
fn bigalloc_inconsistent_blocks_per_group() {
    let mut b = sample();
    b[0x64..0x68].copy_from_slice(&ro_compat::BIGALLOC.to_le_bytes());
    b[0x1C..0x20].copy_from_slice(&4u32.to_le_bytes());
    b[0x24..0x28].copy_from_slice(&4096u32.to_le_bytes());
    assert!(matches!(Superblock::parse(&b), Err(Error::Corrupt(_))));
}

/// `sample()` with metadata_csum, `s_checksum_type` 1 and a valid `s_checksum`.
pub(crate) fn with_csum() -> Vec<u8> {
    let mut b = sample();
    b[0x64..0x68].copy_from_slice(&ro_compat::METADATA_CSUM.to_le_bytes());
    b[0x175] = EXT4_CRC32C_CHKSUM;
    fix_csum(&mut b);
    b
}

fn fix_csum(b: &mut [u8]) {
    let c = crc32c_raw(!0, &b[..S_CHECKSUM_OFFSET]);
    b[S_CHECKSUM_OFFSET..S_CHECKSUM_OFFSET + 4].copy_from_slice(&c.to_le_bytes());
}

fn reason(r: Result<Superblock, Error>) -> String {
    match r {
        Err(Error::Corrupt(c)) => c.reason(),
        other => panic!("expected a corrupt superblock, got {other:?}"),
    }
}

#[test]
fn metadata_csum_checksum_verified() {
    let b = with_csum();
    let sb = Superblock::parse(&b).unwrap();
    assert_eq!(crc32c_raw(!0, &b), 0, "residue of a valid superblock is 0");
    assert_eq!(sb.s_checksum_type, 1);
    let mut bad = b.clone();
    bad[0x3FC] ^= 1;
    assert!(reason(Superblock::parse(&bad)).contains("s_checksum"));
    let mut bad = b.clone();
    bad[0x100] ^= 0x40; // a byte the walker does not use
    assert!(reason(Superblock::parse(&bad)).contains("does not match"));
    // Without metadata_csum the checksum field means nothing.
    let mut plain = sample();
    plain[0x3FC] = 0x55;
    assert!(Superblock::parse(&plain).is_ok());
}

#[test]
fn unknown_checksum_type_refused() {
    let mut b = with_csum();
    b[0x175] = 2;
    fix_csum(&mut b);
    assert!(reason(Superblock::parse(&b)).contains("s_checksum_type 2"));
}

#[test]
fn revision_above_dynamic_refused() {
    assert!(reason(patch32(0x4C, 2)).contains("s_rev_level 2"));
}

#[test]
fn inodes_count_must_match_the_group_count() {
    let r = reason(patch32(0x00, 8193));
    assert!(r.contains("s_inodes_count 8193"), "{r}");
    // A corrupt s_blocks_count_hi claims 2^32 more blocks: 131073 groups.
    let mut b = sample();
    b[0x60..0x64].copy_from_slice(&incompat::BIT64.to_le_bytes());
    b[0xFE..0x100].copy_from_slice(&64u16.to_le_bytes());
    assert!(Superblock::parse(&b).is_ok());
    b[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
    let r = reason(Superblock::parse(&b));
    assert!(
        r.contains("131073 groups") && r.contains("s_blocks_count 4295000064"),
        "{r}"
    );
    // Made consistent, it parses (the group count is bounded by the source when opening).
    b[0x28..0x2C].copy_from_slice(&64u32.to_le_bytes());
    b[0..4].copy_from_slice(&(131073u32 * 64).to_le_bytes());
    assert_eq!(Superblock::parse(&b).unwrap().group_count, 131073);
}

#[test]
fn cluster_fields_must_match_without_bigalloc() {
    assert!(reason(patch32(0x1C, 3)).contains("s_log_cluster_size 3"));
    assert!(reason(patch32(0x24, 16384)).contains("s_clusters_per_group 16384"));
}

#[test]
fn flex_and_meta_bg_bounds() {
    let mut b = sample();
    b[0x174] = 31;
    assert!(Superblock::parse(&b).is_ok());
    b[0x174] = 32;
    assert!(reason(Superblock::parse(&b)).contains("s_log_groups_per_flex 32"));
    let mut b = sample();
    b[0x104..0x108].copy_from_slice(&5u32.to_le_bytes());
    assert!(Superblock::parse(&b).is_ok(), "ignored without meta_bg");
    b[0x60..0x64].copy_from_slice(&incompat::META_BG.to_le_bytes());
    assert!(reason(Superblock::parse(&b)).contains("s_first_meta_bg 5"));
    b[0x104..0x108].copy_from_slice(&1u32.to_le_bytes());
    assert!(Superblock::parse(&b).is_ok());
}
