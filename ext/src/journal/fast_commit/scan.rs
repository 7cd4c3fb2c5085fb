//! The scan phase of the fast-commit area (ext4 `ext4_fc_replay_scan`): the tags of the area's
//! blocks, block after block from `j_fc_first`, each checked for a known tag and a valid
//! length; a TAIL closes one fast commit when its `fc_tid` is the block log's end tid and its
//! `fc_crc` is the crc32c (seed 0, ext4's `ext4_chksum`) of every tag's bytes since the
//! previous tail, up to the tail's own `fc_crc` field. The fast commits to replay are those up
//! to the last such tail; the scan stops at the first tag that breaks a rule.
//!
//! The outcome follows the kernel's return codes: no fast commit (the area does not start
//! with a HEAD, or a HEAD of another tid), fast commits to replay (at least one valid tail:
//! `JBD2_FC_REPLAY_STOP` after it), or an error (a broken rule before any valid tail, a HEAD
//! with unknown features, the area's end reached while tags go on): jbd2 then fails the whole
//! recovery, so the kernel refuses to mount.

use crate::bytes::{crc32c_raw, join, le16, le32};
use crate::extent_header::EXT_INIT_MAX_LEN;

pub(crate) const EXT4_FC_TAG_ADD_RANGE: u16 = 0x1;
pub(crate) const EXT4_FC_TAG_DEL_RANGE: u16 = 0x2;
pub(crate) const EXT4_FC_TAG_CREAT: u16 = 0x3;
pub(crate) const EXT4_FC_TAG_LINK: u16 = 0x4;
pub(crate) const EXT4_FC_TAG_UNLINK: u16 = 0x5;
pub(crate) const EXT4_FC_TAG_INODE: u16 = 0x6;
pub(crate) const EXT4_FC_TAG_PAD: u16 = 0x7;
pub(crate) const EXT4_FC_TAG_TAIL: u16 = 0x8;
pub(crate) const EXT4_FC_TAG_HEAD: u16 = 0x9;
/// Size of `struct ext4_fc_tl` (tag and length), in bytes.
pub(crate) const TL_SIZE: usize = 4;
/// `EXT4_FC_SUPPORTED_FEATURES`: no HEAD feature bit is known.
const EXT4_FC_SUPPORTED_FEATURES: u32 = 0;
/// Longest name of a dentry tag, in bytes (`EXT4_NAME_LEN`).
const EXT4_NAME_LEN: usize = 255;
/// The 128-byte inode of the first ext2 revision (`EXT4_GOOD_OLD_INODE_SIZE`).
const GOOD_OLD_INODE_SIZE: usize = 128;

/// What a dentry tag does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DentryOp {
    /// `EXT4_FC_TAG_CREAT`: a new inode linked under a name (a new directory gets `.`/`..`).
    Creat,
    /// `EXT4_FC_TAG_LINK`: one more name for an inode.
    Link,
    /// `EXT4_FC_TAG_UNLINK`: a name removed.
    Unlink,
}

/// One validated tag of a fast commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    /// HEAD, PAD, TAIL: nothing to apply.
    Marker,
    /// `struct ext4_fc_add_range`: inode `ino` maps `len` blocks from `lblk` to `pblk`.
    AddRange {
        ino: u32,
        lblk: u32,
        len: u16,
        unwritten: bool,
        pblk: u64,
    },
    /// `struct ext4_fc_del_range`: inode `ino` loses `len` blocks from `lblk`.
    DelRange { ino: u32, lblk: u32, len: u32 },
    /// `struct ext4_fc_dentry_info` and the name.
    Dentry {
        op: DentryOp,
        parent: u32,
        ino: u32,
        name: Vec<u8>,
    },
    /// `struct ext4_fc_inode`: the inode's record (128 bytes plus `i_extra_isize`, or the
    /// whole record with inline data).
    Inode { ino: u32, raw: Vec<u8> },
}

/// An ADD_RANGE of a valid fast commit (kernel `struct ext4_fc_alloc_region`): its blocks are
/// excluded from the replay's allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) ino: u32,
    pub(crate) pblk: u64,
    pub(crate) len: u64,
}

/// The outcome of the scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing to replay.
    None,
    /// `tags` (HEAD to the last valid TAIL, each with its journal block) to replay.
    Replay,
    /// The kernel's scan fails: it refuses to mount (module comment).
    Error(String),
}

/// The scan of the area.
#[derive(Clone, Debug)]
pub(crate) struct Scan {
    pub(crate) outcome: Outcome,
    /// The tags to replay, each with the journal block holding it (empty unless `Replay`).
    pub(crate) tags: Vec<(u64, Tag)>,
    /// The ADD_RANGE regions of the fast commits to replay.
    pub(crate) regions: Vec<Region>,
}

/// The scan's state across blocks (kernel `struct ext4_fc_replay_state`).
pub(crate) struct Scanner {
    tid: u32,
    inode_size: usize,
    crc: u32,
    /// Tags since the start, and the journal block of each.
    pending: Vec<(u64, Tag)>,
    pending_regions: Vec<Region>,
    valid_tags: usize,
    valid_regions: usize,
    started: bool,
    done: Option<Outcome>,
}

impl Scanner {
    /// A scan for fast commits of transaction `tid` on a filesystem of `inode_size`-byte
    /// inodes.
    pub(crate) fn new(tid: u32, inode_size: usize) -> Scanner {
        Scanner {
            tid,
            inode_size,
            crc: 0,
            pending: Vec::new(),
            pending_regions: Vec::new(),
            valid_tags: 0,
            valid_regions: 0,
            started: false,
            done: None,
        }
    }

    /// True once the scan has stopped.
    pub(crate) fn done(&self) -> bool {
        self.done.is_some()
    }

    /// Stops the scan because the area ends (or its block `at` cannot be read: `why`) while
    /// tags go on: the kernel's read error.
    pub(crate) fn end(&mut self, why: &str) {
        if self.done.is_none() {
            self.done = Some(match (self.started, self.valid_tags) {
                (false, _) => Outcome::None,
                _ => Outcome::Error(why.to_string()),
            });
        }
    }

    /// The result.
    pub(crate) fn finish(mut self) -> Scan {
        let outcome = self.done.take().unwrap_or(Outcome::None);
        if outcome != Outcome::Replay {
            return Scan {
                outcome,
                tags: Vec::new(),
                regions: Vec::new(),
            };
        }
        self.pending.truncate(self.valid_tags);
        self.pending_regions.truncate(self.valid_regions);
        Scan {
            outcome,
            tags: self.pending,
            regions: self.pending_regions,
        }
    }

    /// Scans journal block `at` holding `b` (one journal block).
    pub(crate) fn block(&mut self, at: u64, b: &[u8]) {
        if self.done.is_some() || b.len() < TL_SIZE {
            return;
        }
        if !self.started {
            if le16(b, 0) != EXT4_FC_TAG_HEAD {
                self.done = Some(Outcome::None);
                return;
            }
            self.started = true;
        }
        let mut cur = 0;
        while cur + TL_SIZE <= b.len() {
            let tag = le16(b, cur);
            let len = usize::from(le16(b, cur + 2));
            let val = cur + TL_SIZE;
            if len > b.len() - val || !self.len_valid(tag, len) {
                return self.stop(format!(
                    "journal block {at}: tag {tag:#x} of {len} bytes at offset {cur}"
                ));
            }
            if !self.tag(at, tag, &b[cur..val + len]) {
                return;
            }
            cur = val + len;
        }
    }

    /// A broken rule: the end of the fast commits, or an error before any valid tail.
    fn stop(&mut self, why: String) {
        self.done = Some(if self.valid_tags > 0 {
            Outcome::Replay
        } else {
            Outcome::Error(why)
        });
    }

    /// Kernel `ext4_fc_value_len_isvalid`.
    fn len_valid(&self, tag: u16, len: usize) -> bool {
        match tag {
            EXT4_FC_TAG_ADD_RANGE => len == 16,
            EXT4_FC_TAG_DEL_RANGE => len == 12,
            EXT4_FC_TAG_CREAT | EXT4_FC_TAG_LINK | EXT4_FC_TAG_UNLINK => {
                (9..=8 + EXT4_NAME_LEN).contains(&len)
            }
            EXT4_FC_TAG_INODE => (4 + GOOD_OLD_INODE_SIZE..=4 + self.inode_size).contains(&len),
            EXT4_FC_TAG_PAD => true,
            EXT4_FC_TAG_TAIL => len >= 8,
            EXT4_FC_TAG_HEAD => len == 8,
            _ => false,
        }
    }

    /// One tag (`tl`: its header and value); false when the scan stops.
    fn tag(&mut self, at: u64, tag: u16, tl: &[u8]) -> bool {
        let v = &tl[TL_SIZE..];
        match tag {
            EXT4_FC_TAG_TAIL => {
                self.crc = crc32c_raw(self.crc, &tl[..TL_SIZE + 4]);
                let (tid, crc) = (le32(v, 0), le32(v, 4));
                self.pending.push((at, Tag::Marker));
                if tid == self.tid && crc == self.crc {
                    self.valid_tags = self.pending.len();
                    self.valid_regions = self.pending_regions.len();
                    self.crc = 0;
                    return true;
                }
                let why = format!(
                    "journal block {at}: fast-commit tail of tid {tid} with crc {crc:#010x} (want tid {}, crc {:#010x})",
                    self.tid, self.crc
                );
                self.crc = 0;
                self.stop(why);
                false
            }
            EXT4_FC_TAG_HEAD => {
                let (features, tid) = (le32(v, 0), le32(v, 4));
                if features & !EXT4_FC_SUPPORTED_FEATURES != 0 {
                    self.done = Some(Outcome::Error(format!(
                        "journal block {at}: fast-commit head with unknown features {features:#x}"
                    )));
                    return false;
                }
                if tid != self.tid {
                    self.done = Some(if self.valid_tags > 0 {
                        Outcome::Replay
                    } else {
                        Outcome::None
                    });
                    return false;
                }
                self.crc = crc32c_raw(self.crc, tl);
                self.pending.push((at, Tag::Marker));
                true
            }
            _ => {
                self.crc = crc32c_raw(self.crc, tl);
                let t = parse(tag, v);
                if let Tag::AddRange { ino, pblk, len, .. } = t {
                    self.pending_regions.push(Region {
                        ino,
                        pblk,
                        len: u64::from(len),
                    });
                }
                self.pending.push((at, t));
                true
            }
        }
    }
}

/// Decodes a tag whose length was validated.
fn parse(tag: u16, v: &[u8]) -> Tag {
    match tag {
        EXT4_FC_TAG_ADD_RANGE => {
            let raw_len = le16(v, 8);
            let (len, unwritten) = if raw_len > EXT_INIT_MAX_LEN {
                (raw_len - EXT_INIT_MAX_LEN, true)
            } else {
                (raw_len, false)
            };
            Tag::AddRange {
                ino: le32(v, 0),
                lblk: le32(v, 4),
                len,
                unwritten,
                pblk: join(le32(v, 12), u32::from(le16(v, 10))),
            }
        }
        EXT4_FC_TAG_DEL_RANGE => Tag::DelRange {
            ino: le32(v, 0),
            lblk: le32(v, 4),
            len: le32(v, 8),
        },
        EXT4_FC_TAG_CREAT | EXT4_FC_TAG_LINK | EXT4_FC_TAG_UNLINK => Tag::Dentry {
            op: match tag {
                EXT4_FC_TAG_CREAT => DentryOp::Creat,
                EXT4_FC_TAG_LINK => DentryOp::Link,
                _ => DentryOp::Unlink,
            },
            parent: le32(v, 0),
            ino: le32(v, 4),
            name: v[8..].to_vec(),
        },
        EXT4_FC_TAG_INODE => Tag::Inode {
            ino: le32(v, 0),
            raw: v[4..].to_vec(),
        },
        _ => Tag::Marker,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tl(tag: u16, value: &[u8]) -> Vec<u8> {
        let mut v = tag.to_le_bytes().to_vec();
        v.extend((value.len() as u16).to_le_bytes());
        v.extend(value);
        v
    }

    /// A block of `bs` bytes: `tags`, then a TAIL for `tid` with the right crc filling the
    /// rest (as ext4 writes it).
    pub(crate) fn commit_block(tags: &[Vec<u8>], tid: u32, bs: usize) -> Vec<u8> {
        let mut b: Vec<u8> = tags.concat();
        let tail_len = bs - b.len() - TL_SIZE;
        b.extend((EXT4_FC_TAG_TAIL).to_le_bytes());
        b.extend((tail_len as u16).to_le_bytes());
        b.extend(tid.to_le_bytes());
        let crc = crc32c_raw(0, &b);
        b.extend(crc.to_le_bytes());
        b.resize(bs, 0);
        b
    }

    pub(crate) fn head(tid: u32) -> Vec<u8> {
        tl(
            EXT4_FC_TAG_HEAD,
            &[&0u32.to_le_bytes()[..], &tid.to_le_bytes()].concat(),
        )
    }

    fn add_range(ino: u32, lblk: u32, len: u16, pblk: u32) -> Vec<u8> {
        let mut v = ino.to_le_bytes().to_vec();
        v.extend(lblk.to_le_bytes());
        v.extend(len.to_le_bytes());
        v.extend(0u16.to_le_bytes());
        v.extend(pblk.to_le_bytes());
        tl(EXT4_FC_TAG_ADD_RANGE, &v)
    }

    fn scan(blocks: &[Vec<u8>], tid: u32) -> Scan {
        let mut s = Scanner::new(tid, 256);
        for (i, b) in blocks.iter().enumerate() {
            s.block(i as u64, b);
            if s.done() {
                break;
            }
        }
        s.end("the end of the area");
        s.finish()
    }

    #[test]
    fn valid_commits_up_to_the_last_good_tail() {
        let b0 = commit_block(&[head(7), add_range(12, 0, 32768 + 3, 500)], 7, 1024);
        let b1 = commit_block(&[add_range(13, 0, 1, 600)], 7, 1024);
        let mut b2 = commit_block(&[add_range(14, 0, 1, 700)], 7, 1024);
        b2[20] ^= 1; // bad crc: the third commit is not replayed
        let s = scan(&[b0.clone(), b1.clone(), b2], 7);
        assert_eq!(s.outcome, Outcome::Replay);
        assert_eq!(s.tags.len(), 5);
        assert_eq!(
            s.tags[1].1,
            Tag::AddRange {
                ino: 12,
                lblk: 0,
                len: 3,
                unwritten: true,
                pblk: 500
            }
        );
        assert_eq!(s.regions.len(), 2);
        // Zeros after the last commit end the scan too.
        let s = scan(&[b0.clone(), vec![0; 1024]], 7);
        assert_eq!((s.outcome, s.tags.len()), (Outcome::Replay, 3));
        // Another tid: nothing; not starting with a head: nothing.
        assert_eq!(scan(std::slice::from_ref(&b0), 8).outcome, Outcome::None);
        assert_eq!(scan(&[b1], 7).outcome, Outcome::None);
    }

    #[test]
    fn a_bad_first_commit_is_an_error() {
        let mut b0 = commit_block(&[head(7), add_range(12, 0, 1, 500)], 7, 1024);
        b0[1020] = 1;
        b0[30] ^= 0xFF;
        assert!(matches!(scan(&[b0], 7).outcome, Outcome::Error(_)));
        let bad_len = [head(7), tl(EXT4_FC_TAG_ADD_RANGE, &[0; 15])].concat();
        let mut b = bad_len.clone();
        b.resize(1024, 0);
        assert!(matches!(scan(&[b], 7).outcome, Outcome::Error(_)));
        // A commit running to the area's end without a tail.
        let mut b = head(7);
        b.extend(tl(EXT4_FC_TAG_PAD, &vec![0; 1024 - 16]));
        assert!(matches!(scan(&[b], 7).outcome, Outcome::Error(_)));
    }
}
