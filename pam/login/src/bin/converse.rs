//! `blockhost-pam-converse SERVICE USER`: runs one `pam_authenticate` for USER with
//! the PAM service SERVICE and relays the conversation over stdio.
//!
//! A diagnostic and test driver, like `pamtester`, with two differences the module's
//! tests need: answers are read whole (up to 4 MiB, so oversized answers reach the
//! module), and prompts are framed so a program can find them:
//! every text and prompt is written to stdout, a prompt is followed by a line
//! `<<PROMPT>>`, and one answer line is then read from stdin. The last line is
//! `RESULT <code> <text>`; the exit status is 0 only for `PAM_SUCCESS`.
//!
//! With libpam_wrapper preloaded (`PAM_WRAPPER=1`, `PAM_WRAPPER_SERVICE_DIR=…`) the
//! service file comes from a test directory instead of /etc/pam.d.
#![allow(clippy::print_stdout)] // stdout is this program's protocol

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::ptr;

const PAM_SUCCESS: c_int = 0;
const PAM_BUF_ERR: c_int = 5;
const PAM_CONV_ERR: c_int = 19;
const PAM_PROMPT_ECHO_OFF: c_int = 1;
const PAM_PROMPT_ECHO_ON: c_int = 2;

/// Largest answer line relayed.
const ANSWER_LIMIT: usize = 4 << 20;

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn = unsafe extern "C" fn(
    c_int,
    *mut *const PamMessage,
    *mut *mut PamResponse,
    *mut c_void,
) -> c_int;

#[repr(C)]
struct PamConv {
    conv: Option<ConvFn>,
    appdata_ptr: *mut c_void,
}

#[repr(C)]
struct PamHandle {
    _private: [u8; 0],
}

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_start(
        service: *const c_char,
        user: *const c_char,
        conv: *const PamConv,
        pamh: *mut *mut PamHandle,
    ) -> c_int;
    fn pam_authenticate(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_end(pamh: *mut PamHandle, status: c_int) -> c_int;
    fn pam_strerror(pamh: *mut PamHandle, errnum: c_int) -> *const c_char;
}

/// Reads one answer line from stdin, without its newline.
fn read_answer() -> Option<Vec<u8>> {
    let mut line = Vec::new();
    let stdin = std::io::stdin();
    let mut lock = stdin.lock();
    let mut limited = std::io::Read::take(&mut lock, ANSWER_LIMIT as u64);
    limited.read_until(b'\n', &mut line).ok()?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Some(line)
}

unsafe extern "C" fn conversation(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    _appdata: *mut c_void,
) -> c_int {
    let Ok(n) = usize::try_from(num_msg) else {
        return PAM_CONV_ERR;
    };
    // SAFETY: calloc of n zeroed responses; libpam's module frees them.
    let out =
        unsafe { libc::calloc(n.max(1), std::mem::size_of::<PamResponse>()) }.cast::<PamResponse>();
    if out.is_null() {
        return PAM_BUF_ERR;
    }
    let mut stdout = std::io::stdout().lock();
    for i in 0..n {
        // SAFETY: Linux-PAM passes an array of n message pointers.
        let m = unsafe { &**msg.add(i) };
        // SAFETY: message text is a NUL-terminated string.
        let text = unsafe { CStr::from_ptr(m.msg) }.to_string_lossy();
        let _ = writeln!(stdout, "{text}");
        if m.msg_style == PAM_PROMPT_ECHO_ON || m.msg_style == PAM_PROMPT_ECHO_OFF {
            let _ = writeln!(stdout, "<<PROMPT>>");
            let _ = stdout.flush();
            let Some(answer) = read_answer() else {
                return PAM_CONV_ERR;
            };
            // SAFETY: malloc'd copy with NUL terminator, handed to the module.
            unsafe {
                let p = libc::malloc(answer.len() + 1).cast::<u8>();
                if p.is_null() {
                    return PAM_BUF_ERR;
                }
                ptr::copy_nonoverlapping(answer.as_ptr(), p, answer.len());
                *p.add(answer.len()) = 0;
                (*out.add(i)).resp = p.cast();
            }
        }
    }
    let _ = stdout.flush();
    // SAFETY: resp is the module's out-pointer.
    unsafe { *resp = out };
    PAM_SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(service), Some(user)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: blockhost-pam-converse SERVICE USER");
        return ExitCode::from(2);
    };
    let (Ok(service), Ok(user)) = (CString::new(service.as_str()), CString::new(user.as_str()))
    else {
        eprintln!("arguments must not contain NUL");
        return ExitCode::from(2);
    };
    let conv = PamConv {
        conv: Some(conversation),
        appdata_ptr: ptr::null_mut(),
    };
    let mut pamh: *mut PamHandle = ptr::null_mut();
    // SAFETY: valid C strings and conversation struct outliving the handle.
    let rc = unsafe { pam_start(service.as_ptr(), user.as_ptr(), &conv, &mut pamh) };
    if rc != PAM_SUCCESS {
        println!("RESULT {rc} pam_start failed");
        return ExitCode::from(1);
    }
    // SAFETY: pamh is the live handle from pam_start.
    let rc = unsafe { pam_authenticate(pamh, 0) };
    // SAFETY: pam_strerror returns a static string for any code.
    let text = unsafe { CStr::from_ptr(pam_strerror(pamh, rc)) }
        .to_string_lossy()
        .into_owned();
    println!("RESULT {rc} {text}");
    // SAFETY: ends the handle exactly once.
    unsafe { pam_end(pamh, rc) };
    if rc == PAM_SUCCESS {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
