//! Where the wizard keeps its state and writes the host's configuration, and the
//! commands it runs on the host. Defaults are the production paths; every one can
//! be changed (flag or environment) so that tests run in a temporary directory and
//! substitute the service manager with a command of their own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use blockhost_crd::config::{DEFAULT_SOCKET_PATH, DEFAULT_STORE_PATH};

/// The wizard's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Addresses to serve HTTPS on (comma-separated).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_LISTEN",
        value_delimiter = ',',
        default_value = "0.0.0.0:443"
    )]
    pub listen: Vec<SocketAddr>,
    /// The wizard's own state: code, certificate, sessions, answers, finalization.
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_STATE_DIR",
        default_value = "/var/lib/blockhost-wizard"
    )]
    pub state_dir: PathBuf,
    /// Where the host's configuration and keys are written.
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_ETC_DIR",
        default_value = "/etc/blockhost"
    )]
    pub etc_dir: PathBuf,
    /// The console text directory agetty reads.
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_ISSUE_DIR",
        default_value = "/etc/issue.d"
    )]
    pub issue_dir: PathBuf,
    /// The "set up" marker: written when finalization is done (the wizard's unit
    /// has a condition on its absence).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_DONE_MARKER",
        default_value = "/var/lib/blockhost/.setup-complete"
    )]
    pub done_marker: PathBuf,
    /// Command that enables and starts blockhostd (split at whitespace; run with
    /// `BLOCKHOST_CONFIG` set to the written configuration).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_DAEMON_START",
        default_value = "systemctl enable --now blockhostd.service"
    )]
    pub daemon_start: String,
    /// Command that disables the wizard once the host is set up (empty: none).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_DISABLE_SELF",
        default_value = "systemctl disable blockhost-wizard.service"
    )]
    pub disable_self: String,
    /// Command that makes the gettys show the new console text (empty: none).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_CONSOLE_REFRESH",
        default_value = "agetty --reload"
    )]
    pub console_refresh: String,
    /// The local Proxmox VE node's certificate (its fingerprint is offered).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_PVE_CERT",
        default_value = "/etc/pve/local/pve-ssl.pem"
    )]
    pub local_pve_cert: PathBuf,
    /// The local Proxmox VE API.
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_PVE_URL",
        default_value = "https://127.0.0.1:8006"
    )]
    pub local_pve_url: String,
    /// The host's name (console, sign-in statement, certificate); default: the
    /// kernel's host name.
    #[arg(long, env = "BLOCKHOST_WIZARD_HOST_NAME")]
    pub host_name: Option<String>,
    /// URLs shown on the console; default: one per listen address.
    #[arg(long, env = "BLOCKHOST_WIZARD_PUBLIC_URL", value_delimiter = ',')]
    pub public_url: Vec<String>,
    /// blockhostd's database path written into the configuration.
    #[arg(long, env = "BLOCKHOST_WIZARD_DAEMON_STORE", default_value = DEFAULT_STORE_PATH)]
    pub daemon_store: PathBuf,
    /// blockhostd's API socket written into the configuration (and health-checked).
    #[arg(long, env = "BLOCKHOST_WIZARD_DAEMON_SOCKET", default_value = DEFAULT_SOCKET_PATH)]
    pub daemon_socket: PathBuf,
    /// Group given the API socket in the configuration (empty: none).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_SOCKET_GROUP",
        default_value = "blockhost"
    )]
    pub socket_group: String,
    /// User that owns the key files blockhostd reads (absent from the system: not
    /// changed, as in tests).
    #[arg(long, env = "BLOCKHOST_WIZARD_KEY_OWNER", default_value = "blockhost")]
    pub key_owner: String,
    /// Command that enables and starts the root agent (split at whitespace; run
    /// with `BLOCKHOST_ROOT_AGENT_CONFIG` set to the agent's written
    /// configuration). Empty: the host firewall is not managed (no `firewall`
    /// or `admin` section is written, admin commands stay off).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_ROOT_AGENT_START",
        default_value = "systemctl enable --now blockhost-root-agent.service"
    )]
    pub root_agent_start: String,
    /// The root agent's socket, written into its configuration and blockhostd's.
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_ROOT_AGENT_SOCKET",
        default_value = blockhost_root_agent::config::DEFAULT_SOCKET
    )]
    pub root_agent_socket: PathBuf,
    /// Command that builds the guest template image; the wizard appends
    /// `--output <template-image>`. Empty: no build (the image must be there).
    /// By default the build runs as a transient unit of its own: it needs loop
    /// devices, mounts and chroot, which the wizard's own sandbox does not have.
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_TEMPLATE_BUILD",
        default_value = "systemd-run --wait --pipe --collect --quiet --unit=blockhost-template-build bhctl template build"
    )]
    pub template_build: String,
    /// Command that installs the image as the template; the wizard appends
    /// `--image`, `--config`, `--vmid`, `--storage`, `--upload-storage` and
    /// `--node`. Empty: the template is not managed (it must exist already).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_TEMPLATE_INSTALL",
        default_value = "bhctl template install"
    )]
    pub template_install: String,
    /// The guest template image (built there when absent).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_TEMPLATE_IMAGE",
        default_value = "/var/lib/blockhost/images/blockhost-guest-trixie-amd64.qcow2"
    )]
    pub template_image: PathBuf,
    /// File storage the image is uploaded to (content `import`).
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_TEMPLATE_UPLOAD_STORAGE",
        default_value = "local"
    )]
    pub template_upload_storage: String,
    /// Seconds the template build and install may take.
    #[arg(
        long,
        env = "BLOCKHOST_WIZARD_TEMPLATE_TIMEOUT",
        default_value_t = 3600
    )]
    pub template_timeout_secs: u64,
    /// Seconds to wait for each transaction's receipt.
    #[arg(long, env = "BLOCKHOST_WIZARD_TX_TIMEOUT", default_value_t = 180)]
    pub tx_timeout_secs: u64,
    /// Seconds blockhostd may take to answer its health check after the start.
    #[arg(long, env = "BLOCKHOST_WIZARD_HEALTH_TIMEOUT", default_value_t = 60)]
    pub health_timeout_secs: u64,
}

impl Settings {
    /// The one-time code file.
    pub fn code_file(&self) -> PathBuf {
        self.state_dir.join("code.json")
    }
    /// Directory of the wizard's certificate and key.
    pub fn tls_dir(&self) -> PathBuf {
        self.state_dir.join("tls")
    }
    /// Server-side sessions (hashed ids only).
    pub fn sessions_file(&self) -> PathBuf {
        self.state_dir.join("sessions.json")
    }
    /// The operator's answers (no secrets).
    pub fn answers_file(&self) -> PathBuf {
        self.state_dir.join("answers.json")
    }
    /// The finalization state (no secrets).
    pub fn finalize_file(&self) -> PathBuf {
        self.state_dir.join("finalize.json")
    }
    /// The runner's lock (flock).
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join("finalize.lock")
    }
    /// Secrets needed only until finalization uses them (0700 directory, 0600 files).
    pub fn secrets_dir(&self) -> PathBuf {
        self.state_dir.join("secrets")
    }
    /// The Proxmox administrator's password, until the token exists.
    pub fn pve_password_file(&self) -> PathBuf {
        self.secrets_dir().join("pve-admin-password")
    }
    /// The admin's signature of the public secret, until NFT #0 is minted.
    pub fn access_signature_file(&self) -> PathBuf {
        self.secrets_dir().join("admin-access-signature")
    }
    /// The admin command name (the knock secret), until it is in the configuration.
    pub fn admin_command_file(&self) -> PathBuf {
        self.secrets_dir().join("admin-command")
    }
    /// The short-lived Proxmox token the template install uses, and its configuration.
    pub fn setup_token_file(&self) -> PathBuf {
        self.secrets_dir().join("setup-token")
    }
    /// The configuration `bhctl template install` reads (the setup token's).
    pub fn setup_config_file(&self) -> PathBuf {
        self.secrets_dir().join("setup-config.yaml")
    }
    /// The root agent's configuration.
    pub fn root_agent_config_file(&self) -> PathBuf {
        self.etc_dir.join("root-agent.toml")
    }
    /// Whether the host firewall (root agent) is managed.
    pub fn manages_firewall(&self) -> bool {
        split_command(&self.root_agent_start).is_some()
    }
    /// The server's secp256k1 key (blockhostd's `chain.serverKeyFile`).
    pub fn server_key_file(&self) -> PathBuf {
        self.etc_dir.join("server.key")
    }
    /// blockhostd's Proxmox token secret.
    pub fn pve_token_file(&self) -> PathBuf {
        self.etc_dir.join("pve-token")
    }
    /// blockhostd's configuration.
    pub fn config_file(&self) -> PathBuf {
        self.etc_dir.join("blockhost.yaml")
    }
    /// The console text file.
    pub fn issue_file(&self) -> PathBuf {
        self.issue_dir.join("blockhost-wizard.issue")
    }
    /// Receipt timeout.
    pub fn tx_timeout(&self) -> Duration {
        Duration::from_secs(self.tx_timeout_secs)
    }
    /// The host's name.
    pub fn host_name(&self) -> String {
        if let Some(n) = &self.host_name {
            return n.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "blockhost".into())
    }
    /// The URLs the console shows.
    pub fn urls(&self) -> Vec<String> {
        if !self.public_url.is_empty() {
            return self.public_url.clone();
        }
        self.listen
            .iter()
            .map(|a| {
                let ip = if a.ip().is_unspecified() {
                    primary_address().unwrap_or(a.ip())
                } else {
                    a.ip()
                };
                let host = match ip {
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                    v4 => v4.to_string(),
                };
                match a.port() {
                    443 => format!("https://{host}/"),
                    p => format!("https://{host}:{p}/"),
                }
            })
            .collect()
    }
}

/// Splits a configured command line at whitespace (no quoting: paths with spaces
/// are not supported here). `None` for an empty one.
pub fn split_command(line: &str) -> Option<(String, Vec<String>)> {
    let mut parts = line.split_whitespace().map(str::to_owned);
    let program = parts.next()?;
    Some((program, parts.collect()))
}

/// The address this host reaches other networks from: a UDP socket "connected"
/// to a documentation address (nothing is sent; the kernel only picks a route).
/// On a network with no default route (an isolated installation network, qemu's
/// restricted user network) there is no such route: then the first global
/// address of any interface, so the console never shows `https://0.0.0.0/`.
fn primary_address() -> Option<std::net::IpAddr> {
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|sock| {
            sock.connect("192.0.2.1:9")?;
            sock.local_addr()
        })
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    routed.or_else(|| pick_global(&interface_addresses()))
}

/// The address to show from an interface listing: the first global IPv4 one,
/// else the first global IPv6 one (loopback, link-local and unspecified
/// addresses cannot be reached from another machine).
fn pick_global(addrs: &[std::net::IpAddr]) -> Option<std::net::IpAddr> {
    use std::net::IpAddr;
    let global = |ip: &&IpAddr| match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    };
    let v4 = addrs.iter().filter(|ip| ip.is_ipv4()).find(global);
    v4.or_else(|| addrs.iter().filter(|ip| ip.is_ipv6()).find(global))
        .copied()
}

/// Every address of every interface that is up, in the kernel's order.
fn interface_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        // Under a unit without AF_NETLINK this fails, and the URL would show 0.0.0.0.
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot list the interfaces' addresses");
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & (libc::IFF_UP as u32) == 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose family
        // field says which sockaddr_* it is.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            out.push(ip.into());
        } else if family == libc::AF_INET6 {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            out.push(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().filter_map(|s| s.parse().ok()).collect()
    }

    #[test]
    fn the_shown_address_is_a_global_one_ipv4_first() {
        let listing = ips(&[
            "127.0.0.1",
            "::1",
            "fe80::1",
            "169.254.3.4",
            "2001:db8::5",
            "10.0.2.15",
        ]);
        assert_eq!(pick_global(&listing), "10.0.2.15".parse().ok());
        let v6_only = ips(&["127.0.0.1", "fe80::1", "2001:db8::5"]);
        assert_eq!(pick_global(&v6_only), "2001:db8::5".parse().ok());
        assert_eq!(pick_global(&ips(&["127.0.0.1", "::1", "fe80::2"])), None);
    }

    #[test]
    fn this_machine_lists_its_loopback_address() {
        assert!(interface_addresses().contains(&IpAddr::from([127, 0, 0, 1])));
    }
}
