//! Helpers shared by the fuzz targets: a reference My Number check written
//! apart from `ifrelay_proto::screen`, and walkers that look for personal
//! data in a CBOR tree the way the screen promises to.
//!
//! The reference is deliberately naive (normalise the whole text, split
//! it into runs, weigh each run from the left, digits by their general
//! category) so that a bug in the production screen (one pass, a table of
//! digit zeros, per-character decomposition) is not repeated here.

use ciborium::Value;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// The check-digit weights of the first eleven digits, read left to right
/// (the ordinance gives them right to left as 2..=7 then 2..=6).
const WEIGHTS: [u32; 11] = [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2];

/// The value of `c` as a decimal digit: any character of general category
/// Nd, in any script. Unicode encodes each set of Nd digits as ten
/// consecutive code points 0..9, and consecutive sets follow one another
/// directly, so the value is the distance from the first Nd character of
/// the block, modulo 10 (the screen uses a table of zeros instead).
pub fn digit(c: char) -> Option<u32> {
    let is_nd = |c: char| c.general_category() == GeneralCategory::DecimalNumber;
    if !is_nd(c) {
        return None;
    }
    let mut start = u32::from(c);
    while start
        .checked_sub(1)
        .and_then(char::from_u32)
        .is_some_and(is_nd)
    {
        start -= 1;
    }
    Some((u32::from(c) - start) % 10)
}

/// Unicode's Default_Ignorable_Code_Point, as listed in
/// DerivedCoreProperties.txt: skipped wherever it stands.
pub fn invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// What may join two groups of four digits, after NFKC: space,
/// hyphen-minus, the dashes U+2010..U+2015, minus U+2212 and the katakana
/// prolonged sound mark U+30FC.
pub fn separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{30FC}')
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

/// Reference of `screen::contains_my_number`, written from
/// docs/protocol.md §6 the slow way: the whole text NFKC-normalised,
/// invisible characters removed, combining marks after a digit removed;
/// then every maximal grouped run `group (separator group)*` (a group is a
/// maximal run of digits, a separator one character) is checked: any
/// group of exactly twelve digits, or a run of exactly three groups of
/// exactly four, with a valid check digit.
pub fn contains_my_number(text: &str) -> bool {
    let mut chars: Vec<char> = Vec::new();
    for c in text.nfkc().filter(|c| !invisible(*c)) {
        let is_mark = matches!(
            c.general_category(),
            GeneralCategory::NonspacingMark
                | GeneralCategory::SpacingMark
                | GeneralCategory::EnclosingMark
        );
        if is_mark && chars.last().is_some_and(|p| digit(*p).is_some()) {
            continue;
        }
        chars.push(c);
    }
    let valid = |d: &[u32]| d.len() == 12 && check_digit(&d[..11]) == d[11];
    let mut i = 0;
    while i < chars.len() {
        if digit(chars[i]).is_none() {
            i += 1;
            continue;
        }
        let mut groups: Vec<Vec<u32>> = Vec::new();
        loop {
            let mut group = Vec::new();
            while let Some(d) = chars.get(i).and_then(|c| digit(*c)) {
                group.push(d);
                i += 1;
            }
            groups.push(group);
            let joined = chars.get(i).is_some_and(|c| separator(*c))
                && chars.get(i + 1).is_some_and(|c| digit(*c).is_some());
            if !joined {
                break;
            }
            i += 1;
        }
        if groups.iter().any(|g| valid(g))
            || (groups.len() == 3 && groups.iter().all(|g| g.len() == 4) && valid(&groups.concat()))
        {
            return true;
        }
    }
    false
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
        assert!(contains_my_number("1234 5678 9018"));
        assert!(contains_my_number("١٢٣٤٥٦٧٨٩٠١٨"));
        assert!(contains_my_number("𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗𝟎𝟏𝟖"));
        assert!(contains_my_number("123456\u{200B}789018"));
        assert!(!contains_my_number("1234-5678-9018-3456"));
        assert!(!contains_my_number("03-1234-5678"));
    }
}
