//! Per-layer host cluster statistics: how many clusters each layer (active L1 and every
//! snapshot L1) references that another layer also references, and how many only it does.
//!
//! Design: one `u32` owner word per host cluster, filled in two passes over every layer's
//! references (L1 clusters, L2 tables, data clusters, clusters touched by compressed payloads):
//! pass 1 records "unreferenced / only layer l / several layers", pass 2 counts each cluster
//! once per referencing layer, re-marking the word so that a layer referencing a cluster twice
//! counts it once. Memory is bounded by processing the host clusters in windows of
//! [`STATS_WINDOW_CLUSTERS`] (more windows cost more passes, not more memory).

use crate::error::Error;
use crate::reader::{Layer, Reader};

/// Host clusters examined per pass: 2^23 (32 MiB of owner words), the memory bound of
/// [`Reader::cluster_stats`]; larger files take several passes.
pub const STATS_WINDOW_CLUSTERS: u64 = 1 << 23;

/// Owner word: not referenced by any layer.
const NONE: u32 = 0;
/// Owner word flag: referenced by several layers (low bits: the last layer that counted it).
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

impl Reader {
    /// Counts, for the active layer and then every snapshot (in table order), the distinct host
    /// clusters it references (data, compressed payload, L2 and its own L1 clusters) that are
    /// shared with another layer or exclusive to it. References past the end of the file are
    /// ignored.
    ///
    /// Errors: those of [`Reader::layer`] and of reading L2 tables ([`Error::Corrupt`],
    /// [`Error::Io`]).
    pub fn cluster_stats(&self) -> Result<Vec<LayerStats>, Error> {
        let layers: Vec<Layer> = std::iter::once(Layer::Active)
            .chain((0..self.snapshots().len()).map(Layer::Snapshot))
            .collect();
        let mut stats: Vec<LayerStats> = layers
            .iter()
            .map(|&layer| LayerStats {
                layer,
                shared_clusters: 0,
                exclusive_clusters: 0,
            })
            .collect();
        let file_clusters = self.file_len().div_ceil(self.cluster_size());
        let mut base = 0u64;
        while base < file_clusters {
            let len = (file_clusters - base).min(STATS_WINDOW_CLUSTERS);
            self.stats_window(&layers, &mut stats, base, len)?;
            base += len;
        }
        Ok(stats)
    }

    /// Both passes for host clusters `[base, base + len)`.
    fn stats_window(
        &self,
        layers: &[Layer],
        stats: &mut [LayerStats],
        base: u64,
        len: u64,
    ) -> Result<(), Error> {
        let mut owner = vec![NONE; len as usize];
        let in_window = |c: u64| c.checked_sub(base).filter(|&i| i < len).map(|i| i as usize);
        for (l, &layer) in layers.iter().enumerate() {
            let tag = l as u32 + 1;
            self.layer(layer)?.visit_host_clusters(|c| {
                if let Some(i) = in_window(c) {
                    owner[i] = match owner[i] {
                        NONE => tag,
                        t if t == tag => tag,
                        _ => MULTI | DONE,
                    };
                }
            })?;
        }
        for (l, &layer) in layers.iter().enumerate() {
            let (tag, seen) = (l as u32 + 1, MULTI | l as u32);
            let st = &mut stats[l];
            self.layer(layer)?.visit_host_clusters(|c| {
                let Some(i) = in_window(c) else { return };
                match owner[i] {
                    t if t == tag => {
                        st.exclusive_clusters += 1;
                        owner[i] = DONE;
                    }
                    t if t & MULTI != 0 && t != seen => {
                        st.shared_clusters += 1;
                        owner[i] = seen;
                    }
                    _ => {}
                }
            })?;
        }
        Ok(())
    }
}
