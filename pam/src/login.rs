//! One wallet login attempt, independent of PAM's C interface: read the access file,
//! check the user, build a fresh challenge, show it, take the answer (typed, or from
//! the signing page), and verify it.
//!
//! The conversation is a trait so that the flow does not depend on libpam; the FFI
//! layer (`ffi.rs`) only adapts libpam's conversation function to it.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use blockhost_access::access::{ACCESS_FILE_MAX_BYTES, AccessFileError};
use blockhost_access::eip191::{self, Eip191Error, Signature};
use blockhost_access::{AccessFile, WalletAddress};
use chrono::{DateTime, Duration as ChronoDuration, Utc};

use crate::handoff::{Handoff, HandoffError, Register, new_session_id, random_128};
use crate::log::{Level, audit, error_chain, quote};
use crate::options::Options;
use crate::siwe::{BEGIN_MARKER, END_MARKER, SiweMessage};

/// Longest answer the module reads from the conversation, in bytes. A signature is
/// 132 characters; anything far longer is refused without being parsed.
pub const ANSWER_MAX: usize = 1024;

/// What the user typed at a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The text, at most [`ANSWER_MAX`] bytes.
    Text(String),
    /// Longer than [`ANSWER_MAX`]: refused unread.
    TooLong,
}

/// The conversation with the person logging in.
pub trait Conversation {
    /// Shows information text.
    fn info(&mut self, text: &str) -> Result<(), ConversationError>;
    /// Asks a question whose answer is echoed (a signature is not secret).
    fn ask(&mut self, prompt: &str) -> Result<Answer, ConversationError>;
}

/// The application's conversation function failed or returned nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conversation failed: {0}")]
pub struct ConversationError(pub String);

/// Why a login did not succeed. Each maps to one PAM return code.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The access file is missing, unreadable, unsafe or invalid.
    #[error("access file unusable")]
    AccessFile(#[source] AccessFileLoadError),
    /// The Unix user is not one that may log in with a wallet.
    #[error("user not allowed to log in with a wallet")]
    UserNotAllowed,
    /// The conversation failed.
    #[error("conversation failed")]
    Conversation(#[source] ConversationError),
    /// The user chose a wallet that is not in the access file.
    #[error("chosen wallet is not allowed")]
    UnknownWallet,
    /// No signature was given (empty answer without a signing page).
    #[error("no signature given")]
    NoSignature,
    /// Waiting for the signing page failed.
    #[error("signing page hand-off failed")]
    Handoff(#[source] HandoffError),
    /// The answer exceeded [`ANSWER_MAX`].
    #[error("answer longer than {ANSWER_MAX} bytes")]
    AnswerTooLong,
    /// The signature arrived after the challenge expired.
    #[error("challenge expired")]
    Expired,
    /// The signature is malformed or not by the expected wallet.
    #[error("signature rejected")]
    BadSignature(#[source] Eip191Error),
}

/// Why the access file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessFileLoadError {
    /// Could not open or read it.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file owned by root and writable only by root: anyone else able
    /// to write it could name their own wallet.
    #[error("{path} must be a regular file owned by root and not writable by group or others")]
    Unsafe {
        /// The file.
        path: String,
    },
    /// Read but invalid.
    #[error("invalid access file")]
    Parse(#[source] AccessFileError),
}

/// A successful login: which wallet signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSuccess {
    /// The wallet that signed.
    pub wallet: WalletAddress,
}

/// Reads and checks the access file: bounded read, ownership and mode checks.
/// Opened non-blocking, so a FIFO (or a device) put at the path cannot hold the
/// login until PAM's timeout: it is refused as not a regular file at once.
pub fn load_access_file(path: &Path) -> Result<AccessFile, AccessFileLoadError> {
    let shown = path.display().to_string();
    let io = |source| AccessFileLoadError::Io {
        path: shown.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(AccessFileLoadError::Unsafe { path: shown });
    }
    let mut text = String::new();
    file.take(ACCESS_FILE_MAX_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    AccessFile::from_json(&text).map_err(AccessFileLoadError::Parse)
}

/// The prompt line naming the signing page. The URL comes from the access
/// file: it is shown escaped, so no control character in it reaches the
/// user's terminal.
fn signing_page_line(url: &str) -> String {
    format!(
        "Signing page: {}\n",
        blockhost_access::sanitize::Escaped(url)
    )
}

/// Builds the challenge message for `user` on `access.machine`, valid for `ttl`
/// from `now`, with a fresh 128-bit nonce.
pub fn challenge(
    access: &AccessFile,
    wallet: WalletAddress,
    user: &str,
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) -> SiweMessage {
    let ttl = ChronoDuration::from_std(ttl).unwrap_or(ChronoDuration::minutes(5));
    SiweMessage {
        domain: access.machine.clone(),
        address: wallet,
        // The statement is what a wallet shows most prominently: say where, as whom,
        // and (once minted) which access NFT grants it.
        statement: match access.nft_token_id {
            Some(id) => format!(
                "Log in to {} as Unix user {user} (SSH, access NFT #{id}).",
                access.machine
            ),
            None => format!("Log in to {} as Unix user {user} (SSH).", access.machine),
        },
        uri: format!("ssh://{user}@{}", access.machine),
        chain_id: access.chain_id,
        nonce: random_128(),
        issued_at: now,
        expiration_time: now + ttl,
    }
}

/// Runs one login attempt for `user`. The expiry check reads the clock after the
/// answer arrives, so time spent at the prompt or waiting for the page counts.
pub fn authenticate(
    user: &str,
    options: &Options,
    conv: &mut dyn Conversation,
) -> Result<LoginSuccess, LoginError> {
    let access = load_access_file(&options.access_file).map_err(LoginError::AccessFile)?;
    if !access.users.iter().any(|u| u == user) {
        return Err(LoginError::UserNotAllowed);
    }
    let wallet = choose_wallet(&access, conv)?;
    let message = challenge(&access, wallet, user, Utc::now(), options.ttl);
    let text = message.to_text();

    // The signing page is optional: without a URL, or with the signer down, the user
    // can still paste a signature made elsewhere.
    let handoff = access.signing_url.as_ref().and_then(|url| {
        let session = new_session_id();
        let reg = Register {
            session: session.clone(),
            message: text.clone(),
            expires_at: message.expiration_time.timestamp(),
        };
        match Handoff::register(&options.socket, &reg) {
            Ok(h) => Some((h, format!("{}#{session}", url.trim_end_matches('#')))),
            Err(e) => {
                // Not a login failure, but the operator should know the page is down
                // (or, for NotRoot, that something impersonates the signer).
                audit(
                    Level::Error,
                    &format!("signing page unavailable: {}", quote(&error_chain(&e))),
                );
                None
            }
        }
    });

    let mut info = format!(
        "Wallet login to {machine} as {user}.\n\
         Sign this message with wallet {wallet} before {exp}:\n\
         {BEGIN_MARKER}\n{text}\n{END_MARKER}\n",
        machine = access.machine,
        wallet = wallet.to_checksum(),
        exp = message
            .expiration_time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let prompt = match &handoff {
        Some((_, url)) => {
            info.push_str(&signing_page_line(url));
            "Paste the signature (0x...), or press Enter after signing on the page: "
        }
        None => "Paste the signature (0x...): ",
    };
    conv.info(&info).map_err(LoginError::Conversation)?;
    let answer = match conv.ask(prompt).map_err(LoginError::Conversation)? {
        Answer::TooLong => return Err(LoginError::AnswerTooLong),
        Answer::Text(t) => t,
    };
    let sig_text = if answer.trim().is_empty() {
        let (h, _) = handoff.ok_or(LoginError::NoSignature)?;
        let left = (message.expiration_time - Utc::now())
            .to_std()
            .map_err(|_| LoginError::Expired)?;
        h.wait(left.min(options.wait))
            .map_err(LoginError::Handoff)?
    } else {
        // Dropping the hand-off closes the session on the signer at once.
        drop(handoff);
        answer
    };
    if Utc::now() > message.expiration_time {
        return Err(LoginError::Expired);
    }
    let signature: Signature = sig_text.parse().map_err(LoginError::BadSignature)?;
    eip191::verify(text.as_bytes(), &signature, &wallet).map_err(LoginError::BadSignature)?;
    Ok(LoginSuccess { wallet })
}

/// With one authorized wallet, that one; with several, asks which (by number or
/// address), because a SIWE message names exactly one signer.
fn choose_wallet(
    access: &AccessFile,
    conv: &mut dyn Conversation,
) -> Result<WalletAddress, LoginError> {
    match access.wallets.as_slice() {
        [] => Err(LoginError::UnknownWallet),
        [only] => Ok(*only),
        many => {
            let mut list = String::from("Wallets allowed on this machine:\n");
            for (i, w) in many.iter().enumerate() {
                list.push_str(&format!("  {}. {}\n", i + 1, w.to_checksum()));
            }
            conv.info(&list).map_err(LoginError::Conversation)?;
            let answer = match conv
                .ask("Wallet to sign with (number or address): ")
                .map_err(LoginError::Conversation)?
            {
                Answer::TooLong => return Err(LoginError::AnswerTooLong),
                Answer::Text(t) => t,
            };
            let answer = answer.trim();
            if let Ok(n) = answer.parse::<usize>() {
                return n
                    .checked_sub(1)
                    .and_then(|i| many.get(i).copied())
                    .ok_or(LoginError::UnknownWallet);
            }
            let chosen: WalletAddress = answer.parse().map_err(|_| LoginError::UnknownWallet)?;
            many.iter()
                .find(|w| **w == chosen)
                .copied()
                .ok_or(LoginError::UnknownWallet)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_fifo_at_the_access_file_path_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("access.json");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(load_access_file(&fifo));
        });
        // Before the fix, open() blocked until a writer came.
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(2))
            .expect("opening a FIFO blocks the login");
        assert!(
            matches!(r, Err(AccessFileLoadError::Unsafe { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn the_signing_url_reaches_the_prompt_escaped() {
        let line = signing_page_line(
            "https://vm.example/\u{1b}]0;owned\u{7}\r\nPaste this: 0xdead\u{202e}",
        );
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            !line
                .trim_end_matches('\n')
                .chars()
                .any(blockhost_access::sanitize::is_hostile)
        );
        assert!(line.contains("\\u{1b}]0;owned"), "{line}");
    }
}
