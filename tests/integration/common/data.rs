//! Test data: deterministic pseudo-random bytes, and ext4 images made from a directory.

use super::{sh, stderr};
use std::path::Path;

/// A xorshift64 generator of deterministic pseudo-random bytes.
pub struct Xorshift(u64);

impl Xorshift {
    /// A generator starting from `seed` (made odd: never the all-zero state).
    pub fn new(seed: u64) -> Xorshift {
        Xorshift(seed | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// `mke2fs -t ext4 -b 4096 -d SRC IMG SIZE`.
pub fn mkfs_from(src: &Path, img: &Path, size: &str) {
    let o = sh(
        "mke2fs",
        &[
            &"-q", &"-F", &"-t", &"ext4", &"-b", &"4096", &"-d", &src, &img, &size,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}
