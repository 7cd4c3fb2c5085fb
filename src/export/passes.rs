//! The second pass of a sink that lays its image out before writing it (a QCOW2 stream on
//! standard output, `Sink::two_passes`): after the first pass over every state, the sink asks
//! for some guest byte ranges again; each state's copy set is cut down to the blocks in them.

use ext::BlockSet;
use std::ops::Range;

/// The blocks of `blocks` (of `bs` bytes) inside the guest byte ranges `need` (sorted,
/// disjoint), as a block set.
pub(super) fn only(blocks: &BlockSet, need: &[Range<u64>], bs: u64) -> BlockSet {
    let mut out = BlockSet::default();
    let exts = blocks.extents();
    let mut i = 0;
    for r in need {
        let (first, end) = (r.start / bs, r.end.div_ceil(bs));
        while i < exts.len() && exts[i].end() <= first {
            i += 1;
        }
        let mut k = i;
        while k < exts.len() && exts[k].start < end {
            let (s, e) = (exts[k].start.max(first), exts[k].end().min(end));
            if s < e {
                out.add(s, e - s, exts[k].class);
            }
            k += 1;
        }
    }
    out.finish(1, u64::MAX);
    out
}
