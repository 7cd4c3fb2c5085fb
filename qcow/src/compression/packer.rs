//! [`PayloadPacker`]: where compressed payloads go in the host file, packed back to back as
//! QEMU packs them (`qcow2_alloc_bytes`): from a byte cursor inside the last host cluster
//! taken for payloads; a payload that does not fit in the rest of that cluster continues into
//! the next host cluster when that is the one allocated next, and starts a new cluster
//! otherwise. A payload is shorter than a cluster, so it touches at most two host clusters.

use crate::error::Error;
use crate::types::HostCluster;

use super::compressed_descriptor;

/// Most payloads placed in one host cluster. QEMU packs until the cluster's refcount reaches
/// its maximum; with 16-bit refcounts a cluster holding p payloads can then be shared by only
/// 65 535 / p states, so the packer starts a new cluster after this many: 256 payloads, which
/// a 64 KiB cluster fills only with payloads under 256 bytes, keep room for 255 states
/// sharing all of them.
pub const MAX_PAYLOADS_PER_CLUSTER: u32 = 256;

/// The packing cursor of a writer's compressed payloads (see the module comment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadPacker {
    /// Host byte offset of the next free byte inside the last payload cluster (never cluster
    /// aligned), and how many payloads touch that cluster; `None`: start in a new cluster.
    next: Option<(u64, u32)>,
}

/// Where [`PayloadPacker::place`] put one payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Host byte offset of the payload's first byte.
    pub host_offset: u64,
    /// Its L2 entry ([`compressed_descriptor`]).
    pub descriptor: u64,
    /// The partly filled cluster the payload starts in, which gains one reference (its
    /// earlier payloads hold the others), if it starts in one.
    pub continues: Option<HostCluster>,
    /// The cluster allocated for it (its first reference is this payload's), if any.
    pub allocated: Option<HostCluster>,
}

impl PayloadPacker {
    /// A packer whose next payload starts in a new cluster.
    pub fn new() -> PayloadPacker {
        PayloadPacker::default()
    }

    /// Forgets the partly filled cluster: the next payload starts in a new one (for a writer
    /// that put something else right after it, or cannot add references to it).
    pub fn reset(&mut self) {
        self.next = None;
    }

    /// Places a payload of `len` bytes (1 to C − 1) in clusters of `1 << cluster_bits` bytes.
    /// When it needs a new host cluster, `allocate(wanted)` must allocate one and return it;
    /// `wanted` is the cluster right after the partly filled one when the payload could
    /// continue into it (it does if that is the cluster returned), `None` when it starts in
    /// a new cluster anyway. The caller writes the payload at [`Placement::host_offset`] and
    /// adds a reference to [`Placement::continues`].
    ///
    /// Errors: those of `allocate`; those of [`compressed_descriptor`].
    pub fn place(
        &mut self,
        len: u64,
        cluster_bits: u32,
        allocate: impl FnOnce(Option<HostCluster>) -> Result<HostCluster, Error>,
    ) -> Result<Placement, Error> {
        let c = 1u64 << cluster_bits;
        if len == 0 || len >= c {
            return Err(Error::InvalidArgument(format!(
                "a compressed payload of {len} bytes (1 to cluster size − 1)"
            )));
        }
        let tail = |at: u64| HostCluster(at >> cluster_bits);
        let (host_offset, payloads, continues, allocated) = match self.next {
            Some((at, n)) if at % c + len <= c => (at, n + 1, Some(tail(at)), None),
            Some((at, _)) => {
                let wanted = tail(at).plus(1);
                match allocate(Some(wanted))? {
                    got if got == wanted => (at, 1, Some(tail(at)), Some(got)),
                    got => (got.offset(cluster_bits), 1, None, Some(got)),
                }
            }
            None => {
                let got = allocate(None)?;
                (got.offset(cluster_bits), 1, None, Some(got))
            }
        };
        let descriptor = compressed_descriptor(host_offset, len, cluster_bits)?;
        let end = host_offset + len;
        self.next = (!end.is_multiple_of(c) && payloads < MAX_PAYLOADS_PER_CLUSTER)
            .then_some((end, payloads));
        Ok(Placement {
            host_offset,
            descriptor,
            continues,
            allocated,
        })
    }
}
