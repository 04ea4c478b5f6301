//! Timestamps: ISO-8601 detection and Segment's clock-skew correction.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};

/// Microseconds since the Unix epoch, UTC: the unit of every TIMESTAMP column.
pub type Micros = i64;

/// Parses an ISO-8601 / RFC 3339 date-time (`2026-11-01T12:00:00.123Z`, an offset, a space instead of `T`,
/// or no offset at all, which is read as UTC). A date alone is not a timestamp: it stays a string.
pub fn parse_timestamp(s: &str) -> Option<Micros> {
    let b = s.as_bytes();
    // Cheap shape check first: this runs on every string value of every event.
    if b.len() < 19
        || b.len() > 40
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || !b[..4].iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()?;
    Some(Utc.from_utc_datetime(&naive).timestamp_micros())
}

/// The event time Segment stores as `timestamp`: the caller's time shifted by the device clock's error,
/// `received_at - (sent_at - original_timestamp)`. Without `sentAt` the caller's time is taken as is; without
/// any caller time it is the arrival time.
pub fn corrected_timestamp(received_at: Micros, sent_at: Option<Micros>, original: Option<Micros>) -> Micros {
    match (sent_at, original) {
        (Some(sent), Some(orig)) => received_at.saturating_sub(sent.saturating_sub(orig)),
        (None, Some(orig)) => orig,
        _ => received_at,
    }
}

/// Formats microseconds as RFC 3339 UTC with millisecond or finer precision.
pub fn format_micros(t: Micros) -> String {
    match Utc.timestamp_micros(t).single() {
        Some(dt) => dt.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => t.to_string(),
    }
}

/// Now, in microseconds since the epoch.
pub fn now_micros() -> Micros {
    Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Micros {
        parse_timestamp(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn parses_common_iso_shapes() {
        let base = 1_793_534_400_000_000; // 2026-11-01T12:00:00Z
        assert_eq!(ts("2026-11-01T12:00:00Z"), base);
        assert_eq!(ts("2026-11-01T12:00:00.123Z"), base + 123_000);
        assert_eq!(ts("2026-11-01T12:00:00.123456Z"), base + 123_456);
        assert_eq!(ts("2026-11-01T14:00:00+02:00"), base);
        assert_eq!(ts("2026-11-01 12:00:00Z"), base);
        assert_eq!(ts("2026-11-01T12:00:00"), base);
        assert_eq!(ts("2026-11-01 12:00:00.5"), base + 500_000);
    }

    #[test]
    fn rejects_what_is_not_a_date_time() {
        for s in [
            "2026-11-01",
            "hello world, this is text",
            "2026-13-01T12:00:00Z",
            "2026-11-01T25:00:00Z",
            "1793534400",
            "",
            "2026-11-01T12:00:00Zjunk",
            "２０２６-11-01T12:00:00Z",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
    }

    #[test]
    fn skew_correction_follows_segment() {
        // Device clock 10 minutes fast: it stamped the event at 12:10 and sent it at 12:11; we got it at 12:01.
        let received = ts("2026-11-01T12:01:00Z");
        let sent = ts("2026-11-01T12:11:00Z");
        let original = ts("2026-11-01T12:10:00Z");
        assert_eq!(corrected_timestamp(received, Some(sent), Some(original)), ts("2026-11-01T12:00:00Z"));
        assert_eq!(corrected_timestamp(received, None, Some(original)), original);
        assert_eq!(corrected_timestamp(received, Some(sent), None), received);
        assert_eq!(corrected_timestamp(received, None, None), received);
    }

    #[test]
    fn format_round_trips() {
        let t = ts("2026-11-01T12:00:00.123Z");
        assert_eq!(parse_timestamp(&format_micros(t)), Some(t));
    }
}
