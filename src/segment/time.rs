//! Segment's clock-skew correction of event times.

use crate::layout::value::{Micros, TIMESTAMP_RANGE};

/// The event time Segment stores as `timestamp`: the caller's time shifted by the device clock's error,
/// `received_at - (sent_at - original_timestamp)`. Without `sentAt` the caller's time is taken as is; without
/// any caller time it is the arrival time.
/// A correction that would leave years 1 to 9999 (a device clock decades off) gives the caller's time instead.
pub fn corrected_timestamp(received_at: Micros, sent_at: Option<Micros>, original: Option<Micros>) -> Micros {
    match (sent_at, original) {
        (Some(sent), Some(orig)) => {
            let corrected = received_at.saturating_sub(sent.saturating_sub(orig));
            if TIMESTAMP_RANGE.contains(&corrected) { corrected } else { orig }
        }
        (None, Some(orig)) => orig,
        _ => received_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::value::parse_timestamp;

    fn ts(s: &str) -> Micros {
        parse_timestamp(s).unwrap_or_else(|| panic!("{s} should parse"))
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
        // A send time thousands of years ahead of the event time would correct it to before year 1.
        let far = ts("9999-01-01T00:00:00Z");
        let early = ts("0005-01-01T00:00:00Z");
        assert_eq!(corrected_timestamp(received, Some(far), Some(early)), early);
    }
}
