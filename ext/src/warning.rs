//! Warnings: the corrupt or unreadable parts a walk skipped, kept with a bound per kind.
//!
//! A hostile filesystem can have millions of corrupt parts (one per group of a forged group
//! count, one per inode of a garbage inode table). `WarningLog` keeps the first
//! [`KEPT_PER_KIND`] warnings of each kind, in the order they were found, and only counts the
//! rest, so memory and output stay bounded whatever the number of corrupt parts. The kind is
//! the label of the private corruption kind ([`Corrupt::kind_label`]), never derived from the
//! message text.

use crate::error::Corrupt;
use crate::types::{BlockNr, InodeNr};
use std::fmt;

/// Warnings kept per kind; further warnings of the same kind are only counted.
pub(crate) const KEPT_PER_KIND: usize = 16;

/// A corrupt or unreadable part that was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// Inode the part belongs to.
    pub inode: Option<InodeNr>,
    /// Block holding the part.
    pub block: Option<BlockNr>,
    /// Byte offset within the block (or the inode record).
    pub offset: Option<u32>,
    /// What is wrong.
    pub reason: String,
}

impl From<Corrupt> for Warning {
    fn from(c: Corrupt) -> Warning {
        Warning {
            inode: c.inode,
            block: c.block,
            offset: c.offset,
            reason: c.reason(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(i) = self.inode {
            parts.push(format!("inode {i}"));
        }
        if let Some(b) = self.block {
            parts.push(format!("block {b}"));
        }
        if let Some(o) = self.offset {
            parts.push(format!("offset {o}"));
        }
        if parts.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", parts.join(", "), self.reason)
        }
    }
}

/// Warnings bounded per kind: the first [`KEPT_PER_KIND`] of each kind, then a count.
#[derive(Clone, Debug, Default)]
pub(crate) struct WarningLog {
    /// Kept warnings with their kind, in the order found.
    kept: Vec<(&'static str, Warning)>,
    /// Per kind: (label, warnings kept, warnings omitted). A handful of kinds exist.
    kinds: Vec<(&'static str, usize, u64)>,
}

impl WarningLog {
    fn kind(&mut self, kind: &'static str) -> &mut (&'static str, usize, u64) {
        let i = match self.kinds.iter().position(|k| k.0 == kind) {
            Some(i) => i,
            None => {
                self.kinds.push((kind, 0, 0));
                self.kinds.len() - 1
            }
        };
        &mut self.kinds[i]
    }

    /// Records a warning of `kind`: kept while fewer than [`KEPT_PER_KIND`] of that kind are,
    /// counted otherwise.
    pub(crate) fn push(&mut self, kind: &'static str, w: Warning) {
        let k = self.kind(kind);
        if k.1 < KEPT_PER_KIND {
            k.1 += 1;
            self.kept.push((kind, w));
        } else {
            k.2 = k.2.saturating_add(1);
        }
    }

    /// Records a corruption under its kind.
    pub(crate) fn push_corrupt(&mut self, c: Corrupt) {
        self.push(c.kind_label(), c.into());
    }

    /// Appends `later`, as if its warnings had been pushed after ours, in its order.
    pub(crate) fn append(&mut self, later: WarningLog) {
        for (kind, w) in later.kept {
            self.push(kind, w);
        }
        for (kind, _, omitted) in later.kinds {
            let k = self.kind(kind);
            k.2 = k.2.saturating_add(omitted);
        }
    }

    /// The kept warnings, and per kind with omitted warnings its label and their number.
    pub(crate) fn into_parts(self) -> (Vec<Warning>, Vec<(String, u64)>) {
        let omitted = self
            .kinds
            .iter()
            .filter(|k| k.2 > 0)
            .map(|k| (k.0.to_string(), k.2))
            .collect();
        (self.kept.into_iter().map(|(_, w)| w).collect(), omitted)
    }

    /// The kept warnings followed by one summary warning per kind with omitted warnings (for
    /// the functions that return a plain list).
    pub(crate) fn into_flat(self) -> Vec<Warning> {
        let (mut kept, omitted) = self.into_parts();
        kept.extend(omitted.into_iter().map(|(kind, n)| Warning {
            inode: None,
            block: None,
            offset: None,
            reason: format!("… and {n} more warnings of kind \"{kind}\" (not listed)"),
        }));
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: u32) -> Warning {
        Warning {
            inode: Some(InodeNr(i)),
            block: None,
            offset: None,
            reason: format!("w{i}"),
        }
    }

    #[test]
    fn keeps_the_first_of_each_kind_and_counts_the_rest() {
        let mut log = WarningLog::default();
        for i in 0..100 {
            log.push(if i % 10 == 0 { "rare" } else { "common" }, w(i));
        }
        let (kept, omitted) = log.into_parts();
        assert_eq!(kept.len(), KEPT_PER_KIND + 10);
        assert_eq!(kept[0], w(0));
        assert_eq!(
            omitted,
            vec![("common".to_string(), 90 - KEPT_PER_KIND as u64)]
        );
    }

    #[test]
    fn append_is_the_same_as_pushing_in_order() {
        let (mut a, mut b, mut all) = (
            WarningLog::default(),
            WarningLog::default(),
            WarningLog::default(),
        );
        for i in 0..60 {
            let kind = ["x", "y", "z"][i as usize % 3];
            let log: &mut WarningLog = if i < 25 { &mut a } else { &mut b };
            log.push(kind, w(i));
            all.push(kind, w(i));
        }
        a.append(b);
        assert_eq!(a.into_parts(), all.clone().into_parts());
        let flat = all.into_flat();
        assert_eq!(flat.len(), 3 * KEPT_PER_KIND + 3);
        assert!(flat[3 * KEPT_PER_KIND]
            .reason
            .contains("4 more warnings of kind \"x\""));
    }
}
