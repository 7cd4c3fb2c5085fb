//! Refcount structures (spec "Cluster refcounts"): the refcount widths, the refcount table
//! entry's reserved bits, and the sizing of the refcount blocks and table this crate writes
//! (16-bit refcounts, `refcount_order` 4).

/// `refcount_order` implied by version 2 and always written by this crate (16-bit refcounts).
pub(crate) const DEFAULT_REFCOUNT_ORDER: u32 = 4;
/// Largest `refcount_order` (64-bit refcounts).
pub(crate) const MAX_REFCOUNT_ORDER: u32 = 6;
/// Reserved bits of a refcount table entry (0–8); a set bit is corruption.
pub(crate) const REFT_RESERVED_MASK: u64 = 0x1ff;
/// Largest representable 16-bit refcount; reaching it is reported as [`Error::Limit`]
/// (QEMU treats refcount_max as an overflow).
///
/// [`Error::Limit`]: crate::error::Error::Limit
pub(crate) const MAX_REFCOUNT: u16 = u16::MAX;

/// Sizes the refcount structures placed after `used` clusters (spec: refcount blocks must cover
/// themselves and the refcount table). Returns `(refcount_blocks, refcount_table_clusters)`
/// from the fixed point `R = ceil((used + R + T) / E)`, `T = ceil(8·R / C)`, with E = C/2
/// (16-bit refcounts). Reaches the fixed point in a few rounds since both grow by < 1/E per unit.
pub(crate) fn refcount_structure_clusters(used: u64, cluster_bits: u32) -> (u64, u64) {
    let epb = 1u64 << (cluster_bits - 1);
    let (mut r, mut t) = (0u64, 0u64);
    loop {
        let r2 = (used + r + t).div_ceil(epb);
        let t2 = (r2 * 8).div_ceil(1u64 << cluster_bits);
        if (r2, t2) == (r, t) {
            return (r, t);
        }
        (r, t) = (r2, t2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point() {
        // 512-byte clusters: 256 entries per block, 64 reftable entries per cluster.
        assert_eq!(refcount_structure_clusters(10, 9), (1, 1));
        assert_eq!(refcount_structure_clusters(254, 9), (1, 1));
        assert_eq!(refcount_structure_clusters(255, 9), (2, 1));
        let (r, t) = refcount_structure_clusters(1 << 20, 9);
        assert!(r * 256 >= (1 << 20) + r + t && t * 64 >= r);
    }
}
