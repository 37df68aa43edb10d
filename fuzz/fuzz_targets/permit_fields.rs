//! Arbitrary bytes as the signed part of a permit through `SignedPermit::fields`: never a panic, only `E_PERMIT_INVALID`/`E_MY_NUMBER`/`E_BASIC_FOUR` refusals free of My Numbers, and accepted fields re-encode to the same fields.
#![no_main]

use ciborium::Value;
use ifrelay_fuzz::personal_data;
use ifrelay_proto::{Reason, SignedPermit, MAX_PERMIT_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let permit = SignedPermit {
        signed: data.to_vec(),
        sig: Vec::new(),
    };
    match permit.fields() {
        Ok(fields) => {
            assert!(data.len() <= MAX_PERMIT_BYTES);
            let again = SignedPermit::unsigned(&fields);
            assert_eq!(
                again.fields(),
                Ok(fields.clone()),
                "re-encoding changed the permit"
            );
            let tree = Value::serialized(&fields).expect("permit fields serialise");
            if let Some(found) = personal_data(&tree) {
                panic!("accepted permit carries personal data: {found:?}");
            }
        }
        Err(e) => {
            assert!(
                matches!(
                    e.reason,
                    Reason::PermitInvalid | Reason::MyNumber | Reason::BasicFour
                ),
                "unexpected reason {:?}",
                e.reason
            );
            if data.len() > MAX_PERMIT_BYTES {
                assert_eq!(e.reason, Reason::PermitInvalid);
            }
            assert_eq!(e.message_id, None);
            assert!(
                !ifrelay_fuzz::contains_my_number(&e.text),
                "refusal text holds a My Number: {e:?}"
            );
        }
    }
});
