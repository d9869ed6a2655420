//! Small text helpers for messages every crate writes the same way.

use std::fmt;

/// `n` followed by `noun`, plural unless `n == 1`: `count(1, "rank")` shows `1 rank`,
/// `count(4, "rank")` shows `4 ranks`. Messages name counts of ranks, checkpoints and
/// bytes with it so that none says "1 ranks".
pub fn count(n: impl Into<u64>, noun: &'static str) -> Count {
    Count { n: n.into(), noun }
}

/// A number with its noun, from [`count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    n: u64,
    noun: &'static str,
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.n == 1 { "" } else { "s" };
        write!(f, "{} {}{s}", self.n, self.noun)
    }
}

/// Unix milliseconds as an RFC 3339 UTC time, `2026-12-04T10:11:12Z` (civil-from-days,
/// no time-zone database needed). For messages and listings that would otherwise show
/// raw epoch milliseconds.
pub fn utc_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times() {
        assert_eq!(super::utc_time(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century year) 12:34:56.789
        assert_eq!(super::utc_time(951_827_696_789), "2000-02-29T12:34:56Z");
        assert_eq!(super::utc_time(1_796_425_532_129), "2026-12-04T23:05:32Z");
    }

    #[test]
    fn one_rank_two_ranks() {
        assert_eq!(super::count(1u32, "rank").to_string(), "1 rank");
        assert_eq!(super::count(0u32, "rank").to_string(), "0 ranks");
        assert_eq!(
            super::count(4u64, "checkpoint").to_string(),
            "4 checkpoints"
        );
    }
}
