//! The leaf half of the kernel's `do_split`: the sort of the leaf's entries by hash
//! (`dx_sort_map`), the split point, the move of the upper half to the new block
//! (`dx_move_dirents`) and the packing of what stays (`dx_pack_dirents`), on block bytes.

use super::dir::rec_len_for;
use super::store::{corrupt, Fr};
use crate::bytes::{le16, le32};

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// `do_split`'s split point: the entries from the end up to half the block move, or half
/// of them when that is less.
pub(crate) fn split_point(map: &[(u32, u16, u16)], bs: usize) -> usize {
    let n = map.len();
    let (mut size, mut moved) = (0usize, 0usize);
    for k in (0..n).rev() {
        if size + usize::from(map[k].2) / 2 > bs / 2 {
            return n - moved;
        }
        size += usize::from(map[k].2);
        moved += 1;
    }
    n / 2
}

/// Kernel `dx_move_dirents`: the entries of `map` copied from `d1` to the start of `d2` at
/// minimal lengths and wiped in `d1`; the offset of the last one in `d2`.
pub(crate) fn move_dirents(d1: &mut [u8], d2: &mut [u8], map: &[(u32, u16, u16)]) -> usize {
    let (mut to, mut last) = (0usize, 0usize);
    for &(_, o, _) in map {
        let de = usize::from(o) << 2;
        let rl = rec_len_for(usize::from(d1[de + 6]));
        d2[to..to + rl].copy_from_slice(&d1[de..de + rl]);
        put16(d2, to + 4, rl as u16);
        let orig = usize::from(le16(d1, de + 4));
        d1[de..de + 4].fill(0);
        d1[de + 6..de + orig.max(6)].fill(0);
        last = to;
        to += rl;
    }
    last
}

/// Kernel `dx_sort_map`: a comb sort, then a bubble sort, by hash.
pub(crate) fn sort_map(map: &mut [(u32, u16, u16)]) {
    let n = map.len();
    if n == 0 {
        return;
    }
    let top = n - 1;
    let mut count = n;
    while count > 2 {
        count = count * 10 / 13;
        if count.wrapping_sub(9) < 2 {
            count = 11;
        }
        let mut p = top as isize;
        let mut q = p - count as isize;
        while q >= 0 {
            if map[p as usize].0 < map[q as usize].0 {
                map.swap(p as usize, q as usize);
            }
            p -= 1;
            q -= 1;
        }
    }
    loop {
        let mut more = false;
        let mut q = top;
        while q > 0 {
            q -= 1;
            if map[q + 1].0 >= map[q].0 {
                continue;
            }
            map.swap(q + 1, q);
            more = true;
        }
        if !more {
            break;
        }
    }
}

/// Kernel `dx_pack_dirents`: the live entries packed at minimal lengths; the last one's
/// offset.
pub(crate) fn pack(b: &mut [u8]) -> Fr<usize> {
    let bs = b.len();
    let (mut de, mut to, mut prev) = (0usize, 0usize, 0usize);
    while de < bs {
        let r = usize::from(le16(b, de + 4));
        if r == 0 || de + 8 > bs {
            return corrupt("a directory entry of length 0".into());
        }
        let next = de + r;
        if le32(b, de) != 0 && b[de + 6] != 0 {
            let rl = rec_len_for(usize::from(b[de + 6]));
            if de + rl > bs {
                return corrupt("a directory entry past its block".into());
            }
            if de > to {
                b.copy_within(de..de + rl, to);
            }
            put16(b, to + 4, rl as u16);
            prev = to;
            to += rl;
        }
        de = next;
    }
    Ok(prev)
}
