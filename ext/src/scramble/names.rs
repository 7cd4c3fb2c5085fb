//! Choosing a scrambled name: deterministic candidates from a seeded generator, unique in
//! the directory, never a name the directory held, and for an htree leaf one whose hash falls
//! in the leaf's range (the bounds of its parent index entries, which `e2fsck` checks).
//!
//! The search goes in stages, each bounded by [`TRIES`] candidates: the same length from
//! lowercase ASCII letters and digits (their casefold is themselves, so a casefolded
//! directory hashes them as they are); the same length from a wider alphabet (any byte but
//! NUL and `/`; printable ASCII without capitals in a casefolded directory); then longer
//! names, up to what the entry's `rec_len` holds. Short alphabets are enumerated in full
//! (from a random start), long ones sampled.

use super::pool::Pool;
use super::range::{HashRange, Rng, SAFE, TRIES};
use std::collections::HashSet;

/// Longer names tried in the last stage: up to this many bytes more than the old name.
const LONGER: usize = 3;

/// What a directory's new names must avoid, and how they are drawn.
pub(crate) struct Picker<'a> {
    /// Names already given in the directory (and the names kept).
    pub(crate) used: &'a HashSet<Vec<u8>>,
    /// Every name the directory held (none of them may come back).
    pub(crate) originals: &'a HashSet<Vec<u8>>,
    /// The directory is casefolded: only characters whose casefold is themselves.
    pub(crate) casefold: bool,
}

impl Picker<'_> {
    /// A new name for `orig` (its length first, at most `max_len` bytes), in `range` when
    /// given (the first stage drawing from the directory's `pool` when given); `None` if no
    /// stage found one (the caller warns and falls back).
    pub(crate) fn pick(
        &self,
        rng: &mut Rng,
        orig_len: usize,
        max_len: usize,
        range: Option<&HashRange>,
        pool: Option<&mut Pool>,
    ) -> Option<Vec<u8>> {
        if range.is_some_and(HashRange::is_empty) {
            return None;
        }
        let wide = self.wide_alphabet();
        let small = u32::try_from(orig_len)
            .ok()
            .and_then(|l| (SAFE.len() as u64).checked_pow(l))
            .is_some_and(|t| t <= TRIES);
        let pooled = match (range, pool) {
            (Some(r), Some(p)) if !small => Some(p.draw(|n| self.fits(n, None), rng, orig_len, r)),
            _ => None,
        };
        match pooled {
            Some(Some(n)) => return Some(n),
            Some(None) => {}
            None => {
                if let Some(n) = self.search(rng, orig_len, SAFE, range) {
                    return Some(n);
                }
            }
        }
        if let Some(n) = self.search(rng, orig_len, &wide, range) {
            return Some(n);
        }
        let longest = max_len.min(255).min(orig_len + LONGER);
        (orig_len + 1..=longest).find_map(|len| self.search(rng, len, &wide, range))
    }

    /// Any byte but NUL and `/`; printable ASCII without capitals when casefolded.
    fn wide_alphabet(&self) -> Vec<u8> {
        if self.casefold {
            (0x21u8..=0x7E)
                .filter(|&b| b != b'/' && !b.is_ascii_uppercase())
                .collect()
        } else {
            (1u8..=255).filter(|&b| b != b'/').collect()
        }
    }

    /// Up to [`TRIES`] names of `len` bytes from `alphabet`: all of them from a random start
    /// when there are fewer, else random ones.
    fn search(
        &self,
        rng: &mut Rng,
        len: usize,
        alphabet: &[u8],
        range: Option<&HashRange>,
    ) -> Option<Vec<u8>> {
        let n = alphabet.len() as u64;
        let total = u32::try_from(len)
            .ok()
            .and_then(|l| n.checked_pow(l))
            .filter(|&t| t <= TRIES);
        let start = rng.next();
        let tries = total.unwrap_or(TRIES);
        for k in 0..tries {
            let name = match total {
                Some(t) => nth_name(alphabet, len, start.wrapping_add(k) % t),
                None => (0..len).map(|_| alphabet[rng.below(n) as usize]).collect(),
            };
            if self.fits(&name, range) {
                return Some(name);
            }
        }
        None
    }

    /// True if `name` is new in the directory (not `.` or `..`, not given, not an old name)
    /// and in `range` when given.
    pub(crate) fn fits(&self, name: &[u8], range: Option<&HashRange>) -> bool {
        name != b"."
            && name != b".."
            && !self.used.contains(name)
            && !self.originals.contains(name)
            && range.is_none_or(|r| r.accepts(name))
    }
}

/// The `index`-th name of `len` bytes over `alphabet` (`index` in base `alphabet.len()`).
fn nth_name(alphabet: &[u8], len: usize, mut index: u64) -> Vec<u8> {
    let n = alphabet.len() as u64;
    let mut out = vec![0u8; len];
    for b in out.iter_mut().rev() {
        *b = alphabet[(index % n) as usize];
        index /= n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dx_hash::DX_HASH_HALF_MD4;

    fn range(lo: u32, hi: Option<u32>) -> HashRange {
        HashRange {
            lo,
            hi,
            version: DX_HASH_HALF_MD4,
            seed: [1, 2, 3, 4],
        }
    }

    #[test]
    fn range_bounds_and_collision_bit() {
        let r = range(0x1000, Some(0x2000));
        assert!(r.holds(0x1000) && r.holds(0x1ffe));
        assert!(!r.holds(0x0ffe) && !r.holds(0x2000));
        assert!(range(0x1001, Some(0x2001)).holds(0x2000));
        assert!(range(0x1001, None).holds(0xffff_fffc));
        assert!(range(0x2000, Some(0x1000)).is_empty());
        assert!(range(0x2000, Some(0x2000)).is_empty());
        assert!(!range(0x2000, Some(0x2001)).is_empty());
    }

    #[test]
    fn picks_a_name_in_a_narrow_range_unique_and_new() {
        let originals: HashSet<Vec<u8>> = [b"report-2024.txt".to_vec()].into();
        let mut used = HashSet::new();
        let r = range(0x4000_0000, Some(0x4100_0000)); // 1/256 of the hash space
        let mut rng = Rng::new(42, 12);
        for _ in 0..20 {
            let p = Picker {
                used: &used,
                originals: &originals,
                casefold: true,
            };
            let n = p.pick(&mut rng, 15, 15, Some(&r), None).unwrap();
            assert_eq!(n.len(), 15);
            assert!(r.accepts(&n), "{n:?}");
            assert!(n.iter().all(|b| SAFE.contains(b)));
            assert!(used.insert(n));
        }
    }

    #[test]
    fn short_names_widen_then_lengthen() {
        let originals = HashSet::new();
        let used = HashSet::new();
        let p = Picker {
            used: &used,
            originals: &originals,
            casefold: false,
        };
        // One byte, a range of 1/4096 of the space: 254 one-byte names cannot all miss it
        // with certainty, so only check what comes back is valid and deterministic.
        let r = range(0x1234_0000, Some(0x1235_0000));
        let a = p.pick(&mut Rng::new(7, 3), 1, 4, Some(&r), None);
        let b = p.pick(&mut Rng::new(7, 3), 1, 4, Some(&r), None);
        assert_eq!(a, b);
        let a = a.unwrap();
        assert!(r.accepts(&a) && !a.contains(&b'/') && !a.contains(&0));
        assert!(a.len() <= 4);
    }

    #[test]
    fn never_dot_or_an_original() {
        let originals: HashSet<Vec<u8>> = SAFE.iter().map(|&b| vec![b]).collect();
        let used = HashSet::new();
        let p = Picker {
            used: &used,
            originals: &originals,
            casefold: true,
        };
        let n = p.pick(&mut Rng::new(1, 1), 1, 1, None, None).unwrap();
        assert!(!SAFE.contains(&n[0]) && n != b"." && n != b"/");
    }
}
