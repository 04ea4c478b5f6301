//! Durations and sizes in settings: a number with a unit (`250ms`, `1s`, `5m`, `64MiB`, `10MB`), or a plain number
//! in the unit the setting's name gives (`_MS`, `_SECS`, `_HOURS`, `_BYTES`).

use std::time::Duration;

/// A duration with a unit (`ms`, `s`, `m`, `h`, `d`), or a plain number of `unit`.
pub fn duration(text: &str, unit: Duration) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let n: f64 = number.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let scale = match suffix.trim().to_ascii_lowercase().as_str() {
        "" => unit.as_secs_f64(),
        "ms" => 0.001,
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * scale).ok()
}

/// A size in bytes with a unit (`B`, `KB`/`MB`/`GB` in powers of 1000, `KiB`/`MiB`/`GiB` in powers of 1024), or a
/// plain number of bytes.
pub fn size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let n: f64 = number.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let scale: f64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = n * scale;
    (bytes <= u64::MAX as f64 && bytes.fract() == 0.0).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis(1);
        assert_eq!(duration("250ms", ms), Some(Duration::from_millis(250)));
        assert_eq!(duration("1s", ms), Some(Duration::from_secs(1)));
        assert_eq!(duration("1.5s", ms), Some(Duration::from_millis(1500)));
        assert_eq!(duration("5000", ms), Some(Duration::from_secs(5)));
        assert_eq!(duration("2", Duration::from_secs(3600)), Some(Duration::from_secs(7200)));
        assert_eq!(duration(" 10 m ", ms), Some(Duration::from_secs(600)));
        for bad in ["", "soon", "-1s", "1 fortnight", "1e3", "s"] {
            assert_eq!(duration(bad, ms), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("64MiB"), Some(64 << 20));
        assert_eq!(size("10MB"), Some(10_000_000));
        assert_eq!(size("512000"), Some(512_000));
        assert_eq!(size("1.5KiB"), Some(1536));
        assert_eq!(size("32 KiB"), Some(32_768));
        for bad in ["", "big", "1.3B", "-5", "10XB"] {
            assert_eq!(size(bad), None, "{bad}");
        }
    }
}
