//! The console's line editing: bytes from the terminal in, what to echo
//! and what the person did out. Pure (no I/O), so every key and every
//! kind of garbage is tested without a terminal.
//!
//! Keys: printable characters (UTF-8, so Japanese too), Backspace (DEL or
//! BS), Delete, Left/Right/Home/End and Ctrl-A/Ctrl-E, Up/Down for the
//! history, Ctrl-U to clear the line, Ctrl-L to redraw, Ctrl-C to
//! abandon the line, Ctrl-D on an empty line to leave, Tab to complete,
//! `?` for help (outside a secret), Enter (CR, LF or CR LF).
//!
//! Invariants:
//! - The line never holds more than [`MAX_LINE`] characters and an escape
//!   sequence is dropped after [`MAX_ESCAPE`] bytes: input of any length
//!   uses bounded memory.
//! - Garbage (a control character, an unknown or overlong escape
//!   sequence, bytes that are not UTF-8, an overlong line) is dropped and
//!   reported once per line ([`Event::Noise`]), so noise on the wire makes
//!   one message, not one per byte.
//! - In secret mode (passwords, codes) nothing typed is echoed and the
//!   line is never added to the history.

use std::collections::VecDeque;

/// Most characters of one line.
pub const MAX_LINE: usize = 256;
/// Most bytes of one escape sequence.
pub const MAX_ESCAPE: usize = 16;
/// Lines kept in the history.
pub const HISTORY: usize = 50;

const BEL: u8 = 0x07;

/// What the person did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Enter: the line (already echoed, with the new line).
    Line(String),
    /// Tab: complete what is typed so far (the line up to the cursor).
    Complete(String),
    /// `?`: help for what is typed so far (the line up to the cursor).
    Help(String),
    /// Ctrl-C: the line was abandoned.
    Interrupt,
    /// Ctrl-D on an empty line: leave.
    Eof,
    /// Garbage was dropped (first of this line only).
    Noise(Noise),
}

/// Kinds of garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    /// A control character with no meaning here (NUL from a BREAK too).
    ControlCharacter,
    /// An escape sequence that is not a known key, or too long.
    EscapeSequence,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// More than [`MAX_LINE`] characters.
    LineTooLong,
}

#[derive(Debug, Default)]
enum Escape {
    #[default]
    None,
    /// ESC seen.
    Start,
    /// ESC [ or ESC O and the bytes after it.
    Sequence(Vec<u8>),
    /// An overlong sequence: its bytes are dropped up to its final byte.
    Skipping,
}

/// The line being typed, the history and the decoder state.
#[derive(Debug, Default)]
pub struct LineEditor {
    line: Vec<char>,
    cursor: usize,
    prompt: String,
    secret: bool,
    history: VecDeque<String>,
    /// Index into `history` while browsing it (0: newest).
    browsing: Option<usize>,
    /// What was typed before browsing started.
    draft: Vec<char>,
    utf8: Vec<u8>,
    escape: Escape,
    /// A CR ended the last line: a LF right after it is part of it.
    after_cr: bool,
    /// Noise already reported for this line.
    noisy: bool,
}

impl LineEditor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a new line after `prompt` (written to `out`); `secret`
    /// hides what is typed.
    pub fn start(&mut self, prompt: &str, secret: bool, out: &mut Vec<u8>) {
        self.line.clear();
        self.cursor = 0;
        self.prompt = prompt.to_owned();
        self.secret = secret;
        self.browsing = None;
        self.noisy = false;
        out.extend_from_slice(prompt.as_bytes());
    }

    /// The history, newest first.
    pub fn history(&self) -> impl Iterator<Item = &str> {
        self.history.iter().map(String::as_str)
    }

    /// Replaces the line with `text` (a completion) and redraws it.
    pub fn set_line(&mut self, text: &str, out: &mut Vec<u8>) {
        self.line = text.chars().take(MAX_LINE).collect();
        self.cursor = self.line.len();
        self.redraw(out);
    }

    /// Writes the prompt and the line again (after help or a message).
    pub fn redraw(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\x1b[K");
        out.extend_from_slice(self.prompt.as_bytes());
        if self.secret {
            return;
        }
        let text: String = self.line.iter().collect();
        out.extend_from_slice(text.as_bytes());
        let back = self.line.len() - self.cursor;
        if back > 0 {
            out.extend_from_slice(format!("\x1b[{back}D").as_bytes());
        }
    }

    /// Takes one byte from the terminal; echo goes to `out`.
    pub fn feed(&mut self, byte: u8, out: &mut Vec<u8>) -> Option<Event> {
        let after_cr = std::mem::take(&mut self.after_cr);
        match std::mem::take(&mut self.escape) {
            Escape::None => {}
            Escape::Start => return self.escape_start(byte, out),
            Escape::Sequence(seq) => return self.escape_sequence(seq, byte, out),
            Escape::Skipping => {
                if (0x20..=0x3f).contains(&byte) {
                    self.escape = Escape::Skipping;
                }
                return None;
            }
        }
        if !self.utf8.is_empty() || byte >= 0x80 {
            return self.utf8_byte(byte, out);
        }
        match byte {
            b'\r' => {
                self.after_cr = true;
                Some(self.enter(out))
            }
            b'\n' if after_cr => None,
            b'\n' => Some(self.enter(out)),
            0x7f | 0x08 => {
                self.backspace(out);
                None
            }
            b'\t' => Some(Event::Complete(self.before_cursor())),
            b'?' if !self.secret => Some(Event::Help(self.before_cursor())),
            0x03 => {
                out.extend_from_slice(b"^C\r\n");
                self.line.clear();
                self.cursor = 0;
                Some(Event::Interrupt)
            }
            0x04 if self.line.is_empty() => Some(Event::Eof),
            0x04 => None,
            0x15 => {
                self.line.clear();
                self.cursor = 0;
                self.redraw(out);
                None
            }
            0x0c => {
                self.redraw(out);
                None
            }
            0x01 => {
                self.move_to(0, out);
                None
            }
            0x05 => {
                self.move_to(self.line.len(), out);
                None
            }
            0x1b => {
                self.escape = Escape::Start;
                None
            }
            0x20..=0x7e => self.insert(char::from(byte), out),
            _ => self.noise(Noise::ControlCharacter),
        }
    }

    fn before_cursor(&self) -> String {
        self.line[..self.cursor].iter().collect()
    }

    fn noise(&mut self, kind: Noise) -> Option<Event> {
        if self.noisy {
            return None;
        }
        self.noisy = true;
        Some(Event::Noise(kind))
    }

    fn enter(&mut self, out: &mut Vec<u8>) -> Event {
        out.extend_from_slice(b"\r\n");
        let text: String = self.line.iter().collect();
        if !self.secret && !text.trim().is_empty() {
            // A line typed again moves to the front instead of repeating.
            self.history.retain(|h| *h != text);
            self.history.push_front(text.clone());
            self.history.truncate(HISTORY);
        }
        self.line.clear();
        self.cursor = 0;
        self.browsing = None;
        self.noisy = false;
        Event::Line(text)
    }

    fn insert(&mut self, c: char, out: &mut Vec<u8>) -> Option<Event> {
        if self.line.len() >= MAX_LINE {
            out.push(BEL);
            return self.noise(Noise::LineTooLong);
        }
        self.line.insert(self.cursor, c);
        self.cursor += 1;
        if self.secret {
            return None;
        }
        if self.cursor == self.line.len() {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        } else {
            self.redraw(out);
        }
        None
    }

    fn backspace(&mut self, out: &mut Vec<u8>) {
        if self.cursor == 0 {
            out.push(BEL);
            return;
        }
        self.cursor -= 1;
        self.line.remove(self.cursor);
        if self.secret {
            return;
        }
        self.redraw(out);
    }

    fn delete(&mut self, out: &mut Vec<u8>) {
        if self.cursor < self.line.len() {
            self.line.remove(self.cursor);
            if !self.secret {
                self.redraw(out);
            }
        }
    }

    fn move_to(&mut self, cursor: usize, out: &mut Vec<u8>) {
        self.cursor = cursor.min(self.line.len());
        if !self.secret {
            self.redraw(out);
        }
    }

    fn recall(&mut self, older: bool, out: &mut Vec<u8>) {
        if self.secret {
            return;
        }
        let next = match (self.browsing, older) {
            (None, true) if !self.history.is_empty() => {
                self.draft = self.line.clone();
                Some(0)
            }
            (Some(i), true) if i + 1 < self.history.len() => Some(i + 1),
            (Some(0), false) => None,
            (Some(i), false) => Some(i - 1),
            (current, _) => {
                out.push(BEL);
                self.browsing = current;
                return;
            }
        };
        self.browsing = next;
        self.line = match next {
            Some(i) => self.history[i].chars().collect(),
            None => std::mem::take(&mut self.draft),
        };
        self.cursor = self.line.len();
        self.redraw(out);
    }

    fn escape_start(&mut self, byte: u8, out: &mut Vec<u8>) -> Option<Event> {
        match byte {
            b'[' | b'O' => {
                self.escape = Escape::Sequence(vec![byte]);
                None
            }
            // ESC ESC: the first was alone.
            0x1b => {
                self.escape = Escape::Start;
                self.noise(Noise::EscapeSequence)
            }
            _ => {
                let _ = out;
                self.noise(Noise::EscapeSequence)
            }
        }
    }

    fn escape_sequence(&mut self, mut seq: Vec<u8>, byte: u8, out: &mut Vec<u8>) -> Option<Event> {
        seq.push(byte);
        // Parameters and intermediates continue a sequence; anything in
        // 0x40..=0x7e ends it.
        if (0x20..=0x3f).contains(&byte) {
            if seq.len() > MAX_ESCAPE {
                self.escape = Escape::Skipping;
                return self.noise(Noise::EscapeSequence);
            }
            self.escape = Escape::Sequence(seq);
            return None;
        }
        match &seq[..] {
            [_, b'A'] => self.recall(true, out),
            [_, b'B'] => self.recall(false, out),
            [_, b'C'] => self.move_to(self.cursor + 1, out),
            [_, b'D'] => self.move_to(self.cursor.saturating_sub(1), out),
            [_, b'H'] | [b'[', b'1', b'~'] | [b'[', b'7', b'~'] => self.move_to(0, out),
            [_, b'F'] | [b'[', b'4', b'~'] | [b'[', b'8', b'~'] => {
                self.move_to(self.line.len(), out)
            }
            [b'[', b'3', b'~'] => self.delete(out),
            _ => return self.noise(Noise::EscapeSequence),
        }
        None
    }

    fn utf8_byte(&mut self, byte: u8, out: &mut Vec<u8>) -> Option<Event> {
        self.utf8.push(byte);
        let need = match self.utf8[0] {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 0,
        };
        if need == 0 {
            self.utf8.clear();
            return self.noise(Noise::InvalidUtf8);
        }
        if self.utf8.len() > 1 && !(0x80..=0xbf).contains(&byte) {
            // A sequence cut short: drop it, and take this byte afresh.
            self.utf8.clear();
            let noise = self.noise(Noise::InvalidUtf8);
            return self.feed(byte, out).or(noise);
        }
        if self.utf8.len() < need {
            return None;
        }
        let bytes = std::mem::take(&mut self.utf8);
        match std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.chars().next())
        {
            Some(c) if !c.is_control() => self.insert(c, out),
            Some(_) => self.noise(Noise::ControlCharacter),
            None => self.noise(Noise::InvalidUtf8),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Feeds `bytes`; returns the events and the echo.
    fn type_in(ed: &mut LineEditor, bytes: &[u8]) -> (Vec<Event>, String) {
        let mut out = Vec::new();
        let events = bytes.iter().filter_map(|&b| ed.feed(b, &mut out)).collect();
        (events, String::from_utf8_lossy(&out).into_owned())
    }

    fn started(secret: bool) -> LineEditor {
        let mut ed = LineEditor::new();
        ed.start("> ", secret, &mut Vec::new());
        ed
    }

    fn line(text: &str) -> Event {
        Event::Line(text.to_owned())
    }

    #[test]
    fn typing_and_enter_give_the_line_with_any_line_ending() {
        let mut ed = started(false);
        let (events, echo) = type_in(&mut ed, b"status\r\nsearch\rhelp\n");
        assert_eq!(events, vec![line("status"), line("search"), line("help")]);
        assert!(echo.starts_with("status\r\n"));
    }

    #[test]
    fn backspace_and_cursor_keys_edit_where_the_cursor_is() {
        let mut ed = started(false);
        // "stauts": left twice, backspace, right, "u"... gives "status".
        let (events, _) = type_in(&mut ed, b"statsu\x1b[D\x7f\x1b[Cs\x1b[3~\r");
        assert_eq!(events, vec![line("status")]);
        let (events, _) = type_in(&mut ed, b"bc\x01a\x05d\x1b[H\x1b[F!\r");
        assert_eq!(events, vec![line("abcd!")]);
        let (events, _) = type_in(&mut ed, b"junk\x15ok\r");
        assert_eq!(events, vec![line("ok")]);
    }

    #[test]
    fn up_and_down_walk_the_history_and_come_back_to_the_draft() {
        let mut ed = started(false);
        type_in(&mut ed, b"first\rsecond\r");
        let (events, _) = type_in(&mut ed, b"dra\x1b[A\x1b[A\r");
        assert_eq!(events, vec![line("first")]);
        let (events, _) = type_in(&mut ed, b"dra\x1b[A\x1b[B\x1b[Bft\r");
        assert_eq!(events, vec![line("draft")]);
        assert_eq!(
            ed.history().collect::<Vec<_>>(),
            ["draft", "first", "second"]
        );
    }

    #[test]
    fn tab_and_question_mark_ask_about_the_text_before_the_cursor() {
        let mut ed = started(false);
        let (events, _) = type_in(&mut ed, b"sea\t");
        assert_eq!(events, vec![Event::Complete("sea".into())]);
        let mut out = Vec::new();
        ed.set_line("search ", &mut out);
        let (events, _) = type_in(&mut ed, b"?");
        assert_eq!(events, vec![Event::Help("search ".into())]);
        let (events, _) = type_in(&mut ed, b"x\r");
        assert_eq!(events, vec![line("search x")]);
    }

    #[test]
    fn a_secret_is_not_echoed_nor_kept_and_may_hold_a_question_mark() {
        let mut ed = started(true);
        let (events, echo) = type_in(&mut ed, b"Pa?ss\x7fs\r");
        assert_eq!(events, vec![line("Pa?ss")]);
        assert!(!echo.contains('P') && !echo.contains('a'), "{echo:?}");
        assert_eq!(ed.history().count(), 0);
    }

    #[test]
    fn japanese_text_is_typed_and_deleted_by_character() {
        let mut ed = started(false);
        let (events, _) = type_in(&mut ed, "検索 佐藤x\x7f\r".as_bytes());
        assert_eq!(events, vec![line("検索 佐藤")]);
    }

    #[test]
    fn ctrl_c_abandons_and_ctrl_d_leaves_only_an_empty_line() {
        let mut ed = started(false);
        let (events, _) = type_in(&mut ed, b"half\x03\x04");
        assert_eq!(events, vec![Event::Interrupt, Event::Eof]);
        let (events, _) = type_in(&mut ed, b"x\x04\r");
        assert_eq!(events, vec![line("x")]);
    }

    #[test]
    fn an_overlong_line_stops_at_the_limit_and_says_so_once() {
        let mut ed = started(false);
        let mut input = vec![b'a'; MAX_LINE + 500];
        input.push(b'\r');
        let (events, echo) = type_in(&mut ed, &input);
        assert_eq!(
            events,
            vec![
                Event::Noise(Noise::LineTooLong),
                line(&"a".repeat(MAX_LINE))
            ]
        );
        assert_eq!(echo.matches('\u{7}').count(), 500, "a bell per dropped key");
    }

    #[test]
    fn garbage_is_dropped_reported_once_per_line_and_editing_goes_on() {
        let mut ed = started(false);
        let (events, _) = type_in(&mut ed, b"st\x00\x00\x1b[99Z\xff\xfeat\x1bx\x1b[1;5Pus\r");
        assert_eq!(
            events,
            vec![Event::Noise(Noise::ControlCharacter), line("status")]
        );
        let (events, _) = type_in(&mut ed, b"\xc3(\r");
        assert_eq!(events, vec![Event::Noise(Noise::InvalidUtf8), line("(")]);
        let (events, _) = type_in(&mut ed, b"\x1b[1111111111111111111111A\rok\r");
        assert_eq!(
            events,
            vec![Event::Noise(Noise::EscapeSequence), line(""), line("ok")]
        );
    }

    #[test]
    fn any_bytes_at_all_keep_memory_bounded_and_never_panic() {
        let mut ed = started(false);
        let mut x: u32 = 0x2545_f491;
        let mut out = Vec::new();
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let _ = ed.feed(x as u8, &mut out);
            out.clear();
            assert!(ed.line.len() <= MAX_LINE);
            assert!(ed.utf8.len() < 4);
            if let Escape::Sequence(s) = &ed.escape {
                assert!(s.len() <= MAX_ESCAPE);
            }
        }
        assert!(ed.history().count() <= HISTORY);
    }
}
