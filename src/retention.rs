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

    /// The calendar period of `secs` (seconds since the epoch, UTC) for this rule; `Last` puts
    /// every state in its own period.
    fn period(self, secs: i64, index: usize) -> i64 {
        let days = secs.div_euclid(86_400);
        let (y, m, _) = civil_from_days(days);
        match self {
            Rule::Last => index as i64,
            Rule::Hourly => secs.div_euclid(3600),
            Rule::Daily => days,
            Rule::Weekly => iso_week(days),
            Rule::Monthly => y * 12 + i64::from(m),
            Rule::Yearly => y,
        }
    }
}

/// Why a state is kept: each rule that keeps it (`oldest` when it is kept as the oldest state
/// for a rule that found too few periods).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reasons(pub Vec<(Rule, bool)>);

impl Reasons {
    /// "daily, weekly", "oldest yearly".
    pub fn text(&self) -> String {
        let words: Vec<String> = self
            .0
            .iter()
            .map(|(r, oldest)| {
                if *oldest {
                    format!("oldest {}", r.name())
                } else {
                    r.name().to_string()
                }
            })
            .collect();
        words.join(", ")
    }
}

/// Applies `policy` to states dated `dates` (seconds since the epoch, any order). Returns, per
/// state, `Some(reasons)` if it is kept, `None` if it goes.
pub fn apply(policy: &Policy, dates: &[i64]) -> Vec<Option<Reasons>> {
    let mut order: Vec<usize> = (0..dates.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((dates[i], i)));
    let mut kept: Vec<Option<Reasons>> = vec![None; dates.len()];
    for (rule, count) in policy.rules() {
        let Some(mut left) = count.filter(|&n| n > 0) else {
            continue;
        };
        let mut last_period = None;
        for (k, &i) in order.iter().enumerate() {
            if left == 0 {
                break;
            }
            let p = rule.period(dates[i], k);
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

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A number identifying the ISO week (Monday to Sunday) holding day `days` since 1970-01-01
/// (a Thursday): the day count of that week's Monday.
fn iso_week(days: i64) -> i64 {
    let weekday_from_monday = (days + 3).rem_euclid(7);
    days - weekday_from_monday
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    /// 2019-09-01 11:00:00 UTC, a Sunday.
    const SUNDAY: i64 = 1_567_335_600;

    fn kept(policy: Policy, dates: &[i64]) -> Vec<usize> {
        apply(&policy, dates)
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_some())
            .map(|(i, _)| i)
            .collect()
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
        let r = apply(&p, &dates);
        assert_eq!(r[29].as_ref().unwrap().text(), "last, daily");
        assert_eq!(r[26].as_ref().unwrap().text(), "daily");
    }

    #[test]
    fn weeks_run_monday_to_sunday() {
        // Sunday 2019-09-01 and Monday 2019-09-02 are in different ISO weeks;
        // Monday 09-02 and Sunday 09-08 share one.
        assert_ne!(iso_week(SUNDAY / DAY), iso_week(SUNDAY / DAY + 1));
        assert_eq!(iso_week(SUNDAY / DAY + 1), iso_week(SUNDAY / DAY + 7));
        let dates = [SUNDAY, SUNDAY + DAY, SUNDAY + 7 * DAY];
        let p = Policy {
            weekly: Some(5),
            ..Policy::default()
        };
        // Two weeks with states: 0 alone, then {1, 2} whose newest is 2; too few weeks, so the
        // oldest (0) is kept too, as "oldest weekly" — it is already the newest of its week.
        assert_eq!(kept(p, &dates), vec![0, 2]);
        assert_eq!(apply(&p, &dates)[0].as_ref().unwrap().text(), "weekly");
    }

    #[test]
    fn too_few_periods_keep_the_oldest() {
        let dates = [SUNDAY, SUNDAY + 60, SUNDAY + 120];
        let p = Policy {
            yearly: Some(3),
            ..Policy::default()
        };
        let r = apply(&p, &dates);
        assert_eq!(r[2].as_ref().unwrap().text(), "yearly");
        assert_eq!(r[0].as_ref().unwrap().text(), "oldest yearly");
        assert!(r[1].is_none());
    }

    #[test]
    fn months_and_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(18_140), (2019, 9, 1));
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
}
