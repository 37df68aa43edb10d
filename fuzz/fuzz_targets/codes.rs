//! Arbitrary text through the bounded code types, `MessageId` and `Reason`: accepted exactly when the written rule says so, directly and from CBOR alike, and accepted values read back unchanged.
#![no_main]

use std::str::FromStr;

use ifrelay_fuzz::to_cbor;
use ifrelay_proto::{
    AgencyCode, BusinessCode, InfoNameCode, ItemCode, MessageId, PermitId, PersonCode, Reason,
    Serial,
};
use libfuzzer_sys::fuzz_target;

/// The rule of `types.rs`: 1..=max bytes of ASCII letters, digits, `-`, `_`.
fn code_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

macro_rules! check_code {
    ($ty:ty, $max:expr, $s:expr) => {{
        let s: &str = $s;
        let direct = <$ty>::new(s);
        assert_eq!(
            direct.is_ok(),
            code_ok(s, $max),
            "{}::new({s:?})",
            stringify!($ty)
        );
        assert_eq!(<$ty>::MAX_LEN, $max);
        let cbor = to_cbor(&ciborium::Value::Text(s.to_owned()));
        let via_cbor: Result<$ty, _> = ciborium::from_reader(cbor.as_slice());
        assert_eq!(
            via_cbor.is_ok(),
            direct.is_ok(),
            "{} from CBOR",
            stringify!($ty)
        );
        if let Ok(code) = direct {
            assert_eq!(code.as_str(), s);
            assert_eq!(code.to_string(), s);
            assert_eq!(<$ty>::from_str(s).ok(), Some(code.clone()));
            let bytes = to_cbor(&ciborium::Value::Text(code.as_str().to_owned()));
            assert_eq!(bytes, cbor);
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    check_code!(AgencyCode, 16, s);
    check_code!(BusinessCode, 16, s);
    check_code!(InfoNameCode, 16, s);
    check_code!(ItemCode, 16, s);
    check_code!(PersonCode, 64, s);
    check_code!(Serial, 64, s);
    check_code!(PermitId, 48, s);

    let id_ok = !s.is_empty()
        && s.len() <= ifrelay_proto::message::MAX_MESSAGE_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    let id = MessageId::new(s);
    assert_eq!(id.is_ok(), id_ok, "MessageId::new({s:?})");
    let cbor = to_cbor(&ciborium::Value::Text(s.to_owned()));
    let via_cbor: Result<MessageId, _> = ciborium::from_reader(cbor.as_slice());
    assert_eq!(via_cbor.ok(), id.ok());

    match Reason::from_str(s) {
        Ok(r) => assert_eq!(r.as_str(), s),
        Err(_) => assert!(Reason::ALL.iter().all(|r| r.as_str() != s)),
    }
    // Any text decodes as a reason: unknown codes become `E_UNRECOGNIZED`.
    let reason: Reason = ciborium::from_reader(cbor.as_slice()).expect("any text is a reason");
    assert_eq!(reason, Reason::from_str(s).unwrap_or(Reason::Unrecognized));
});
