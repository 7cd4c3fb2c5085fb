//! The fast-commit area (journal INCOMPAT_FAST_COMMIT): `s_num_fc_blks` blocks (256 when 0)
//! after the block log, `[j_last, s_maxlen)`. ext4 writes inode-level records there (ext4
//! `struct ext4_fc_tl`: a little-endian u16 tag and u16 length, then the value; a tag never
//! crosses a block), replayed *logically* after the block log. This crate does not replay
//! them; it reports:
//!
//! * `pending`: the area's first block starts with a HEAD tag whose `fc_tid` is the end tid
//!   of the block log, and a TAIL tag with that tid follows (ext4's test for fast commits to
//!   replay, without its crc32c over the tags): the block-level replayed state is then
//!   incomplete;
//! * the area's journal blocks (for a faithful copy) and the filesystem blocks named by its
//!   ADD_RANGE tags (the extents fast commits added to inodes), where reading them is cheap.
//!   Inode records named by INODE tags are not resolved to inode-table blocks.
//!
//! Nothing here is verified against ext4: no tool writes fast commits offline.

use super::locate::Journal;
use crate::bytes::{join, le16, le32};
use crate::extent_header::EXT_INIT_MAX_LEN;
use crate::types::BlockNr;

const EXT4_FC_TAG_ADD_RANGE: u16 = 0x1;
const EXT4_FC_TAG_TAIL: u16 = 0x8;
const EXT4_FC_TAG_HEAD: u16 = 0x9;
/// Size of `struct ext4_fc_tl`, in bytes.
const TL_SIZE: usize = 4;

/// The fast-commit area of a journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastCommit {
    /// The area's journal blocks: `[first, first + len)`, i.e. `[j_last, s_maxlen)`.
    pub journal_blocks: (u64, u64),
    /// Fast commits for the end tid exist (module comment); only computed when the journal
    /// was replayed.
    pub pending: bool,
    /// Filesystem extents (first block, blocks) named by ADD_RANGE tags of the pending fast
    /// commits, inside the filesystem.
    pub referenced: Vec<(BlockNr, u64)>,
}

/// The fast-commit area of `j` (None without FAST_COMMIT); `end_tid` is the block log's end
/// tid when it was replayed. Problems go to `warn(journal block, message)`.
pub(crate) fn scan_fast_commit(
    j: &Journal<'_>,
    end_tid: Option<u32>,
    warn: &mut dyn FnMut(u64, String),
) -> Option<FastCommit> {
    let n = u64::from(j.sb.fast_commit_blocks());
    if n == 0 {
        return None;
    }
    let first = j.total_len - n;
    let mut fc = FastCommit {
        journal_blocks: (first, n),
        pending: false,
        referenced: Vec::new(),
    };
    let Some(tid) = end_tid else {
        return Some(fc);
    };
    let mut scan = Scan {
        tid,
        head: false,
        tail: false,
        ranges: Vec::new(),
        blocks_count: j.fs_blocks_count,
    };
    // ext4 reads from j_fc_first = j_last + 1.
    for at in first + 1..j.total_len {
        let buf = match j.read_block(at) {
            Ok(b) => b,
            Err(e) => {
                warn(at, e);
                break;
            }
        };
        if !scan.block(&buf) {
            break;
        }
    }
    fc.pending = scan.head && scan.tail;
    if fc.pending {
        fc.referenced = scan.ranges;
    }
    Some(fc)
}

struct Scan {
    tid: u32,
    head: bool,
    tail: bool,
    ranges: Vec<(BlockNr, u64)>,
    blocks_count: u64,
}

impl Scan {
    /// Reads the tags of one block; false at the end of the fast commits.
    fn block(&mut self, b: &[u8]) -> bool {
        let mut at = 0;
        while at + TL_SIZE <= b.len() {
            let tag = le16(b, at);
            let len = usize::from(le16(b, at + 2));
            let value = at + TL_SIZE;
            if value + len > b.len() {
                return false;
            }
            if !self.tag(tag, &b[value..value + len]) {
                return false;
            }
            at = value + len;
        }
        true
    }

    fn tag(&mut self, tag: u16, v: &[u8]) -> bool {
        if !self.head {
            // The first tag must be a HEAD for the expected tid.
            self.head = tag == EXT4_FC_TAG_HEAD && v.len() >= 8 && le32(v, 4) == self.tid;
            return self.head;
        }
        match tag {
            EXT4_FC_TAG_TAIL if v.len() >= 8 => {
                if le32(v, 0) != self.tid {
                    return false;
                }
                self.tail = true;
            }
            EXT4_FC_TAG_ADD_RANGE if v.len() >= 16 => self.add_range(&v[4..16]),
            0 => return false,
            _ => {}
        }
        true
    }

    /// An ext4 extent (`ee_block`, `ee_len`, `ee_start_hi`, `ee_start_lo`).
    fn add_range(&mut self, ex: &[u8]) {
        let mut len = le16(ex, 4);
        if len > EXT_INIT_MAX_LEN {
            len -= EXT_INIT_MAX_LEN;
        }
        let start = join(le32(ex, 8), u32::from(le16(ex, 6)));
        let len = u64::from(len);
        if start != 0
            && start
                .checked_add(len)
                .is_some_and(|e| e <= self.blocks_count)
        {
            self.ranges.push((BlockNr(start), len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tl(tag: u16, value: &[u8]) -> Vec<u8> {
        let mut v = tag.to_le_bytes().to_vec();
        v.extend((value.len() as u16).to_le_bytes());
        v.extend(value);
        v
    }

    #[test]
    fn head_add_range_tail() {
        let mut b = tl(EXT4_FC_TAG_HEAD, &[0, 0, 0, 0, 7, 0, 0, 0]);
        let mut ex = 12u32.to_le_bytes().to_vec(); // fc_ino
        ex.extend(0u32.to_le_bytes()); // ee_block
        ex.extend((32768u16 + 3).to_le_bytes()); // unwritten, 3 blocks
        ex.extend(0u16.to_le_bytes());
        ex.extend(500u32.to_le_bytes());
        b.extend(tl(EXT4_FC_TAG_ADD_RANGE, &ex));
        b.extend(tl(EXT4_FC_TAG_TAIL, &[7, 0, 0, 0, 0, 0, 0, 0]));
        b.resize(1024, 0);
        let mut s = Scan {
            tid: 7,
            head: false,
            tail: false,
            ranges: Vec::new(),
            blocks_count: 1000,
        };
        assert!(!s.block(&b), "ends at the zero padding tag");
        assert!(s.head && s.tail);
        assert_eq!(s.ranges, vec![(BlockNr(500), 3)]);
        let mut other = Scan { tid: 8, ..s };
        other.head = false;
        assert!(!other.block(&b));
        assert!(!other.head);
    }
}
