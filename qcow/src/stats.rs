//! Per-layer host cluster statistics: how many clusters each layer (active L1 and every
//! snapshot L1) references that another layer also references, and how many only it does.
//!
//! Design: the work is shared between layers, so that N snapshots over the same tables cost
//! about one walk, not N.
//!
//! 1. **L1 classes.** Snapshots whose L1 table is the same (same `l1_table_offset` and
//!    `l1_size`) reference exactly the same clusters: they form one class, walked once, whose
//!    counts each member gets (a class of several layers shares all its clusters). The active
//!    layer is a class of its own (its L1 was read and checked when the image was opened).
//! 2. **Units.** What a class references is a union of *units*: its own L1 table's clusters,
//!    and for each distinct L2 table its L1 points to, the table and every cluster it maps.
//!    Each L2 table gets the set of classes referencing it; sets are hash-consed (a set is its
//!    largest class plus a smaller set), so equal sets are one id.
//! 3. **Signatures.** Per window of host clusters, every unit is visited once (each distinct
//!    L2 table read once, however many classes use it): a cluster's owner word becomes the id
//!    of the set of unit-sets referencing it (hash-consed the same way, with a memo of
//!    transitions, so most steps are one lookup; not canonical: a set reached in another
//!    order gets another id, which only costs a little more attribution).
//! 4. **Attribution.** Per signature present, the union of its classes gives the number of
//!    layers referencing its clusters: 1 → exclusive to that layer, more → shared by each.
//!    A layer referencing a cluster through several units counts it once, as before.
//!
//! Memory: the owner words of one window ([`STATS_WINDOW_CLUSTERS`]; more windows cost more
//! passes, not more memory) plus the interning tables, bounded by [`STATS_INTERN_LIMIT`]
//! entries. A hostile image exceeding that bound is counted the straightforward way instead,
//! one pass per L1 class (per-cluster owner words re-marked per class, the design before
//! the sharing), which gives the same numbers with memory bounded by the window.

use crate::error::Error;
use crate::reader::{Layer, Reader};
use std::collections::HashMap;

/// Host clusters examined per pass: 2^23 (32 MiB of owner words), the memory bound of
/// [`Reader::cluster_stats`]; larger files take several passes.
pub const STATS_WINDOW_CLUSTERS: u64 = 1 << 23;

/// Most entries (L2 tables, interned sets and signatures, memoized transitions) the shared
/// counting may hold (2^20, at most about 50 MiB of hash tables) before falling back to one
/// pass per L1 class.
pub(crate) const STATS_INTERN_LIMIT: usize = 1 << 20;

/// Owner word: not referenced by any layer.
const NONE: u32 = 0;
/// Owner word flag: referenced by several layers (low bits: the last class that counted it).
const MULTI: u32 = 0x8000_0000;
/// Owner word: single owner, already counted in pass 2.
const DONE: u32 = 0x7fff_ffff;

/// Reference statistics of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerStats {
    /// The layer described.
    pub layer: Layer,
    /// Host clusters this layer references that at least one other layer also references.
    pub shared_clusters: u64,
    /// Host clusters only this layer references (data, L2 tables, its L1 table).
    pub exclusive_clusters: u64,
}

/// Layers with the same L1 table.
struct Class {
    /// The layer whose reader is used (the first in table order).
    first: Layer,
    /// Number of layers in the class.
    layers: u64,
    /// (shared, exclusive) clusters of each member.
    counts: (u64, u64),
}

/// Hash-consed sets of `u32` elements: id 0 is the empty set, id `n` is node `n - 1`
/// = (rest of the set, element).
#[derive(Default)]
struct Sets {
    nodes: Vec<(u32, u32)>,
    memo: HashMap<(u32, u32), u32>,
    /// The last transition, which runs of contiguous clusters repeat.
    last: Option<((u32, u32), u32)>,
}

impl Sets {
    fn len(&self) -> usize {
        self.nodes.len() + self.memo.len()
    }

    /// The id of `set ∪ {x}`.
    fn add(&mut self, set: u32, x: u32) -> u32 {
        match self.last {
            Some((key, id)) if key == (set, x) => return id,
            _ => {}
        }
        if let Some(&id) = self.memo.get(&(set, x)) {
            self.last = Some(((set, x), id));
            return id;
        }
        let id = if self.elements(set).any(|e| e == x) {
            set
        } else {
            self.nodes.push((set, x));
            self.nodes.len() as u32
        };
        self.memo.insert((set, x), id);
        self.last = Some(((set, x), id));
        id
    }

    fn elements(&self, mut set: u32) -> impl Iterator<Item = u32> + '_ {
        std::iter::from_fn(move || {
            let &(rest, x) = self.nodes.get(set.checked_sub(1)? as usize)?;
            set = rest;
            Some(x)
        })
    }
}

/// The interning budget was exceeded.
struct OverBudget;

impl Reader {
    /// Counts, for the active layer and then every snapshot (in table order), the distinct host
    /// clusters it references (data, compressed payload, L2 and its own L1 clusters) that are
    /// shared with another layer or exclusive to it. References past the end of the file are
    /// ignored.
    ///
    /// Errors: those of [`Reader::layer`] and of reading L2 tables ([`Error::Corrupt`],
    /// [`Error::Io`]).
    pub fn cluster_stats(&self) -> Result<Vec<LayerStats>, Error> {
        self.cluster_stats_within(STATS_INTERN_LIMIT)
    }

    /// [`cluster_stats`](Self::cluster_stats) with an interning budget of `limit` entries (0
    /// forces the one-pass-per-class counting).
    pub(crate) fn cluster_stats_within(&self, limit: usize) -> Result<Vec<LayerStats>, Error> {
        let (layer_class, mut classes) = self.l1_classes();
        if self.shared_counts(&mut classes, limit)?.is_err() {
            self.per_class_counts(&mut classes)?;
        }
        let layers =
            std::iter::once(Layer::Active).chain((0..self.snapshots().len()).map(Layer::Snapshot));
        Ok(layers
            .zip(layer_class)
            .map(|(layer, k)| LayerStats {
                layer,
                shared_clusters: classes[k].counts.0,
                exclusive_clusters: classes[k].counts.1,
            })
            .collect())
    }

    /// The class of each layer (active first) and the classes, in order of first member.
    fn l1_classes(&self) -> (Vec<usize>, Vec<Class>) {
        let mut classes = vec![Class {
            first: Layer::Active,
            layers: 1,
            counts: (0, 0),
        }];
        let mut layer_class = vec![0];
        let mut by_l1 = HashMap::new();
        for (i, s) in self.snapshots().iter().enumerate() {
            let k = *by_l1
                .entry((s.l1_table_offset, s.l1_size))
                .or_insert_with(|| {
                    classes.push(Class {
                        first: Layer::Snapshot(i),
                        layers: 0,
                        counts: (0, 0),
                    });
                    classes.len() - 1
                });
            classes[k].layers += 1;
            layer_class.push(k);
        }
        (layer_class, classes)
    }

    fn file_clusters(&self) -> u64 {
        self.file_len().div_ceil(self.cluster_size())
    }

    /// The shared counting (module comment, steps 2–4); `Ok(Err(OverBudget))` when the
    /// interning tables would exceed `limit` entries.
    fn shared_counts(
        &self,
        classes: &mut [Class],
        limit: usize,
    ) -> Result<Result<(), OverBudget>, Error> {
        let mut sets = Sets::default();
        let mut l1_units = Vec::with_capacity(classes.len());
        // L2 table offset → (class set, last class added).
        let mut tables: HashMap<u64, (u32, u32)> = HashMap::new();
        for (k, class) in classes.iter().enumerate() {
            let k = k as u32;
            let layer = self.layer(class.first)?;
            l1_units.push((layer.l1_host_clusters(), sets.add(0, k)));
            let mut over = false;
            layer.for_each_l2_offset(|l2| {
                if over {
                    return; // the fallback validates the rest of the L1 again
                }
                let e = tables.entry(l2).or_insert((0, u32::MAX));
                if e.1 != k {
                    *e = (sets.add(e.0, k), k);
                }
                over |= tables.len() + sets.len() > limit;
            })?;
            if over {
                return Ok(Err(OverBudget));
            }
        }
        let mut tables: Vec<(u64, u32)> = tables.into_iter().map(|(t, (s, _))| (t, s)).collect();
        tables.sort_unstable();
        let units = Units {
            l1: l1_units,
            l2: tables,
        };
        let mut base = 0u64;
        while base < self.file_clusters() {
            let len = (self.file_clusters() - base).min(STATS_WINDOW_CLUSTERS);
            if self
                .shared_window(&units, &sets, classes, base, len, limit)?
                .is_err()
            {
                for c in classes.iter_mut() {
                    c.counts = (0, 0);
                }
                return Ok(Err(OverBudget));
            }
            base += len;
        }
        Ok(Ok(()))
    }

    /// Steps 3 and 4 for host clusters `[base, base + len)`.
    fn shared_window(
        &self,
        units: &Units,
        sets: &Sets,
        classes: &mut [Class],
        base: u64,
        len: u64,
        limit: usize,
    ) -> Result<Result<(), OverBudget>, Error> {
        let mut owner = vec![0u32; len as usize];
        let mut sigs = Sets::default();
        let mut mark = |c: u64, set: u32, sigs: &mut Sets| {
            if let Some(i) = c.checked_sub(base).filter(|&i| i < len) {
                let o = &mut owner[i as usize];
                *o = sigs.add(*o, set);
            }
        };
        let held = |sigs: &Sets| units.l2.len() + sets.len() + sigs.len();
        for &((first, count), set) in &units.l1 {
            (first..first.saturating_add(count)).for_each(|c| mark(c, set, &mut sigs));
            if held(&sigs) > limit {
                return Ok(Err(OverBudget));
            }
        }
        let mut buf = vec![0u8; self.cluster_size() as usize];
        for &(l2, set) in &units.l2 {
            self.visit_l2_table(l2, &mut buf, |c| mark(c, set, &mut sigs))?;
            if held(&sigs) > limit {
                return Ok(Err(OverBudget));
            }
        }
        let mut per_sig = vec![0u64; sigs.nodes.len() + 1];
        owner.iter().for_each(|&o| per_sig[o as usize] += 1);
        attribute(&per_sig, &sigs, sets, classes);
        Ok(Ok(()))
    }

    /// The straightforward counting: two passes per L1 class over its references (module
    /// comment), for images whose sharing structure exceeds the interning budget.
    fn per_class_counts(&self, classes: &mut [Class]) -> Result<(), Error> {
        let mut base = 0u64;
        while base < self.file_clusters() {
            let len = (self.file_clusters() - base).min(STATS_WINDOW_CLUSTERS);
            self.per_class_window(classes, base, len)?;
            base += len;
        }
        Ok(())
    }

    /// Both passes for host clusters `[base, base + len)`: pass 1 records "unreferenced /
    /// only class k / several layers", pass 2 counts each cluster once per referencing class,
    /// re-marking the word so that a class referencing a cluster twice counts it once.
    fn per_class_window(&self, classes: &mut [Class], base: u64, len: u64) -> Result<(), Error> {
        let mut owner = vec![NONE; len as usize];
        let in_window = |c: u64| c.checked_sub(base).filter(|&i| i < len).map(|i| i as usize);
        for (k, class) in classes.iter().enumerate() {
            let tag = if class.layers > 1 {
                MULTI | DONE
            } else {
                k as u32 + 1
            };
            self.visit_layer(class.first, |c| {
                if let Some(i) = in_window(c) {
                    owner[i] = match owner[i] {
                        NONE => tag,
                        t if t == tag => tag,
                        _ => MULTI | DONE,
                    };
                }
            })?;
        }
        for (k, class) in classes.iter_mut().enumerate() {
            let (tag, seen) = (k as u32 + 1, MULTI | k as u32);
            let counts = &mut class.counts;
            self.visit_layer(class.first, |c| {
                let Some(i) = in_window(c) else { return };
                match owner[i] {
                    t if t == tag => {
                        counts.1 += 1;
                        owner[i] = DONE;
                    }
                    t if t & MULTI != 0 && t != seen => {
                        counts.0 += 1;
                        owner[i] = seen;
                    }
                    _ => {}
                }
            })?;
        }
        Ok(())
    }

    /// Calls `f` for every host cluster `layer` references: its L1 table's clusters, then for
    /// each L1 entry (in order) the L2 table and what it maps.
    fn visit_layer(&self, layer: Layer, mut f: impl FnMut(u64)) -> Result<(), Error> {
        let reader = self.layer(layer)?;
        let (first, count) = reader.l1_host_clusters();
        (first..first.saturating_add(count)).for_each(&mut f);
        let mut tables = Vec::new();
        reader.for_each_l2_offset(|l2| tables.push(l2))?;
        let mut buf = vec![0u8; self.cluster_size() as usize];
        for l2 in tables {
            self.visit_l2_table(l2, &mut buf, &mut f)?;
        }
        Ok(())
    }
}

/// The units of the shared counting: each class's L1 clusters (first, count) with the
/// singleton set of the class, and each distinct L2 table with the set of classes using it.
struct Units {
    l1: Vec<((u64, u64), u32)>,
    l2: Vec<(u64, u32)>,
}

/// Step 4: adds each signature's cluster count to the classes referencing those clusters.
fn attribute(per_sig: &[u64], sigs: &Sets, sets: &Sets, classes: &mut [Class]) {
    let mut stamp = vec![0u32; classes.len()];
    let mut members = Vec::new();
    for (sig, &n) in per_sig.iter().enumerate().skip(1) {
        if n == 0 {
            continue;
        }
        members.clear();
        for set in sigs.elements(sig as u32) {
            for k in sets.elements(set) {
                if stamp[k as usize] != sig as u32 {
                    stamp[k as usize] = sig as u32;
                    members.push(k as usize);
                }
            }
        }
        let layers: u64 = members.iter().map(|&k| classes[k].layers).sum();
        for &k in &members {
            if layers > 1 {
                classes[k].counts.0 += n;
            } else {
                classes[k].counts.1 += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SnapshotSpec, Version, Writer, WriterOptions};
    use std::fs::{File, OpenOptions};

    fn data(tag: u64) -> Vec<u8> {
        let mut v = vec![0x5au8; 4096];
        v[..8].copy_from_slice(&tag.to_le_bytes());
        v
    }

    /// Three states sharing data (dedup) and L2 tables (clone), used by six snapshots, two of
    /// them as three uses of one state (three L1 copies over the same L2 tables).
    fn image(path: &std::path::Path) -> Reader {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        let opts = WriterOptions {
            cluster_bits: 12,
            virtual_size: 64 << 20,
            version: Version::V3,
        };
        let mut w = Writer::create(f, opts).unwrap();
        let s0 = w.new_state();
        let s1 = w.new_state();
        for g in (0..6000).step_by(7) {
            w.write_clusters(s0, g, &data(g)).unwrap();
            let tag = if g % 5 == 0 { g + 1 } else { g };
            w.write_clusters_dedup(s1, g, &data(tag), s0).unwrap();
        }
        let s2 = w.clone_state(s1).unwrap();
        w.write_clusters(s2, 9000, &data(9000)).unwrap();
        let spec = |state, i: usize| SnapshotSpec {
            state,
            id: format!("{i}"),
            name: format!("s{i}"),
            date_sec: 0,
            date_nsec: 0,
        };
        let specs: Vec<SnapshotSpec> = [s1, s1, s2, s1, s0, s2]
            .into_iter()
            .enumerate()
            .map(|(i, s)| spec(s, i + 1))
            .collect();
        w.finish(s0, &specs).unwrap();
        Reader::open(File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn shared_counting_equals_per_class_counting() {
        let path = std::env::temp_dir().join(format!("qcow-stats-{}.qcow2", std::process::id()));
        let r = image(&path);
        let shared = r.cluster_stats().unwrap();
        // Budgets exceeded before or while counting (falling back) give the same numbers.
        for limit in (0..160).step_by(2).chain([2000]) {
            assert_eq!(
                r.cluster_stats_within(limit).unwrap(),
                shared,
                "limit {limit}"
            );
        }
        let _ = std::fs::remove_file(&path);
        assert_eq!(shared.len(), 7);
        assert!(shared.iter().all(|s| s.shared_clusters > 0), "{shared:?}");
        // Each snapshot has its own L1 copy (1 cluster) and nothing else of its own, except
        // the active layer's and s0's snapshot's shared data: L1 copies are exclusive.
        assert!(
            shared.iter().all(|s| s.exclusive_clusters >= 1),
            "{shared:?}"
        );
    }

    #[test]
    fn sets_are_hash_consed() {
        let mut s = Sets::default();
        let one = s.add(0, 1);
        let a = s.add(one, 2);
        let b = s.add(a, 1);
        assert_eq!(a, b, "adding a member changes nothing");
        let mut e: Vec<u32> = s.elements(a).collect();
        e.sort_unstable();
        assert_eq!(e, vec![1, 2]);
        assert_eq!(s.add(0, 1), one);
    }
}
