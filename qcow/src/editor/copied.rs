//! COPIED in the new active layer (notes §2.2): set on an active L1 entry exactly when its L2
//! table's refcount is 1, and on a data entry of those tables exactly when the data cluster's
//! refcount is 1.
//!
//! Design: a committed table is never changed in place. A table that needs other COPIED bits
//! is rewritten in place only if this edit wrote it; a committed one is copied to a new
//! cluster, and the active L1 table references the copy (the L1 reference moves from the old
//! table to the copy: the old table loses one reference, the data clusters none). Tables whose
//! bits cannot have changed are not read, so the common append (the new active state shares
//! tables the committed active layer shared with a snapshot) reads only its new tables:
//!
//! * a table the committed active layer referenced with refcount ≥ 2 and still ≥ 2: all its
//!   COPIED bits were 0 (the committed image was consistent) and must stay 0;
//! * a table the committed active layer referenced with refcount 1, still 1, when no
//!   referenced cluster's refcount crossed 1 in this edit: nothing it maps changed status.

use std::collections::{HashMap, HashSet};

use crate::bytes::encode_be;
use crate::error::Error;
use crate::format::table::{encode_l1_entry, l1_entry_table, set_copied, standard_cluster};
use crate::writer::{RefcountChunks, Writer};

/// Makes COPIED right in the active L1 table `l1` (entries with flags, changed in place) and
/// in the L2 tables it references, copying committed tables that need other bits. Call with
/// the final refcounts (after every reference change of the edit). Returns the number of
/// tables copied.
///
/// Errors: [`Error::Io`]; [`Error::Limit`] when no cluster can be allocated.
pub(super) fn fix_active_copied(
    w: &mut Writer,
    l1: &mut [u64],
    committed_active: &HashSet<u64>,
) -> Result<u64, Error> {
    let cb = w.cluster_size().trailing_zeros();
    let crossed = w.refcounts().any_crossed_one();
    let mut moved: HashMap<u64, u64> = HashMap::new();
    let mut copies = 0;
    for e in l1.iter_mut() {
        let t = l1_entry_table(*e);
        let target = match moved.get(&t) {
            _ if t == 0 => 0,
            Some(&n) if n != t => {
                // Another reference to a copied table moves to the copy too.
                w.refcounts_mut().decrement(t >> cb, 1)?;
                w.refcounts_mut().increment(n >> cb, 1)?;
                n
            }
            Some(&n) => n,
            None => {
                let n = fix_table(w, t, committed_active.contains(&t), crossed)?;
                copies += u64::from(n != t);
                moved.insert(t, n);
                n
            }
        };
        *e = target;
    }
    for e in l1.iter_mut().filter(|e| **e != 0) {
        *e = encode_l1_entry(*e, w.refcounts().get(*e >> cb) == 1);
    }
    Ok(copies)
}

/// Makes COPIED right in the L2 table at `t` (see the module comment); returns the offset of
/// the table the active layer should reference: `t`, or a copy.
fn fix_table(w: &mut Writer, t: u64, was_active: bool, crossed: bool) -> Result<u64, Error> {
    let cb = w.cluster_size().trailing_zeros();
    let (old, new) = (w.refcounts().committed(t >> cb), w.refcounts().get(t >> cb));
    if was_active && ((old >= 2 && new >= 2) || (old == 1 && new == 1 && !crossed)) {
        return Ok(t);
    }
    let stored = w.read_l2(t)?;
    let desired: Vec<u64> = stored
        .iter()
        .map(|&e| desired_entry(w.refcounts(), e, cb))
        .collect();
    if desired == stored {
        return Ok(t);
    }
    let mut bytes = Vec::with_capacity(w.cluster_size() as usize);
    encode_be(&desired, &mut bytes);
    if old == 0 {
        // Written by this edit: not part of the committed image.
        w.out_mut().rewrite_at(t, &bytes)?;
        return Ok(t);
    }
    let copy = w.refcounts_mut().allocate(1)? << cb;
    w.out_mut().append(copy, &bytes)?;
    w.refcounts_mut().decrement(t >> cb, 1)?;
    Ok(copy)
}

/// L2 entry `e` with COPIED set iff it maps one host cluster whose refcount is 1 (never for
/// compressed, zero-plain or unallocated entries); every other bit kept.
fn desired_entry(rc: &RefcountChunks, e: u64, cluster_bits: u32) -> u64 {
    let copied = standard_cluster(e).is_some_and(|host| rc.get(host >> cluster_bits) == 1);
    set_copied(e, copied)
}
