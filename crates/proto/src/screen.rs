//! Screening of plaintext headers for personal data that must never pass
//! through an interface system (§2.2 ③): My Numbers and the basic four
//! facts (name, address, sex, birth date).
//!
//! The screen runs over the decoded CBOR tree before any typed parsing, so
//! it sees every key and text value, including ones the typed message would
//! ignore. Byte strings (the encrypted provision body, public keys) are
//! opaque and not looked into.
//!
//! A My Number is found in the forms people and programs write it
//! (docs/protocol.md §6 is the normative rule; [`contains_my_number`] is
//! its one implementation):
//!
//! - the text is read after NFKC normalisation (full-width, mathematical,
//!   superscript and circled digits become ASCII digits; U+3000 and the
//!   other spaces become U+0020; U+FF0D becomes `-`);
//! - a digit is any Unicode decimal digit (general category Nd: ASCII,
//!   Arabic-Indic, Devanagari, Thai, …);
//! - invisible characters (Unicode's Default_Ignorable_Code_Point: zero
//!   width space and joiners, word joiner, BOM, soft hyphen, bidi
//!   controls, variation selectors, …) are skipped wherever they are, and
//!   combining marks directly after a digit (a keycap `1️⃣`) belong to it;
//! - a **maximal run of exactly twelve digits**, or a **maximal grouped run
//!   of exactly three groups of four digits** joined by one separator each
//!   (space, hyphen-minus, U+2010..U+2015 dashes, U+2212 minus, U+30FC
//!   katakana prolonged sound mark), is a My Number when its last digit is
//!   the check digit of the other eleven.
//!
//! Invariant: [`contains_my_number`] reads its text once, left to right,
//! with a fixed amount of state and no allocation, so the screen's cost is
//! linear in the size of the frame.

use core::fmt::Write as _;

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
    /// A text (key or value) or a number holding a My Number, in any of
    /// the forms [`contains_my_number`] finds.
    MyNumber { path: String },
}

/// True when `digits` (exactly 12 ASCII digits) carry a valid My Number
/// check digit (the last one), per the Cabinet Office ordinance:
/// the check digit is `11 - (Σ Pn·Qn mod 11)`, or 0 when the remainder is
/// 0 or 1, where Pn is the n-th digit counted from the right excluding the
/// check digit and Qn is n+1 for n ≤ 6 and n-5 for n ≥ 7.
pub fn is_my_number(digits: &[u8]) -> bool {
    let Ok(digits) = <&[u8; 12]>::try_from(digits) else {
        return false;
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    has_check_digit(&digits.map(|d| d - b'0'))
}

/// True when the last of twelve digit values (0..=9) is the check digit of
/// the other eleven (see [`is_my_number`]).
fn has_check_digit(values: &[u8; 12]) -> bool {
    // Pn for n = 1..=11 are the first eleven values read from the right.
    let sum: u32 = (1..=11u32)
        .zip(values[..11].iter().rev())
        .map(|(n, &p)| {
            let q = if n <= 6 { n + 1 } else { n - 5 };
            u32::from(p) * q
        })
        .sum();
    let rem = sum % 11;
    let check = if rem <= 1 { 0 } else { 11 - rem };
    u32::from(values[11]) == check
}

/// True when `text` holds a My Number in any of the forms of the module
/// documentation: after NFKC normalisation, with invisible characters
/// skipped, a maximal run of exactly 12 Unicode decimal digits, or a
/// maximal grouped run of exactly three 4-digit groups joined by one
/// separator each, whose last digit is a valid check digit.
///
/// Longer runs are not My Numbers (a 13-digit corporate number, a
/// 4-4-4-4 grouping), nor are groupings of other shapes (`2026-12-01`,
/// `03-1234-5678`) or groups joined by anything but exactly one
/// separator.
pub fn contains_my_number(text: &str) -> bool {
    let mut scan = Scanner::default();
    for c in text.chars() {
        if c.is_ascii() {
            // NFKC leaves ASCII as it is, and no ASCII character is
            // invisible: the fast path of every ordinary frame.
            if scan.feed(unicode::class_of_ascii(c as u8)) {
                return true;
            }
            continue;
        }
        // Per character NFKD gives the same digits, separators and
        // invisible characters as NFKC of the whole text: no Nd digit,
        // separator or Default_Ignorable character is a canonical
        // composite, and canonical reordering only moves combining marks
        // among themselves, which the scanner treats alike. So the text
        // needs no buffer (`nfkc()` would hold every run of combining
        // marks, however long).
        let mut hit = false;
        unicode_normalization::char::decompose_compatible(c, |d| {
            hit = hit || scan.feed(unicode::class_of(d));
        });
        if hit {
            return true;
        }
    }
    scan.finish()
}

/// What one normalised character is to the My Number scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A decimal digit with its value.
    Digit(u8),
    /// May join two groups of a grouped run.
    Separator,
    /// A combining mark: part of the digit it follows, else like `Other`.
    Mark,
    /// Invisible (Default_Ignorable_Code_Point): skipped.
    Invisible,
    /// Ends any run.
    Other,
}

/// Where the scanner is within a grouped run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Place {
    /// Not in a run.
    #[default]
    Outside,
    /// In a group of digits.
    InGroup,
    /// Just after one separator that follows a group.
    AfterSeparator,
}

/// The state of [`contains_my_number`]: a fixed size whatever the text.
///
/// A grouped run is a maximal `group (separator group)*`; a group is a
/// maximal run of digits. A group of exactly 12 digits is checked when it
/// closes (the plain form, whatever stands around it); the run is checked
/// when it ends, if it was exactly three groups of exactly 4 digits.
#[derive(Debug, Default)]
struct Scanner {
    place: Place,
    /// The current group's first 12 digit values.
    group: [u8; 12],
    /// Digits in the current group, counted up to 13 (more is "too long").
    group_len: u8,
    /// The digit values of the run's first three groups, when 4 long.
    grouped: [u8; 12],
    /// Groups closed in the current run, counted up to 4.
    groups: u8,
    /// Every closed group of the current run had exactly 4 digits.
    all_four: bool,
}

impl Scanner {
    /// Takes the next character's class; true when a My Number ended here.
    fn feed(&mut self, class: Class) -> bool {
        match (class, self.place) {
            (Class::Digit(d), place) => {
                match place {
                    Place::Outside => {
                        self.groups = 0;
                        self.all_four = true;
                        self.group_len = 0;
                    }
                    Place::AfterSeparator => self.group_len = 0,
                    Place::InGroup => {}
                }
                self.place = Place::InGroup;
                if let Some(slot) = self.group.get_mut(usize::from(self.group_len)) {
                    *slot = d;
                }
                self.group_len = (self.group_len + 1).min(13);
                false
            }
            (Class::Invisible, _)
            | (Class::Mark, Place::InGroup)
            | (Class::Separator | Class::Mark | Class::Other, Place::Outside) => false,
            (Class::Separator, Place::InGroup) => {
                self.place = Place::AfterSeparator;
                self.close_group()
            }
            (Class::Other, Place::InGroup) => {
                self.place = Place::Outside;
                self.close_group() || self.end_run()
            }
            // A second separator, or anything else, after a separator:
            // the run ended with the group before it.
            (Class::Separator | Class::Mark | Class::Other, Place::AfterSeparator) => {
                self.place = Place::Outside;
                self.end_run()
            }
        }
    }

    /// The end of the text; true when a My Number ended there.
    fn finish(mut self) -> bool {
        self.feed(Class::Other)
    }

    /// The current group ended: checks the plain form and notes the group
    /// for the grouped form.
    fn close_group(&mut self) -> bool {
        let len = usize::from(self.group_len);
        if len == 4 && self.groups < 3 {
            let at = usize::from(self.groups) * 4;
            self.grouped[at..at + 4].copy_from_slice(&self.group[..4]);
        } else {
            self.all_four = false;
        }
        self.groups = (self.groups + 1).min(4);
        len == 12 && has_check_digit(&self.group)
    }

    /// The grouped run ended: checks the 4-4-4 form.
    fn end_run(&self) -> bool {
        self.groups == 3 && self.all_four && has_check_digit(&self.grouped)
    }
}

/// The Unicode tables of the scanner. Rust's standard library has no
/// general category or numeric value for a `char` (`char::is_numeric` is
/// also true for fractions, Roman numerals and superscripts, and
/// `char::to_digit` knows only ASCII), and the decimal digits NFKC leaves
/// alone (Arabic-Indic, Devanagari, …) have to be read here.
mod unicode {
    use super::Class;

    /// [`Class`] of an ASCII byte.
    pub(super) fn class_of_ascii(b: u8) -> Class {
        match b {
            b'0'..=b'9' => Class::Digit(b - b'0'),
            b' ' | b'-' => Class::Separator,
            _ => Class::Other,
        }
    }

    /// [`Class`] of a character of NFKD-normalised text.
    pub(super) fn class_of(c: char) -> Class {
        if c.is_ascii() {
            return class_of_ascii(c as u8);
        }
        if let Some(d) = decimal_value(c) {
            return Class::Digit(d);
        }
        if is_separator(c) {
            return Class::Separator;
        }
        if is_default_ignorable(c) {
            return Class::Invisible;
        }
        if unicode_normalization::char::is_combining_mark(c) {
            return Class::Mark;
        }
        Class::Other
    }

    /// Non-ASCII separators after NFKD: the dashes U+2010 (U+2011 maps to
    /// it), U+2012..U+2015 (the small and vertical forms map to them) and
    /// U+2212 minus, and U+30FC katakana-hiragana prolonged sound mark,
    /// which a Japanese input method types for `-` (half-width U+FF70 maps
    /// to it). Spaces and full-width hyphen-minus map to ASCII.
    fn is_separator(c: char) -> bool {
        matches!(c, '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{30FC}')
    }

    /// The value of a decimal digit (general category Nd), any script.
    ///
    /// Unicode encodes every set of Nd digits as ten consecutive code
    /// points from 0 to 9 (a stability policy), so the code point of each
    /// set's zero is all a table needs. Generated from the Unicode 18.0
    /// character database (the version of unicode-normalization 0.1.26),
    /// and checked against it by `nd_table_matches_the_unicode_database`.
    pub(super) fn decimal_value(c: char) -> Option<u8> {
        let cp = u32::from(c);
        let i = ND_ZEROS.partition_point(|&zero| zero <= cp);
        let zero = *ND_ZEROS.get(i.checked_sub(1)?)?;
        u8::try_from(cp - zero).ok().filter(|d| *d < 10)
    }

    /// The zero of every set of Nd digits, ascending (77 sets).
    pub(super) const ND_ZEROS: &[u32] = &[
        0x0030, 0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66,
        0x0CE6, 0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946,
        0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0,
        0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x10D40, 0x11066, 0x110F0, 0x11136,
        0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x116D0, 0x116DA, 0x11730, 0x118E0,
        0x11950, 0x11BF0, 0x11C50, 0x11D50, 0x11DA0, 0x11DE0, 0x11F50, 0x16130, 0x16A60, 0x16AC0,
        0x16B50, 0x16D70, 0x1CCF0, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0,
        0x1E4F0, 0x1E5F1, 0x1E950, 0x1FBF0,
    ];

    /// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt,
    /// unchanged since 14.0): characters a renderer shows as nothing, so
    /// digits split by them read as one number. Among them U+00AD soft
    /// hyphen, U+200B..U+200D zero-width space and joiners, U+2060 word
    /// joiner, U+FEFF, the bidi controls and the variation selectors.
    pub(super) fn is_default_ignorable(c: char) -> bool {
        matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
    }
}

/// Screens a decoded CBOR tree. Returns the first finding, if any.
pub fn screen(value: &Value) -> Option<Finding> {
    let mut path = String::new();
    screen_at(value, &mut path, 0)
}

/// True when the decimal text of `i` (sign and digits, the way it is
/// logged and echoed) holds a My Number: exactly twelve digits, the first
/// not 0, with a valid check digit. Computed without formatting it.
fn integer_holds_my_number(i: i128) -> bool {
    let mut rest = i.unsigned_abs();
    if !(100_000_000_000..1_000_000_000_000).contains(&rest) {
        return false;
    }
    let mut values = [0u8; 12];
    for slot in values.iter_mut().rev() {
        *slot = (rest % 10) as u8;
        rest /= 10;
    }
    has_check_digit(&values)
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
        Value::Integer(i) => integer_holds_my_number(i128::from(*i))
            .then(|| Finding::MyNumber { path: path.clone() }),
        Value::Float(f) => {
            contains_my_number(&f.to_string()).then(|| Finding::MyNumber { path: path.clone() })
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                // Writing into a String cannot fail.
                let _ = write!(path, "[{i}]");
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
        assert!(contains_my_number("call 1234 5678 9018 today"));
        assert!(!contains_my_number("1234567890183"));
        assert!(!contains_my_number("131016-20261122-1795300000-000000042"));
        assert!(!contains_my_number("123456789012"));
    }

    /// `123456789018` written with `digit` as its digits and `sep` between
    /// 4-digit groups.
    fn written(zero: char, sep: &str) -> String {
        let digit = |d: char| {
            char::from_u32(u32::from(zero) + d.to_digit(10).expect("ascii digit"))
                .expect("a digit of the set")
        };
        let groups: Vec<String> = ["1234", "5678", "9018"]
            .iter()
            .map(|g| g.chars().map(digit).collect())
            .collect();
        groups.join(sep)
    }

    #[test]
    fn every_written_form_of_a_my_number_is_found() {
        let forms = [
            // Plain runs in other scripts and compatibility forms.
            written('0', ""),
            written('\u{FF10}', ""),  // full-width
            written('\u{0660}', ""),  // Arabic-Indic
            written('\u{06F0}', ""),  // extended Arabic-Indic (Persian)
            written('\u{0966}', ""),  // Devanagari
            written('\u{0E50}', ""),  // Thai
            written('\u{1D7CE}', ""), // mathematical bold
            written('\u{1D7F6}', ""), // mathematical monospace
            written('\u{1E950}', ""), // Adlam (Nd, not mapped by NFKC)
            // 4-4-4 with each separator.
            written('0', " "),
            written('0', "-"),
            written('0', "\u{3000}"), // ideographic space
            written('0', "\u{00A0}"), // no-break space
            written('0', "\u{2009}"), // thin space
            written('0', "\u{FF0D}"), // full-width hyphen-minus
            written('0', "\u{FE63}"), // small hyphen-minus
            written('0', "\u{2010}"),
            written('0', "\u{2011}"),
            written('0', "\u{2012}"),
            written('0', "\u{2013}"),
            written('0', "\u{2014}"),
            written('0', "\u{2015}"),
            written('0', "\u{2212}"), // minus sign
            written('0', "\u{30FC}"), // katakana prolonged sound mark
            written('0', "\u{FF70}"), // its half-width form
            written('\u{FF10}', "\u{3000}"),
            written('\u{FF10}', "\u{FF0D}"),
            written('\u{0660}', " "),
            "1234 5678-9018".to_owned(), // mixed separators
            // Split by invisible characters, anywhere.
            "1\u{200B}23456789018".to_owned(),
            "1234\u{200C}5678\u{200D}9018".to_owned(),
            "12345678901\u{2060}8".to_owned(),
            "\u{FEFF}1234567890\u{FEFF}18".to_owned(),
            "1234\u{00AD}5678\u{00AD}9018".to_owned(), // soft hyphens
            "123456\u{200F}789018".to_owned(),         // right-to-left mark
            "1234 \u{200B}5678 9018".to_owned(),       // next to a separator
            // Keycaps: a variation selector and a combining mark per digit.
            "123456789018"
                .chars()
                .map(|c| format!("{c}\u{FE0F}\u{20E3}"))
                .collect(),
            // Circled and superscript digits are digits after NFKC.
            "\u{2460}\u{2461}\u{2462}\u{2463}\u{2464}\u{2465}\u{2466}\u{2467}\u{2468}0\u{2460}8"
                .to_owned(),
            "\u{00B9}\u{00B2}\u{00B3}456789018".to_owned(),
            // The number as a number's text, and inside words.
            "-123456789018".to_owned(),
            "ref:1234-5678-9018.".to_owned(),
            "番号は１２３４　５６７８　９０１８です".to_owned(),
            "(1234 5678 9018)".to_owned(),
            "a-1234-5678-9018-".to_owned(),
            "x 1234 5678 9018  2026".to_owned(), // two spaces end the run
        ];
        for form in &forms {
            assert!(
                contains_my_number(form),
                "{form:?} ({})",
                form.escape_unicode()
            );
        }
    }

    #[test]
    fn near_misses_pass() {
        for text in [
            "1234567890183",  // 13 digits: a corporate number's length
            "123456789012",   // wrong check digit
            "1234 5678 9012", // 4-4-4, wrong check digit
            "1234-5678-9012",
            "2026-12-01", // a date
            "2026-12-01 10:00",
            "03-1234-5678", // a phone number
            "090-1234-5678",
            "0120-123-456",
            "1234-5678-9018-3456", // four groups: not a My Number
            "9999 1234 5678 9018",
            "1234 5678 9018 7", // a fourth group of another size
            "12345-678-9018",   // other group sizes
            "1234  5678  9018", // two separators
            "1234 - 5678 - 9018",
            "1234/5678/9018", // not a separator
            "1234.5678.9018",
            "1234\n5678\n9018",
            "1234\u{0301} 5678 9018\u{0301}5",
            "131016-20261122-1795300000-000000042", // a serial
            "ims-131016-1795305600-7",              // a message id
            "12345678901\u{200B}83",                // invisible joiner makes 13 digits
            "1\u{00BD}23456789018",                 // ½ is 1⁄2: the slash splits the run
            "\u{2160}12345678901",                  // nor is a Roman numeral
            "",
            "no digits at all",
        ] {
            assert!(!contains_my_number(text), "{text:?}");
        }
    }

    #[test]
    fn the_scanner_matches_the_rule_written_with_nfkc() {
        // The rule of §6 written the slow way (whole-text NFKC, a token
        // list), against the one-pass scanner, on texts made of every
        // kind of piece.
        fn reference(text: &str) -> bool {
            use unicode_normalization::UnicodeNormalization;
            let mut digits_of_groups: Vec<Vec<u8>> = Vec::new();
            let mut runs: Vec<Vec<Vec<u8>>> = Vec::new();
            let mut after_sep = false;
            let mut last_was_digit = false;
            let flush = |groups: &mut Vec<Vec<u8>>, runs: &mut Vec<Vec<Vec<u8>>>| {
                if !groups.is_empty() {
                    runs.push(std::mem::take(groups));
                }
            };
            for c in text.nfkc() {
                match unicode::class_of(c) {
                    Class::Invisible => {}
                    Class::Mark if last_was_digit => {}
                    Class::Digit(d) => {
                        if last_was_digit {
                            digits_of_groups.last_mut().expect("a group").push(d);
                        } else {
                            if !after_sep {
                                flush(&mut digits_of_groups, &mut runs);
                            }
                            digits_of_groups.push(vec![d]);
                        }
                        last_was_digit = true;
                        after_sep = false;
                    }
                    Class::Separator if last_was_digit => {
                        last_was_digit = false;
                        after_sep = true;
                    }
                    _ => {
                        flush(&mut digits_of_groups, &mut runs);
                        last_was_digit = false;
                        after_sep = false;
                    }
                }
            }
            flush(&mut digits_of_groups, &mut runs);
            let valid = |d: &[u8]| <[u8; 12]>::try_from(d).is_ok_and(|d| has_check_digit(&d));
            runs.iter().any(|groups| {
                groups.iter().any(|g| valid(g))
                    || (groups.len() == 3
                        && groups.iter().all(|g| g.len() == 4)
                        && valid(&groups.concat()))
            })
        }
        let pieces = [
            "1234",
            "5678",
            "9018",
            "123456789018",
            "0",
            "12",
            " ",
            "-",
            "\u{3000}",
            "\u{FF0D}",
            "\u{30FC}",
            "\u{200B}",
            "\u{00AD}",
            "\u{0301}",
            "\u{20E3}",
            "a",
            "é",
            "e\u{0301}",
            "\u{0662}\u{0663}",
            "\u{FF11}",
            "\u{1D7D0}",
            "\u{2460}",
            "\u{FE0F}",
            "  ",
            "\n",
            "\u{0CE6}\u{0CE7}\u{0CE8}\u{0CE9}",
        ];
        // A small deterministic generator: every text of up to five pieces
        // would be too many, so a fixed pseudo-random sample.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut found = 0;
        for _ in 0..50_000 {
            let n = 1 + next() % 7;
            let text: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            let want = reference(&text);
            found += usize::from(want);
            assert_eq!(contains_my_number(&text), want, "{text:?}");
        }
        assert!(found > 100, "the sample holds My Numbers: {found}");
    }

    #[test]
    fn composition_never_makes_or_takes_a_digit_separator_or_invisible() {
        // Why per-character NFKD may stand for NFKC (see
        // `contains_my_number`): no canonical composite is, or is built on,
        // a character the scanner reads as more than `Other` or `Mark`.
        let counts = |c: char| {
            !matches!(
                unicode::class_of(c),
                Class::Digit(_) | Class::Separator | Class::Invisible
            )
        };
        for c in (0x80..=0x10_FFFFu32).filter_map(char::from_u32) {
            let mut parts = Vec::new();
            unicode_normalization::char::decompose_canonical(c, |d| parts.push(d));
            if parts.len() > 1 {
                assert!(counts(c) && counts(parts[0]), "{}", c.escape_unicode());
            }
        }
    }

    #[test]
    fn nd_table_matches_the_unicode_database() {
        use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
        // Every Nd character has a value, and nothing else has one.
        for c in (0..=0x10_FFFFu32).filter_map(char::from_u32) {
            let nd = c.general_category() == GeneralCategory::DecimalNumber;
            assert_eq!(
                unicode::decimal_value(c).is_some(),
                nd,
                "{}",
                c.escape_unicode()
            );
        }
        // Each listed zero is the digit 0 of its set.
        for zero in unicode::ND_ZEROS {
            let c = char::from_u32(*zero).expect("a char");
            assert_eq!(unicode::decimal_value(c), Some(0));
        }
        assert_eq!(
            unicode_normalization::UNICODE_VERSION,
            (18, 0, 0),
            "the Nd table was generated for Unicode 18.0: regenerate it"
        );
    }

    #[test]
    fn invisible_characters_are_the_default_ignorables() {
        for c in [
            '\u{00AD}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{034F}',
            '\u{180E}',
            '\u{2066}',
            '\u{FE0F}',
            '\u{E0041}',
            '\u{3164}',
        ] {
            assert!(unicode::is_default_ignorable(c), "{}", c.escape_unicode());
        }
        for c in [' ', '\u{00A0}', '\u{3000}', '-', 'a', '\u{0301}'] {
            assert!(!unicode::is_default_ignorable(c), "{}", c.escape_unicode());
        }
    }

    #[test]
    fn integers_are_screened_by_their_decimal_text() {
        for i in [123_456_789_018i128, -123_456_789_018] {
            assert!(integer_holds_my_number(i));
            assert!(contains_my_number(&i.to_string()));
        }
        for i in [
            123_456_789_012i128,
            1_234_567_890_183,
            12_345_678_901,
            0,
            i128::from(u64::MAX),
            i128::MIN,
        ] {
            assert_eq!(
                integer_holds_my_number(i),
                contains_my_number(&i.to_string()),
                "{i}"
            );
        }
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
