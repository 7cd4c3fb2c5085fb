//! zstd payloads (`compression_type` 1): one frame per cluster, as QEMU writes them; frames
//! decoded one after the other until one full cluster came out, as QEMU decodes them.

use std::cell::RefCell;

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, InBuffer, OutBuffer, ResetDirective};

thread_local! {
    /// This thread's compression context and its level.
    static COMPRESS: RefCell<Option<(u32, CCtx<'static>)>> = const { RefCell::new(None) };
    /// This thread's decompression context.
    static DECOMPRESS: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// Compresses `cluster` at `level` into one frame of at most `limit` bytes: `None` when it
/// is longer (store the cluster plain).
pub(super) fn compress(
    cluster: &[u8],
    level: u32,
    limit: usize,
) -> Result<Option<Vec<u8>>, String> {
    COMPRESS.with_borrow_mut(|slot| {
        let c = match slot {
            Some((l, c)) if *l == level => c,
            _ => {
                let mut c = CCtx::try_create().ok_or("cannot create a zstd context")?;
                // Levels are at most 19 (checked by `Compression::new`).
                c.set_parameter(CParameter::CompressionLevel(level as i32))
                    .map_err(|e| zstd_error("setting the level", e))?;
                &mut slot.insert((level, c)).1
            }
        };
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(cluster.len()));
        let n = c
            .compress2(&mut out, cluster)
            .map_err(|e| zstd_error("compressing", e))?;
        Ok((n <= limit).then_some(out))
    })
}

/// Decodes frames of `input` into `out` until it is full; the last frame must end there.
/// Bytes after it are ignored. Returns the reason on failure.
pub(super) fn decompress(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    DECOMPRESS.with_borrow_mut(|slot| {
        let d = match slot {
            Some(d) => d,
            None => slot.insert(DCtx::try_create().ok_or("cannot create a zstd context")?),
        };
        d.reset(ResetDirective::SessionOnly)
            .map_err(|e| zstd_error("resetting", e))?;
        let len = out.len();
        let mut output = OutBuffer::around(out);
        let mut input = InBuffer::around(input);
        let mut last = 0;
        while output.pos() < len {
            let (before_in, before_out) = (input.pos(), output.pos());
            last = d
                .decompress_stream(&mut output, &mut input)
                .map_err(|e| zstd_error("compressed cluster does not decode", e))?;
            if input.pos() == before_in && output.pos() == before_out {
                return Err(format!(
                    "compressed cluster decodes to {} bytes, not one cluster",
                    output.pos()
                ));
            }
        }
        if last != 0 {
            return Err("compressed cluster decodes to more than one cluster".into());
        }
        Ok(())
    })
}

fn zstd_error(what: &str, code: usize) -> String {
    format!("{what}: {}", zstd_safe::get_error_name(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_trailing_bytes_are_ignored() {
        let cluster = b"compressible text ".repeat(4096)[..65536].to_vec();
        let z = compress(&cluster, 3, cluster.len() - 1).unwrap().unwrap();
        let mut input = z.clone();
        input.extend_from_slice(&[0x5a; 200]); // the next payload's bytes
        let mut out = vec![0u8; 65536];
        decompress(&input, &mut out).unwrap();
        assert!(out == cluster, "one frame");
        // Two frames of half a cluster each (as another writer may make them) decode too.
        let mut two = zstd::bulk::compress(&cluster[..32768], 19).unwrap();
        two.extend(zstd::bulk::compress(&cluster[32768..], 1).unwrap());
        out.fill(0);
        decompress(&two, &mut out).unwrap();
        assert!(out == cluster, "two frames");
    }

    #[test]
    fn short_long_and_broken_frames_are_refused() {
        let mut out = vec![0u8; 4096];
        let short = zstd::bulk::compress(&[7u8; 4000], 3).unwrap();
        assert!(decompress(&short, &mut out).is_err());
        let long = zstd::bulk::compress(&[7u8; 8192], 3).unwrap();
        assert!(decompress(&long, &mut out).is_err());
        assert!(decompress(&[0xff; 64], &mut out).is_err());
        let ok = zstd::bulk::compress(&[7u8; 4096], 3).unwrap();
        assert!(decompress(&ok[..ok.len() - 2], &mut out).is_err());
        decompress(&ok, &mut out).unwrap();
    }
}
