//! Hashing files and comparing images block by block.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// SHA-256 of a file.
pub fn sha256(p: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut f = File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// Reads a whole file.
pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Block numbers (of `bs` bytes) that hold non-zero bytes in `img`.
pub fn nonzero_blocks(img: &[u8], bs: usize) -> Vec<usize> {
    img.chunks(bs)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&x| x != 0))
        .map(|(i, _)| i)
        .collect()
}

/// Calls `f(block, bytes)` for every block of `bs` bytes of `path` that is not all zero,
/// reading the file in chunks (images may be large and sparse).
pub fn for_each_nonzero_block(path: &Path, bs: usize, mut f: impl FnMut(u64, &[u8])) {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let chunk = (4 << 20) / bs * bs;
    let mut buf = vec![0u8; chunk];
    let mut block = 0u64;
    loop {
        let mut n = 0;
        while n < chunk {
            let k = file.read(&mut buf[n..]).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].chunks(bs).enumerate() {
            if b.iter().any(|&x| x != 0) {
                f(block + i as u64, b);
            }
        }
        block += n.div_ceil(bs) as u64;
        if n < chunk {
            break;
        }
    }
}

/// Block `b` (of `bs` bytes) of a file; zeros past its end.
pub fn block_at(path: &Path, b: u64, bs: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).unwrap();
    let mut buf = vec![0u8; bs];
    let mut done = 0;
    while done < bs {
        match f
            .read_at(&mut buf[done..], b * bs as u64 + done as u64)
            .unwrap()
        {
            0 => break,
            k => done += k,
        }
    }
    buf
}

/// Blocks that are non-zero in `reference` and differ in `other` (both files).
pub fn blocks_not_in(reference: &Path, other: &Path, bs: usize) -> Vec<u64> {
    let mut bad = Vec::new();
    for_each_nonzero_block(reference, bs, |b, data| {
        if block_at(other, b, bs) != data {
            bad.push(b);
        }
    });
    bad
}
