//! What the superblock alone tells about inodes and the journal: which inodes are the
//! filesystem's own rather than user files, whether the journal needs recovery, whether it is
//! on an external device.

use super::{Superblock, EXT2_GOOD_OLD_FIRST_INO};
use crate::features::{compat, incompat, ro_compat};
use crate::types::{InodeNr, EXT2_ROOT_INO};

impl Superblock {
    /// True if inode `ino` holds filesystem metadata rather than a user's file or directory
    /// (kernel ext4.h, notes ext4-on-disk.md §7):
    ///
    /// * a reserved inode: below `s_first_ino`, and below 11 (`EXT2_GOOD_OLD_FIRST_INO`)
    ///   whatever `s_first_ino` says, except the root directory (2): the bad-blocks inode
    ///   (1), the legacy quota inodes (3, 4), the boot loader (5), the undelete directory
    ///   (6), the resize inode (7), the journal (8), the snapshot exclude inode (9), ...;
    /// * an inode the superblock names: `s_journal_inum`, `s_usr_quota_inum`,
    ///   `s_grp_quota_inum`, `s_prj_quota_inum` (whatever the feature bits say, as the walk
    ///   classifies them), `s_orphan_file_inum` with COMPAT_ORPHAN_FILE, and with
    ///   RO_COMPAT_HAS_SNAPSHOT (next3) the active snapshot `s_snapshot_inum` and the head of
    ///   the snapshot list `s_snapshot_list`.
    ///
    /// Not special: inode 0 (no inode), the head of the orphan list `s_last_orphan` (a user
    /// file being deleted), EA inodes (an xattr value of a user's file), and the older snapshot files further down the next3 list, which
    /// only their inodes tell ([`Inode::is_snapshot_file`](crate::Inode::is_snapshot_file);
    /// [`snapshot_list`](crate::snapshot_list) reads the whole list).
    pub fn is_special_inode(&self, ino: InodeNr) -> bool {
        let n = ino.0;
        if n == 0 {
            return false;
        }
        if n < self.s_first_ino.max(EXT2_GOOD_OLD_FIRST_INO) {
            return ino != EXT2_ROOT_INO;
        }
        let named = [
            self.s_journal_inum,
            self.s_usr_quota_inum,
            self.s_grp_quota_inum,
            self.s_prj_quota_inum,
        ];
        if named.contains(&n) {
            return true;
        }
        if self.has_compat(compat::ORPHAN_FILE) && n == self.s_orphan_file_inum {
            return true;
        }
        self.has_ro_compat(ro_compat::HAS_SNAPSHOT)
            && (n == self.s_snapshot_inum || n == self.s_snapshot_list)
    }

    /// True if the journal needs recovery: INCOMPAT_RECOVER (`needs_recovery`) is set, as it
    /// is while the filesystem is mounted and after a crash. Without COMPAT_HAS_JOURNAL there
    /// is no journal to replay ([`Journal::locate`](crate::Journal::locate) says so).
    pub fn needs_recovery(&self) -> bool {
        self.has_incompat(incompat::RECOVER)
    }

    /// True if the filesystem has a journal (COMPAT_HAS_JOURNAL) on an external device:
    /// `s_journal_uuid` is not all zero, as e2fsck decides (and
    /// [`Journal::locate`](crate::Journal::locate)); `s_journal_inum` is then not used (it is
    /// normally 0) and `s_journal_dev` is only a hint of the device number.
    pub fn has_external_journal(&self) -> bool {
        self.has_compat(compat::HAS_JOURNAL) && self.s_journal_uuid != [0; 16]
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn parsed(b: &[u8]) -> Superblock {
        Superblock::parse(b).unwrap()
    }

    fn special(sb: &Superblock) -> Vec<u32> {
        (0..64)
            .filter(|&n| sb.is_special_inode(InodeNr(n)))
            .collect()
    }

    #[test]
    fn reserved_inodes_but_the_root_are_special() {
        let sb = parsed(&sample());
        assert_eq!(special(&sb), [1, 3, 4, 5, 6, 7, 8, 9, 10]);
        let mut b = sample();
        put32(&mut b, 0x54, 16); // s_first_ino
        assert_eq!(
            special(&parsed(&b)),
            [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
        put32(&mut b, 0x54, 5); // impossible: the 11 reserved ones stay reserved
        assert_eq!(special(&parsed(&b)), [1, 3, 4, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn inodes_the_superblock_names_are_special() {
        let mut b = sample();
        put32(&mut b, 0xE0, 20); // s_journal_inum
        put32(&mut b, 0x240, 21); // s_usr_quota_inum
        put32(&mut b, 0x244, 22); // s_grp_quota_inum
        put32(&mut b, 0x26C, 23); // s_prj_quota_inum
        put32(&mut b, 0x280, 24); // s_orphan_file_inum, without COMPAT_ORPHAN_FILE
        put32(&mut b, 0x180, 25); // s_snapshot_inum, without HAS_SNAPSHOT
        put32(&mut b, 0x190, 26); // s_snapshot_list
        put32(&mut b, 0xE8, 27); // s_last_orphan: never special
        let named = |sb: &Superblock| -> Vec<u32> {
            special(sb).into_iter().filter(|&n| n >= 11).collect()
        };
        assert_eq!(named(&parsed(&b)), [20, 21, 22, 23]);
        put32(&mut b, 0x5C, compat::ORPHAN_FILE);
        put32(&mut b, 0x64, ro_compat::HAS_SNAPSHOT);
        assert_eq!(named(&parsed(&b)), [20, 21, 22, 23, 24, 25, 26]);
        assert!(!parsed(&b).is_special_inode(InodeNr(0)));
    }

    #[test]
    fn recovery_and_external_journal() {
        let mut b = sample();
        let sb = parsed(&b);
        assert!(!sb.needs_recovery() && !sb.has_external_journal());
        put32(&mut b, 0x60, incompat::RECOVER);
        b[0xD0] = 0x42; // s_journal_uuid, without COMPAT_HAS_JOURNAL
        let sb = parsed(&b);
        assert!(sb.needs_recovery() && !sb.has_external_journal());
        assert_eq!(sb.s_journal_uuid[0], 0x42);
        put32(&mut b, 0x5C, compat::HAS_JOURNAL);
        assert!(parsed(&b).has_external_journal());
        b[0xD0] = 0;
        put32(&mut b, 0xE4, 0x0801); // s_journal_dev alone: the UUID decides
        let sb = parsed(&b);
        assert_eq!(sb.s_journal_dev, 0x0801);
        assert!(!sb.has_external_journal());
    }
}
