//! Raw deflate payloads (`compression_type` 0): window bits −12 as QEMU writes them; any
//! window up to 32 KiB read, as zlib's raw inflate with window bits 15 accepts.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// log2 of the deflate window QEMU compresses with (window bits −12: 4 KiB, raw stream).
const WINDOW_BITS: u8 = 12;

thread_local! {
    /// This thread's deflate state and its level, reset between clusters.
    static COMPRESS: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    /// This thread's inflate state, reset between clusters.
    static DECOMPRESS: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Deflates `cluster` at `level` into at most `limit` bytes: `None` when the stream does not
/// fit (QEMU's `Z_OK` with the output full: store the cluster plain).
pub(super) fn compress(
    cluster: &[u8],
    level: u32,
    limit: usize,
) -> Result<Option<Vec<u8>>, String> {
    COMPRESS.with_borrow_mut(|slot| {
        let c = match slot {
            Some((l, c)) if *l == level => {
                c.reset();
                c
            }
            _ => {
                let c = Compress::new_with_window_bits(Compression::new(level), false, WINDOW_BITS);
                &mut slot.insert((level, c)).1
            }
        };
        let mut out = Vec::with_capacity(limit);
        match c.compress_vec(cluster, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => Ok(Some(out)),
            Ok(Status::Ok | Status::BufError) => Ok(None),
            Err(e) => Err(format!("deflate failed: {e}")),
        }
    })
}

/// Inflates one raw deflate stream into `out`, which must come out exactly full; input after
/// the end of the stream is ignored. Returns the reason on failure.
pub(super) fn decompress(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    DECOMPRESS.with_borrow_mut(|slot| {
        let d = slot.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        if let Err(e) = d.decompress(input, out, FlushDecompress::Finish) {
            return Err(format!("compressed cluster does not inflate: {e}"));
        }
        if d.total_out() != out.len() as u64 {
            let n = d.total_out();
            return Err(format!(
                "compressed cluster inflates to {n} bytes, not one cluster"
            ));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            decompress(&z, &mut out).unwrap();
            assert!(out == cluster, "window bits {bits}");
        }
    }

    #[test]
    fn rejects_short_or_broken_streams() {
        let z = deflate(&[1u8; 4000], 12);
        let mut out = vec![0u8; 4096];
        assert!(decompress(&z, &mut out).is_err()); // 4000 bytes, not a cluster
        let z = deflate(&[1u8; 4096], 12);
        assert!(decompress(&z[..z.len() / 2], &mut out).is_err());
        assert!(decompress(&[0xff; 64], &mut out).is_err());
        let z = deflate(&[1u8; 8192], 12);
        assert!(decompress(&z, &mut out).is_ok()); // QEMU: one full cluster out is enough
    }

    #[test]
    fn compresses_with_a_4k_window() {
        // One 8 KiB random block repeated: a 4 KiB window cannot see the repetition (notes
        // §1.6, 65 667 bytes at −12 against 8 762 at −15), so it does not fit 64 KiB − 1.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let block: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let cluster = block.repeat(8);
        assert_eq!(compress(&cluster, 6, cluster.len() - 1).unwrap(), None);
        assert!(deflate(&cluster, 15).len() < 10_000);
        let text = b"compressible text ".repeat(4096)[..65536].to_vec();
        let z = compress(&text, 6, text.len() - 1).unwrap().unwrap();
        let mut out = vec![0u8; 65536];
        decompress(&z, &mut out).unwrap();
        assert!(out == text);
    }
}
