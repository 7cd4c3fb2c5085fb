//! Compressed clusters (spec "Compressed Clusters Descriptor"): raw deflate streams.

use flate2::{Decompress, FlushDecompress};

/// Inflates one raw deflate stream (any window size up to 32 KiB) into `out`, which must come
/// out exactly full, like QEMU; input after the end of the stream is ignored. Returns the
/// reason on failure.
pub(super) fn inflate_cluster(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut inflater = Decompress::new(false); // raw deflate, window bits 15
    if let Err(e) = inflater.decompress(input, out, FlushDecompress::Finish) {
        return Err(format!("compressed cluster does not inflate: {e}"));
    }
    if inflater.total_out() != out.len() as u64 {
        let n = inflater.total_out();
        return Err(format!(
            "compressed cluster inflates to {n} bytes, not one cluster"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::inflate_cluster;
    use flate2::{Compress, Compression, FlushCompress};

    fn deflate(data: &[u8], window_bits: u8) -> Vec<u8> {
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, window_bits);
        let mut out = Vec::with_capacity(data.len() * 2 + 64);
        c.compress_vec(data, &mut out, FlushCompress::Finish)
            .unwrap();
        out
    }

    #[test]
    fn inflates_any_window_and_ignores_trailing_bytes() {
        let cluster: Vec<u8> = (0..65536u32)
            .map(|i| (i / 7 % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        for bits in [9u8, 12, 15] {
            let mut z = deflate(&cluster, bits);
            z.extend_from_slice(&[0xaa; 300]); // rest of the last sector
            let mut out = vec![0u8; cluster.len()];
            inflate_cluster(&z, &mut out).unwrap();
            assert!(out == cluster, "window bits {bits}");
        }
    }

    #[test]
    fn rejects_short_or_broken_streams() {
        let z = deflate(&[1u8; 4000], 12);
        let mut out = vec![0u8; 4096];
        assert!(inflate_cluster(&z, &mut out).is_err()); // 4000 bytes, not a cluster
        let z = deflate(&[1u8; 4096], 12);
        assert!(inflate_cluster(&z[..z.len() / 2], &mut out).is_err());
        assert!(inflate_cluster(&[0xff; 64], &mut out).is_err());
        let z = deflate(&[1u8; 8192], 12);
        assert!(inflate_cluster(&z, &mut out).is_ok()); // QEMU: one full cluster out is enough
    }
}
