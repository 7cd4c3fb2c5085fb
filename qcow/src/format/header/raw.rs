//! The header's on-disk layout (spec "Header"): all integers big-endian, v3 fields zero in v2.

use std::mem::offset_of;

use crate::bytes::be_struct;

/// Length of a version 2 header in bytes (it has no `header_length` field).
pub(crate) const V2_HEADER_LENGTH: u32 = 72;
/// Minimum `header_length` of a version 3 header in bytes (without `compression_type`).
pub(super) const V3_MIN_HEADER_LENGTH: u32 = 104;
/// `header_length` written for version 3 images: 104 + compression_type + 7 padding bytes,
/// what QEMU 10 writes.
pub(crate) const V3_HEADER_LENGTH: u32 = 112;

be_struct! {
    /// The first 112 bytes of cluster 0, field by field.
    pub(super) struct RawHeader {
        pub(super) magic: u32,
        pub(super) version: u32,
        pub(super) backing_file_offset: u64,
        pub(super) backing_file_size: u32,
        pub(super) cluster_bits: u32,
        pub(super) size: u64,
        pub(super) crypt_method: u32,
        pub(super) l1_size: u32,
        pub(super) l1_table_offset: u64,
        pub(super) refcount_table_offset: u64,
        pub(super) refcount_table_clusters: u32,
        pub(super) nb_snapshots: u32,
        pub(super) snapshots_offset: u64,
        pub(super) incompatible_features: u64,
        pub(super) compatible_features: u64,
        pub(super) autoclear_features: u64,
        pub(super) refcount_order: u32,
        pub(super) header_length: u32,
        pub(super) compression_type: u8,
        pub(super) padding: [u8; 7],
    }
}

const _: () = assert!(RawHeader::LEN == V3_HEADER_LENGTH as usize);
const _: () = assert!(offset_of!(RawHeader, backing_file_offset) == 8);
const _: () = assert!(offset_of!(RawHeader, cluster_bits) == 20);
const _: () = assert!(offset_of!(RawHeader, size) == 24);
const _: () = assert!(offset_of!(RawHeader, l1_size) == 36);
const _: () = assert!(offset_of!(RawHeader, refcount_table_clusters) == 56);
const _: () = assert!(offset_of!(RawHeader, snapshots_offset) == 64);
const _: () = assert!(offset_of!(RawHeader, incompatible_features) == V2_HEADER_LENGTH as usize);
const _: () = assert!(offset_of!(RawHeader, refcount_order) == 96);
const _: () = assert!(offset_of!(RawHeader, compression_type) == V3_MIN_HEADER_LENGTH as usize);
