//! A QCOW2 layer as a block view, so the walker can read a filesystem stored in a QCOW2 image.

use ext::BlockView;
use qcow::LayerReader;
use std::io;

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
