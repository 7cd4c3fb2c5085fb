//! Retention policy: which states of an archive to keep, with restic's meaning of each rule.
//!
//! States are considered newest first. `--keep-last n` keeps the n newest. Each calendar rule
//! (`--keep-hourly`, `-daily`, `-weekly`, `-monthly`, `-yearly` n) keeps, for the n most recent
//! hours (days, ISO weeks Monday to Sunday, months, years) that hold at least one state, the
//! newest state of each. A state is kept when any rule keeps it; the reasons are reported. When
//! a calendar rule finds fewer periods than it may keep, the oldest state is kept as well
//! ("oldest daily", as restic 0.17 does), so a young archive never loses its first state.
//! Periods are in UTC. A policy that keeps nothing (all counts 0) is refused by the caller.

/// How many states each rule keeps; `None` = the rule is off, `Some(u32::MAX)` = unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `--keep-last`.
    pub last: Option<u32>,
    /// `--keep-hourly`.
    pub hourly: Option<u32>,
    /// `--keep-daily`.
    pub daily: Option<u32>,
    /// `--keep-weekly`.
    pub weekly: Option<u32>,
    /// `--keep-monthly`.
    pub monthly: Option<u32>,
    /// `--keep-yearly`.
    pub yearly: Option<u32>,
}

impl Policy {
    /// True if no rule keeps anything (every count absent or 0).
    pub fn is_empty(&self) -> bool {
        self.rules().iter().all(|(_, n)| n.is_none_or(|n| n == 0))
    }

    fn rules(&self) -> [(Rule, Option<u32>); 6] {
        [
            (Rule::Last, self.last),
            (Rule::Hourly, self.hourly),
            (Rule::Daily, self.daily),
            (Rule::Weekly, self.weekly),
            (Rule::Monthly, self.monthly),
            (Rule::Yearly, self.yearly),
        ]
    }
}

/// A retention rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `--keep-last`.
    Last,
    /// `--keep-hourly`.
    Hourly,
    /// `--keep-daily`.
    Daily,
    /// `--keep-weekly`.
    Weekly,
    /// `--keep-monthly`.
    Monthly,
    /// `--keep-yearly`.
    Yearly,
}

impl Rule {
    /// The word used in reports ("daily snapshot" in restic's words).
    pub fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    /// The calendar period (in UTC) of a state dated `secs` seconds since the epoch, at rank
    /// `rank` in the newest-first order; `Last` puts every state in its own period.
    fn period(self, secs: i64, rank: usize) -> i64 {
        let date = civil_date(secs);
        match self {
            Rule::Last => rank as i64,
            Rule::Hourly => secs.div_euclid(3600),
            Rule::Daily => secs.div_euclid(86_400),
            Rule::Weekly => {
                let w = date.iso_week_date();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Rule::Monthly => i64::from(date.year()) * 12 + i64::from(date.month()),
            Rule::Yearly => i64::from(date.year()),
        }
    }
}

/// The UTC calendar date of `secs` seconds since the epoch (clamped to jiff's range, years
/// -9999..=9999, far beyond the 32-bit dates QCOW2 stores).
fn civil_date(secs: i64) -> jiff::civil::Date {
    let ts = jiff::Timestamp::from_second(secs).unwrap_or(if secs < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    jiff::tz::Offset::UTC.to_datetime(ts).date()
}

/// Where a state stands in an archive's history; a newer state has a greater key. States are
/// ordered by their date (seconds, then nanoseconds), then by their numeric snapshot id
/// (QEMU's ids grow, so of two states of the same instant the later one has the greater id),
/// then by their position in the snapshot table (a state being appended comes after every
/// entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StateOrder {
    /// Seconds since the epoch (UTC).
    pub sec: i64,
    /// Nanoseconds within that second.
    pub nsec: u32,
    /// The snapshot id as a number (`None`, sorting first, for an id that is not one).
    pub id: Option<u64>,
    /// Position in the snapshot table.
    pub position: usize,
}

/// Why a state is kept: each rule that keeps it (`oldest` when it is kept as the oldest state
/// for a rule that found too few periods).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reasons(pub Vec<(Rule, bool)>);

impl Reasons {
    /// One word per rule that keeps the state: `["daily", "weekly"]`, `["oldest yearly"]`.
    pub fn words(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(r, oldest)| match oldest {
                true => format!("oldest {}", r.name()),
                false => r.name().to_string(),
            })
            .collect()
    }
}

/// Applies `policy` to `states` (any order). Returns, per state, `Some(reasons)` if it is
/// kept, `None` if it goes.
pub fn apply(policy: &Policy, states: &[StateOrder]) -> Vec<Option<Reasons>> {
    let mut order: Vec<usize> = (0..states.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(states[i]));
    let mut kept: Vec<Option<Reasons>> = vec![None; states.len()];
    for (rule, count) in policy.rules() {
        let Some(mut left) = count.filter(|&n| n > 0) else {
            continue;
        };
        let mut last_period = None;
        for (rank, &i) in order.iter().enumerate() {
            if left == 0 {
                break;
            }
            let p = rule.period(states[i].sec, rank);
            if last_period == Some(p) {
                continue;
            }
            last_period = Some(p);
            kept[i]
                .get_or_insert_with(Reasons::default)
                .0
                .push((rule, false));
            left -= 1;
        }
        if left > 0 && rule != Rule::Last {
            if let Some(&oldest) = order.last() {
                let r = kept[oldest].get_or_insert_with(Reasons::default);
                if !r.0.iter().any(|(x, _)| *x == rule) {
                    r.0.push((rule, true));
                }
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    /// 2019-09-01 11:00:00 UTC, a Sunday.
    const SUNDAY: i64 = 1_567_335_600;

    /// States dated `dates` (whole seconds), ids 1.. in table order.
    fn states(dates: &[i64]) -> Vec<StateOrder> {
        dates
            .iter()
            .enumerate()
            .map(|(i, &sec)| StateOrder {
                sec,
                nsec: 0,
                id: Some(i as u64 + 1),
                position: i,
            })
            .collect()
    }

    fn kept_of(policy: Policy, s: &[StateOrder]) -> Vec<usize> {
        apply(&policy, s)
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_some())
            .map(|(i, _)| i)
            .collect()
    }

    fn kept(policy: Policy, dates: &[i64]) -> Vec<usize> {
        kept_of(policy, &states(dates))
    }

    fn last(n: u32) -> Policy {
        Policy {
            last: Some(n),
            ..Policy::default()
        }
    }

    #[test]
    fn restic_weekly_sundays_example() {
        // One state every Sunday for 12 weeks; --keep-daily 4 keeps the last four.
        let dates: Vec<i64> = (0..12).map(|w| SUNDAY + w * 7 * DAY).collect();
        let p = Policy {
            daily: Some(4),
            ..Policy::default()
        };
        assert_eq!(kept(p, &dates), vec![8, 9, 10, 11]);
    }

    #[test]
    fn newest_of_each_period_and_last() {
        // Three states a day for 10 days.
        let dates: Vec<i64> = (0..30)
            .map(|i| SUNDAY + (i / 3) * DAY + (i % 3) * 3600)
            .collect();
        let p = Policy {
            last: Some(2),
            daily: Some(3),
            ..Policy::default()
        };
        // last: 29, 28; daily: newest of days 9, 8, 7 = 29, 26, 23.
        assert_eq!(kept(p, &dates), vec![23, 26, 28, 29]);
        let r = apply(&p, &states(&dates));
        assert_eq!(r[29].as_ref().unwrap().words().join(", "), "last, daily");
        assert_eq!(r[26].as_ref().unwrap().words().join(", "), "daily");
    }

    #[test]
    fn weeks_run_monday_to_sunday() {
        // Sunday 2019-09-01 and Monday 2019-09-02 are in different ISO weeks;
        // Monday 09-02 and Sunday 09-08 share one.
        let week = |s: i64| Rule::Weekly.period(s, 0);
        assert_ne!(week(SUNDAY), week(SUNDAY + DAY));
        assert_eq!(week(SUNDAY + DAY), week(SUNDAY + 7 * DAY));
        // ISO week 1 of 2021 starts on Monday 2021-01-04; Sunday 2021-01-03 is in week 53 of
        // 2020, and so is Thursday 2020-12-31.
        let jan3_2021 = 1_609_632_000;
        assert_eq!(week(jan3_2021), 202_053);
        assert_eq!(week(jan3_2021 - 3 * DAY), 202_053);
        assert_eq!(week(jan3_2021 + DAY), 202_101);
        let dates = [SUNDAY, SUNDAY + DAY, SUNDAY + 7 * DAY];
        let p = Policy {
            weekly: Some(5),
            ..Policy::default()
        };
        // Two weeks with states: 0 alone, then {1, 2} whose newest is 2; too few weeks, so the
        // oldest (0) is kept too, as "oldest weekly" — it is already the newest of its week.
        assert_eq!(kept(p, &dates), vec![0, 2]);
        assert_eq!(
            apply(&p, &states(&dates))[0]
                .as_ref()
                .unwrap()
                .words()
                .join(", "),
            "weekly"
        );
    }

    #[test]
    fn too_few_periods_keep_the_oldest() {
        let dates = [SUNDAY, SUNDAY + 60, SUNDAY + 120];
        let p = Policy {
            yearly: Some(3),
            ..Policy::default()
        };
        let r = apply(&p, &states(&dates));
        assert_eq!(r[2].as_ref().unwrap().words().join(", "), "yearly");
        assert_eq!(r[0].as_ref().unwrap().words().join(", "), "oldest yearly");
        assert!(r[1].is_none());
    }

    #[test]
    fn months_and_years() {
        assert_eq!(civil_date(0).to_string(), "1970-01-01");
        assert_eq!(civil_date(SUNDAY).to_string(), "2019-09-01");
        assert_eq!(civil_date(-1).to_string(), "1969-12-31");
        let jan31 = 1_580_428_800; // 2020-01-31 00:00
        let dates = [jan31, jan31 + DAY, jan31 + 2 * DAY];
        let p = Policy {
            monthly: Some(1),
            ..Policy::default()
        };
        assert_eq!(kept(p, &dates), vec![2]); // the newest of February
        assert!(Policy::default().is_empty());
        assert!(!p.is_empty());
    }

    #[test]
    fn states_of_one_second_rank_by_nanoseconds_then_id_then_position() {
        // Six states within one second, listed in a shuffled table order.
        let nsec = [500, 100, 600, 200, 400, 300];
        let s: Vec<StateOrder> = nsec
            .iter()
            .enumerate()
            .map(|(i, &n)| StateOrder {
                sec: SUNDAY,
                nsec: n,
                id: Some(i as u64 + 1),
                position: i,
            })
            .collect();
        assert_eq!(kept_of(last(2), &s), vec![0, 2]);
        assert_eq!(kept_of(last(1), &s), vec![2]);
        // The same instant: the greater id is newer, whatever the table order.
        let tie: Vec<StateOrder> = [3u64, 1, 2]
            .iter()
            .enumerate()
            .map(|(i, &id)| StateOrder {
                sec: SUNDAY,
                nsec: 7,
                id: Some(id),
                position: i,
            })
            .collect();
        assert_eq!(kept_of(last(1), &tie), vec![0]);
        assert_eq!(kept_of(last(2), &tie), vec![0, 2]);
        // Ids that are not numbers: the later table position is newer.
        let named: Vec<StateOrder> = (0..3)
            .map(|i| StateOrder {
                sec: SUNDAY,
                nsec: 7,
                id: None,
                position: i,
            })
            .collect();
        assert_eq!(kept_of(last(1), &named), vec![2]);
    }

    #[test]
    fn calendar_rules_pick_the_newest_of_a_shared_hour_and_day() {
        // restic: for each of the last N hours (days) holding states, the most recent state
        // of that hour (day). Two hours of one day, three states each, one second apart, the
        // newest of each hour by nanoseconds inside a shared second.
        let mut s = Vec::new();
        for (k, (off, nsec)) in [(0, 0), (1, 9), (1, 3), (3600, 0), (3601, 5), (3601, 2)]
            .into_iter()
            .enumerate()
        {
            s.push(StateOrder {
                sec: SUNDAY + off,
                nsec,
                id: Some(k as u64 + 1),
                position: k,
            });
        }
        let hourly = Policy {
            hourly: Some(2),
            ..Policy::default()
        };
        assert_eq!(kept_of(hourly, &s), vec![1, 4]);
        let daily = Policy {
            daily: Some(1),
            ..Policy::default()
        };
        assert_eq!(kept_of(daily, &s), vec![4]);
        // One day only while three are asked for: the oldest state is kept as well.
        let daily3 = Policy {
            daily: Some(3),
            ..Policy::default()
        };
        assert_eq!(kept_of(daily3, &s), vec![0, 4]);
        assert_eq!(
            apply(&daily3, &s)[0].as_ref().unwrap().words().join(", "),
            "oldest daily"
        );
    }
}
