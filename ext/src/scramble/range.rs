//! The primitives of a name search: the seeded generator, the hash range of an htree leaf,
//! the alphabet of safe characters and the bound on the candidates tried per stage.

use crate::dx_hash::dirhash;

/// Candidates tried per stage (per length in the last stage).
pub(crate) const TRIES: u64 = 1 << 16;

/// Lowercase ASCII letters and digits.
pub(crate) const SAFE: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A small deterministic generator (SplitMix64).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator of stream `stream` (a directory or symlink inode) of seed `seed`.
    pub(crate) fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        r.next();
        r
    }

    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (`n` > 0; the bias of the modulo is irrelevant here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A random lowercase letter or digit.
    pub(crate) fn safe_byte(&mut self) -> u8 {
        SAFE[self.below(SAFE.len() as u64) as usize]
    }
}

/// The hash range a name must fall in: an htree leaf's `[lo, hi)` from its parent index
/// entries (the low bit of each bound is the collision flag), for `version` and `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HashRange {
    /// The leaf's index entry hash (0 for the first leaf).
    pub(crate) lo: u32,
    /// The next index entry's hash; `None` for the last leaf.
    pub(crate) hi: Option<u32>,
    /// The hash version (unsigned variants included).
    pub(crate) version: u8,
    /// `s_hash_seed`.
    pub(crate) seed: [u32; 4],
}

impl HashRange {
    /// True if a name of hash `h` (even) belongs in the leaf: at least `lo` without its
    /// collision bit, below `hi`, or equal to `hi` without its bit when `hi` carries it (the
    /// names of a colliding hash continue in the next leaf).
    pub(crate) fn holds(&self, h: u32) -> bool {
        if h < self.lo & !1 {
            return false;
        }
        match self.hi {
            None => true,
            Some(hi) => h < hi & !1 || (h == hi & !1 && hi & 1 == 1),
        }
    }

    /// True if no hash can fall in the range (a corrupt index: bounds out of order).
    pub(crate) fn is_empty(&self) -> bool {
        self.hi
            .is_some_and(|hi| hi & !1 < self.lo & !1 || (hi & !1 == self.lo & !1 && hi & 1 == 0))
    }

    /// True if `name` hashes into the range (false for an unknown hash version).
    pub(crate) fn accepts(&self, name: &[u8]) -> bool {
        dirhash(name, self.version, &self.seed).is_some_and(|h| self.holds(h))
    }
}
