//! Printing an error with its causes. Every BlockHost error keeps its cause as a
//! `source` and never repeats the cause's text in its own message, so printing the
//! chain is a plain walk: each piece appears once.

/// Formats an error with all its sources: `outer: inner: root cause`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load the plan")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_each_cause_once_in_order() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(error_chain(&e), "cannot load the plan: disk on fire");
    }
}
