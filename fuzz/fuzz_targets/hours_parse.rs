//! Arbitrary text through the service-hours `Window` and `Date` parsers, and arbitrary instants through `jst`/`is_open`: never a panic, parsed values in range and printed values read back unchanged.
#![no_main]

use ifrelay::relay::hours::{jst, Date, ServiceHours, Window};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(first) = data.get(..8) {
        let ms = i64::from_le_bytes(first.try_into().expect("eight bytes"));
        let (date, minute, weekday) = jst(ms);
        assert!(
            minute < 1440 && weekday < 7,
            "jst({ms}) = {date:?} {minute} {weekday}"
        );
        assert!((1..=12).contains(&date.month) && (1..=31).contains(&date.day));
        let _ = ServiceHours::default().is_open(ms);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(w) = text.parse::<Window>() {
        assert!(w.start < w.end && w.end <= 1440, "{text:?} gave {w:?}");
        assert_eq!(w.to_string().parse::<Window>(), Ok(w), "{text:?}");
    }
    if let Ok(d) = text.parse::<Date>() {
        assert!((1..=12).contains(&d.month) && (1..=31).contains(&d.day));
        assert_eq!(d.to_string().parse::<Date>(), Ok(d), "{text:?}");
    }
});
