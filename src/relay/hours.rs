//! Service hours (R-AV-1): when the box starts new processes.
//!
//! Times are Japan Standard Time (UTC+9, no daylight saving). A day is a
//! weekday or a weekend/holiday (Saturday, Sunday, or a configured
//! holiday); each kind has one open window; a daily stop window (the
//! network's 21:00–24:00 maintenance) closes the box whatever the day.
//! Outside service hours new processes are refused with
//! `E_NOT_IN_SERVICE`; processes already under way may complete. The
//! civil time of an instant comes from [`super::jst`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ifrelay_proto::Millis;

pub use super::jst::{jst, Date, Minute};

/// A half-open window `[start, end)` within one day, in minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Minute,
    pub end: Minute,
}

impl Window {
    pub const ALL_DAY: Window = Window {
        start: 0,
        end: 1440,
    };

    fn contains(self, minute: Minute) -> bool {
        self.start <= minute && minute < self.end
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Why a window or date could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {expected}")]
pub struct HoursError {
    pub text: String,
    pub expected: &'static str,
}

fn minute(text: &str) -> Option<Minute> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    // Lazily: an hour like 9999 must be refused, not overflow.
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then(|| h * 60 + m)
}

impl FromStr for Window {
    type Err = HoursError;
    /// `"08:00-21:00"`; `24:00` is midnight at the end of the day.
    fn from_str(text: &str) -> Result<Self, HoursError> {
        let err = || HoursError {
            text: text.to_owned(),
            expected: "a window HH:MM-HH:MM with start before end (24:00 allowed as end)",
        };
        let (a, b) = text.trim().split_once('-').ok_or_else(err)?;
        let (start, end) = (
            minute(a.trim()).ok_or_else(err)?,
            minute(b.trim()).ok_or_else(err)?,
        );
        if start >= end || start == 1440 {
            return Err(err());
        }
        Ok(Window { start, end })
    }
}

/// The service calendar of one box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHours {
    /// `false`: always in service (staging boxes, tests).
    pub enforced: bool,
    pub weekday: Window,
    pub holiday: Window,
    /// Closed every day during this window, if any.
    pub daily_stop: Option<Window>,
    pub holidays: BTreeSet<Date>,
}

impl Default for ServiceHours {
    /// The intermediate-server practice of R-AV-1: 08:00–21:00 on
    /// weekdays, 09:00–17:00 on weekends and holidays, stopped 21:00–24:00.
    fn default() -> Self {
        ServiceHours {
            enforced: true,
            weekday: Window {
                start: 8 * 60,
                end: 21 * 60,
            },
            holiday: Window {
                start: 9 * 60,
                end: 17 * 60,
            },
            daily_stop: Some(Window {
                start: 21 * 60,
                end: 24 * 60,
            }),
            holidays: BTreeSet::new(),
        }
    }
}

impl ServiceHours {
    /// Always in service.
    pub fn always() -> Self {
        ServiceHours {
            enforced: false,
            ..ServiceHours::default()
        }
    }

    /// Whether new processes may start at `now`.
    pub fn is_open(&self, now: Millis) -> bool {
        if !self.enforced {
            return true;
        }
        let (date, minute, weekday) = jst(now);
        if self.daily_stop.is_some_and(|w| w.contains(minute)) {
            return false;
        }
        let holiday = weekday >= 5 || self.holidays.contains(&date);
        let window = if holiday { self.holiday } else { self.weekday };
        window.contains(minute)
    }

    /// A short description for refusals and status.
    pub fn describe(&self) -> String {
        if !self.enforced {
            return "always in service".to_owned();
        }
        let mut text = format!(
            "weekdays {}, weekends and holidays {}",
            self.weekday, self.holiday
        );
        if let Some(stop) = self.daily_stop {
            text.push_str(&format!(", stopped daily {stop}"));
        }
        text.push_str(" (JST)");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a JST wall-clock time.
    fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> Millis {
        let dt = jiff::civil::date(y, mo, d).at(h, mi, 0, 0);
        crate::relay::jst::JST
            .to_timestamp(dt)
            .expect("in range")
            .as_millisecond()
    }

    #[test]
    fn weekdays_weekends_holidays_and_the_daily_stop() {
        let mut hours = ServiceHours::default();
        // 2026-11-23 is a Monday.
        assert_eq!(jst(at(2026, 11, 23, 12, 0)).2, 0);
        assert!(!hours.is_open(at(2026, 11, 23, 7, 59)));
        assert!(hours.is_open(at(2026, 11, 23, 8, 0)));
        assert!(hours.is_open(at(2026, 11, 23, 20, 59)));
        assert!(!hours.is_open(at(2026, 11, 23, 21, 0)));
        assert!(!hours.is_open(at(2026, 11, 23, 23, 59)));
        // 2026-11-22 is a Sunday.
        assert!(!hours.is_open(at(2026, 11, 22, 8, 30)));
        assert!(hours.is_open(at(2026, 11, 22, 9, 0)));
        assert!(!hours.is_open(at(2026, 11, 22, 17, 0)));
        // A configured holiday on a weekday uses the holiday window.
        hours.holidays.insert("2026-11-23".parse().expect("date"));
        assert!(!hours.is_open(at(2026, 11, 23, 8, 30)));
        assert!(hours.is_open(at(2026, 11, 23, 9, 30)));
        // Not enforced: always open.
        assert!(ServiceHours::always().is_open(at(2026, 11, 23, 23, 0)));
    }

    #[test]
    fn leap_days_and_year_ends_follow_the_calendar() {
        let mut hours = ServiceHours::default();
        // 2028-02-29 is a Tuesday: the weekday window, unless it is a
        // configured holiday.
        assert!(hours.is_open(at(2028, 2, 29, 8, 30)));
        hours
            .holidays
            .insert("2028-02-29".parse().expect("leap day"));
        assert!(!hours.is_open(at(2028, 2, 29, 8, 30)));
        assert!(hours.is_open(at(2028, 2, 29, 9, 30)));
        // The holiday ends at midnight JST: 2028-03-01 is a Wednesday.
        assert!(hours.is_open(at(2028, 3, 1, 8, 30)));
        // New Year's Day 2027 (a Friday) as a holiday; New Year's Eve
        // stays a weekday, closed by the daily stop late in the evening.
        hours.holidays.insert("2027-01-01".parse().expect("date"));
        assert!(hours.is_open(at(2026, 12, 31, 8, 30)));
        assert!(!hours.is_open(at(2026, 12, 31, 23, 59)));
        assert!(!hours.is_open(at(2027, 1, 1, 8, 30)));
        assert!(hours.is_open(at(2027, 1, 1, 9, 0)));
    }

    #[test]
    fn windows_and_dates_parse_strictly() {
        assert_eq!(
            "08:00-21:00".parse::<Window>(),
            Ok(Window {
                start: 480,
                end: 1260
            })
        );
        assert_eq!("21:00-24:00".parse::<Window>().map(|w| w.end), Ok(1440));
        for bad in [
            "21:00-08:00",
            "8-21",
            "08:00-24:01",
            "25:00-26:00",
            "08:60-09:00",
            "",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
        assert!("2026-13-01".parse::<Date>().is_err());
        assert!("2026-02-31".parse::<Date>().is_err());
        assert!("2028-02-29".parse::<Date>().is_ok());
        assert!("2100-02-29".parse::<Date>().is_err());
        assert!("9999:00-10000:00".parse::<Window>().is_err());
        assert_eq!(
            "2026-01-01".parse::<Date>().map(|d| d.to_string()),
            Ok("2026-01-01".to_owned())
        );
    }
}
