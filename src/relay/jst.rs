//! Civil time in Japan: the JST date, minute of the day and weekday of an
//! instant, and the calendar dates a configuration names.
//!
//! The calendar arithmetic (leap years, month lengths, weekdays) is
//! `jiff`'s. Japan Standard Time is UTC+09:00 all year — Japan has no
//! daylight saving — so a fixed offset is exact for every instant the box
//! meets, and the box needs no time-zone database: nothing to ship in the
//! image, nothing to go stale.
//!
//! Invariant: every function here is total over [`Millis`]; an instant
//! outside jiff's range (years −9999 to 9999) is clamped to its ends
//! rather than refused, since a serial or the service calendar must get
//! some answer and a real clock is never there.

use std::fmt;
use std::str::FromStr;

use ifrelay_proto::Millis;
use jiff::civil::DateTime;
use jiff::tz::{self, Offset};
use jiff::Timestamp;

/// Japan Standard Time: a fixed +09:00 (see the module header for why no
/// time-zone database is needed).
pub const JST: Offset = tz::offset(9);

/// Minutes since midnight, 0..=1440.
pub type Minute = u16;

/// A calendar date (proleptic Gregorian, years 0 to 9999).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

/// Why a date could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {expected}")]
pub struct DateError {
    pub text: String,
    pub expected: &'static str,
}

impl Date {
    fn of(d: jiff::civil::Date) -> Date {
        // jiff's months are 1..=12 and days 1..=31: the casts are exact.
        Date {
            year: i32::from(d.year()),
            month: d.month().unsigned_abs(),
            day: d.day().unsigned_abs(),
        }
    }
}

impl FromStr for Date {
    type Err = DateError;
    /// `"2026-01-01"`; a day the month does not have (`2026-02-29`) is
    /// refused.
    fn from_str(text: &str) -> Result<Self, DateError> {
        let err = || DateError {
            text: text.to_owned(),
            expected: "a date YYYY-MM-DD",
        };
        let mut parts = text.trim().splitn(3, '-');
        let year: i16 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
        let month: i8 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
        let day: i8 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
        if year < 0 {
            return Err(err());
        }
        jiff::civil::Date::new(year, month, day)
            .map(Date::of)
            .map_err(|_| err())
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// The civil date and time in Japan at `ms`.
fn civil(ms: Millis) -> DateTime {
    let at = Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    JST.to_datetime(at)
}

/// The JST date, minute of the day and weekday (0 = Monday … 6 = Sunday)
/// of `ms`.
pub fn jst(ms: Millis) -> (Date, Minute, u8) {
    let t = civil(ms);
    // Hours 0..=23, minutes 0..=59, weekday offsets 0..=6: all exact.
    let minute = t.hour().unsigned_abs() as Minute * 60 + t.minute().unsigned_abs() as Minute;
    let weekday = t.weekday().to_monday_zero_offset().unsigned_abs();
    (Date::of(t.date()), minute, weekday)
}

/// `yyyymmdd` of `ms` in Japan, the date printed in serials (R-SER-1).
pub fn jst_date(ms: Millis) -> String {
    let d = civil(ms).date();
    format!("{:04}{:02}{:02}", d.year(), d.month(), d.day())
}

/// The instant a person means by `YYYY-MM-DD` (its midnight) or
/// `YYYY-MM-DDThh:mm` in Japan (the console's searches).
pub fn parse_jst(text: &str) -> Option<Millis> {
    let t = text.trim();
    let civil: DateTime = match t.split_once('T') {
        Some(_) => t.parse().ok()?,
        None => t
            .parse::<jiff::civil::Date>()
            .ok()?
            .to_datetime(jiff::civil::Time::midnight()),
    };
    let at = JST.to_timestamp(civil).ok()?;
    Some(at.as_millisecond())
}

/// `YYYY-MM-DD hh:mm` of `ms` in Japan, for people (the console).
pub fn jst_minute(ms: Millis) -> String {
    let t = civil(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// `YYYY-MM-DD HH:MM:SS` in Japan Standard Time.
pub fn jst_second(ms: Millis) -> String {
    let t = civil(ms);
    format!(
        "{} {:02}:{:02}:{:02}",
        &jst_minute(ms)[..10],
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a JST wall-clock time.
    fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8, s: i8) -> Millis {
        let dt = jiff::civil::date(y, mo, d).at(h, mi, s, 0);
        JST.to_timestamp(dt).expect("in range").as_millisecond()
    }

    #[test]
    fn serial_dates_are_japan_time() {
        // 2026-11-21T15:00:00Z is 2026-11-22 00:00 in Japan.
        assert_eq!(jst_date(1_795_273_200_000), "20261122");
        assert_eq!(jst_date(1_795_273_199_000), "20261121");
        assert_eq!(jst_date(0), "19700101");
    }

    #[test]
    fn the_date_turns_at_15_00_utc() {
        // 23:59:59 and 00:00:00 JST are 14:59:59 and 15:00:00 UTC.
        let before = at(2026, 12, 1, 23, 59, 59);
        let after = at(2026, 12, 2, 0, 0, 0);
        assert_eq!(after - before, 1000);
        assert_eq!(
            before,
            "2026-12-01T14:59:59Z"
                .parse::<Timestamp>()
                .expect("utc")
                .as_millisecond()
        );
        assert_eq!(jst_date(before), "20261201");
        assert_eq!(jst_date(after), "20261202");
        assert_eq!(jst_date(after - 1), "20261201");
        assert_eq!(jst(before).1, 1439);
        assert_eq!(jst(after).1, 0);
    }

    #[test]
    fn leap_days_and_year_ends() {
        // 2028 is a leap year: 28 Feb → 29 Feb → 1 Mar.
        assert_eq!(jst_date(at(2028, 2, 28, 23, 59, 59) + 1000), "20280229");
        assert_eq!(jst_date(at(2028, 2, 29, 23, 59, 59) + 1000), "20280301");
        // 2027 is not; 2100 is not (divisible by 100); 2000 was (by 400).
        assert_eq!(jst_date(at(2027, 2, 28, 23, 59, 59) + 1000), "20270301");
        assert_eq!(jst_date(at(2100, 2, 28, 23, 59, 59) + 1000), "21000301");
        assert_eq!(jst_date(at(2000, 2, 28, 23, 59, 59) + 1000), "20000229");
        // New Year comes at 15:00 UTC on 31 December.
        let new_year = "2026-12-31T15:00:00Z"
            .parse::<Timestamp>()
            .expect("utc")
            .as_millisecond();
        assert_eq!(jst_date(new_year - 1), "20261231");
        assert_eq!(jst_date(new_year), "20270101");
        // 2028-02-29 is a Tuesday (1); 2027-01-01 a Friday (4).
        assert_eq!(jst(at(2028, 2, 29, 12, 0, 0)).2, 1);
        assert_eq!(jst(new_year).2, 4);
        assert_eq!(
            jst(at(2028, 2, 29, 12, 0, 0)).0,
            Date {
                year: 2028,
                month: 2,
                day: 29
            }
        );
    }

    #[test]
    fn dates_parse_strictly() {
        assert!("2026-13-01".parse::<Date>().is_err());
        assert!("2026-02-31".parse::<Date>().is_err());
        assert!("2028-02-29".parse::<Date>().is_ok());
        assert!("2027-02-29".parse::<Date>().is_err());
        assert!("2100-02-29".parse::<Date>().is_err());
        assert!("2000-02-29".parse::<Date>().is_ok());
        assert!("2026-00-10".parse::<Date>().is_err());
        assert!("2026-01-00".parse::<Date>().is_err());
        assert!("10000-01-01".parse::<Date>().is_err());
        assert_eq!(
            "2026-01-01".parse::<Date>().map(|d| d.to_string()),
            Ok("2026-01-01".to_owned())
        );
    }

    #[test]
    fn any_instant_has_a_date() {
        for ms in [i64::MIN, i64::MIN / 2, -1, 0, 1, i64::MAX / 2, i64::MAX] {
            let (d, minute, weekday) = jst(ms);
            assert!((1..=12).contains(&d.month) && (1..=31).contains(&d.day));
            assert!(minute < 1440 && weekday < 7);
            assert!(!jst_date(ms).is_empty());
        }
    }
}
