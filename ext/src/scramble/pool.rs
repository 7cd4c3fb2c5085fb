//! Candidates shared by the leaves of one htree directory. A random name fits a given leaf
//! with a chance of about one in the number of leaves, so searching each name alone costs
//! names × leaves hashes; instead every candidate drawn for one leaf that falls in another
//! is kept for that one, and the next name of that leaf (and length) takes it first. The
//! hashes computed are then about the number of names, times a small factor. The pool is
//! bounded ([`PER_SLOT`] names per leaf and length, [`TOTAL`] in all).

use super::range::{HashRange, Rng, TRIES};
use crate::dx_hash::dirhash;
use std::collections::HashMap;

/// Candidates kept per (length, leaf).
const PER_SLOT: usize = 64;
/// Candidates kept in all (bounds memory: at most 255 bytes each).
const TOTAL: usize = 1 << 18;

/// One directory's leaves (sorted by their lower bound) and the candidates kept for each.
#[derive(Default)]
pub(crate) struct Pool {
    leaves: Vec<HashRange>,
    kept: HashMap<(usize, usize), Vec<Vec<u8>>>,
    total: usize,
}

impl Pool {
    /// The pool of a directory whose leaves have the ranges `leaves`.
    pub(crate) fn new(mut leaves: Vec<HashRange>) -> Pool {
        leaves.sort_by_key(|r| (r.lo & !1, r.hi));
        leaves.dedup();
        Pool {
            leaves,
            ..Pool::default()
        }
    }

    /// The leaf that holds hash `h`, if any.
    fn leaf_of(&self, h: u32) -> Option<usize> {
        let i = self.leaves.partition_point(|r| r.lo & !1 <= h);
        (0..i).rev().take(2).find(|&k| self.leaves[k].holds(h))
    }

    /// A name of `len` random lowercase letters and digits that `fits` accepts, in leaf
    /// `range`: a kept one first, then up to [`TRIES`] new ones (each that falls in another
    /// leaf kept for it). `None` when `range` is not one of the pool's leaves or none fits.
    pub(crate) fn draw(
        &mut self,
        fits: impl Fn(&[u8]) -> bool,
        rng: &mut Rng,
        len: usize,
        range: &HashRange,
    ) -> Option<Vec<u8>> {
        let leaf = self.leaves.iter().position(|r| r == range)?;
        if let Some(v) = self.kept.get_mut(&(len, leaf)) {
            while let Some(n) = v.pop() {
                self.total -= 1;
                if fits(&n) {
                    return Some(n);
                }
            }
        }
        for _ in 0..TRIES {
            let name: Vec<u8> = (0..len).map(|_| rng.safe_byte()).collect();
            let h = dirhash(&name, range.version, &range.seed)?;
            if range.holds(h) {
                if fits(&name) {
                    return Some(name);
                }
                continue;
            }
            if let Some(other) = self.leaf_of(h) {
                let slot = self.kept.entry((len, other)).or_default();
                if slot.len() < PER_SLOT && self.total < TOTAL {
                    slot.push(name);
                    self.total += 1;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dx_hash::DX_HASH_TEA;
    use std::collections::HashSet;

    #[test]
    fn names_for_many_leaves_come_from_the_pool() {
        let seed = [9, 8, 7, 6];
        let n = 64u32;
        let leaves: Vec<HashRange> = (0..n)
            .map(|i| HashRange {
                lo: i << 26,
                hi: (i + 1 < n).then(|| (i + 1) << 26),
                version: DX_HASH_TEA,
                seed,
            })
            .collect();
        let mut pool = Pool::new(leaves.clone());
        let originals: HashSet<Vec<u8>> = HashSet::new();
        let mut used = HashSet::new();
        let mut rng = Rng::new(3, 4);
        for round in 0..8 {
            for r in &leaves {
                let fits = |n: &[u8]| !used.contains(n) && !originals.contains(n);
                let name = pool.draw(fits, &mut rng, 20, r).expect("a name");
                assert!(r.accepts(&name), "round {round}");
                assert!(used.insert(name));
            }
        }
        assert!(pool.total <= TOTAL);
    }
}
