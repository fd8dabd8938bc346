//! Validation rules that types alone cannot express: DNS labels, Unix user names,
//! resource bounds. Each rule returns a sentence a user can act on.

/// Longest DNS label (RFC 1123).
pub const DNS_LABEL_MAX: usize = 63;

/// Checks an RFC 1123 DNS label: 1–63 characters of `a-z`, `0-9` and `-`, starting
/// and ending with a letter or digit. Object names are DNS labels because they become
/// VM host names.
pub fn dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > DNS_LABEL_MAX {
        return Err(format!(
            "{} characters is too long; a DNS label has at most {DNS_LABEL_MAX}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{name:?} may contain only lower-case letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{name:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a portable Unix user name: 1–32 characters of `a-z`, `0-9`, `_` and `-`,
/// starting with a letter or `_` (what Debian's `adduser` accepts by default).
pub fn unix_user(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 32 {
        return Err(format!("user name {name:?} must be 1 to 32 characters"));
    }
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if !first_ok
        || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "user name {name:?} must start with a lower-case letter or '_' and hold only a-z, 0-9, '_' and '-'"
        ));
    }
    if name == "root" {
        return Err("root may not log in with a wallet".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "blockhost-001", "x1", &"a".repeat(63)] {
            assert!(dns_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_users() {
        for ok in ["user", "_svc", "a-b_c9"] {
            assert!(unix_user(ok).is_ok(), "{ok}");
        }
        for bad in ["", "root", "9a", "Ab", "a b", "a;b", &"a".repeat(33)] {
            assert!(unix_user(bad).is_err(), "{bad}");
        }
    }
}
