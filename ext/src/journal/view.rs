//! The replayed view: "journal + disk = consistent state", built in memory. A read-only
//! [`BlockView`] over the device view in which every block of the recovery's overlay reads as
//! its newest journal copy (ESCAPE undone: bytes 0..3 = the BE jbd2 magic), so that
//! [`crate::Filesystem::open`], the group descriptors and [`crate::walk()`] run on it exactly
//! as on a clean filesystem. The source is never written.
//!
//! Two modes ([`ReplayMode`]):
//! * **Overlay**: only the overlay (what the walk of the replayed state needs);
//! * **Replayed**: the overlay plus what a recovery writes besides the logged blocks, as
//!   e2fsprogs 1.47 does (`debugfs -w -R jr`, `e2fsck -E journal_only`): the primary
//!   superblock with INCOMPAT_RECOVER cleared, EXT2_VALID_FS cleared in `s_state` after a
//!   recovery error, EXT2_ERROR_FS set after a failed commit or with a journal `s_errno`,
//!   `s_checksum` recomputed with metadata_csum; and the journal superblock with `s_start` =
//!   0, `s_errno` = 0 and `s_sequence` = [`Recovery::new_sequence`], its checksum
//!   recomputed with v2/v3 (an external journal's superblock is not on this device: see
//!   [`Journal::replayed_superblock`]). Both tools also update times and counters (`s_wtime`,
//!   `s_kbytes_written`; `jr` sets `s_lastcheck` to 0xFFFFFFFF): those are left as they were.
//!
//! Only the overlay's blocks, the blocks of those two superblocks and the blocks set with
//! [`ReplayedView::set_block`] (the fast-commit replay,
//! [`ReplayedView::replay_fast_commits`]) differ from the device.

use super::locate::{Journal, JournalLocation};
use super::recovery::Recovery;
use super::superblock::JBD2_MAGIC_NUMBER;
use crate::features::incompat;
use crate::superblock::{SuperblockBytes, EXT2_VALID_FS, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::types::BlockNr;
use crate::view::BlockView;
use std::collections::BTreeMap;
use std::io;

/// `s_state` bit: errors detected (kernel `EXT2_ERROR_FS`).
const EXT2_ERROR_FS: u16 = 0x2;

/// What a [`ReplayedView`] shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayMode {
    /// The logged blocks only.
    Overlay,
    /// The state after a recovery: the logged blocks, the superblock and the journal
    /// superblock as a recovery writes them (module comment).
    Replayed,
}

/// Where a replaced block's bytes come from.
#[derive(Clone, Debug)]
enum Source {
    /// A journal copy at this device block of the journal's device.
    Journal { device_block: u64, escaped: bool },
    /// Bytes built here (the patched superblocks).
    Bytes(Vec<u8>),
}

/// A read-only view of the replayed filesystem (module comment).
pub struct ReplayedView<'a, B> {
    base: B,
    /// The device holding the journal copies; `None`: `base` (an internal journal).
    journal_dev: Option<&'a dyn BlockView>,
    block_size: u32,
    blocks: BTreeMap<u64, Source>,
}

impl<'a, B: BlockView> ReplayedView<'a, B> {
    /// The view of `base` (the filesystem's device, as `journal` was located on) with the
    /// overlay of `recovery` and, in [`ReplayMode::Replayed`], the two superblocks as a
    /// recovery leaves them (only when `recovery.replayed`).
    ///
    /// # Errors
    /// A read error of the superblock or journal superblock (Replayed mode).
    pub fn new(
        base: B,
        journal: &Journal<'a>,
        recovery: &Recovery,
        mode: ReplayMode,
    ) -> io::Result<ReplayedView<'a, B>> {
        ReplayedView::build(base, journal, Some(journal.device()), recovery, mode)
    }

    /// Like [`ReplayedView::new`], without borrowing the filesystem `journal` was located
    /// on, so that the view can outlive it: an internal journal's copies are read from `base`
    /// (which must be the device the filesystem was opened on), an external journal's from
    /// `external` (the view given to [`Journal::locate`]).
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for an external journal without `external`; a read
    /// error of the superblock or journal superblock (Replayed mode).
    pub fn on_base(
        base: B,
        journal: &Journal<'_>,
        external: Option<&'a dyn BlockView>,
        recovery: &Recovery,
        mode: ReplayMode,
    ) -> io::Result<ReplayedView<'a, B>> {
        let dev = match journal.location {
            JournalLocation::Inode { .. } => None,
            JournalLocation::External => Some(external.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the external journal device is needed to read its copies",
                )
            })?),
        };
        ReplayedView::build(base, journal, dev, recovery, mode)
    }

    fn build(
        base: B,
        journal: &Journal<'_>,
        journal_dev: Option<&'a dyn BlockView>,
        recovery: &Recovery,
        mode: ReplayMode,
    ) -> io::Result<ReplayedView<'a, B>> {
        let mut blocks = BTreeMap::new();
        for (&b, o) in &recovery.overlay {
            if let Some(device_block) = journal.device_block(o.journal_block) {
                let escaped = o.escaped;
                blocks.insert(
                    b,
                    Source::Journal {
                        device_block,
                        escaped,
                    },
                );
            }
        }
        let mut v = ReplayedView {
            base,
            journal_dev,
            block_size: journal.block_size,
            blocks,
        };
        if mode == ReplayMode::Replayed && recovery.replayed {
            let errors = recovery.failed_commit.is_some() || journal.sb.s_errno != 0;
            v.patch_superblock(recovery.error.is_some(), errors)?;
            if let JournalLocation::Inode { .. } = journal.location {
                if let Some((b, bytes)) = journal.replayed_superblock(recovery)? {
                    v.blocks.insert(b.0, Source::Bytes(bytes));
                }
            }
        }
        Ok(v)
    }

    /// A view of `base` (a filesystem of `block_size`-byte blocks) that changes nothing yet:
    /// the start of a replay of a filesystem whose journal is clean (orphan processing may
    /// still change it: [`ReplayedView::set_block`]).
    pub fn unchanged(base: B, block_size: u32) -> ReplayedView<'a, B> {
        ReplayedView {
            base,
            journal_dev: None,
            block_size,
            blocks: BTreeMap::new(),
        }
    }

    /// Replaces filesystem block `b` with `bytes` (exactly one block): how the steps after
    /// the block-level replay (fast commits, orphan processing) record what they change.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when `bytes` is not one block long.
    pub fn set_block(&mut self, b: BlockNr, bytes: Vec<u8>) -> io::Result<()> {
        if bytes.len() != self.block_size as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes for block {} of {} bytes",
                    bytes.len(),
                    b.0,
                    self.block_size
                ),
            ));
        }
        self.blocks.insert(b.0, Source::Bytes(bytes));
        Ok(())
    }

    /// The block size of the view, in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The blocks that differ from the device (overlay, patched superblocks, blocks set), in
    /// order.
    pub fn changed_blocks(&self) -> Vec<BlockNr> {
        self.blocks.keys().map(|&b| BlockNr(b)).collect()
    }

    /// The underlying device view.
    pub fn base(&self) -> &B {
        &self.base
    }

    /// Replaces the block holding the primary superblock with its replayed bytes.
    fn patch_superblock(&mut self, error: bool, errors: bool) -> io::Result<()> {
        let bs = u64::from(self.block_size);
        let block = SUPERBLOCK_OFFSET / bs;
        let mut buf = vec![0u8; self.block_size as usize];
        self.read_at(block * bs, &mut buf)?;
        let at = (SUPERBLOCK_OFFSET - block * bs) as usize;
        replayed_superblock(&mut buf[at..at + SUPERBLOCK_SIZE], error, errors)
            .map_err(io::Error::other)?;
        self.blocks.insert(block, Source::Bytes(buf));
        Ok(())
    }

    /// The bytes of replaced block `b`.
    fn replaced(&self, src: &Source) -> io::Result<Vec<u8>> {
        match src {
            Source::Bytes(v) => Ok(v.clone()),
            Source::Journal {
                device_block,
                escaped,
            } => {
                let mut buf = vec![0u8; self.block_size as usize];
                match self.journal_dev {
                    Some(dev) => dev.read_blocks(self.block_size, *device_block, &mut buf)?,
                    None => self
                        .base
                        .read_blocks(self.block_size, *device_block, &mut buf)?,
                }
                if *escaped {
                    buf[..4].copy_from_slice(&JBD2_MAGIC_NUMBER.to_be_bytes());
                }
                Ok(buf)
            }
        }
    }
}

/// Clears INCOMPAT_RECOVER in the superblock `sb` (1024 bytes), EXT2_VALID_FS after a
/// recovery `error`, sets EXT2_ERROR_FS for `errors` (a failed commit, a journal `s_errno`);
/// recomputes `s_checksum` with metadata_csum.
///
/// # Errors
/// `sb` is not 1024 bytes (a bug of the caller).
fn replayed_superblock(
    sb: &mut [u8],
    error: bool,
    errors: bool,
) -> Result<(), crate::error::Error> {
    let mut sb = SuperblockBytes::new(sb)?;
    sb.clear_incompat(incompat::RECOVER);
    if error {
        sb.clear_state_bits(EXT2_VALID_FS);
    }
    if errors {
        sb.set_state_bits(EXT2_ERROR_FS);
    }
    sb.update_checksum();
    Ok(())
}

impl Journal<'_> {
    /// The block of the journal superblock as a recovery leaves it (`s_start` = 0,
    /// `s_sequence` = [`Recovery::new_sequence`], checksum recomputed with v2/v3): its device
    /// block on the journal's device and the block's bytes; `None` when `recovery` replayed
    /// nothing.
    ///
    /// # Errors
    /// A read error of that block.
    pub fn replayed_superblock(
        &self,
        recovery: &Recovery,
    ) -> io::Result<Option<(BlockNr, Vec<u8>)>> {
        if !recovery.replayed {
            return Ok(None);
        }
        let Some(dev) = self.device_block(self.sb_block) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; self.block_size as usize];
        self.device.read_blocks(self.block_size, dev, &mut buf)?;
        let jsb = self.sb.emptied(recovery.new_sequence());
        buf[..jsb.len()].copy_from_slice(&jsb);
        Ok(Some((BlockNr(dev), buf)))
    }
}

impl<B: BlockView> BlockView for ReplayedView<'_, B> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.base.read_at(offset, buf)?;
        if buf.is_empty() {
            return Ok(());
        }
        let bs = u64::from(self.block_size);
        let end = offset.saturating_add(buf.len() as u64);
        let (first, last) = (offset / bs, (end - 1) / bs);
        for (&b, src) in self.blocks.range(first..=last) {
            let bytes = self.replaced(src)?;
            let start = (b * bs).max(offset);
            let stop = ((b + 1) * bs).min(end);
            let from = (start - b * bs) as usize;
            let to = (start - offset) as usize;
            let n = (stop - start) as usize;
            buf[to..to + n].copy_from_slice(&bytes[from..from + n]);
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.base.size()
    }
}
