//! Human durations with units (`90s`, `5m`, `1.5h`, `2d`, `250ms`), for flags, policy specs
//! and configuration. A unit is mandatory: a bare `300` is ambiguous and rejected.

use crate::error::PolicyError;
use std::time::Duration;

/// Parses `input` as a non-negative decimal number followed by a unit: `ms`, `s`, `m`
/// (or `min`), `h`, `d`; whitespace around and between is allowed. `what` names the flag
/// or key for the error message (`--cost`).
pub fn parse_duration(what: &str, input: &str) -> Result<Duration, PolicyError> {
    let err = |reason: &'static str| PolicyError::Duration {
        flag: what.to_string(),
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(err(if s.starts_with('-') {
            "negative durations are not allowed"
        } else {
            "missing number"
        }));
    }
    let value: f64 = number.parse().map_err(|_| err("malformed number"))?;
    if unit.starts_with(['e', 'E'])
        && unit[1..].starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+')
    {
        return Err(err("exponents are not supported (write 1000s, not 1e3s)"));
    }
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "" => return Err(err("missing unit")),
        _ => return Err(err("unknown unit")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| err("out of range"))
}

/// Formats seconds compactly for humans (`1h 57m`, `9.17 min`-style): the largest unit
/// that keeps the number >= 1, with three significant digits.
pub fn format_seconds(s: f64) -> String {
    if !s.is_finite() {
        return "inf".to_string();
    }
    let (v, unit) = if s >= 86400.0 {
        (s / 86400.0, "d")
    } else if s >= 3600.0 {
        (s / 3600.0, "h")
    } else if s >= 60.0 {
        (s / 60.0, "min")
    } else if s >= 1.0 || s == 0.0 {
        (s, "s")
    } else {
        (s * 1e3, "ms")
    };
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn parses_units_and_decimals() {
        let cases = [
            ("90s", 90.0),
            ("5m", 300.0),
            ("5min", 300.0),
            ("24h", 86400.0),
            ("1.5h", 5400.0),
            ("2d", 172800.0),
            ("250ms", 0.25),
            (" 10 s ", 10.0),
            (".5s", 0.5),
            ("0s", 0.0),
        ];
        for (s, want) in cases {
            let got = parse_duration("--x", s).unwrap().as_secs_f64();
            assert!((got - want).abs() < 1e-9, "{s}: {got}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        for bad in ["", "300", "5 parsecs", "-5s", "1.2.3s", "h", "1e999h"] {
            let e = parse_duration("--mtbf", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidDuration);
            assert!(e.to_string().starts_with("--mtbf"), "{e}");
        }
    }

    /// Regression: `1e3s` read the exponent as the unit and said "unknown unit".
    #[test]
    fn an_exponent_is_named_not_taken_for_a_unit() {
        for bad in ["1e3s", "2E-3h", "1e+2m"] {
            let e = parse_duration("--cost", bad).unwrap_err().to_string();
            assert!(e.contains("exponents are not supported"), "{bad}: {e}");
        }
        // A unit starting with `e` that is no exponent is still an unknown unit.
        let e = parse_duration("--cost", "1eons").unwrap_err().to_string();
        assert!(e.contains("unknown unit"), "{e}");
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_seconds(7000.0), "1.94 h");
        assert_eq!(format_seconds(550.0), "9.17 min");
        assert_eq!(format_seconds(0.25), "250 ms");
        assert_eq!(format_seconds(f64::INFINITY), "inf");
    }
}
