//! The personal-data screen against a naive reference written here: `is_my_number` and `contains_my_number` agree with it on every input, and `screen` finds something in a CBOR tree exactly when the reference walk does.
#![no_main]

use ciborium::Value;
use ifrelay_proto::screen::{self, Finding};
use libfuzzer_sys::fuzz_target;

/// The decoder's own limit; the screen must cope with anything below it.
const RECURSION_LIMIT: usize = 32;

fuzz_target!(|data: &[u8]| {
    assert_eq!(
        screen::is_my_number(data),
        ifrelay_fuzz::is_my_number(data),
        "is_my_number({data:?})"
    );
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(
            screen::contains_my_number(text),
            ifrelay_fuzz::contains_my_number(text),
            "contains_my_number({text:?})"
        );
    }
    if let Ok(tree) =
        ciborium::de::from_reader_with_recursion_limit::<Value, _>(data, RECURSION_LIMIT)
    {
        let found = screen::screen(&tree);
        let want = ifrelay_fuzz::personal_data(&tree);
        assert_eq!(
            found.is_some(),
            want.is_some(),
            "screen says {found:?}, reference says {want:?} for {tree:?}"
        );
        // A finding's path is written into the refusal and the log: it
        // must not itself hold the number it reports.
        if let Some(Finding::MyNumber { path } | Finding::BasicFourKey { path }) = &found {
            assert!(
                !ifrelay_fuzz::contains_my_number(path),
                "finding path holds a My Number: {path:?}"
            );
        }
    }
});
