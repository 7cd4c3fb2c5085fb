//! Text forms shared by the reports: UUIDs and dates.

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

/// RFC 3339 in UTC with nanoseconds: `2026-12-07T23:20:41.123456789Z`.
pub fn rfc3339(secs: u32, nsec: u32) -> String {
    match jiff::Timestamp::new(i64::from(secs), nsec.min(999_999_999) as i32) {
        Ok(t) => format!("{t:.9}"),
        Err(_) => format!("{secs}"),
    }
}

/// A size in bytes with binary units: `512 bytes`, `4.6 MiB`, `1.0 TiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `YYYY-MM-DD hh:mm:ss` (UTC) for seconds since the epoch (negative: before 1970).
pub fn format_date(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Now: the date (seconds and nanoseconds since the epoch) and its name as a state name
/// (`2026-11-29T20:18:39Z`, RFC 3339 in UTC). Tests may set the clock: [`test_clock`].
pub fn now_and_name() -> ((u32, u32), String) {
    let since = test_clock().unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    });
    let secs = since.as_secs();
    let text = format_date(i64::try_from(secs).unwrap_or(i64::MAX));
    (
        (
            u32::try_from(secs).unwrap_or(u32::MAX),
            since.subsec_nanos(),
        ),
        format!("{}Z", text.replace(' ', "T")),
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
    fn rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_796_685_641, 123_456_789),
            "2026-12-07T23:20:41.123456789Z"
        );
    }

    #[test]
    fn sizes_have_units() {
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(4_823_449), "4.6 MiB");
        assert_eq!(size(1 << 40), "1.0 TiB");
    }

    #[test]
    fn dates() {
        assert_eq!(format_date(0), "1970-01-01 00:00:00");
        assert_eq!(format_date(1_704_067_200), "2024-01-01 00:00:00");
        assert_eq!(format_date(951_782_400 + 3661), "2000-02-29 01:01:01");
        assert_eq!(format_date(-1), "1969-12-31 23:59:59");
        assert_eq!(format_date((3 << 32) - 1), "2378-04-22 19:24:47");
    }
}
