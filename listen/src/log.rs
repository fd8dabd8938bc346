//! The servers' log set-up (`blockhostd`, `blockhost-signer`).
//!
//! Text lines escape every field value and the message through
//! [`blockhost_crd::sanitize`]: an RPC node's error text, a label or a chain
//! string with a CR/LF or an escape sequence cannot split a log line, forge
//! one, or drive the terminal of whoever reads the log. JSON lines are already
//! safe (JSON escapes control characters) and keep the exact text. Colours are
//! used only when stderr is a terminal: journald and log files get plain text.

use std::fmt;
use std::io::IsTerminal;

use blockhost_crd::sanitize::Escaped;
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Installs the global subscriber: `filter`, on stderr, JSON or escaped text.
pub fn init(filter: EnvFilter, json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.fmt_fields(EscapedFields).init();
    }
}

/// Formats fields as `name=value` separated by spaces (the message bare), each
/// value escaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, text: &str) {
        if self.result.is_err() {
            return;
        }
        if !self.first {
            self.result = self.writer.write_char(' ');
        }
        self.first = false;
        if self.result.is_ok() {
            self.result = if field.name() == "message" {
                write!(self.writer, "{}", Escaped(text))
            } else {
                write!(self.writer, "{}={}", field.name(), Escaped(text))
            };
        }
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value);
        } else {
            // Quoted, as the default formatter does for strings.
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_hostile_value_stays_on_its_line_and_drives_nothing() {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let node_error =
                "bad\r\n2026-01-01T00:00:00Z  INFO forged line\u{1b}]0;title\u{7}\u{202e}";
            tracing::warn!(error = %node_error, label = node_error, "node said {}", node_error);
        });
        let text = String::from_utf8(buf.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(text.contains("error=bad\\r\\n2026"), "{text}");
        assert!(text.contains("node said bad\\r\\n"), "{text}");
        assert!(text.contains("\\u{1b}]0;title"), "{text}");
    }
}
