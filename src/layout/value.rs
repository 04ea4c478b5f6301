//! Column types and values: a JSON leaf becomes a typed scalar; a column's type is fixed by its first value and
//! later values are cast only when nothing is lost. Timestamps are UTC microseconds; a string is one when it reads
//! as an ISO-8601 date-time.

use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeZone, Utc};

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
    let t = match common_rfc3339(b) {
        Some(t) => t,
        None => any_rfc3339(s)?,
    };
    // Outside years 1 to 9999 a date-time is kept as the text it is (Databricks and most readers refuse it).
    TIMESTAMP_RANGE.contains(&t).then_some(t)
}

/// Any date-time [`parse_timestamp`] reads, by chrono.
fn any_rfc3339(s: &str) -> Option<Micros> {
    Some(match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&Utc).timestamp_micros(),
        Err(_) => {
            let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
                .ok()?;
            Utc.from_utc_datetime(&naive).timestamp_micros()
        }
    })
}

/// The shape nearly every event's times have, read without chrono, to the same instant: `YYYY-MM-DDTHH:MM:SS`, up
/// to nine digits of a second's fraction (cut to microseconds), then `Z` or `+HH:MM` / `-HH:MM`. Anything else,
/// a leap second or a field out of its range included, is `None` and left to chrono.
fn common_rfc3339(b: &[u8]) -> Option<Micros> {
    let num =
        |digits: &[u8]| digits.iter().try_fold(0i64, |n, c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')));
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    // chrono's calendar refuses a day, hour, minute or second out of its range; only its reading of text is slow.
    let digits = |at: std::ops::Range<usize>| num(&b[at]).and_then(|n| u32::try_from(n).ok());
    let date = NaiveDate::from_ymd_opt(i32::try_from(num(&b[..4])?).ok()?, digits(5..7)?, digits(8..10)?)?;
    let time = NaiveTime::from_hms_opt(digits(11..13)?, digits(14..16)?, digits(17..19)?)?;
    let mut rest = &b[19..];
    let mut micros = 0;
    if let [b'.', fraction @ ..] = rest {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        let value = num(&fraction[..digits])?;
        micros = if digits <= 6 { value * 10i64.pow(6 - digits as u32) } else { value / 10i64.pow(digits as u32 - 6) };
        rest = &fraction[digits..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h @ .., b':', m1, m2] if h.len() == 2 => {
            let (hours, minutes) = (num(h)?, num(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = (hours * 60 + minutes) * 60;
            if *sign == b'+' { seconds } else { -seconds }
        }
        _ => return None,
    };
    Some((date.and_time(time).and_utc().timestamp() - offset) * 1_000_000 + micros)
}

/// The instants a TIMESTAMP column holds: years 1 to 9999, UTC.
pub const TIMESTAMP_RANGE: std::ops::RangeInclusive<Micros> = -62_135_596_800_000_000..=253_402_300_799_999_999;

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

/// The five warehouse types Segment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Timestamp,
    BigInt,
    Double,
    Boolean,
    String,
}

impl ColumnType {
    /// The type as Databricks SQL spells it.
    pub fn sql_name(self) -> &'static str {
        match self {
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::BigInt => "BIGINT",
            ColumnType::Double => "DOUBLE",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::String => "STRING",
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// The text of a value: up to 23 bytes held in place (most values of an event: names, versions, addresses, short
/// ids), longer ones in one shared allocation, so that the tables of one event hold one copy.
pub type Text = smol_str::SmolStr;

/// One non-null value of a row, with the type it would give a new column. It takes 24 bytes, the size of a text held
/// in place: a row holds one for each of its columns.
#[derive(Debug, Clone)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    /// An integer outside the BIGINT range, kept as its decimal text.
    BigInt(Box<str>),
    /// A timestamp the pipeline made itself, or one sent as the very text [`format_micros`] gives for it (the form
    /// Segment's libraries send, `2026-11-01T12:00:00.123Z`), which need not be kept.
    Timestamp(Micros),
    /// A string that reads as an ISO-8601 date-time in another form (an offset, a space for `T`, another
    /// precision): the text is kept for STRING columns and discards.
    SentTimestamp(Box<(Micros, Text)>),
    Str(Text),
}

const _: () = assert!(std::mem::size_of::<Scalar>() == 24, "a row's values stay the size of a text held in place");

/// Values are equal when they are the same value with the same text; a timestamp without text has the text
/// [`format_micros`] gives it.
impl PartialEq for Scalar {
    fn eq(&self, other: &Scalar) -> bool {
        match (self, other) {
            (Scalar::Bool(a), Scalar::Bool(b)) => a == b,
            (Scalar::Int(a), Scalar::Int(b)) => a == b,
            (Scalar::Float(a), Scalar::Float(b)) => a == b,
            (Scalar::BigInt(a), Scalar::BigInt(b)) => a == b,
            (Scalar::Str(a), Scalar::Str(b)) => a == b,
            (Scalar::Timestamp(a), Scalar::Timestamp(b)) => a == b,
            (Scalar::SentTimestamp(a), Scalar::SentTimestamp(b)) => a == b,
            (Scalar::Timestamp(t), Scalar::SentTimestamp(sent))
            | (Scalar::SentTimestamp(sent), Scalar::Timestamp(t)) => sent.0 == *t && sent.1 == format_micros(*t),
            _ => false,
        }
    }
}

/// Whether `b`, a date-time that was read as an instant, is the very text [`format_micros`] gives for that instant:
/// `YYYY-MM-DDTHH:MM:SS`, then no fraction, three digits that are not all zero, or six whose last three are not,
/// then `Z`. A leap second (`:60`), which chrono reads as the second before, is not.
fn as_formatted(b: &[u8]) -> bool {
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let fraction_ok = match b.len() {
        20 => true,
        24 => b[19] == b'.' && digits(20..23) && &b[20..23] != b"000",
        27 => b[19] == b'.' && digits(20..26) && &b[23..26] != b"000",
        _ => false,
    };
    fraction_ok
        && b[b.len() - 1] == b'Z'
        && b[10] == b'T'
        && b[16] == b':'
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && digits(11..13)
        && digits(14..16)
        && digits(17..19)
        && b[17] < b'6'
}

/// Why a value could not go into its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CastError {
    pub from: ColumnType,
    pub to: ColumnType,
}

impl fmt::Display for CastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} value cannot be stored in a {} column without loss", self.from, self.to)
    }
}

/// Doubles hold every integer of at most 53 bits exactly.
const EXACT_DOUBLE_INT: i64 = 1 << 53;

impl Scalar {
    /// A string value: a timestamp when it reads as one, text otherwise.
    pub fn from_string(s: &str) -> Scalar {
        match parse_timestamp(s) {
            // `format_micros(t)` gives `s` back: its text need not be kept.
            Some(t) if as_formatted(s.as_bytes()) => Scalar::Timestamp(t),
            Some(t) => Scalar::SentTimestamp(Box::new((t, s.into()))),
            None => Scalar::Str(s.into()),
        }
    }

    /// The type a column created by this value gets.
    pub fn natural_type(&self) -> ColumnType {
        match self {
            Scalar::Bool(_) => ColumnType::Boolean,
            Scalar::Int(_) => ColumnType::BigInt,
            Scalar::Float(_) => ColumnType::Double,
            Scalar::BigInt(_) | Scalar::Str(_) => ColumnType::String,
            Scalar::Timestamp(_) | Scalar::SentTimestamp(_) => ColumnType::Timestamp,
        }
    }

    /// The text the value holds, when it holds its text (a string, a big integer, a timestamp as it was sent).
    pub fn held_text(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            Scalar::BigInt(s) => Some(s),
            Scalar::SentTimestamp(sent) => Some(&sent.1),
            Scalar::Bool(_) | Scalar::Int(_) | Scalar::Float(_) | Scalar::Timestamp(_) => None,
        }
    }

    /// The bytes the value holds outside itself.
    pub fn heap_bytes(&self) -> usize {
        let text = |s: &Text| if s.is_heap_allocated() { s.len() } else { 0 };
        match self {
            Scalar::Str(s) => text(s),
            Scalar::BigInt(s) => s.len(),
            Scalar::SentTimestamp(sent) => std::mem::size_of::<(Micros, Text)>() + text(&sent.1),
            Scalar::Bool(_) | Scalar::Int(_) | Scalar::Float(_) | Scalar::Timestamp(_) => 0,
        }
    }

    /// The value as text: what a STRING column stores and what a discard records.
    pub fn to_text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => serde_json::Number::from_f64(*f).map_or_else(|| f.to_string(), |n| n.to_string()),
            Scalar::Str(s) => s.to_string(),
            Scalar::BigInt(s) => s.to_string(),
            Scalar::SentTimestamp(sent) => sent.1.to_string(),
            Scalar::Timestamp(t) => format_micros(*t),
        }
    }

    /// The value as a BIGINT, when that is exact.
    pub fn as_bigint(&self) -> Result<i64, CastError> {
        match self {
            Scalar::Int(i) => Ok(*i),
            Scalar::Float(f) if f.fract() == 0.0 && (-9.2e18..9.2e18).contains(f) => Ok(*f as i64),
            _ => Err(self.cast_error(ColumnType::BigInt)),
        }
    }

    /// The value as a DOUBLE, when that is exact.
    pub fn as_double(&self) -> Result<f64, CastError> {
        match self {
            Scalar::Float(f) => Ok(*f),
            Scalar::Int(i) if (-EXACT_DOUBLE_INT..=EXACT_DOUBLE_INT).contains(i) => Ok(*i as f64),
            _ => Err(self.cast_error(ColumnType::Double)),
        }
    }

    pub fn as_bool(&self) -> Result<bool, CastError> {
        match self {
            Scalar::Bool(b) => Ok(*b),
            _ => Err(self.cast_error(ColumnType::Boolean)),
        }
    }

    pub fn as_timestamp(&self) -> Result<Micros, CastError> {
        match self {
            Scalar::Timestamp(t) => Ok(*t),
            Scalar::SentTimestamp(sent) => Ok(sent.0),
            _ => Err(self.cast_error(ColumnType::Timestamp)),
        }
    }

    fn cast_error(&self, to: ColumnType) -> CastError {
        CastError { from: self.natural_type(), to }
    }
}

impl From<Micros> for Scalar {
    /// A timestamp the pipeline made itself (received_at, uuid_ts, corrected timestamps).
    fn from(t: Micros) -> Self {
        Scalar::Timestamp(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Micros {
        parse_timestamp(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    /// Numbers below `n` from a fixed sequence, so that a failure repeats.
    fn picker(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 11) % n
        }
    }

    #[test]
    fn the_common_shape_is_read_to_the_instant_chrono_reads() {
        // Fields in and just out of their ranges, every length of fraction, each zone form, and shapes the quick
        // reader leaves to chrono; chosen by a fixed sequence, so a failure repeats.
        let mut pick = picker(0x9E37_79B9_7F4A_7C15);
        let (mut quick, mut checked) = (0, 0);
        for _ in 0..200_000 {
            let year = [pick(10_000), 1970, 2000, 1900, 2024, 1][pick(6) as usize];
            let date = format!("{year:04}-{:02}-{:02}", pick(14), pick(33));
            let time = format!("{:02}:{:02}:{:02}", pick(25), pick(61), pick(61));
            let fraction = match pick(11) {
                0 => String::new(),
                10 => ".".to_string(),
                n => format!(".{:0width$}", pick(10u64.pow(n as u32)), width = n as usize),
            };
            let zone = match pick(7) {
                0 => "Z".to_string(),
                1 => "z".to_string(),
                2 => String::new(),
                3 => format!("+{:02}:{:02}", pick(25), pick(61)),
                4 => format!("-{:02}:{:02}", pick(25), pick(61)),
                5 => format!("+{:02}{:02}", pick(24), pick(60)),
                _ => "-00:00".to_string(),
            };
            let separator = ["T", "t", " "][pick(3) as usize];
            let s = format!("{date}{separator}{time}{fraction}{zone}");
            let general = any_rfc3339(&s);
            if let Some(t) = common_rfc3339(s.as_bytes()) {
                quick += 1;
                assert_eq!(Some(t), general, "{s}");
            }
            checked += 1;
        }
        // Most of the valid ones take the quick way.
        assert!(quick > checked / 10, "{quick} of {checked}");
        assert_eq!(common_rfc3339(b"2026-11-01T12:00:00.1234567Z"), Some(1_793_534_400_123_456));
        assert_eq!(common_rfc3339(b"1969-12-31T23:59:59.5Z"), Some(-500_000));
        assert_eq!(common_rfc3339(b"2024-02-29T00:00:00+01:00"), any_rfc3339("2024-02-29T00:00:00+01:00"));
        assert_eq!(common_rfc3339(b"2023-02-29T00:00:00Z"), None);
        assert_eq!(common_rfc3339(b"2026-11-01T12:00:60Z"), None, "a leap second is chrono's");
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
            "0000-01-01T00:00:00Z",
            "0000-12-31T23:59:59.999Z",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
    }

    #[test]
    fn a_timestamp_the_pipeline_made_has_its_text_when_asked_and_equals_the_same_text_sent() {
        let t = ts("2026-11-01T12:00:00.123Z");
        let made = Scalar::from(t);
        assert_eq!(made.to_text(), "2026-11-01T12:00:00.123Z");
        assert_eq!(made.as_timestamp(), Ok(t));
        assert_eq!(made, Scalar::from_string("2026-11-01T12:00:00.123Z"));
        assert_eq!(Scalar::from_string("2026-11-01T12:00:00.123Z"), made);
        // The same instant sent as other text is another value, as it was before its text was made on demand.
        assert_ne!(made, Scalar::from_string("2026-11-01T14:00:00.123+02:00"));
        assert_ne!(made, Scalar::from(t + 1));
        assert_ne!(made, Scalar::Str("2026-11-01T12:00:00.123Z".into()));
    }

    #[test]
    fn a_time_sent_as_format_micros_writes_it_keeps_no_text_and_any_other_keeps_its_own() {
        // Instants over the whole range at each precision: what `format_micros` writes is recognised as its text.
        let mut pick = picker(0x2545_F491_4F6C_DD1D);
        let span = (TIMESTAMP_RANGE.end() - TIMESTAMP_RANGE.start()) as u64;
        for i in 0..100_000 {
            let t = TIMESTAMP_RANGE.start() + pick(span) as i64;
            let t = match i % 3 {
                0 => t - t.rem_euclid(1_000_000),
                1 => t - t.rem_euclid(1_000),
                _ => t,
            };
            let text = format_micros(t);
            assert_eq!(Scalar::from_string(&text), Scalar::Timestamp(t), "{text}");
            assert!(matches!(Scalar::from_string(&text), Scalar::Timestamp(_)), "{text} is held without its text");
        }
        // Texts of that shape, fields in and just out of their ranges: one held without its text gives that text
        // back.
        let mut held = 0;
        for _ in 0..200_000 {
            let year = [pick(10_000), 1970, 2026][pick(3) as usize];
            let (month, day, hour, minute, second) = (pick(14), pick(33), pick(25), pick(61), pick(62));
            let fraction = match pick(4) {
                0 => String::new(),
                1 => format!(".{:03}", pick(1_000)),
                2 => format!(".{:06}", pick(1_000_000)),
                _ => ".000".to_string(),
            };
            let text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z");
            match Scalar::from_string(&text) {
                Scalar::Timestamp(t) => {
                    held += 1;
                    assert_eq!(format_micros(t), text);
                }
                Scalar::SentTimestamp(sent) => assert_eq!((sent.0, sent.1.as_str()), (ts(&text), text.as_str())),
                other => assert_eq!(other, Scalar::Str(text.as_str().into())),
            }
        }
        assert!(held > 20_000, "{held}");
        // Other forms keep their text, for STRING columns and discards.
        for text in [
            "2026-11-01T12:00:00.000Z",
            "2026-11-01T12:00:00.120000Z",
            "2026-11-01T12:00:00.123456789Z",
            "2026-11-01T12:00:00.1Z",
            "2026-11-01T12:00:00.123z",
            "2026-11-01t12:00:00.123Z",
            "2026-11-01 12:00:00.123Z",
            "2026-11-01T14:00:00.123+02:00",
            "2026-11-01T12:00:00.123",
            "2016-12-31T23:59:60.500Z",
        ] {
            let value = Scalar::from_string(text);
            assert!(matches!(value, Scalar::SentTimestamp(_)), "{text}: {value:?}");
            assert_eq!(value.to_text(), text);
            assert_eq!(value.held_text(), Some(text));
        }
    }

    #[test]
    fn format_round_trips() {
        let t = ts("2026-11-01T12:00:00.123Z");
        assert_eq!(parse_timestamp(&format_micros(t)), Some(t));
    }
}
