//! Why a frame or a permit is refused: [`DecodeError`], its reason code and
//! the refusal text sent back and logged.
//!
//! This module owns the rules for that text: it is cut to [`MAX_TEXT`]
//! bytes, and withheld (the reason's description is sent instead) if it
//! would repeat a My Number (§2.2 ③). Every refusal built from decoding —
//! of a frame or of a permit — goes through [`DecodeError::new`] or the
//! screen's findings here, so none of them can bypass the rules.

use crate::reason::Reason;
use crate::screen::{self, Finding};
use crate::types::MessageId;

/// Longest refusal text, in bytes; longer texts are cut.
pub const MAX_TEXT: usize = 512;

/// Why a frame body could not be accepted, with the reason code to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {text}")]
pub struct DecodeError {
    pub reason: Reason,
    pub text: String,
    /// The frame's id when it could be read, so the refusal can name it.
    pub message_id: Option<MessageId>,
}

impl DecodeError {
    /// The text is cut to [`MAX_TEXT`] bytes and withheld if it would
    /// repeat a My Number (the reason's description is sent instead).
    pub fn new(reason: Reason, text: impl Into<String>) -> Self {
        DecodeError {
            reason,
            text: refusal_text(reason, &text.into()),
            message_id: None,
        }
    }

    /// The refusal for what the personal-data screen found; the path it
    /// names is the key path, never the value.
    pub(crate) fn from_finding(finding: Finding, message_id: Option<MessageId>) -> Self {
        let (reason, text) = match finding {
            Finding::MyNumber { path } => (
                Reason::MyNumber,
                format!("field {path} holds a My Number; it must never pass an interface system"),
            ),
            Finding::BasicFourKey { path } => (
                Reason::BasicFour,
                format!(
                    "field {path} is a basic-four field; it must never pass an interface system"
                ),
            ),
        };
        DecodeError {
            reason,
            text: refusal_text(reason, &text),
            message_id,
        }
    }
}

/// A refusal text as it is sent back and logged: cut to [`MAX_TEXT`] bytes,
/// and replaced by the reason's description when it (or the cut) would
/// hold a My Number. serde's messages quote the value they refuse, and
/// cutting a long digit run can leave twelve digits with a valid check
/// digit; neither may reach the sender or the log (§2.2 ③).
fn refusal_text(reason: Reason, text: &str) -> String {
    let cut = truncate(text, MAX_TEXT);
    if screen::contains_my_number(cut) {
        format!(
            "{}; the detail is withheld because it would repeat personal data",
            reason.describe()
        )
    } else {
        cut.to_owned()
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let e = DecodeError::new(Reason::Malformed, "é".repeat(MAX_TEXT));
        assert!(e.text.len() <= MAX_TEXT);
        assert!(e.text.len() > MAX_TEXT - 2);
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("aé", 2), "a");
    }

    #[test]
    fn a_text_that_would_repeat_a_my_number_is_withheld() {
        let e = DecodeError::new(Reason::InvalidField, "bad value \"123456789018\"");
        assert!(!screen::contains_my_number(&e.text), "{}", e.text);
        assert!(
            e.text.starts_with(Reason::InvalidField.describe()),
            "{}",
            e.text
        );
        let e = DecodeError::new(Reason::InvalidField, "bad value \"ok\"");
        assert_eq!(e.text, "bad value \"ok\"");
    }
}
