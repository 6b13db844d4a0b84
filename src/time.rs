//! Time as the tracker sees it: instants in Unix epoch milliseconds.
//!
//! Every instant in the core is a [`Millis`]; every span is an `i64` whose
//! name ends in `_ms`. The tracker never reads the wall clock: callers pass
//! the wall time in, which is what makes replays and tests deterministic.

use std::fmt;

/// An instant, in milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Millis(pub i64);

impl Millis {
    /// The current wall-clock time. Only adapters call this; the tracker never does.
    pub fn now() -> Millis {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Millis(since_epoch.as_millis() as i64)
    }

    pub fn plus_ms(self, span_ms: i64) -> Millis {
        Millis(self.0.saturating_add(span_ms))
    }

    pub fn minus_ms(self, span_ms: i64) -> Millis {
        Millis(self.0.saturating_sub(span_ms))
    }

    /// `self - earlier`, in milliseconds (negative when `earlier` is later).
    pub fn since(self, earlier: Millis) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// RFC 3339 in UTC with milliseconds, for logs and messages.
    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(datetime) => datetime.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => format!("{}ms", self.0),
        }
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Converts a configured duration to whole milliseconds, saturating.
pub fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Parses RFC 3339 with an offset, truncating below the millisecond.
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    match parse_common_rfc3339(text.as_bytes()) {
        Some(millis) => Some(millis),
        None => parse_rfc3339_chrono(text),
    }
}

/// Every form RFC 3339 allows (and a few more, as chrono reads it).
#[cold]
fn parse_rfc3339_chrono(text: &str) -> Option<Millis> {
    let datetime = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    // timestamp_millis floors, which truncates for instants after 1970; for
    // earlier ones flooring is the consistent choice too.
    Some(Millis(datetime.timestamp_millis()))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` with a valid date, a second
/// below 60 and an offset below 24 hours: what devices send. `None` leaves
/// the text to chrono (which also rejects what is invalid).
fn parse_common_rfc3339(text: &[u8]) -> Option<Millis> {
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        text.get(range)?
            .iter()
            .try_fold(0i64, |value, &digit| digit.is_ascii_digit().then(|| value * 10 + i64::from(digit - b'0')))
    };
    let byte_at = |index: usize| text.get(index).copied();
    if byte_at(4)? != b'-' || byte_at(7)? != b'-' || !matches!(byte_at(10)?, b'T' | b't' | b' ') {
        return None;
    }
    if byte_at(13)? != b':' || byte_at(16)? != b':' {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut position = 19;
    let mut millis = 0;
    if byte_at(position) == Some(b'.') {
        position += 1;
        let start = position;
        while byte_at(position).is_some_and(|byte| byte.is_ascii_digit()) {
            if position - start < 3 {
                millis = millis * 10 + i64::from(text[position] - b'0');
            }
            position += 1;
        }
        match position - start {
            0 => return None,
            1 => millis *= 100,
            2 => millis *= 10,
            _ => {}
        }
    }
    let offset_s = match byte_at(position)? {
        b'Z' | b'z' if position + 1 == text.len() => 0,
        sign @ (b'+' | b'-') if position + 6 == text.len() && byte_at(position + 3) == Some(b':') => {
            let (hours, minutes) = (number(position + 1..position + 3)?, number(position + 4..position + 6)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset_s = hours * 3600 + minutes * 60;
            if sign == b'-' {
                -offset_s
            } else {
                offset_s
            }
        }
        _ => return None,
    };
    let local_s = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(Millis((local_s - offset_s) * 1000 + millis))
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn timestamps_read_by_hand_are_what_chrono_reads(
            year in 0i64..10_000, month in 0i64..14, day in 0i64..33, hour in 0i64..25, minute in 0i64..61,
            second in 0i64..61,
            fraction in prop::option::of("[0-9]{0,12}"),
            separator in prop::sample::select(vec!["T", "t", " ", "x"]),
            offset in prop::sample::select(vec!["Z", "z", "+07:00", "-05:30", "+23:59", "-00:00", "+24:00", "+07:60",
                "+0700", "+07", "", "\u{2212}05:30", "Zx", "+07:00 "]),
        ) {
            let fraction = fraction.map(|digits| format!(".{digits}")).unwrap_or_default();
            let text = format!("{year:04}-{month:02}-{day:02}{separator}{hour:02}:{minute:02}:{second:02}{fraction}{offset}");
            prop_assert_eq!(parse_rfc3339(&text), parse_rfc3339_chrono(&text), "{}", text);
        }

        #[test]
        fn timestamps_of_any_text_are_what_chrono_reads(text in "[0-9T:.Z+ -]{0,30}") {
            prop_assert_eq!(parse_rfc3339(&text), parse_rfc3339_chrono(&text), "{}", text);
        }
    }

    #[test]
    fn the_form_devices_send_is_read_by_hand_before_1970_too() {
        assert_eq!(
            parse_common_rfc3339(b"2026-11-16T07:30:00.000+09:00"),
            parse_rfc3339_chrono("2026-11-16T07:30:00.000+09:00")
        );
        assert!(parse_common_rfc3339(b"1969-12-31T23:59:59.999Z").is_some());
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999Z"), Some(Millis(-1)));
    }
}
