//! Helpers shared by the fuzz targets: a reference My Number check written
//! apart from `ifrelay_proto::screen`, and walkers that look for personal
//! data in a CBOR tree the way the screen promises to.
//!
//! The reference is deliberately naive (split into runs, weigh each run
//! from the left) so that a bug in the production screen is not repeated
//! here.

use ciborium::Value;

/// The check-digit weights of the first eleven digits, read left to right
/// (the ordinance gives them right to left as 2..=7 then 2..=6).
const WEIGHTS: [u32; 11] = [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2];

/// The value of `c` as a decimal digit, for the digits a client may send:
/// ASCII `0`-`9` and full-width `０`-`９` (U+FF10..U+FF19).
pub fn digit(c: char) -> Option<u32> {
    match c {
        '0'..='9' => Some(c as u32 - '0' as u32),
        '\u{ff10}'..='\u{ff19}' => Some(c as u32 - 0xff10),
        _ => None,
    }
}

/// The check digit of an eleven-digit body.
pub fn check_digit(body: &[u32]) -> u32 {
    let sum: u32 = body.iter().zip(WEIGHTS).map(|(d, w)| d * w).sum();
    match sum % 11 {
        0 | 1 => 0,
        r => 11 - r,
    }
}

/// Reference of `screen::is_my_number`: exactly twelve ASCII digits whose
/// last is the check digit of the others.
pub fn is_my_number(bytes: &[u8]) -> bool {
    if bytes.len() != 12 || !bytes.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let d: Vec<u32> = bytes.iter().map(|b| u32::from(b - b'0')).collect();
    check_digit(&d[..11]) == d[11]
}

/// Reference of `screen::contains_my_number`: some maximal run of digits
/// (ASCII or full-width) is exactly twelve long with a valid check digit.
pub fn contains_my_number(text: &str) -> bool {
    let mut runs: Vec<Vec<u32>> = vec![Vec::new()];
    for c in text.chars() {
        match digit(c) {
            Some(d) => runs.last_mut().expect("runs is never empty").push(d),
            None => runs.push(Vec::new()),
        }
    }
    runs.iter()
        .any(|r| r.len() == 12 && check_digit(&r[..11]) == r[11])
}

/// The decimal text a number is echoed as (in logs, in serde's error
/// messages), so a number is screened like the same digits sent as text.
pub fn number_text(value: &Value) -> Option<String> {
    match value {
        Value::Integer(i) => Some(i128::from(*i).to_string()),
        Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// What [`personal_data`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A text (key or value) or a number whose digits hold a My Number.
    MyNumber(String),
    /// A map key naming a basic-four fact.
    BasicFour(String),
}

/// Every place of a CBOR tree the screen must refuse: text keys and values
/// and numbers holding a My Number, and basic-four keys. Byte strings are
/// opaque and skipped, as the screen skips them. Returns the first found,
/// in no particular order.
pub fn personal_data(value: &Value) -> Option<Found> {
    match value {
        Value::Text(t) => contains_my_number(t).then(|| Found::MyNumber(t.clone())),
        Value::Integer(_) | Value::Float(_) => {
            let text = number_text(value)?;
            contains_my_number(&text).then_some(Found::MyNumber(text))
        }
        Value::Array(items) => items.iter().find_map(personal_data),
        Value::Map(entries) => entries.iter().find_map(|(k, v)| {
            if let Value::Text(t) = k {
                let lowered = t.to_lowercase();
                if ifrelay_proto::screen::BASIC_FOUR_KEYS.contains(&lowered.as_str()) {
                    return Some(Found::BasicFour(t.clone()));
                }
            }
            personal_data(k).or_else(|| personal_data(v))
        }),
        Value::Tag(_, inner) => personal_data(inner),
        _ => None,
    }
}

/// Encodes `value` as CBOR; writing into a `Vec` cannot fail.
pub fn to_cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("writing CBOR into a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_matches_the_worked_example() {
        assert!(is_my_number(b"123456789018"));
        assert!(!is_my_number(b"123456789012"));
        assert!(contains_my_number("ref １２３４５６７８９０１８ end"));
        assert!(!contains_my_number("1234567890180"));
    }
}
