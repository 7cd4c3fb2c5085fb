//! Unit tests of the header codec: round trips, QEMU's bytes, and one rejected patch per rule.

use super::*;

fn v3_header() -> Header {
    Header {
        version: Version::V3,
        cluster_bits: 16,
        size: 128 << 20,
        l1_size: 1,
        l1_table_offset: 0x30000,
        refcount_table_offset: 0x10000,
        refcount_table_clusters: 1,
        nb_snapshots: 2,
        snapshots_offset: 0xd0000,
        incompatible_features: 0,
        compatible_features: 0,
        autoclear_features: 0,
        refcount_order: 4,
        header_length: 112,
        compression_type: 0,
        backing_file_offset: 0,
        backing_file_size: 0,
        crypt_method: 0,
    }
}

fn v2_header() -> Header {
    Header {
        version: Version::V2,
        header_length: 72,
        cluster_bits: 12,
        size: 1 << 30,
        l1_size: 512,
        l1_table_offset: 0x3000,
        nb_snapshots: 0,
        snapshots_offset: 0,
        ..v3_header()
    }
}

#[test]
fn round_trip_v3() {
    let h = v3_header();
    let bytes = h.to_bytes();
    assert_eq!(bytes.len(), 112);
    assert_eq!(&bytes[..4], &QCOW2_MAGIC);
    assert_eq!(Header::parse(&bytes).unwrap(), h);
}

#[test]
fn round_trip_v2() {
    let h = v2_header();
    let bytes = h.to_bytes();
    assert_eq!(bytes.len(), 72);
    assert_eq!(Header::parse(&bytes).unwrap(), h);
}

#[test]
fn qemu_e1_header_bytes() {
    // First 0x70 bytes of the image of the notes' experiment E1.
    let hex = [
        "514649fb000000030000000000000000", // magic, v3, no backing
        "00000000000000100000000008000000", // cluster_bits 16, size 128M
        "00000000000000010000000000030000", // crypt 0, l1_size 1, l1 @0x30000
        "00000000000100000000000100000002", // reftable @0x10000, 1 cluster, 2 snapshots
        "00000000000d00000000000000000000", // snapshot table @0xd0000, features 0
        "00000000000000000000000000000000",
        "00000004000000700000000000000000", // refcount_order 4, header_length 0x70
    ]
    .concat();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(Header::parse(&bytes).unwrap(), v3_header());
}

fn patched(h: &Header, at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut b = h.to_bytes();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    b
}

fn expect_err(buf: &[u8], kind: &str) {
    let err = Header::parse(buf).expect_err("patched header must be rejected");
    let got = match err {
        Error::Corrupt { .. } => "corrupt",
        Error::Unsupported(_) => "unsupported",
        Error::Limit(_) => "limit",
        _ => "other",
    };
    assert_eq!(got, kind, "{err}");
}

#[test]
fn rejects_each_rule() {
    let h = v3_header();
    expect_err(&h.to_bytes()[..71], "corrupt"); // truncated
    expect_err(&h.to_bytes()[..100], "corrupt"); // v3 truncated below header_length
    expect_err(&patched(&h, 0, b"QFI\0"), "corrupt"); // magic
    expect_err(&patched(&h, 4, &4u32.to_be_bytes()), "unsupported"); // version
    expect_err(&patched(&h, 4, &1u32.to_be_bytes()), "unsupported");
    expect_err(&patched(&h, 20, &8u32.to_be_bytes()), "unsupported"); // cluster_bits
    expect_err(&patched(&h, 20, &22u32.to_be_bytes()), "unsupported");
    expect_err(&patched(&h, 100, &96u32.to_be_bytes()), "corrupt"); // header_length < 104
    expect_err(&patched(&h, 100, &108u32.to_be_bytes()), "corrupt"); // not a multiple of 8
    expect_err(&patched(&h, 96, &7u32.to_be_bytes()), "corrupt"); // refcount_order
    expect_err(&patched(&h, 72, &0x20u64.to_be_bytes()), "unsupported"); // unknown incompat
    expect_err(&patched(&h, 104, &[2]), "unsupported"); // compression_type
    expect_err(&patched(&h, 104, &[1]), "corrupt"); // zstd without bit 3
    expect_err(&patched(&h, 72, &8u64.to_be_bytes()), "corrupt"); // bit 3 with deflate
    expect_err(&patched(&h, 32, &3u32.to_be_bytes()), "unsupported"); // crypt_method
    expect_err(&patched(&h, 8, &0x10001u64.to_be_bytes()), "corrupt"); // backing name past cluster 0
    expect_err(&patched(&h, 36, &0u32.to_be_bytes()), "corrupt"); // L1 too small
    expect_err(&patched(&h, 36, &(4u32 << 20 | 1).to_be_bytes()), "limit"); // L1 > 32 MiB
    expect_err(&patched(&h, 24, &(1u64 << 60).to_be_bytes()), "limit"); // size needs huge L1
    expect_err(&patched(&h, 40, &0x30200u64.to_be_bytes()), "corrupt"); // L1 misaligned
    expect_err(&patched(&h, 40, &0u64.to_be_bytes()), "corrupt"); // L1 at the header
    expect_err(&patched(&h, 48, &0x10008u64.to_be_bytes()), "corrupt"); // reftable misaligned
    expect_err(&patched(&h, 48, &(1u64 << 56).to_be_bytes()), "corrupt"); // reftable >= 2^56
    expect_err(&patched(&h, 56, &0u32.to_be_bytes()), "corrupt"); // reftable 0 clusters
    expect_err(&patched(&h, 56, &129u32.to_be_bytes()), "limit"); // reftable > 8 MiB
    expect_err(&patched(&h, 60, &65537u32.to_be_bytes()), "limit"); // nb_snapshots
    expect_err(&patched(&h, 64, &0xd0100u64.to_be_bytes()), "corrupt"); // snapshots misaligned
    expect_err(&patched(&h, 64, &0u64.to_be_bytes()), "corrupt"); // snapshots at 0 with nb 2
}

#[test]
fn zero_size_image_with_empty_l1_is_valid() {
    let h = Header {
        size: 0,
        l1_size: 0,
        l1_table_offset: 0,
        ..v3_header()
    };
    assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
}

#[test]
fn header_length_104_has_no_compression_type() {
    let h = Header {
        header_length: 104,
        ..v3_header()
    };
    let mut b = h.to_bytes();
    assert_eq!(b.len(), 104);
    b.push(1); // a byte past header_length is not the compression type
    assert_eq!(Header::parse(&b).unwrap().compression_type, 0);
}
