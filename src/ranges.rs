//! Sorted, disjoint lists of block ranges (`Vec<Range<u64>>`): built by appending in order,
//! searched by bisection. Used wherever a set of blocks is kept as runs (what a state holds,
//! what a patch writes, what a delta replaces).

use std::ops::Range;

/// True if `b` lies in one of the sorted disjoint `ranges`.
pub fn contains(ranges: &[Range<u64>], b: u64) -> bool {
    let i = ranges.partition_point(|r| r.end <= b);
    ranges.get(i).is_some_and(|r| r.start <= b)
}

/// The union of two sorted disjoint range lists, sorted and disjoint.
pub fn union(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut all: Vec<Range<u64>> = a.iter().chain(b).cloned().collect();
    all.sort_by_key(|r| r.start);
    let mut out = Vec::with_capacity(all.len());
    for r in all {
        push(&mut out, r);
    }
    out
}

/// True if `r` overlaps one of the sorted disjoint `ranges`.
pub fn overlaps(ranges: &[Range<u64>], r: Range<u64>) -> bool {
    let i = ranges.partition_point(|x| x.end <= r.start);
    ranges.get(i).is_some_and(|x| x.start < r.end)
}

/// Appends `r` to sorted `ranges`, merging it with the last one when they touch.
pub fn push(ranges: &mut Vec<Range<u64>>, r: Range<u64>) {
    match ranges.last_mut() {
        Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
        _ => ranges.push(r),
    }
}

/// The sorted disjoint ranges `runs` minus the sorted disjoint ranges `skip`.
pub fn without(runs: impl Iterator<Item = Range<u64>>, skip: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut k = 0;
    for r in runs {
        let mut b = r.start;
        while k < skip.len() && skip[k].end <= b {
            k += 1;
        }
        let mut j = k;
        while b < r.end {
            match skip.get(j).filter(|s| s.start < r.end) {
                Some(s) if s.start <= b => b = b.max(s.end),
                Some(s) => {
                    out.push(b..s.start);
                    b = s.end;
                }
                None => {
                    out.push(b..r.end);
                    b = r.end;
                }
            }
            j += 1;
        }
    }
    out
}

/// Number of values in the ranges.
pub fn total(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_search() {
        let mut v = Vec::new();
        push(&mut v, 0..2);
        push(&mut v, 2..4);
        push(&mut v, 6..7);
        assert_eq!(v, vec![0..4, 6..7]);
        assert!(contains(&v, 3) && !contains(&v, 4) && contains(&v, 6) && !contains(&v, 7));
        assert!(overlaps(&v, 3..5) && !overlaps(&v, 4..6) && overlaps(&v, 5..9));
        assert_eq!(union(&v, &[1..2, 4..5, 8..9]), vec![0..5, 6..7, 8..9]);
        assert_eq!(total(&v), 5);
    }

    #[test]
    fn runs_without_skipped_ranges() {
        let runs = vec![0..10, 20..30, 40..50];
        let skip = vec![5..8, 9..25, 45..60];
        assert_eq!(
            without(runs.into_iter(), &skip),
            vec![0..5, 8..9, 25..30, 40..45]
        );
        assert_eq!(without(std::iter::once(0..4), &[]), vec![0..4]);
    }
}
