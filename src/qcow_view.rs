//! A QCOW2 layer as a block view, so the walker can read a filesystem stored in a QCOW2 image,
//! and the choice of that layer by the user (`--from-snapshot`, rollback's `--snapshot`).

use anyhow::Context;
use ext::BlockView;
use qcow::{Layer, LayerReader, Reader};
use std::io;
use std::path::Path;

/// Opens the QCOW2 image `path` for reading its states; with `complete`, refuses an image
/// with a backing file (a delta or an overlay, which holds only what changed) with a message
/// saying so. Without, such an image opens too and its unallocated clusters read as zeros
/// (listing its states, applying it as a delta).
///
/// # Errors
/// The file cannot be opened; not a usable QCOW2 image; a backing file when `complete`.
pub fn open_image(path: &Path, complete: bool) -> anyhow::Result<Reader> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    open_image_file(file, path, complete)
}

/// [`open_image`] over a file already open (read-only is enough); `path` names it in
/// messages.
///
/// # Errors
/// Not a usable QCOW2 image; a backing file when `complete`.
pub fn open_image_file(file: std::fs::File, path: &Path, complete: bool) -> anyhow::Result<Reader> {
    let reader = Reader::open_with_backing(file)
        .with_context(|| format!("{}: not a usable QCOW2 image", path.display()))?;
    if complete {
        if let Some(b) = reader.backing_file()? {
            anyhow::bail!(
                "{} has a backing file ({b}): it holds only what changed since it (a delta or an overlay); `e2image-rs apply` replays a delta onto a replica, `qemu-img convert` reads the whole chain",
                path.display()
            );
        }
    }
    Ok(reader)
}

/// One layer (active or snapshot) of a QCOW2 image, read as a block device.
pub struct QcowView<'a> {
    layer: &'a LayerReader<'a>,
    size: u64,
}

impl<'a> QcowView<'a> {
    /// A view of `layer`, whose guest disk is `size` bytes.
    pub fn new(layer: &'a LayerReader<'a>, size: u64) -> QcowView<'a> {
        QcowView { layer, size }
    }
}

impl BlockView for QcowView<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let avail = self.size.saturating_sub(offset);
        let n = usize::try_from(avail.min(buf.len() as u64)).unwrap_or(buf.len());
        let (head, tail) = buf.split_at_mut(n);
        tail.fill(0);
        if head.is_empty() {
            return Ok(());
        }
        self.layer.read_at(offset, head).map_err(io::Error::other)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

/// One layer of a QCOW2 image chosen by the user: the active one, or an internal snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenLayer {
    /// The layer.
    pub layer: Layer,
    /// Its guest disk size in bytes (a snapshot's own size when recorded).
    pub size: u64,
    /// Its date (seconds, nanoseconds; zero for the active layer).
    pub date: (u32, u32),
    /// How messages name it: "the active state", "snapshot 2 (monday)".
    pub label: String,
}

/// The active layer, or the internal snapshot with id or name `wanted`.
///
/// # Errors
/// No snapshot has that id or name (the message lists those it has).
pub fn choose_layer(reader: &Reader, wanted: Option<&str>) -> anyhow::Result<ChosenLayer> {
    let Some(want) = wanted else {
        return Ok(ChosenLayer {
            layer: Layer::Active,
            size: reader.virtual_size(),
            date: (0, 0),
            label: "the active state".into(),
        });
    };
    let Some(i) = reader.find_snapshot(want) else {
        let names: Vec<String> = reader
            .snapshots()
            .iter()
            .map(|s| format!("{} ({})", s.id, s.name))
            .collect();
        anyhow::bail!(
            "no internal snapshot with id or name {want:?} (the image has: {})",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    };
    let s = &reader.snapshots()[i];
    Ok(ChosenLayer {
        layer: Layer::Snapshot(i),
        size: s.disk_size.unwrap_or(reader.virtual_size()),
        date: (s.date_sec, s.date_nsec),
        label: format!("snapshot {} ({})", s.id, s.name),
    })
}

/// Refuses a state whose disk is too small for the filesystem it holds: a header (or a
/// snapshot's `disk_size`) of `size` bytes that cuts the filesystem short would make every
/// reader of the state miss its end — or, below 2 KiB, its superblock. A state larger than
/// the image's virtual size is refused too: QCOW2 reads stop at the virtual size (and QEMU
/// refuses to load a snapshot whose size differs). The filesystem's size
/// is `s_blocks_count` × block size from the superblock at byte 1024 (or the first backup that
/// validates, as the export opens it); a state without one is not checked, unless `expect_fs` (the image is an export of
/// a filesystem: e2image-rs's export record), which then refuses it. `label` names the state.
///
/// # Errors
/// The disk is smaller than the filesystem, or holds no superblock while one is expected.
pub fn check_state_size(
    reader: &Reader,
    layer: &LayerReader<'_>,
    size: u64,
    label: &str,
    expect_fs: bool,
) -> anyhow::Result<()> {
    if size > reader.virtual_size() {
        anyhow::bail!(
            "{label}: its disk is {}, larger than the image's virtual size ({}), past which nothing can be read: the header's size is wrong; nothing was written",
            crate::text::size(size),
            crate::text::size(reader.virtual_size())
        );
    }
    let sb_end = ext::SUPERBLOCK_OFFSET + ext::SUPERBLOCK_SIZE as u64;
    let view = QcowView::new(layer, size);
    let sb = match size >= sb_end {
        true => ext::Filesystem::open_with_fallback(&view as &dyn BlockView, &Default::default())
            .ok()
            .map(|(fs, _)| fs.sb),
        false => None,
    };
    let Some(sb) = sb else {
        if expect_fs {
            anyhow::bail!(
                "{label}: its disk is {} (the image's virtual size{}) and holds no ext superblock at byte 1024: the size is wrong or the state is damaged; nothing was written",
                crate::text::size(size),
                if size < sb_end { " is smaller than the superblock's end" } else { "" }
            );
        }
        return Ok(());
    };
    let fs_size = sb.size_bytes();
    if fs_size > size {
        anyhow::bail!(
            "{label}: its disk is {}, smaller than the filesystem it holds ({}: {} blocks of {}); the image's virtual size is wrong; nothing was written",
            crate::text::size(size),
            crate::text::size(fs_size),
            sb.s_blocks_count,
            crate::text::size(u64::from(sb.block_size))
        );
    }
    Ok(())
}
