//! The one grammar for durations and sizes, wherever a person writes one: the config file,
//! command-line flags, and the options of store URLs. One grammar means `1.5s` works in
//! `sqlite://...?busy_timeout=1.5s` exactly as in `--body-timeout 1.5s`, and every mistake
//! gets the same kind of one-line message.

use std::time::Duration;

/// A duration or size that could not be read. The message quotes what was written and says
/// what would have been understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The number of a duration is missing or malformed (empty, `.`, two decimal points);
    /// carries the value as written.
    #[error("`{0}` is not a duration (use e.g. 300ms, 1.5s, 5m, 24h, 7d)")]
    NotADuration(String),
    /// A duration's number is followed by something other than `ms`, `s`, `m`, `min`, `h`
    /// or `d` (a sign or an exponent ends up here too).
    #[error("`{text}`: unknown unit `{unit}` (use ms, s, m, min, h or d)")]
    UnknownDurationUnit {
        /// The value as written.
        text: String,
        /// What followed the number.
        unit: String,
    },
    /// A size does not start with a whole number that fits in 64 bits (empty, negative,
    /// words); carries the value as written.
    #[error("`{0}` is not a size (use e.g. 65536, 512KiB, 1MiB)")]
    NotASize(String),
    /// A size's number is followed by something other than `B`, `KiB`, `MiB`, `GiB`, `KB`,
    /// `MB` or `GB` (a fraction such as `1.5MiB` ends up here: sizes are whole numbers).
    #[error("`{text}`: unknown unit `{unit}` (use B, KiB, MiB, GiB, KB, MB or GB)")]
    UnknownSizeUnit {
        /// The value as written.
        text: String,
        /// What followed the number.
        unit: String,
    },
    /// A well-formed value that is too large: a duration above [`MAX_DURATION`], or a size
    /// beyond `usize`. Carries the value as written.
    #[error("`{0}` is out of range")]
    OutOfRange(String),
}

/// The longest duration accepted: ten years, far beyond any timeout or retention that makes
/// sense, and far below where `Duration` arithmetic could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// `300ms`, `1.5s`, `5m` (or `5min`), `24h`, `7d`, or a bare number of seconds. Whitespace
/// around the value and between number and unit is ignored.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let t = s.trim();
    let (number, unit) = split_number(t, true);
    let nanos_per_unit: u128 = match unit {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" | "min" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        "d" => 86_400 * 1_000_000_000,
        other => {
            return Err(UnitError::UnknownDurationUnit {
                text: s.to_owned(),
                unit: other.to_owned(),
            })
        }
    };
    // Exact decimal arithmetic: `0.3s` is 300 ms, not the nearest binary fraction.
    let not_a_duration = || UnitError::NotADuration(s.to_owned());
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(not_a_duration());
    }
    let out_of_range = || UnitError::OutOfRange(s.to_owned());
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| out_of_range())?
    };
    let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(out_of_range)?;
    let mut scale = nanos_per_unit;
    for digit in fraction.bytes().take(30) {
        scale /= 10;
        nanos += u128::from(digit - b'0') * scale;
    }
    if nanos > MAX_DURATION.as_nanos() {
        return Err(out_of_range());
    }
    // Below ten years, so within u64 seconds.
    Ok(Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    ))
}

/// `1048576` (bytes), `512KiB`, `1MiB`, `1GiB`, or the decimal `KB`, `MB`, `GB`.
pub fn parse_size(s: &str) -> Result<usize, UnitError> {
    let t = s.trim();
    let (number, unit) = split_number(t, false);
    let n: u64 = number
        .parse()
        .map_err(|_| UnitError::NotASize(s.to_owned()))?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(UnitError::UnknownSizeUnit {
                text: s.to_owned(),
                unit: other.to_owned(),
            })
        }
    };
    n.checked_mul(multiplier)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| UnitError::OutOfRange(s.to_owned()))
}

/// The leading number (digits, and a decimal point where `fractions`) and the trimmed rest.
fn split_number(t: &str, fractions: bool) -> (&str, &str) {
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || (fractions && c == '.')))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(end);
    (number, unit.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        let ok = |s: &str, d: Duration| assert_eq!(parse_duration(s), Ok(d), "{s}");
        ok("250ms", Duration::from_millis(250));
        ok("1.5s", Duration::from_millis(1500));
        ok("1.5", Duration::from_millis(1500));
        ok(" 2 m ", Duration::from_secs(120));
        ok("2min", Duration::from_secs(120));
        ok("24h", Duration::from_secs(86_400));
        ok("7d", Duration::from_secs(7 * 86_400));
        ok("0", Duration::ZERO);
        ok("0.3s", Duration::from_millis(300));
        ok(".5s", Duration::from_millis(500));
        ok("1.0000000001s", Duration::from_secs(1));
        for bad in [
            "",
            ".",
            "fast",
            "s",
            "-1s",
            "1..5s",
            "1.5.5s",
            "1e400",
            "99999d",
            "99999999999999999999999999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("5parsecs").unwrap_err().to_string(),
            "`5parsecs`: unknown unit `parsecs` (use ms, s, m, min, h or d)"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "lots", "1.5MiB", "-1", "1TiB", "99999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Whatever is written, the parsers answer (never panic), and a whole number of
        /// milliseconds reads back exactly.
        #[test]
        fn never_panics_and_reads_millis_back(s in "\\PC{0,12}", ms in 0u64..10_000_000) {
            let _ = parse_duration(&s);
            let _ = parse_size(&s);
            prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }
    }
}
