//! Small value types shared by the on-disk codecs, the reader, the writer and the editor: the
//! writer's state handles, and cluster numbers that say which address space they count in.
//!
//! Design: a guest cluster (an index into the virtual disk) and a host cluster (an index into
//! the image file) are both `u64`s on disk and in arithmetic, and swapping them compiles fine
//! and corrupts an image silently. [`GuestCluster`] and [`HostCluster`] keep them apart where
//! both meet: the reader's lookups, the writer's data placement and sharing, the editor's
//! reference counts. A [`HostCluster`] is only made from a host byte offset or by the writer's
//! allocator; callers get one from [`Writer::lookup`](crate::Writer::lookup) and hand it back
//! to [`Writer::share_cluster`](crate::Writer::share_cluster), so a guest number cannot stand in
//! for it.

use std::fmt;

/// Identifies one guest state (one future L1 table) of a [`Writer`](crate::Writer): the
/// writer numbers its states 0, 1, ... in the order it creates them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateId(u32);

impl StateId {
    /// The state numbered `index`.
    pub(crate) fn from_index(index: usize) -> StateId {
        StateId(index as u32)
    }

    /// The state's number.
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// A guest cluster number: guest byte offset / cluster size, 0 ..
/// `ceil(virtual_size / cluster size)` (spec "Cluster mapping").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestCluster(
    /// The number, in clusters from the start of the virtual disk.
    pub u64,
);

impl GuestCluster {
    /// The L1 index and the index within its L2 table of this cluster, with `C/8` entries per
    /// L2 table (`cluster_bits` 9..=21; spec "Cluster mapping").
    pub(crate) fn table_indices(self, cluster_bits: u32) -> (u64, usize) {
        let l2_bits = cluster_bits - 3;
        let within = self.0 & ((1u64 << l2_bits) - 1);
        (self.0 >> l2_bits, within as usize)
    }

    /// The guest cluster holding guest byte `offset`.
    pub(crate) fn of_offset(offset: u64, cluster_bits: u32) -> GuestCluster {
        GuestCluster(offset >> cluster_bits)
    }

    /// The cluster `n` clusters after this one. The caller has checked the range against the
    /// disk's size (no overflow).
    pub(crate) fn plus(self, n: u64) -> GuestCluster {
        GuestCluster(self.0 + n)
    }
}

impl From<u64> for GuestCluster {
    fn from(n: u64) -> GuestCluster {
        GuestCluster(n)
    }
}

impl fmt::Display for GuestCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest cluster {}", self.0)
    }
}

/// A host cluster number: host file byte offset / cluster size (spec "Cluster mapping"). Host
/// cluster 0 is the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostCluster(
    /// The number, in clusters from the start of the image file.
    pub u64,
);

impl HostCluster {
    /// The host cluster holding host byte `offset`.
    pub(crate) fn of_offset(offset: u64, cluster_bits: u32) -> HostCluster {
        HostCluster(offset >> cluster_bits)
    }

    /// The host byte offset of the cluster's first byte. Host clusters handed out by the
    /// allocator or read from a validated table are below 2^56 bytes, so this cannot overflow.
    pub(crate) fn offset(self, cluster_bits: u32) -> u64 {
        self.0 << cluster_bits
    }

    /// The cluster `n` clusters after this one (inside an allocated run).
    pub(crate) fn plus(self, n: u64) -> HostCluster {
        HostCluster(self.0 + n)
    }
}

impl fmt::Display for HostCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host cluster {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_and_offsets() {
        // 64 KiB clusters: 8192 entries per L2 table.
        assert_eq!(GuestCluster(8193).table_indices(16), (1, 1));
        assert_eq!(GuestCluster::of_offset(0x1_ffff, 16), GuestCluster(1));
        assert_eq!(HostCluster::of_offset(0x5_e173, 16), HostCluster(5));
        assert_eq!(HostCluster(5).offset(16), 0x5_0000);
        assert_eq!(HostCluster(5).plus(2).to_string(), "host cluster 7");
    }
}
