//! Where the whole guest clusters of one state go in a QCOW2 writer: written, zero, or shared
//! with the same guest cluster of a base state (an inverted chain's newer state, an archive's
//! newest state).

use anyhow::{Context, Result};
use qcow::{StateId, StoredCluster, Version, Writer};

/// Where whole clusters of one state go: the writer, the state and its dedup base.
pub struct StateTarget<'w> {
    writer: &'w mut Writer,
    state: StateId,
    base: Option<StateId>,
    zero_flag: bool,
}

impl<'w> StateTarget<'w> {
    /// Maps `guest_cluster` to the base state's cluster at the same place, without its bytes
    /// (they are known equal): shared when the base has a host cluster there, a zero cluster
    /// when the base holds zeros there (`copied`: the cluster holds copied blocks), nothing
    /// otherwise.
    ///
    /// # Errors
    /// No base state; those of the writer.
    pub fn share_base(&mut self, guest_cluster: u64, copied: bool) -> Result<()> {
        let base = self.base.context("no base state to share with")?;
        let shared = self
            .writer
            .share_base_cluster(self.state, guest_cluster, base)?;
        if !shared && copied {
            self.put_zero(guest_cluster, 1)?;
        }
        Ok(())
    }

    /// What the base stores at `guest_cluster` (plain or compressed), for comparing guest
    /// bytes; `None` without a base or where it holds no data.
    ///
    /// # Errors
    /// Those of the writer.
    pub fn stored_in_base(&mut self, guest_cluster: u64) -> Result<Option<StoredCluster>> {
        match self.base {
            Some(base) => Ok(self.writer.stored_cluster(base, guest_cluster)?),
            None => Ok(None),
        }
    }

    /// Maps `guest_cluster` to the base's cluster, known to hold the same guest bytes.
    ///
    /// # Errors
    /// No base, or no data there; those of the writer.
    pub fn share_with_base(&mut self, guest_cluster: u64) -> Result<()> {
        let base = self.base.context("no base state to share with")?;
        let shared = self
            .writer
            .share_base_cluster(self.state, guest_cluster, base)?;
        anyhow::ensure!(
            shared,
            "guest cluster {guest_cluster}: the base holds no data there"
        );
        Ok(())
    }

    /// Records `guest_cluster` as a compressed cluster with `payload`.
    ///
    /// # Errors
    /// Those of the writer.
    pub fn put_compressed(&mut self, guest_cluster: u64, payload: &[u8]) -> Result<()> {
        self.writer
            .write_compressed_cluster(self.state, guest_cluster, payload)
            .with_context(|| {
                format!("cannot write compressed guest cluster {guest_cluster} of the QCOW2 image")
            })
    }

    /// Writes `data` at `guest_cluster..` uncompressed, without comparing it with the base.
    ///
    /// # Errors
    /// Those of the writer.
    pub fn put_plain(&mut self, guest_cluster: u64, data: &[u8]) -> Result<()> {
        self.writer
            .write_clusters(self.state, guest_cluster, data)
            .with_context(|| {
                format!("cannot write guest cluster {guest_cluster} of the QCOW2 image")
            })
    }

    /// Clusters of `state`, deduplicated against `base` when given.
    pub fn new(writer: &'w mut Writer, state: StateId, base: Option<StateId>) -> StateTarget<'w> {
        let zero_flag = writer.version() == Version::V3;
        StateTarget {
            writer,
            state,
            base,
            zero_flag,
        }
    }

    pub(super) fn put(&mut self, guest_cluster: u64, data: &[u8]) -> Result<()> {
        let r = match self.base {
            Some(base) => self
                .writer
                .write_clusters_dedup(self.state, guest_cluster, data, base),
            None => self.writer.write_clusters(self.state, guest_cluster, data),
        };
        r.with_context(|| format!("cannot write guest cluster {guest_cluster} of the QCOW2 image"))
    }

    /// Records `count` all-zero guest clusters from `first`: zero clusters in v3, nothing
    /// (unallocated) in v2.
    pub fn put_zero(&mut self, first: u64, count: u64) -> Result<()> {
        if !self.zero_flag {
            return Ok(());
        }
        self.writer
            .write_zero_clusters(self.state, first, count)
            .with_context(|| {
                format!("cannot record zero guest clusters {first}+{count} of the QCOW2 image")
            })
    }
}
