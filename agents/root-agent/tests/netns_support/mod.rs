//! Network namespaces for tests: a "host" namespace (where the firewall and the
//! listeners live) and an "outside" namespace (the admin's machine) joined by a
//! veth pair with IPv4 and IPv6 addresses, TCP listeners inside the host, and
//! connection attempts from outside. Everything is removed when the [`Lab`] is
//! dropped, also when a test panics; namespaces left by a killed earlier run are
//! removed on the next start.
//!
//! Needs root, `ip` and `nft`. Without them the tests skip, unless
//! `BLOCKHOST_REQUIRE_TOOLS=1` makes that a failure.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Address of the host on the link (IPv4).
pub const HOST4: &str = "10.77.0.1";
/// The admin's address (IPv4).
pub const ADMIN4: &str = "10.77.0.2";
/// Another machine outside (IPv4), for source narrowing.
pub const OTHER4: &str = "10.77.0.3";
/// Host and admin (IPv6).
pub const HOST6: &str = "fd77::1";
/// The admin (IPv6).
pub const ADMIN6: &str = "fd77::2";
/// Management ports listened on in the host.
pub const PORTS: [u16; 2] = [22, 8006];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether the tests can run here; panics when they must and cannot.
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "nft"].iter().all(|t| {
        Command::new(t)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    let ok = root && tools;
    if !ok {
        assert!(
            std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "BLOCKHOST_REQUIRE_TOOLS=1 but namespace tests need root, ip and nft (apt install iproute2 nftables)"
        );
        eprintln!("skipped: namespace tests need root, ip and nft");
    }
    ok
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes namespaces named `bhg<pid>-…` whose process is gone.
fn sweep() {
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("bhg") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A host namespace and an outside namespace, linked.
#[derive(Debug)]
pub struct Lab {
    /// The host namespace's name.
    pub host: String,
    /// The outside namespace's name.
    pub out: String,
    children: Vec<Child>,
}

impl Lab {
    /// Creates both namespaces, the link, addresses and loopbacks.
    pub fn new() -> Lab {
        sweep();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let id = format!("bhg{}-{n}", std::process::id());
        let lab = Lab {
            host: format!("{id}h"),
            out: format!("{id}o"),
            children: Vec::new(),
        };
        sh(&["ip", "netns", "add", &lab.host]);
        sh(&["ip", "netns", "add", &lab.out]);
        lab.ip(
            &lab.host,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &lab.out,
            ],
        );
        for (ns, v4s, v6s) in [
            (&lab.host, vec![HOST4], vec![HOST6]),
            (&lab.out, vec![ADMIN4, OTHER4], vec![ADMIN6]),
        ] {
            lab.ip(ns, &["link", "set", "lo", "up"]);
            for a in v4s {
                lab.ip(ns, &["addr", "add", &format!("{a}/24"), "dev", "eth0"]);
            }
            for a in v6s {
                lab.ip(
                    ns,
                    &["addr", "add", &format!("{a}/64"), "dev", "eth0", "nodad"],
                );
            }
            lab.ip(ns, &["link", "set", "eth0", "up"]);
        }
        lab
    }

    /// `ip netns exec NS ip ARGS…`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        let mut a = vec!["ip", "netns", "exec", ns, "ip"];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// `ip netns exec NS CMD…` (panics on failure).
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        let mut a = vec!["ip", "netns", "exec", ns];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// Starts a process inside a namespace; it is killed when the lab is dropped.
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str], log: File) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Kills one of the lab's processes with SIGKILL and reaps it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// TCP listeners inside the host on `ports` (one dual-stack socket each, so
    /// IPv4 and IPv6), answering each connection with `port <n>\n`.
    pub fn listen(&self, ports: &[u16]) {
        for &p in ports {
            let addr: SocketAddr = format!("[::]:{p}").parse().expect("addr");
            let l = in_netns(&self.host, move || {
                TcpListener::bind(addr).unwrap_or_else(|e| {
                    panic!("cannot listen on {addr} in the host namespace: {e}")
                })
            });
            std::thread::spawn(move || {
                for mut c in l.incoming().flatten() {
                    let _ = writeln!(c, "port {p}");
                }
            });
        }
    }

    /// Whether a TCP connection from `src` (in the outside namespace) to `dst`
    /// gets the listener's greeting within `timeout`.
    pub fn reaches(&self, src: &str, dst: &str, port: u16, timeout: Duration) -> bool {
        let src: IpAddr = src.parse().expect("src");
        let dst: IpAddr = dst.parse().expect("dst");
        in_netns(&self.out, move || {
            connect_from(src, SocketAddr::new(dst, port), timeout)
                .map(|line| line == format!("port {port}\n"))
                .unwrap_or(false)
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.host, &self.out] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a fresh thread that has joined the namespace `ns`; sockets it
/// creates belong to that namespace for their whole life.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: fd is an open namespace file; setns only changes this thread.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    // std cannot bind before connect, so use libc for the source address.
    let fam = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation; the fd is owned by the TcpStream below.
    let fd = unsafe { libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let stream: TcpStream = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let (sa, len) = sockaddr(SocketAddr::new(src, 0));
    // SAFETY: sa is a valid sockaddr of len bytes.
    if unsafe { libc::bind(fd, std::ptr::addr_of!(sa).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    stream.set_nonblocking(true)?;
    let (da, dlen) = sockaddr(dst);
    // SAFETY: da is a valid sockaddr of dlen bytes.
    let rc = unsafe { libc::connect(fd, std::ptr::addr_of!(da).cast(), dlen) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    loop {
        let n = (&stream).read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.ends_with(b"\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(ss).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(ss).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}
