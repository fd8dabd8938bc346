//! Wallet-signature SSH login for BlockHost VMs.
//!
//! Built twice from one source: as `pam_blockhost.so` (the PAM module sshd loads for
//! keyboard-interactive authentication) and as a Rust library that the signer service
//! and the `blockhost-login` CLI share, so message layout and hand-off protocol have
//! one definition.
//!
//! - [`siwe`]: the EIP-4361 login message: build, parse, find in a prompt.
//! - [`options`]: the module's `key=value` options from the PAM stack line.
//! - [`login`]: one login attempt: access file, user check, challenge, verification.
//! - [`handoff`]: the Unix-socket protocol between the module and the signer service.
//! - `ffi`: `pam_sm_authenticate`/`pam_sm_setcred` over libpam's C interface.
//! - `log`: audit lines to syslog's auth facility.
//!
//! Signature rules (65 bytes, v, low-s, constant-time compare) live in
//! [`blockhost_access::eip191`], shared with the controller.

pub mod handoff;
pub mod login;
pub mod options;
pub mod siwe;

mod ffi;
mod log;
