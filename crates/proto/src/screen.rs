//! Screening of plaintext headers for personal data that must never pass
//! through an interface system (§2.2 ③): My Numbers and the basic four
//! facts (name, address, sex, birth date).
//!
//! The screen runs over the decoded CBOR tree before any typed parsing, so
//! it sees every key and text value, including ones the typed message would
//! ignore. Byte strings (the encrypted provision body, public keys) are
//! opaque and not looked into.

use ciborium::Value;

/// Map keys that name one of the basic four facts, in the spellings a
/// client might use. Compared case-insensitively.
pub const BASIC_FOUR_KEYS: &[&str] = &[
    "name",
    "full_name",
    "fullname",
    "kana_name",
    "address",
    "sex",
    "gender",
    "birth_date",
    "birthdate",
    "date_of_birth",
    "dob",
    "shimei",
    "jusho",
    "seibetsu",
    "seinengappi",
    "氏名",
    "住所",
    "性別",
    "生年月日",
];

/// What the screen found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A key naming a basic-four fact, with its path.
    BasicFourKey { path: String },
    /// A text value holding a 12-digit run with a valid check digit.
    MyNumber { path: String },
}

/// True when `digits` (exactly 12 ASCII digits) carry a valid My Number
/// check digit (the last one), per the Cabinet Office ordinance:
/// the check digit is `11 - (Σ Pn·Qn mod 11)`, or 0 when the remainder is
/// 0 or 1, where Pn is the n-th digit counted from the right excluding the
/// check digit and Qn is n+1 for n ≤ 6 and n-5 for n ≥ 7.
pub fn is_my_number(digits: &[u8]) -> bool {
    if digits.len() != 12 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let body = &digits[..11];
    let sum: u32 = (1..=11u32)
        .map(|n| {
            let p = u32::from(body[11 - n as usize] - b'0');
            let q = if n <= 6 { n + 1 } else { n - 5 };
            p * q
        })
        .sum();
    let rem = sum % 11;
    let check = if rem <= 1 { 0 } else { 11 - rem };
    u32::from(digits[11] - b'0') == check
}

/// True when `text` holds a maximal run of exactly 12 ASCII digits whose
/// check digit is valid. Full-width digits are folded to ASCII first, since
/// a client may send them.
pub fn contains_my_number(text: &str) -> bool {
    let mut run: Vec<u8> = Vec::with_capacity(12);
    let check_run = |run: &mut Vec<u8>| -> bool {
        let hit = run.len() == 12 && is_my_number(run);
        run.clear();
        hit
    };
    for c in text.chars() {
        let digit = match c {
            '0'..='9' => Some(c as u8),
            '０'..='９' => u8::try_from(u32::from(c) - u32::from('０'))
                .ok()
                .map(|d| d + b'0'),
            _ => None,
        };
        match digit {
            Some(d) => {
                run.push(d);
                if run.len() > 12 {
                    // Longer than a My Number: keep counting but it can no
                    // longer match; cap the buffer.
                    run.truncate(13);
                }
            }
            None => {
                if check_run(&mut run) {
                    return true;
                }
            }
        }
    }
    check_run(&mut run)
}

/// Screens a decoded CBOR tree. Returns the first finding, if any.
pub fn screen(value: &Value) -> Option<Finding> {
    let mut path = String::new();
    screen_at(value, &mut path, 0)
}

/// Deeper than this is refused by the decoder's recursion limit anyway.
const MAX_DEPTH: usize = 64;

/// How a finding's path names a map key it must not repeat.
const KEY_PLACEHOLDER: &str = "<key>";

fn screen_at(value: &Value, path: &mut String, depth: usize) -> Option<Finding> {
    if depth > MAX_DEPTH {
        return None;
    }
    match value {
        Value::Text(t) => contains_my_number(t).then(|| Finding::MyNumber { path: path.clone() }),
        // A My Number sent as a number is still a My Number: numbers are
        // screened by the decimal text they are logged and echoed as, like
        // the same digits sent as text (so `-123456789018` is refused too).
        Value::Integer(i) => contains_my_number(&i128::from(*i).to_string())
            .then(|| Finding::MyNumber { path: path.clone() }),
        Value::Float(f) => {
            contains_my_number(&f.to_string()).then(|| Finding::MyNumber { path: path.clone() })
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = screen_at(item, path, depth + 1);
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                // The path goes into refusals and logs, so a key that holds
                // a My Number, or is not text (its debug form would repeat
                // whatever it holds), is named `<key>`, never written out.
                match k {
                    Value::Text(t) if !contains_my_number(t) => {
                        path.push_str(t);
                        let lowered = t.to_lowercase();
                        if BASIC_FOUR_KEYS.iter().any(|b| *b == lowered) {
                            return Some(Finding::BasicFourKey { path: path.clone() });
                        }
                    }
                    _ => path.push_str(KEY_PLACEHOLDER),
                }
                if let Some(found) = screen_at(k, path, depth + 1) {
                    return Some(found);
                }
                let found = screen_at(v, path, depth + 1);
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        Value::Tag(_, inner) => screen_at(inner, path, depth + 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a valid My Number from 11 digits by computing its check digit.
    fn with_check_digit(body: &str) -> String {
        (0..10)
            .map(|d| format!("{body}{d}"))
            .find(|c| is_my_number(c.as_bytes()))
            .expect("one check digit fits")
    }

    #[test]
    fn check_digit_matches_the_published_algorithm() {
        // Worked example: body 12345678901, weights from the right 2..7 then 2..6:
        // Σ = 1·2+0·3+9·4+8·5+7·6+6·7+5·2+4·3+3·4+2·5+1·6 = 212; 212 mod 11 = 3; 11-3 = 8.
        assert!(is_my_number(b"123456789018"));
        assert!(!is_my_number(b"123456789012"));
        assert!(!is_my_number(b"12345678901"));
        // Remainder 0 or 1 gives check digit 0.
        let n = with_check_digit("00000000000");
        assert_eq!(n, "000000000000");
    }

    #[test]
    fn finds_my_numbers_inside_text_but_not_longer_runs() {
        assert!(contains_my_number("ref 123456789018 end"));
        assert!(contains_my_number("１２３４５６７８９０１８"));
        assert!(!contains_my_number("1234567890183"));
        assert!(!contains_my_number("131016-20261122-1795300000-000000042"));
        assert!(!contains_my_number("123456789012"));
    }

    #[test]
    fn screen_reports_paths_of_findings() {
        let v = Value::Map(vec![
            (Value::Text("serial".into()), Value::Text("x".into())),
            (
                Value::Text("prefix".into()),
                Value::Map(vec![(Value::Text("Name".into()), Value::Text("x".into()))]),
            ),
        ]);
        assert_eq!(
            screen(&v),
            Some(Finding::BasicFourKey {
                path: "prefix.Name".into()
            })
        );
        let v = Value::Map(vec![(
            Value::Text("codes".into()),
            Value::Array(vec![
                Value::Text("a".into()),
                Value::Text("123456789018".into()),
            ]),
        )]);
        assert_eq!(
            screen(&v),
            Some(Finding::MyNumber {
                path: "codes[1]".into()
            })
        );
        let v = Value::Map(vec![(
            Value::Text("n".into()),
            Value::Integer(123_456_789_018u64.into()),
        )]);
        assert!(matches!(screen(&v), Some(Finding::MyNumber { .. })));
        let body = Value::Map(vec![(
            Value::Text("body".into()),
            Value::Bytes(b"123456789012".to_vec()),
        )]);
        assert_eq!(screen(&body), None, "opaque bytes are not looked into");
    }
}
