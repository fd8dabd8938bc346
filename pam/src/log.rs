//! Audit lines to syslog's auth facility: who tried, with which wallet, from where,
//! and the outcome. Never the signature, the message's nonce or the answer text: a
//! log reader must not be able to replay or correlate secrets.

use std::ffi::CString;

/// Severity of an audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Successful login.
    Info,
    /// Refused login.
    Notice,
    /// Misconfiguration or internal failure.
    Error,
}

/// Writes one line to syslog (facility `auth`), prefixed with the module name.
///
/// `syslog(3)` is called with a constant `%s` format so that no part of the line is
/// ever interpreted as a format string; interior NULs are replaced rather than
/// truncating the line silently.
pub fn audit(level: Level, line: &str) {
    let prio = libc::LOG_AUTH
        | match level {
            Level::Info => libc::LOG_INFO,
            Level::Notice => libc::LOG_NOTICE,
            Level::Error => libc::LOG_ERR,
        };
    let text = format!("pam_blockhost: {}", line.replace('\0', "\\0"));
    if let Ok(c) = CString::new(text) {
        // SAFETY: both pointers are valid NUL-terminated strings for the call's
        // duration, and the format consumes exactly one `char *` argument.
        unsafe { libc::syslog(prio, c"%s".as_ptr(), c.as_ptr()) };
    }
}

/// "outer: inner: innermost", the whole cause chain of an error on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Longest value written into an audit line (a reason with its causes fits).
const QUOTE_MAX: usize = 160;

/// Quotes a value for a `key=value` audit line: printable ASCII only, bounded, so a
/// hostile user name or host cannot forge extra fields or lines.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(QUOTE_MAX) + 2);
    out.push('"');
    for c in value.chars().take(QUOTE_MAX) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_neutralises_control_characters() {
        assert_eq!(quote("alice"), "\"alice\"");
        assert_eq!(quote("a\"b\nc\\"), "\"a\\\"b?c\\\\\"");
        assert_eq!(quote(&"x".repeat(500)).len(), QUOTE_MAX + 2);
    }
}
