//! The rebuilt block device image of one snapshot: snapshot k's image reads block P from its
//! own file, else from the next newer snapshots', else from the live device, where block
//! bitmaps are masked with the exclude bitmap and exclude bitmaps read as zeros.

use super::list::SnapshotFile;
use super::map::SnapshotMap;
use crate::features::compat;
use crate::fs::Filesystem;
use crate::types::BlockNr;
use crate::view::BlockView;
use std::collections::{HashMap, HashSet};
use std::io;

/// Where one image block of a snapshot view is read from. Two views of one device that give
/// the same source for a block read the same bytes there, so states can be compared without
/// reading (the live device's block P is `Device(P)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A block of the device (a snapshot's copy, or the live block).
    Device(u64),
    /// A live block bitmap masked with this exclude bitmap block.
    MaskedBitmap(u64, u64),
    /// Zeros (exclude bitmaps, and blocks past the image).
    Zero,
}

/// The rebuilt block device image of one snapshot, read through its own map, the newer
/// snapshots' maps and the live device.
pub struct SnapshotView<'a> {
    live: &'a dyn BlockView,
    block_size: u32,
    /// This snapshot's map first, then the next newer ones up to the newest.
    maps: Vec<&'a SnapshotMap>,
    /// Live block bitmap block → that group's exclude bitmap block.
    masks: HashMap<u64, u64>,
    /// Exclude bitmap blocks.
    exclude: HashSet<u64>,
    /// Image size in blocks.
    blocks: u64,
}

impl<'a> SnapshotView<'a> {
    /// The view of snapshot `index` of `list` (newest first) over `fs`'s device, with `maps`
    /// built for every snapshot of the list (same order).
    pub fn new<V: BlockView>(
        fs: &'a Filesystem<V>,
        list: &'a [SnapshotFile],
        maps: &'a [SnapshotMap],
        index: usize,
    ) -> SnapshotView<'a> {
        let sb = &fs.sb;
        let mut masks = HashMap::new();
        let mut exclude = HashSet::new();
        if sb.has_compat(compat::EXCLUDE_BITMAP) {
            for gd in fs.groups.iter().filter(|g| g.bg_exclude_bitmap != 0) {
                masks.insert(gd.bg_block_bitmap, gd.bg_exclude_bitmap);
                exclude.insert(gd.bg_exclude_bitmap);
            }
        }
        let chain = (0..=index.min(maps.len().saturating_sub(1)))
            .rev()
            .map(|j| &maps[j])
            .collect();
        SnapshotView {
            live: fs.view(),
            block_size: sb.block_size,
            maps: chain,
            masks,
            exclude,
            blocks: list.get(index).map_or(0, |s| s.blocks),
        }
    }

    /// Image size in blocks (the filesystem size at the take).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Where image block `p` is read from.
    pub fn source(&self, p: u64) -> Source {
        if p >= self.blocks {
            return Source::Zero;
        }
        if let Some(x) = self.maps.iter().find_map(|m| m.get(BlockNr(p))) {
            return Source::Device(x.0);
        }
        if self.exclude.contains(&p) {
            return Source::Zero;
        }
        match self.masks.get(&p) {
            Some(&e) => Source::MaskedBitmap(p, e),
            None => Source::Device(p),
        }
    }

    /// Reads image blocks `[first, first + n)` into `buf` (n whole blocks).
    fn read_whole_blocks(&self, first: u64, buf: &mut [u8]) -> io::Result<()> {
        let bs = self.block_size as usize;
        let n = buf.len() / bs;
        let mut i = 0;
        while i < n {
            let src = self.source(first + i as u64);
            // Coalesce a run of blocks that read from consecutive device blocks.
            let mut j = i + 1;
            if let Source::Device(x) = src {
                while j < n && self.source(first + j as u64) == Source::Device(x + (j - i) as u64) {
                    j += 1;
                }
            }
            let out = &mut buf[i * bs..j * bs];
            match src {
                Source::Zero => out.fill(0),
                Source::Device(x) => self.live.read_blocks(self.block_size, x, out)?,
                Source::MaskedBitmap(p, e) => {
                    self.live.read_blocks(self.block_size, p, out)?;
                    let mut mask = vec![0u8; bs];
                    self.live.read_blocks(self.block_size, e, &mut mask)?;
                    out.iter_mut().zip(mask).for_each(|(b, m)| *b &= !m);
                }
            }
            i = j;
        }
        Ok(())
    }
}

impl BlockView for SnapshotView<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bs = u64::from(self.block_size);
        let first = offset / bs;
        let end = offset + buf.len() as u64;
        let last = end.div_ceil(bs);
        if offset.is_multiple_of(bs) && end.is_multiple_of(bs) {
            return self.read_whole_blocks(first, buf);
        }
        let mut tmp = vec![0u8; ((last - first) * bs) as usize];
        self.read_whole_blocks(first, &mut tmp)?;
        let skip = (offset - first * bs) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }
}
