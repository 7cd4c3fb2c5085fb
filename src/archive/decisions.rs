//! Which states of an archive a retention policy keeps: the archive's states put in order
//! ([`crate::retention::StateOrder`]: date with nanoseconds, then id, then table position),
//! the policy applied, and the state the active layer shows always kept.

use crate::retention::{self, Policy, Reasons, StateOrder};
use qcow::{Editor, SnapshotInfo};

/// A state being appended: its name, date (seconds, nanoseconds) and id.
#[derive(Clone, Debug)]
pub struct NewState {
    /// Its name.
    pub name: String,
    /// Seconds and nanoseconds since the epoch.
    pub date: (u32, u32),
    /// Its snapshot id.
    pub id: u64,
}

/// What retention decides for one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Index in the snapshot table (`None`: the state being appended).
    pub snapshot: Option<usize>,
    /// Its name.
    pub name: String,
    /// Its snapshot id.
    pub id: String,
    /// Its date: seconds and nanoseconds since the epoch.
    pub date: (u32, u32),
    /// Where it stands in the archive's order (newest: greatest).
    pub order: StateOrder,
    /// Why it is kept (`None`: it goes).
    pub kept: Option<Kept>,
}

/// Why a state is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Rules of the policy keep it.
    Rules(Reasons),
    /// No rule does, but the active layer shows it.
    ActiveLayer,
}

impl Kept {
    /// The reasons as words: `["last", "daily"]`, `["oldest yearly"]`, `["active"]` (the
    /// active layer shows it).
    pub fn words(&self) -> Vec<String> {
        match self {
            Kept::Rules(r) => r.words(),
            Kept::ActiveLayer => vec!["active".into()],
        }
    }
}

/// Where each snapshot stands in the archive's order.
pub(super) fn orders(snaps: &[SnapshotInfo]) -> Vec<StateOrder> {
    snaps
        .iter()
        .enumerate()
        .map(|(i, s)| StateOrder {
            sec: i64::from(s.date_sec),
            nsec: s.date_nsec,
            id: s.id.parse().ok(),
            position: i,
        })
        .collect()
}

/// Applies `policy` to the archive's states plus, when appending, the `new` one (which comes
/// after every entry of the table). Without a new state, the snapshot the active layer
/// shows (`active`) is always kept.
pub fn decide(
    editor: &Editor,
    policy: &Policy,
    new: Option<&NewState>,
    active: Option<usize>,
) -> Vec<Decision> {
    let snaps = editor.snapshots();
    let mut states: Vec<Decision> = snaps
        .iter()
        .zip(orders(snaps))
        .enumerate()
        .map(|(i, (s, order))| Decision {
            snapshot: Some(i),
            name: s.name.clone(),
            id: s.id.clone(),
            date: (s.date_sec, s.date_nsec),
            order,
            kept: None,
        })
        .collect();
    if let Some(n) = new {
        states.push(Decision {
            snapshot: None,
            name: n.name.clone(),
            id: n.id.to_string(),
            date: n.date,
            order: StateOrder {
                sec: i64::from(n.date.0),
                nsec: n.date.1,
                id: Some(n.id),
                position: snaps.len(),
            },
            kept: None,
        });
    }
    let order: Vec<StateOrder> = states.iter().map(|d| d.order).collect();
    let reasons = retention::apply(policy, &order);
    for (d, r) in states.iter_mut().zip(reasons) {
        d.kept = r.map(Kept::Rules);
        let shows_active = new.is_none() && d.snapshot.is_some() && d.snapshot == active;
        if d.kept.is_none() && shows_active {
            d.kept = Some(Kept::ActiveLayer);
        }
    }
    states
}

/// One state of the JSON lists of retention decisions (prune's `states`, an append's
/// `pruned`).
#[derive(Debug, serde::Serialize)]
pub struct DecisionDoc {
    /// The state's name.
    pub name: String,
    /// Its snapshot id.
    pub id: String,
    /// Its date (`date`, `date_sec`, `date_nsec`).
    #[serde(flatten)]
    pub date: crate::text::Date,
    /// Whether it stays.
    pub kept: bool,
    /// Why it stays ([`Kept::words`]); empty when it goes.
    pub reasons: Vec<String>,
}

impl From<&Decision> for DecisionDoc {
    fn from(d: &Decision) -> DecisionDoc {
        DecisionDoc {
            name: d.name.clone(),
            id: d.id.clone(),
            date: crate::text::Date::new(i64::from(d.date.0), d.date.1),
            kept: d.kept.is_some(),
            reasons: d.kept.as_ref().map(Kept::words).unwrap_or_default(),
        }
    }
}
