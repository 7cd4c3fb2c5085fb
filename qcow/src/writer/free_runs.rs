//! The free clusters of an image being edited: runs of clusters whose committed refcount is 0,
//! handed out front to back, each cluster at most once.
//!
//! Design: a sorted list of `(first, count)` runs and the index of the first non-empty one.
//! Single-cluster and "up to n" allocations take the front of the first run; contiguous
//! allocations (L1 tables, the snapshot and refcount tables) take the front of the first run
//! long enough (first fit). Runs only shrink, so a cluster that this edit frees is never
//! handed out again before the edit is committed (the committed image may still use it).

/// Runs of free clusters, in increasing order.
#[derive(Debug, Default)]
pub(super) struct FreeRuns {
    runs: Vec<(u64, u64)>,
    /// Runs before this index are empty.
    head: usize,
    /// Clusters handed out so far.
    taken: u64,
}

impl FreeRuns {
    /// The clusters in `[1, end)` whose count is 0 in `blocks` (`epb` entries per block;
    /// `None` = all 0). Cluster 0 is the header, never free.
    pub(super) fn of_zero_counts(blocks: &[Option<Box<[u16]>>], epb: usize, end: u64) -> FreeRuns {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut push = |c: u64| match runs.last_mut() {
            Some((first, n)) if *first + *n == c => *n += 1,
            _ => runs.push((c, 1)),
        };
        for c in 1..end {
            let (k, i) = ((c / epb as u64) as usize, (c % epb as u64) as usize);
            if blocks
                .get(k)
                .and_then(|b| b.as_ref())
                .is_none_or(|b| b[i] == 0)
            {
                push(c);
            }
        }
        FreeRuns {
            runs,
            head: 0,
            taken: 0,
        }
    }

    /// Takes up to `n` clusters from the front of the first non-empty run: (first, count).
    pub(super) fn take_up_to(&mut self, n: u64) -> Option<(u64, u64)> {
        while self.runs.get(self.head).is_some_and(|r| r.1 == 0) {
            self.head += 1;
        }
        let run = self.runs.get_mut(self.head)?;
        let count = run.1.min(n);
        let first = run.0;
        *run = (first + count, run.1 - count);
        self.taken += count;
        Some((first, count))
    }

    /// Takes `n` consecutive clusters from the first run holding that many (first fit).
    pub(super) fn take_contiguous(&mut self, n: u64) -> Option<u64> {
        let run = self.runs[self.head..].iter_mut().find(|r| r.1 >= n)?;
        let first = run.0;
        *run = (first + n, run.1 - n);
        self.taken += n;
        Some(first)
    }

    /// Clusters handed out so far.
    pub(super) fn taken(&self) -> u64 {
        self.taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_taken_once() {
        // 4 entries per block; counts: 1 0 0 1 | (no block) | 0 1 0 0
        let blocks = vec![
            Some(vec![1u16, 0, 0, 1].into_boxed_slice()),
            None,
            Some(vec![0u16, 1, 0, 0].into_boxed_slice()),
        ];
        let mut f = FreeRuns::of_zero_counts(&blocks, 4, 10);
        assert_eq!(f.runs, vec![(1, 2), (4, 5)]);
        assert_eq!(f.take_contiguous(3), Some(4));
        assert_eq!(f.take_up_to(5), Some((1, 2)));
        assert_eq!(f.take_up_to(5), Some((7, 2)));
        assert_eq!(f.take_up_to(1), None);
        assert_eq!(f.take_contiguous(1), None);
        assert_eq!(f.taken(), 7);
    }
}
