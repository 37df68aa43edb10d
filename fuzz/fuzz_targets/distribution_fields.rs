//! Arbitrary bytes as the signed part of a distribution, correctly signed
//! under a pinned root, through `distribution::verify`: never a panic, only
//! `E_INVALID_FIELD`/`E_MY_NUMBER`/`E_BASIC_FOUR`/`E_DIST_EXPIRED`
//! refusals whose texts hold no My Number; an accepted distribution's
//! fields re-encode to the same fields and hold no personal data.
#![no_main]

use ciborium::Value;
use ifrelay_fuzz::personal_data;
use ifrelay_proto::distribution::{self, DISTRIBUTION_SIGNING_CONTEXT};
use ifrelay_proto::{Distribution, KeyCertFields, Reason, RootKey};
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// 2026-12-01T00:00:00Z: a fixed "now", so runs replay.
const NOW: i64 = 1_796_083_200_000;

fuzz_target!(|data: &[u8]| {
    let seeded = |b: u8| Ed25519KeyPair::from_seed_unchecked(&[b; 32]).expect("any seed");
    let (root, online) = (seeded(8), seeded(9));
    let signer = KeyCertFields {
        key: online.public_key().as_ref().to_vec(),
        not_before: 0,
        not_after: i64::MAX,
    }
    .certify(&root);
    let mut input = DISTRIBUTION_SIGNING_CONTEXT.to_vec();
    input.extend_from_slice(data);
    let d = Distribution {
        signed: data.to_vec(),
        sig: online.sign(&input).as_ref().to_vec(),
        signer,
    };
    match distribution::verify(&d, &[RootKey::of(&root)], NOW) {
        Ok(t) => {
            let again = t.fields.sign(&online, d.signer.clone());
            let back = distribution::verify_stored(&again, &[RootKey::of(&root)])
                .expect("re-signed fields verify");
            assert_eq!(back.fields, t.fields, "re-encoding changed the fields");
            let tree = Value::serialized(&t.fields).expect("fields serialise");
            if let Some(found) = personal_data(&tree) {
                panic!("accepted distribution carries personal data: {found:?}");
            }
        }
        Err(e) => {
            assert!(
                matches!(
                    e.reason(),
                    Reason::InvalidField | Reason::MyNumber | Reason::BasicFour | Reason::DistExpired
                ),
                "unexpected reason {:?}",
                e.reason()
            );
            let text = e.text();
            assert!(
                personal_data(&Value::Text(text.clone())).is_none(),
                "refusal text repeats personal data: {text}"
            );
        }
    }
});
