//! The C face of `pam_blockhost.so`: `pam_sm_authenticate` and `pam_sm_setcred`,
//! written directly against Linux-PAM's ABI (`<security/pam_modules.h>`).
//!
//! Why hand-written bindings rather than a binding crate: the module needs four
//! libpam calls and one struct layout, all stable for two decades; owning them keeps
//! every `unsafe` line in this file, reviewable, with no macro between `extern "C"`
//! and the panic guard (see pam/README.md for the crates considered).
//!
//! Every entry point runs the Rust code under `catch_unwind`: a panic must never
//! unwind into sshd, and a caught one is reported as `PAM_SYSTEM_ERR`.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use crate::log::{Level, audit, error_chain, quote};
use crate::login::{ANSWER_MAX, Answer, Conversation, ConversationError, LoginError, authenticate};
use crate::options::Options;

// Return codes, item types and message styles from Linux-PAM's <security/_pam_types.h>.
const PAM_SUCCESS: c_int = 0;
const PAM_SERVICE_ERR: c_int = 3;
const PAM_SYSTEM_ERR: c_int = 4;
const PAM_AUTH_ERR: c_int = 7;
const PAM_AUTHINFO_UNAVAIL: c_int = 9;
const PAM_USER_UNKNOWN: c_int = 10;
const PAM_CONV_ERR: c_int = 19;
const PAM_CONV: c_int = 5;
const PAM_RHOST: c_int = 4;
const PAM_PROMPT_ECHO_ON: c_int = 2;
const PAM_TEXT_INFO: c_int = 4;

/// `struct pam_message`.
#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

/// `struct pam_response`.
#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn = unsafe extern "C" fn(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata_ptr: *mut c_void,
) -> c_int;

/// `struct pam_conv`.
#[repr(C)]
struct PamConv {
    conv: Option<ConvFn>,
    appdata_ptr: *mut c_void,
}

/// Opaque `pam_handle_t`.
#[repr(C)]
pub struct PamHandle {
    _private: [u8; 0],
}

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_get_user(pamh: *mut PamHandle, user: *mut *const c_char, prompt: *const c_char)
    -> c_int;
    fn pam_get_item(pamh: *const PamHandle, item_type: c_int, item: *mut *const c_void) -> c_int;
}

/// libpam's conversation, adapted to [`Conversation`].
struct PamConversation<'a> {
    conv: &'a PamConv,
}

impl PamConversation<'_> {
    /// Sends one message and returns the response pointer (possibly null).
    fn send(&mut self, style: c_int, text: &str) -> Result<*mut PamResponse, ConversationError> {
        let f = self
            .conv
            .conv
            .ok_or_else(|| ConversationError("no conversation function".into()))?;
        let c = std::ffi::CString::new(text.replace('\0', ""))
            .map_err(|_| ConversationError("text has NUL".into()))?;
        let message = PamMessage {
            msg_style: style,
            msg: c.as_ptr(),
        };
        let mut list: *const PamMessage = &message;
        let mut resp: *mut PamResponse = ptr::null_mut();
        // SAFETY: one valid message (Linux-PAM's pointer-array layout with one entry),
        // a valid out-pointer, and the application's own appdata pointer.
        let rc = unsafe { f(1, &mut list, &mut resp, self.conv.appdata_ptr) };
        if rc != PAM_SUCCESS {
            // On failure the application keeps ownership of anything it allocated
            // (OpenSSH and misc_conv free their own); freeing here risks a double free.
            return Err(ConversationError(format!("conversation returned {rc}")));
        }
        Ok(resp)
    }
}

/// Frees a response array of one entry, scrubbing the text first.
fn free_response(resp: *mut PamResponse) {
    if resp.is_null() {
        return;
    }
    // SAFETY: the application allocated `resp` (one entry) and its `resp` string with
    // malloc, and ownership passed to us; each is freed exactly once here.
    unsafe {
        let text = (*resp).resp;
        if !text.is_null() {
            let n = libc::strlen(text);
            ptr::write_bytes(text, 0, n);
            libc::free(text.cast());
        }
        libc::free(resp.cast());
    }
}

impl Conversation for PamConversation<'_> {
    fn info(&mut self, text: &str) -> Result<(), ConversationError> {
        let resp = self.send(PAM_TEXT_INFO, text)?;
        free_response(resp);
        Ok(())
    }

    fn ask(&mut self, prompt: &str) -> Result<Answer, ConversationError> {
        let resp = self.send(PAM_PROMPT_ECHO_ON, prompt)?;
        if resp.is_null() {
            return Err(ConversationError("no response".into()));
        }
        // SAFETY: `resp` is a valid one-entry array (checked non-null); `strnlen`
        // reads at most ANSWER_MAX + 1 bytes, so a huge answer is never scanned whole.
        let answer = unsafe {
            let text = (*resp).resp;
            if text.is_null() {
                Ok(Answer::Text(String::new()))
            } else {
                let n = libc::strnlen(text, ANSWER_MAX + 1);
                if n > ANSWER_MAX {
                    Ok(Answer::TooLong)
                } else {
                    let bytes = std::slice::from_raw_parts(text.cast::<u8>(), n);
                    Ok(Answer::Text(String::from_utf8_lossy(bytes).into_owned()))
                }
            }
        };
        free_response(resp);
        answer
    }
}

/// Reads a string item, or "" when unset.
fn string_item(pamh: *mut PamHandle, item: c_int) -> String {
    let mut p: *const c_void = ptr::null();
    // SAFETY: pamh comes from libpam; p is a valid out-pointer.
    let rc = unsafe { pam_get_item(pamh, item, &mut p) };
    if rc != PAM_SUCCESS || p.is_null() {
        return String::new();
    }
    // SAFETY: string items are NUL-terminated C strings owned by libpam.
    unsafe { CStr::from_ptr(p.cast()) }
        .to_string_lossy()
        .chars()
        .take(256)
        .collect()
}

/// The body of `pam_sm_authenticate`, outside the unwinding guard.
fn authenticate_entry(pamh: *mut PamHandle, argc: c_int, argv: *const *const c_char) -> c_int {
    let mut args = Vec::new();
    for i in 0..usize::try_from(argc).unwrap_or(0) {
        // SAFETY: libpam passes argc valid C strings in argv.
        let a = unsafe { *argv.add(i) };
        if !a.is_null() {
            // SAFETY: non-null entries are NUL-terminated strings owned by libpam.
            args.push(unsafe { CStr::from_ptr(a) }.to_string_lossy().into_owned());
        }
    }
    let options = match Options::parse(args.iter().map(String::as_str)) {
        Ok(o) => o,
        Err(e) => {
            audit(
                Level::Error,
                &format!("outcome=error reason={}", quote(&e.to_string())),
            );
            return PAM_SERVICE_ERR;
        }
    };

    let mut user_ptr: *const c_char = ptr::null();
    // SAFETY: pamh comes from libpam; user_ptr is a valid out-pointer; null prompt
    // means libpam's default.
    let rc = unsafe { pam_get_user(pamh, &mut user_ptr, ptr::null()) };
    if rc != PAM_SUCCESS || user_ptr.is_null() {
        return PAM_USER_UNKNOWN;
    }
    // SAFETY: libpam returns a NUL-terminated string it owns.
    let user = unsafe { CStr::from_ptr(user_ptr) }
        .to_string_lossy()
        .into_owned();
    let rhost = string_item(pamh, PAM_RHOST);

    let mut conv_ptr: *const c_void = ptr::null();
    // SAFETY: as above; PAM_CONV yields a `struct pam_conv *` owned by libpam.
    let rc = unsafe { pam_get_item(pamh, PAM_CONV, &mut conv_ptr) };
    if rc != PAM_SUCCESS || conv_ptr.is_null() {
        audit(
            Level::Error,
            &format!(
                "user={} outcome=error reason=\"no conversation\"",
                quote(&user)
            ),
        );
        return PAM_CONV_ERR;
    }
    // SAFETY: non-null PAM_CONV item points to a live `struct pam_conv`.
    let conv = unsafe { &*conv_ptr.cast::<PamConv>() };
    let mut conversation = PamConversation { conv };

    let who = format!("user={} rhost={}", quote(&user), quote(&rhost));
    match authenticate(&user, &options, &mut conversation) {
        Ok(ok) => {
            audit(
                Level::Info,
                &format!("{who} wallet={} outcome=success", ok.wallet.to_lower_hex()),
            );
            PAM_SUCCESS
        }
        Err(e) => {
            let (code, level) = match &e {
                LoginError::AccessFile(_) => (PAM_AUTHINFO_UNAVAIL, Level::Error),
                LoginError::UserNotAllowed => (PAM_USER_UNKNOWN, Level::Notice),
                LoginError::Conversation(_) => (PAM_CONV_ERR, Level::Notice),
                _ => (PAM_AUTH_ERR, Level::Notice),
            };
            let wallet = match &e {
                LoginError::BadSignature(blockhost_access::eip191::Eip191Error::WrongSigner {
                    recovered,
                }) => {
                    format!(" signer={}", recovered.to_lower_hex())
                }
                _ => String::new(),
            };
            audit(
                level,
                &format!(
                    "{who}{wallet} outcome=denied reason={}",
                    quote(&error_chain(&e))
                ),
            );
            code
        }
    }
}

/// Runs `f`, turning a panic into `PAM_SYSTEM_ERR`: unwinding into libpam's C
/// frames (and so into sshd) is undefined behaviour.
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        audit(
            Level::Error,
            "outcome=error reason=\"internal panic caught\"",
        );
        PAM_SYSTEM_ERR
    })
}

/// PAM entry point: wallet-signature authentication.
///
/// # Safety
/// Called by libpam with a valid handle and `argc` valid C strings in `argv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_sm_authenticate(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    guard(|| authenticate_entry(pamh, argc, argv))
}

/// PAM entry point: no credentials to establish; a signature proves identity only.
///
/// # Safety
/// Called by libpam; touches none of its arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_sm_setcred(
    _pamh: *mut PamHandle,
    _flags: c_int,
    _argc: c_int,
    _argv: *const *const c_char,
) -> c_int {
    PAM_SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_pam_system_err() {
        assert_eq!(guard(|| panic!("boom")), PAM_SYSTEM_ERR);
        assert_eq!(guard(|| PAM_AUTH_ERR), PAM_AUTH_ERR);
    }
}
