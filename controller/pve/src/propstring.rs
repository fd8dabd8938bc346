//! PVE property strings (`virtio=BC:24:11:00:00:01,bridge=vmbr0`) and the typed values we build
//! from them: network devices, cloud-init IP configs, disk sizes.
//!
//! A property string is a comma-separated list of `key=value` pairs, where the first item may be
//! a bare value for the format's default key (`local-lvm:vm-100-disk-0,size=3G`, or the NIC model
//! whose value is the MAC). Order matters to humans reading `qm config`, so we keep it.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::Error;

/// A parsed property string: ordered items, each `key=value` or a bare value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyString {
    items: Vec<(Option<String>, String)>,
}

impl PropertyString {
    /// An empty property string.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse a property string. Never fails: an item without `=` is a bare value. Commas inside
    /// double quotes do not split (PVE quotes values such as `args="..."`).
    pub fn parse(s: &str) -> Self {
        let mut items = Vec::new();
        let mut current = String::new();
        let mut quoted = false;
        for ch in s.chars() {
            match ch {
                '"' => {
                    quoted = !quoted;
                    current.push(ch);
                }
                ',' if !quoted => {
                    push_item(&mut items, &current);
                    current.clear();
                }
                _ => current.push(ch),
            }
        }
        push_item(&mut items, &current);
        PropertyString { items }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|(k, _)| k.as_deref() == Some(key))
            .map(|(_, v)| v.as_str())
    }

    /// The first bare value (the default key's value), if any.
    pub fn bare(&self) -> Option<&str> {
        self.items
            .iter()
            .find(|(k, _)| k.is_none())
            .map(|(_, v)| v.as_str())
    }

    /// Set `key` to `value`, replacing it in place or appending it.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        let value = value.into();
        match self
            .items
            .iter_mut()
            .find(|(k, _)| k.as_deref() == Some(key))
        {
            Some(item) => item.1 = value,
            None => self.items.push((Some(key.to_owned()), value)),
        }
        self
    }

    /// Append a bare value.
    pub fn push_bare(&mut self, value: impl Into<String>) -> &mut Self {
        self.items.push((None, value.into()));
        self
    }

    /// Remove `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let pos = self
            .items
            .iter()
            .position(|(k, _)| k.as_deref() == Some(key))?;
        Some(self.items.remove(pos).1)
    }

    /// The items in order.
    pub fn iter(&self) -> impl Iterator<Item = (Option<&str>, &str)> {
        self.items.iter().map(|(k, v)| (k.as_deref(), v.as_str()))
    }

    /// True if there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn push_item(items: &mut Vec<(Option<String>, String)>, raw: &str) {
    let raw = raw.trim();
    if raw.is_empty() {
        return;
    }
    match raw.split_once('=') {
        Some((k, v)) => items.push((Some(k.trim().to_owned()), v.trim().to_owned())),
        None => items.push((None, raw.to_owned())),
    }
}

impl fmt::Display for PropertyString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match k {
                Some(k) => write!(f, "{k}={v}")?,
                None => f.write_str(v)?,
            }
        }
        Ok(())
    }
}

/// NIC models PVE accepts as the key whose value is the MAC (`virtio=BC:24:...`).
const NET_MODELS: &[&str] = &[
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

/// A `netN` value: model, MAC, bridge, VLAN tag, firewall, and any other options kept as-is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// NIC model, e.g. `virtio`.
    pub model: String,
    /// MAC address; `None` lets PVE generate one.
    pub macaddr: Option<String>,
    /// Bridge, e.g. `vmbr0`.
    pub bridge: Option<String>,
    /// VLAN tag.
    pub tag: Option<u16>,
    /// Whether the PVE firewall filters this NIC.
    pub firewall: Option<bool>,
    /// Options we do not model (`mtu`, `rate`, `queues`, ...), in order.
    pub extra: Vec<(String, String)>,
}

impl NetDevice {
    /// A virtio NIC on `bridge` with a MAC chosen by PVE.
    pub fn virtio(bridge: &str) -> Self {
        NetDevice {
            model: "virtio".into(),
            macaddr: None,
            bridge: Some(bridge.into()),
            tag: None,
            firewall: None,
            extra: Vec::new(),
        }
    }
}

impl FromStr for NetDevice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let ps = PropertyString::parse(s);
        let mut dev = NetDevice {
            model: String::new(),
            macaddr: None,
            bridge: None,
            tag: None,
            firewall: None,
            extra: Vec::new(),
        };
        for (k, v) in ps.iter() {
            match k {
                Some(k) if NET_MODELS.contains(&k) => {
                    dev.model = k.to_owned();
                    if !v.is_empty() {
                        dev.macaddr = Some(v.to_owned());
                    }
                }
                Some("model") => dev.model = v.to_owned(),
                Some("macaddr") => dev.macaddr = Some(v.to_owned()),
                Some("bridge") => dev.bridge = Some(v.to_owned()),
                Some("tag") => {
                    dev.tag = Some(v.parse().map_err(|_| {
                        Error::Config(format!("net device {s:?}: bad VLAN tag {v:?}"))
                    })?)
                }
                Some("firewall") => dev.firewall = crate::de::parse_bool(v),
                Some(k) => dev.extra.push((k.to_owned(), v.to_owned())),
                None if NET_MODELS.contains(&v) => dev.model = v.to_owned(),
                None => dev.extra.push((String::new(), v.to_owned())),
            }
        }
        if dev.model.is_empty() {
            return Err(Error::Config(format!("net device {s:?} has no model")));
        }
        Ok(dev)
    }
}

impl fmt::Display for NetDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ps = PropertyString::new();
        match &self.macaddr {
            // PVE's own form: the model is the key and the MAC its value.
            Some(mac) => ps.set(&self.model, mac.clone()),
            None => ps.set("model", self.model.clone()),
        };
        if let Some(b) = &self.bridge {
            ps.set("bridge", b.clone());
        }
        if let Some(fw) = self.firewall {
            ps.set("firewall", if fw { "1" } else { "0" });
        }
        if let Some(t) = self.tag {
            ps.set("tag", t.to_string());
        }
        for (k, v) in &self.extra {
            if k.is_empty() {
                ps.push_bare(v.clone());
            } else {
                ps.set(k, v.clone());
            }
        }
        ps.fmt(f)
    }
}

/// An IPv4 address with prefix length, e.g. `10.0.0.5/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0–32.
    pub prefix: u8,
}

/// An IPv6 address with prefix length, e.g. `2001:db8::5/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Cidr {
    /// The address.
    pub addr: Ipv6Addr,
    /// Prefix length, 0–128.
    pub prefix: u8,
}

fn parse_cidr<A: FromStr>(s: &str, max: u8) -> Option<(A, u8)> {
    let (a, p) = s.split_once('/')?;
    let prefix: u8 = p.parse().ok()?;
    (prefix <= max).then_some(())?;
    Some((a.parse().ok()?, prefix))
}

/// The IPv4 part of a cloud-init `ipconfigN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Setting {
    /// `ip=dhcp`.
    Dhcp,
    /// `ip=ADDR/PREFIX`.
    Static(Ipv4Cidr),
}

/// The IPv6 part of a cloud-init `ipconfigN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Setting {
    /// `ip6=dhcp`.
    Dhcp,
    /// `ip6=auto` (SLAAC).
    Auto,
    /// `ip6=ADDR/PREFIX`.
    Static(Ipv6Cidr),
}

/// A cloud-init `ipconfigN` value: `ip=10.0.0.5/24,gw=10.0.0.1,ip6=2001:db8::5/128,gw6=2001:db8::1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpConfig {
    /// IPv4 address or DHCP.
    pub ip: Option<Ipv4Setting>,
    /// IPv4 gateway.
    pub gw: Option<Ipv4Addr>,
    /// IPv6 address, DHCP or SLAAC.
    pub ip6: Option<Ipv6Setting>,
    /// IPv6 gateway.
    pub gw6: Option<Ipv6Addr>,
}

impl IpConfig {
    /// An empty config, to fill with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }
    /// Static IPv4 address with a gateway.
    pub fn ipv4(mut self, addr: Ipv4Addr, prefix: u8, gw: Option<Ipv4Addr>) -> Self {
        self.ip = Some(Ipv4Setting::Static(Ipv4Cidr { addr, prefix }));
        self.gw = gw;
        self
    }
    /// Static IPv6 address with a gateway.
    pub fn ipv6(mut self, addr: Ipv6Addr, prefix: u8, gw6: Option<Ipv6Addr>) -> Self {
        self.ip6 = Some(Ipv6Setting::Static(Ipv6Cidr { addr, prefix }));
        self.gw6 = gw6;
        self
    }
}

impl FromStr for IpConfig {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |what: &str| Error::Config(format!("ipconfig {s:?}: bad {what}"));
        let mut out = IpConfig::default();
        for (k, v) in PropertyString::parse(s).iter() {
            match k {
                Some("ip") => {
                    out.ip = Some(if v == "dhcp" {
                        Ipv4Setting::Dhcp
                    } else {
                        let (addr, prefix) = parse_cidr(v, 32).ok_or_else(|| bad("ip"))?;
                        Ipv4Setting::Static(Ipv4Cidr { addr, prefix })
                    })
                }
                Some("gw") => out.gw = Some(v.parse().map_err(|_| bad("gw"))?),
                Some("ip6") => {
                    out.ip6 = Some(match v {
                        "dhcp" => Ipv6Setting::Dhcp,
                        "auto" => Ipv6Setting::Auto,
                        _ => {
                            let (addr, prefix) = parse_cidr(v, 128).ok_or_else(|| bad("ip6"))?;
                            Ipv6Setting::Static(Ipv6Cidr { addr, prefix })
                        }
                    })
                }
                Some("gw6") => out.gw6 = Some(v.parse().map_err(|_| bad("gw6"))?),
                _ => return Err(bad("key")),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for IpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ps = PropertyString::new();
        match self.ip {
            Some(Ipv4Setting::Dhcp) => {
                ps.set("ip", "dhcp");
            }
            Some(Ipv4Setting::Static(c)) => {
                ps.set("ip", format!("{}/{}", c.addr, c.prefix));
            }
            None => {}
        }
        if let Some(gw) = self.gw {
            ps.set("gw", gw.to_string());
        }
        match self.ip6 {
            Some(Ipv6Setting::Dhcp) => {
                ps.set("ip6", "dhcp");
            }
            Some(Ipv6Setting::Auto) => {
                ps.set("ip6", "auto");
            }
            Some(Ipv6Setting::Static(c)) => {
                ps.set("ip6", format!("{}/{}", c.addr, c.prefix));
            }
            None => {}
        }
        if let Some(gw6) = self.gw6 {
            ps.set("gw6", gw6.to_string());
        }
        ps.fmt(f)
    }
}

const KIB: u64 = 1024;

/// Parse a PVE size (`3G`, `512M`, `10240K`, `1T`, or plain bytes) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], KIB),
        'M' | 'm' => (&s[..s.len() - 1], KIB.pow(2)),
        'G' | 'g' => (&s[..s.len() - 1], KIB.pow(3)),
        'T' | 't' => (&s[..s.len() - 1], KIB.pow(4)),
        _ => (s, 1),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    (f >= 0.0 && f.is_finite()).then(|| (f * mult as f64).round() as u64)
}

/// A disk size for `resize`: grow by an amount (`+2G`) or set an absolute size (`20G`).
/// PVE only grows disks; an absolute size below the current one is rejected by PVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSize {
    /// Grow by this many bytes.
    Grow(u64),
    /// Set to this many bytes.
    Absolute(u64),
}

impl DiskSize {
    /// Grow by `n` GiB.
    pub fn grow_gib(n: u64) -> Self {
        DiskSize::Grow(n.saturating_mul(KIB.pow(3)))
    }
    /// Set to `n` GiB.
    pub fn gib(n: u64) -> Self {
        DiskSize::Absolute(n.saturating_mul(KIB.pow(3)))
    }
}

/// Bytes in the largest unit that divides them exactly, as PVE's size regex accepts.
fn format_size(bytes: u64) -> String {
    for (unit, div) in [
        ('T', KIB.pow(4)),
        ('G', KIB.pow(3)),
        ('M', KIB.pow(2)),
        ('K', KIB),
    ] {
        if bytes >= div && bytes.is_multiple_of(div) {
            return format!("{}{unit}", bytes / div);
        }
    }
    bytes.to_string()
}

impl fmt::Display for DiskSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskSize::Grow(b) => write!(f, "+{}", format_size(*b)),
            DiskSize::Absolute(b) => f.write_str(&format_size(*b)),
        }
    }
}

/// Split PVE's tag list (`a;b`, also `a,b` or spaces in older versions).
pub fn parse_tags(s: &str) -> Vec<String> {
    s.split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Percent-encode everything but RFC 3986 unreserved characters. PVE's `sshkeys` parameter must be
/// URL-encoded *inside* the form value (PVE decodes it once more), with `%20`, never `+`.
pub fn percent_encode_strict(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undo [`percent_encode_strict`] (and any other `%XX` encoding); `None` on a malformed escape
/// or invalid UTF-8. PVE returns `sshkeys` still encoded.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn property_string_round_trip_keeps_order() {
        let s = "local-lvm:vm-100-disk-0,iothread=1,size=3G";
        let ps = PropertyString::parse(s);
        assert_eq!(ps.bare(), Some("local-lvm:vm-100-disk-0"));
        assert_eq!(ps.get("size"), Some("3G"));
        assert_eq!(ps.to_string(), s);
    }

    #[test]
    fn property_string_quotes_and_edits() {
        let mut ps = PropertyString::parse(r#"a=1,args="x,y",b=2"#);
        assert_eq!(ps.get("args"), Some(r#""x,y""#));
        ps.set("a", "9").set("c", "3");
        assert_eq!(ps.remove("b").as_deref(), Some("2"));
        assert_eq!(ps.to_string(), r#"a=9,args="x,y",c=3"#);
    }

    #[test]
    fn net_device_both_forms() {
        let d: NetDevice = "virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1,tag=42,mtu=1400"
            .parse()
            .unwrap();
        assert_eq!(d.model, "virtio");
        assert_eq!(d.macaddr.as_deref(), Some("BC:24:11:00:00:01"));
        assert_eq!(d.bridge.as_deref(), Some("vmbr0"));
        assert_eq!(d.tag, Some(42));
        assert_eq!(d.firewall, Some(true));
        assert_eq!(d.extra, vec![("mtu".to_owned(), "1400".to_owned())]);
        assert_eq!(
            d.to_string(),
            "virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1,tag=42,mtu=1400"
        );
        let d: NetDevice = "model=e1000,macaddr=AA:BB:CC:DD:EE:FF".parse().unwrap();
        assert_eq!(d.model, "e1000");
        assert_eq!(d.to_string(), "e1000=AA:BB:CC:DD:EE:FF");
        assert_eq!(
            NetDevice::virtio("vmbr1").to_string(),
            "model=virtio,bridge=vmbr1"
        );
        assert!("bridge=vmbr0".parse::<NetDevice>().is_err());
    }

    #[test]
    fn ipconfig_round_trip() {
        let s = "ip=10.0.0.5/24,gw=10.0.0.1,ip6=2001:db8::5/128,gw6=2001:db8::1";
        let c: IpConfig = s.parse().unwrap();
        assert_eq!(
            c,
            IpConfig::new()
                .ipv4(
                    "10.0.0.5".parse().unwrap(),
                    24,
                    Some("10.0.0.1".parse().unwrap())
                )
                .ipv6(
                    "2001:db8::5".parse().unwrap(),
                    128,
                    Some("2001:db8::1".parse().unwrap())
                )
        );
        assert_eq!(c.to_string(), s);
        let d: IpConfig = "ip=dhcp,ip6=auto".parse().unwrap();
        assert_eq!(d.ip, Some(Ipv4Setting::Dhcp));
        assert_eq!(d.ip6, Some(Ipv6Setting::Auto));
        assert_eq!(d.to_string(), "ip=dhcp,ip6=auto");
        for bad in [
            "ip=10.0.0.5",
            "ip=10.0.0.5/33",
            "gw=x",
            "ip6=::1/129",
            "foo=1",
        ] {
            assert!(bad.parse::<IpConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("3G"), Some(3 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(DiskSize::grow_gib(2).to_string(), "+2G");
        assert_eq!(DiskSize::Absolute(1536 << 20).to_string(), "1536M");
        assert_eq!(DiskSize::Grow(1000).to_string(), "+1000");
    }

    #[test]
    fn tags_and_encoding() {
        assert_eq!(parse_tags("a;b,c d"), vec!["a", "b", "c", "d"]);
        assert_eq!(
            percent_encode_strict("ssh-ed25519 AAAA+/= x@y\n"),
            "ssh-ed25519%20AAAA%2B%2F%3D%20x%40y%0A"
        );
        assert_eq!(
            percent_decode("ssh-ed25519%20AAAA%2B%2F%3D%20x%40y%0A").as_deref(),
            Some("ssh-ed25519 AAAA+/= x@y\n")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
