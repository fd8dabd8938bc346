//! Limits shared by every HTTP listener of BlockHost: the public signup page
//! (plain and TLS), the VM-side `blockhost-signer`, the metrics TCP listener and
//! the local API socket.
//!
//! A server that lets a hostile client keep connections open forever, or open
//! as many as it likes, runs out of file descriptors and then answers nobody —
//! not even the operator's `bhctl` on the local socket. So each listener here
//! has its own budget and its own clocks:
//!
//! - [`serve`]: the accept loop and per-connection driver. A semaphore caps open
//!   connections (over the cap a new one is closed at once, before any TLS or
//!   HTTP work, and the open ones keep working); an optional per-client cap
//!   keeps one address (an IPv6 /64) from taking the whole budget; TLS
//!   handshakes, HTTP/1 headers and idleness have deadlines; HTTP/2 connections
//!   get keep-alive pings, a stream cap and the same idle cut-off as HTTP/1.
//! - [`budget`]: the process's file-descriptor limit (`RLIMIT_NOFILE`), raised
//!   to its hard limit, and the caps of all listeners fitted under it.
//! - [`client`]: the key a client is counted under (IPv4 address, IPv6 prefix).
//! - [`rate`]: a per-client request rate limiter with bounded memory that never
//!   forgets everybody at once.
//! - [`socket`]: a Unix socket's path: only a socket is ever removed there.
//! - [`log`]: the servers' log set-up: text lines with every field escaped
//!   ([`blockhost_crd::sanitize`]), colours only on a terminal.

pub mod budget;
pub mod client;
pub mod log;
pub mod rate;
pub mod serve;
pub mod socket;

pub use serve::{Limits, Listener, Stats, UnixPeer};
