//! Regression tests from fuzzing the parsers of the root crate (`fuzz/`,
//! `docs/fuzzing.md`): the configuration file, service hours and stored
//! outbox entries. Each asserts a typed error, never a panic. Proto-only
//! regressions live in `crates/proto/tests/fuzz_regressions.rs`.

use std::path::Path;

use ifrelay::config::{Config, ConfigError, ConfigFile};
use ifrelay::relay::destination::{Destination, OutboxItem};
use ifrelay::relay::hours::{Date, Window};

/// The smallest configuration `resolve` accepts, with `[service]` last so
/// tests can append keys to it.
const MINIMAL: &str = r#"
[box]
agency = "131016"
[listen]
core_side = "127.0.0.1:7443"
agency_side = "127.0.0.1:7444"
[tls]
ca = "ca.pem"
cert = "is.pem"
key = "is.key"
[store]
path = "ifrelay.redb"
[core]
address = "127.0.0.1:7000"
allow = ["127.0.0.1/32"]
[ims]
address = "127.0.0.1:7100"
allow = ["127.0.0.1/32"]
[service]
"#;

fn parse(extra: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{MINIMAL}{extra}\n"), Path::new("/etc/ifrelay"))
}

fn invalid_field(extra: &str) -> String {
    match parse(extra) {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("{extra:?}: expected an invalid field, got {other:?}"),
    }
}

// ------------------------------------------------------------- hours

/// Finding 5 (hours_parse, minimised from `7001:003-0:0`): `minute()`
/// computed `h * 60 + m` in `u16` before checking the range
/// (`bool::then_some` evaluates its argument eagerly), so an hour of 1093
/// or more overflowed: a panic in debug and test builds, where a typed
/// error is due. Fix in `src/relay/hours.rs`: `.then(|| h * 60 + m)`.
#[test]
fn fuzz_window_with_a_huge_hour_is_an_error_not_an_overflow() {
    for text in [
        "1093:00-21:00",
        "7001:003-0:0",
        "08:00-65535:00",
        "1000:9999-0:0",
    ] {
        let err = text.parse::<Window>().expect_err(text);
        assert_eq!(err.text, text);
        assert!(err.expected.starts_with("a window HH:MM-HH:MM"), "{err}");
    }
    // Through the configuration, the field is named.
    assert_eq!(
        invalid_field(r#"weekday = "1093:00-21:00""#),
        "service.weekday"
    );
}

#[test]
fn windows_and_dates_refuse_nasty_text() {
    for text in [
        "",
        "-",
        "--",
        ":-:",
        "08:00-",
        "-21:00",
        "08:00-21:00-22:00",
        "+8:00-21:00x",
        "24:00-24:00",
        "23:59-23:59",
        "８:00-21:00",
        "08:00\u{0}-21:00",
        "99999999999999999999:00-21:00",
    ] {
        assert!(text.parse::<Window>().is_err(), "{text:?}");
    }
    for text in [
        "",
        "2026",
        "2026-01",
        "2026-00-01",
        "2026-01-00",
        "2026-01-32",
        "2026-256-01",
        "99999999999-01-01",
        "-2026-01-01",
        "2026-01-01-",
        "２０２６-01-01",
    ] {
        assert!(text.parse::<Date>().is_err(), "{text:?}");
    }
}

// ------------------------------------------------------------- config

#[test]
fn config_nasty_toml_is_a_syntax_error() {
    let nasty = [
        // Nesting far deeper than any parser's stack should follow.
        format!("x = {}", "[".repeat(100_000)),
        format!("x = {}", "{a = ".repeat(10_000)),
        // Duplicate keys and tables.
        format!("{MINIMAL}enforced = true\nenforced = false\n"),
        format!("{MINIMAL}[service]\n"),
        // A number beyond u64.
        format!("{MINIMAL}[limits]\nmax_frame_bytes = 99999999999999999999999\n"),
        // A control character and a lone CR.
        "[box]\nagency = \"13\u{0}1016\"\n".to_owned(),
        "[box]\r agency = \"131016\"".to_owned(),
    ];
    for text in nasty {
        let err = ConfigFile::parse(&text).expect_err("refused");
        assert!(
            matches!(err, ConfigError::Syntax { .. }),
            "{}: {err:?}",
            &text[..text.len().min(40)]
        );
        // The message names what is wrong; formatting it never panics.
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn config_nasty_values_name_their_field() {
    assert_eq!(
        invalid_field("holidays = [\"2026-13-01\"]"),
        "service.holidays[0]"
    );
    assert_eq!(
        invalid_field("daily_stop = \"24:00-24:00\""),
        "service.daily_stop"
    );
    assert_eq!(
        invalid_field("[peers]\nallow = [\"10.0.0.1/8\"]"),
        "peers.allow[0]"
    );
    assert_eq!(
        invalid_field("[peers.addresses]\n\"13 1016\" = \"127.0.0.2:7443\""),
        "peers.addresses.\"13 1016\""
    );
    assert_eq!(
        invalid_field("[limits]\nmax_frame_bytes = 9223372036854775807"),
        "limits.max_frame_bytes"
    );
    // Beyond i64, TOML itself refuses the number, and the key is named.
    let err = parse("[limits]\nmax_frame_bytes = 18446744073709551615").expect_err("refused");
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert_eq!(err.field(), Some("limits.max_frame_bytes"));
}

// ------------------------------------------------------------- outbox

#[test]
fn destination_keys_refuse_nasty_text() {
    for key in [
        "",
        "is",
        "is/",
        "is/@",
        "is/271004@",
        "is/@127.0.0.1:7443",
        "is/271004@127.0.0.1",
        "is/271004@[::1]",
        "is/271004@127.0.0.1:65536",
        "is/271004@999.0.0.1:7443",
        "is/27 1004@127.0.0.1:7443",
        "is/2710042710042710042@127.0.0.1:7443",
        "is/２７１００４@127.0.0.1:7443",
        "IS/271004@127.0.0.1:7443",
        "core ",
        "is/271004@127.0.0.1:7443\0",
    ] {
        assert!(Destination::parse(key).is_err(), "{key:?}");
    }
}

#[test]
fn stored_outbox_entries_refuse_short_and_undecodable_bytes() {
    for bytes in [vec![], vec![0, 0, 0], vec![0x80, 0, 0]] {
        let err = OutboxItem::from_stored(1, "core", bytes.clone()).expect_err("refused");
        assert_eq!(err, "stored frame shorter than its prefix", "{bytes:?}");
    }
    // A 2 GiB prefix over one byte: refused for the lying prefix before
    // anything is decoded.
    let err = OutboxItem::from_stored(1, "core", vec![0x80, 0, 0, 0, 0xff]).expect_err("refused");
    assert!(err.contains("length prefix says 2147483648"), "{err}");
    // A true prefix over garbage: the body is decoded, and refused.
    let err = OutboxItem::from_stored(1, "core", vec![0, 0, 0, 1, 0xff]).expect_err("refused");
    assert!(err.starts_with("E_MALFORMED"), "{err}");
    let err = OutboxItem::from_stored(1, "mars", vec![0; 8]).expect_err("refused");
    assert!(err.contains("unknown destination"), "{err}");
}
