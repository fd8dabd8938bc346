//! The BlockHost guest template image.
//!
//! - [`build`]: runs `iso/guest/build-image.sh` (mmdebstrap, GRUB for SeaBIOS and
//!   OVMF, no machine identity) and reports its progress; [`build::cached`] keeps
//!   the output under a content-addressed directory so test harnesses build once
//!   per change of the inputs.
//! - [`seed`]: a NoCloud cloud-init drive shaped like the one Proxmox VE writes.
//! - [`qemu`]: boots a copy-on-write clone of the image (TCG, or KVM when a probe
//!   boot works), with user-mode networking on loopback and the guest agent.
//! - [`agent`]: the QEMU guest agent protocol, used the way Proxmox VE uses it.

pub mod agent;
pub mod build;
pub mod qemu;
pub mod seed;

/// Joins an error and its sources into one line ("a: b: c").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
