//! The one sanitizer for text that comes from outside (RPC nodes' error
//! messages, strings from the chain, labels, access-file fields) at the point
//! where it is shown on a terminal or written into a log line.
//!
//! A terminal obeys what it is sent: an escape sequence in an RPC error can set
//! the window title, clear the screen or recolour the rest of the output, a CR
//! or LF can forge a line of `describe` or a log entry, and bidirectional
//! overrides (U+202E, U+2066…) can make text read differently from what it is.
//! Such characters are replaced by a visible escape (`\n`, `\r`, `\t`,
//! `\u{1b}`, `\u{202e}`), so the text stays readable and nothing in it acts.
//! Only display is escaped: stored values and `-o json|yaml` output keep the
//! exact value (JSON encoding escapes control characters itself).

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal raw.
pub fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // Bidirectional marks, embeddings, overrides and isolates.
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Zero-width characters that hide text, line and paragraph separators, BOM.
            | '\u{200b}'..='\u{200d}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// `s` with every hostile character replaced by a visible escape; borrowed
/// when there is none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hostile) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_hostile(c) => {
            use fmt::Write;
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// Displays a string escaped: `format!("{}", Escaped(&text))`.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// A `fmt::Write` adapter that escapes everything written through it (for
/// log formatters that write field values piecewise).
#[derive(Debug)]
pub struct EscapingWriter<W>(pub W);

impl<W: fmt::Write> fmt::Write for EscapingWriter<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_str(&escape(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_and_bidi_are_escaped_visibly() {
        let hostile = "node says \u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mred\r\nFAKE LINE\tx \u{202e}txt.exe\u{2066}\u{9b}";
        let shown = escape(hostile);
        assert_eq!(
            shown,
            "node says \\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{1b}[31mred\\r\\nFAKE LINE\\tx \\u{202e}txt.exe\\u{2066}\\u{9b}"
        );
        assert!(!shown.chars().any(is_hostile));
        // Plain text, including non-Latin scripts and emoji, is untouched and not copied.
        for plain in ["basic-plan", "Grundtarif für 30 Tage", "خطة", "计划 🚀", ""] {
            assert!(matches!(escape(plain), Cow::Borrowed(p) if p == plain));
        }
        assert_eq!(Escaped("a\nb").to_string(), "a\\nb");
        let mut s = String::new();
        fmt::Write::write_str(&mut EscapingWriter(&mut s), "x\u{1b}y").unwrap_or(());
        assert_eq!(s, "x\\u{1b}y");
    }
}
