//! The CRC-32C of every host cluster an [`OutFile`](crate::io::OutFile) writes, kept for the
//! cluster checksum table (`format/checksums.rs`).
//!
//! Design: every physical write reports its bytes here. A write covering a whole, aligned
//! cluster gives that cluster's checksum from the bytes in hand (no read back); a write
//! covering part of a cluster (compressed payloads, buffer edges) marks it as not known, so
//! that [`ClusterSums::fill`] reads it back once all writes are done. Cluster 0 (the header)
//! is never covered. Memory: 4 bytes per host cluster plus one bit.

/// Checksums of host clusters, by cluster number.
#[derive(Debug)]
pub(crate) struct ClusterSums {
    cluster_bits: u32,
    /// CRC-32C of cluster `i` (a base table's entry, or what this session wrote).
    sums: Vec<u32>,
    /// Bit `i`: cluster `i` was written whole by this session and `sums[i]` is its CRC.
    written: Vec<u64>,
}

impl ClusterSums {
    /// Checksums starting from `base` (an existing image's table, or empty).
    pub(crate) fn new(cluster_bits: u32, base: Vec<u32>) -> ClusterSums {
        ClusterSums {
            cluster_bits,
            sums: base,
            written: Vec::new(),
        }
    }

    fn set_written(&mut self, c: u64, on: bool) {
        let (w, bit) = ((c / 64) as usize, c % 64);
        if self.written.len() <= w {
            self.written.resize(w + 1, 0);
        }
        if on {
            self.written[w] |= 1 << bit;
        } else {
            self.written[w] &= !(1 << bit);
        }
    }

    /// Whether cluster `c` was written whole by this session.
    pub(crate) fn is_written(&self, c: u64) -> bool {
        self.written
            .get((c / 64) as usize)
            .is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    /// Records a write of `data` at host byte `offset`.
    pub(crate) fn record(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let c = 1u64 << self.cluster_bits;
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let cluster = at >> self.cluster_bits;
            let cluster_end = (cluster + 1) << self.cluster_bits;
            let piece_end = cluster_end.min(end);
            if at.is_multiple_of(c) && piece_end == cluster_end {
                let i = (at - offset) as usize;
                let crc = crc32c::crc32c(&data[i..i + c as usize]);
                self.set(cluster, crc);
                self.set_written(cluster, true);
            } else {
                self.set_written(cluster, false);
            }
            at = piece_end;
        }
    }

    /// Sets cluster `c`'s checksum.
    pub(crate) fn set(&mut self, c: u64, crc: u32) {
        let i = c as usize;
        if self.sums.len() <= i {
            self.sums.resize(i + 1, 0);
        }
        self.sums[i] = crc;
    }

    /// The table of clusters `0..n`: entries for clusters `needs_read(c)` names that were not
    /// written whole are read back with `read` (one cluster into the buffer), cluster 0 is 0.
    ///
    /// Errors: those of `read`.
    pub(crate) fn fill<E>(
        &mut self,
        n: u64,
        mut needs_read: impl FnMut(u64) -> bool,
        mut read: impl FnMut(u64, &mut [u8]) -> Result<(), E>,
    ) -> Result<Vec<u32>, E> {
        let mut buf = vec![0u8; 1usize << self.cluster_bits];
        self.sums.resize(n as usize, 0);
        for c in 1..n {
            if !self.is_written(c) && needs_read(c) {
                read(c << self.cluster_bits, &mut buf)?;
                self.sums[c as usize] = crc32c::crc32c(&buf);
            }
        }
        if let Some(first) = self.sums.first_mut() {
            *first = 0;
        }
        Ok(self.sums.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_partial_writes() {
        let mut s = ClusterSums::new(9, vec![0, 11, 22, 33]);
        let a = vec![7u8; 1024];
        s.record(512, &a); // clusters 1 and 2 whole
        s.record(1536 + 10, &a[..20]); // part of cluster 3
        assert!(s.is_written(1) && s.is_written(2) && !s.is_written(3));
        let mut reads = Vec::new();
        let table = s
            .fill(
                5,
                |c| c != 4,
                |off, buf: &mut [u8]| {
                    reads.push(off);
                    buf.fill(0);
                    Ok::<(), ()>(())
                },
            )
            .unwrap();
        assert_eq!(reads, vec![1536]);
        let crc = crc32c::crc32c(&a[..512]);
        assert_eq!(table, vec![0, crc, crc, crc32c::crc32c(&[0u8; 512]), 0]);
    }
}
