//! Text forms shared by the reports: UUIDs, dates and sizes, in the messages and in the JSON
//! documents (where a date is [`Date`]: RFC 3339 in UTC with nanoseconds, beside the epoch
//! seconds and nanoseconds).

use jiff::fmt::temporal::DateTimePrinter;
use jiff::Timestamp;

/// A UUID in its usual text form (`12345678-9abc-def0-0102-030405060708`).
pub fn uuid(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// The instant `secs` seconds and `nsecs` nanoseconds after the epoch (negative: before
/// 1970), if jiff can represent it (years -9999 to 9999).
fn timestamp(secs: i64, nsecs: u32) -> Option<Timestamp> {
    let n = i32::try_from(nsecs).ok().filter(|&n| n < 1_000_000_000)?;
    Timestamp::new(secs, n).ok()
}

/// `YYYY-MM-DD hh:mm:ss` (UTC) for seconds since the epoch (negative: before 1970), for the
/// text reports; `@SECONDS` for an instant outside years -9999 to 9999.
pub fn format_date(secs: i64) -> String {
    match timestamp(secs, 0) {
        Some(t) => t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        None => format!("@{secs}"),
    }
}

/// RFC 3339 in UTC with nanoseconds (`2026-12-07T23:20:41.123456789Z`), the form of every
/// date in the JSON documents; `@SECONDS.NANOSECONDS` outside years -9999 to 9999.
pub fn rfc3339(secs: i64, nsecs: u32) -> String {
    match timestamp(secs, nsecs) {
        Some(t) => DateTimePrinter::new()
            .precision(Some(9))
            .timestamp_to_string(&t),
        None => format!("@{secs}.{nsecs:09}"),
    }
}

/// A date in a JSON document: `date` (RFC 3339, UTC, nanoseconds), `date_sec` and
/// `date_nsec` since the epoch. Flattened into the object it dates.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Date {
    /// RFC 3339 in UTC with nanoseconds.
    pub date: String,
    /// Seconds since the epoch.
    pub date_sec: i64,
    /// Nanoseconds within the second.
    pub date_nsec: u32,
}

impl Date {
    /// The date `secs` seconds and `nsecs` nanoseconds after the epoch.
    pub fn new(secs: i64, nsecs: u32) -> Date {
        Date {
            date: rfc3339(secs, nsecs),
            date_sec: secs,
            date_nsec: nsecs,
        }
    }
}

/// A size with binary units and the exact count: `4.6 MiB (4823449 bytes)`; below 1 KiB
/// only `512 bytes`. Every message, note and text report that gives a size uses it (or
/// [`size_short`]).
pub fn size(bytes: u64) -> String {
    if bytes < 1024 {
        return size_short(bytes);
    }
    format!("{} ({bytes} bytes)", size_short(bytes))
}

/// A size with binary units only: `4.6 MiB`, `64 KiB`, `512 bytes` (one decimal, dropped
/// when it is 0).
pub fn size_short(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return if bytes == 1 {
            "1 byte".into()
        } else {
            format!("{bytes} bytes")
        };
    }
    let mut k = 0;
    while k + 1 < UNITS.len() && bytes >= 1u64 << (10 * (k + 2)) {
        k += 1;
    }
    let tenths = |k: usize| {
        let d = 1u128 << (10 * (k + 1));
        (u128::from(bytes) * 10 + d / 2) / d
    };
    let mut t = tenths(k);
    if t >= 10240 && k + 1 < UNITS.len() {
        k += 1;
        t = tenths(k);
    }
    if t % 10 == 0 {
        format!("{} {}", t / 10, UNITS[k])
    } else {
        format!("{}.{} {}", t / 10, t % 10, UNITS[k])
    }
}

/// Now: the date (seconds and nanoseconds since the epoch) and its name as a state name
/// (`2026-11-29T20:18:39Z`, RFC 3339 in UTC to the second). Tests may set the clock:
/// [`test_clock`].
pub fn now_and_name() -> ((u32, u32), String) {
    let since = test_clock().unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    });
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let name = match timestamp(secs, 0) {
        Some(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => format!("@{secs}"),
    };
    (
        (
            u32::try_from(since.as_secs()).unwrap_or(u32::MAX),
            since.subsec_nanos(),
        ),
        name,
    )
}

/// With the `fault-injection` feature (tests): `E2IMAGE_RS_TEST_NOW=SECONDS[.NANOSECONDS]`
/// (nine digits after the point) sets the clock.
fn test_clock() -> Option<std::time::Duration> {
    if !cfg!(feature = "fault-injection") {
        return None;
    }
    let v = std::env::var("E2IMAGE_RS_TEST_NOW").ok()?;
    let (secs, nanos) = v.split_once('.').unwrap_or((&v, "0"));
    let nanos: u32 = nanos.parse().ok().filter(|&n| n < 1_000_000_000)?;
    Some(std::time::Duration::new(secs.parse().ok()?, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text() {
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        assert_eq!(uuid(&u), "12345678-9abc-def0-0102-030405060708");
    }

    #[test]
    fn dates() {
        assert_eq!(format_date(0), "1970-01-01 00:00:00");
        assert_eq!(format_date(1_704_067_200), "2024-01-01 00:00:00");
        assert_eq!(format_date(951_782_400 + 3661), "2000-02-29 01:01:01");
        assert_eq!(format_date(-1), "1969-12-31 23:59:59");
        assert_eq!(format_date((3 << 32) - 1), "2378-04-22 19:24:47");
        assert_eq!(format_date(i64::MAX), format!("@{}", i64::MAX));
    }

    #[test]
    fn rfc3339_dates_have_nanoseconds() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_796_685_641, 123_456_789),
            "2026-12-07T23:20:41.123456789Z"
        );
        assert_eq!(rfc3339(-1, 5), "1969-12-31T23:59:59.000000005Z");
        assert_eq!(rfc3339(0, 2_000_000_000), "@0.2000000000");
        let d = serde_json::to_value(Date::new(86_400, 1)).unwrap();
        assert_eq!(d["date"], "1970-01-02T00:00:00.000000001Z");
        assert_eq!(
            (d["date_sec"].as_i64(), d["date_nsec"].as_u64()),
            (Some(86_400), Some(1))
        );
    }

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(size(0), "0 bytes");
        assert_eq!(size(1), "1 byte");
        assert_eq!(size(1023), "1023 bytes");
        assert_eq!(size(1024), "1 KiB (1024 bytes)");
        assert_eq!(size(4_823_449), "4.6 MiB (4823449 bytes)");
        assert_eq!(size_short(65_536), "64 KiB");
        assert_eq!(size_short(1536), "1.5 KiB");
        assert_eq!(size_short((1 << 20) - 1), "1 MiB");
        assert_eq!(size_short((1 << 30) * 3 / 2), "1.5 GiB");
        assert_eq!(size_short(u64::MAX), "16 EiB");
    }
}
