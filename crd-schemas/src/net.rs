//! IP networks for the address pools: IPv4 and IPv6 prefixes in CIDR notation,
//! validated when parsed (host bits must be zero, so a typo such as `10.0.0.5/24`
//! is reported rather than silently widened).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 prefix, e.g. `10.10.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

/// An IPv6 prefix, e.g. `2001:db8:1::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Cidr {
    addr: Ipv6Addr,
    len: u8,
}

fn split(s: &str) -> Result<(&str, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not in CIDR notation (address/length)"))?;
    let len = l
        .parse::<u8>()
        .map_err(|_| format!("{l:?} is not a prefix length"))?;
    Ok((a, len))
}

impl Ipv4Cidr {
    /// Builds a prefix; host bits must be zero.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, String> {
        if len > 32 {
            return Err(format!("IPv4 prefix length {len} is over 32"));
        }
        let mask = Self::mask_of(len);
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "{addr}/{len} has host bits set; did you mean {}/{len}?",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Self { addr, len })
    }
    fn mask_of(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        }
    }
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }
    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }
    /// Whether the prefix holds a single address (/32).
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Whether `a` is inside the prefix.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & Self::mask_of(self.len) == u32::from(self.addr)
    }
    /// First and last assignable host addresses: the network and broadcast
    /// addresses are excluded except on /31 and /32 (RFC 3021).
    pub fn hosts(&self) -> (u32, u32) {
        let first = u32::from(self.addr);
        let last = first | !Self::mask_of(self.len);
        if self.len >= 31 {
            (first, last)
        } else {
            (first + 1, last - 1)
        }
    }
}

impl Ipv6Cidr {
    /// Builds a prefix; host bits must be zero.
    pub fn new(addr: Ipv6Addr, len: u8) -> Result<Self, String> {
        if len > 128 {
            return Err(format!("IPv6 prefix length {len} is over 128"));
        }
        let mask = Self::mask_of(len);
        if u128::from(addr) & !mask != 0 {
            return Err(format!(
                "{addr}/{len} has host bits set; did you mean {}/{len}?",
                Ipv6Addr::from(u128::from(addr) & mask)
            ));
        }
        Ok(Self { addr, len })
    }
    fn mask_of(len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        }
    }
    /// The network address.
    pub fn network(&self) -> Ipv6Addr {
        self.addr
    }
    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }
    /// Always false; a prefix holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Whether `a` is inside the prefix.
    pub fn contains(&self, a: Ipv6Addr) -> bool {
        u128::from(a) & Self::mask_of(self.len) == u128::from(self.addr)
    }
    /// First and last addresses of the prefix.
    pub fn hosts(&self) -> (u128, u128) {
        let first = u128::from(self.addr);
        (first, first | !Self::mask_of(self.len))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, len) = split(s)?;
        Self::new(
            a.parse()
                .map_err(|_| format!("{a:?} is not an IPv4 address"))?,
            len,
        )
    }
}

impl FromStr for Ipv6Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, len) = split(s)?;
        Self::new(
            a.parse()
                .map_err(|_| format!("{a:?} is not an IPv6 address"))?,
            len,
        )
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

macro_rules! serde_via_str {
    ($t:ty, $name:literal, $pattern:literal, $desc:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "pattern": $pattern, "description": $desc })
            }
        }
    };
}

serde_via_str!(
    Ipv4Cidr,
    "Ipv4Cidr",
    "^[0-9.]+/[0-9]{1,2}$",
    "An IPv4 prefix in CIDR notation, host bits zero (10.10.0.0/24)."
);
serde_via_str!(
    Ipv6Cidr,
    "Ipv6Cidr",
    "^[0-9a-fA-F:]+/[0-9]{1,3}$",
    "An IPv6 prefix in CIDR notation, host bits zero (2001:db8:1::/64)."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c: Ipv4Cidr = "10.10.0.0/24".parse().unwrap();
        assert_eq!(
            c.hosts(),
            (
                u32::from(Ipv4Addr::new(10, 10, 0, 1)),
                u32::from(Ipv4Addr::new(10, 10, 0, 254))
            )
        );
        assert!(c.contains(Ipv4Addr::new(10, 10, 0, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 10, 1, 1)));
        let e = "10.10.0.5/24".parse::<Ipv4Cidr>().unwrap_err();
        assert!(e.contains("did you mean 10.10.0.0/24"), "{e}");
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
        let p: Ipv4Cidr = "192.0.2.4/31".parse().unwrap();
        assert_eq!(p.hosts().1 - p.hosts().0, 1, "/31 has two usable addresses");
        let v6: Ipv6Cidr = "2001:db8:1::/64".parse().unwrap();
        assert!(v6.contains("2001:db8:1::abcd".parse().unwrap()));
        assert!("2001:db8:1::1/64".parse::<Ipv6Cidr>().is_err());
        assert_eq!(serde_json::to_string(&v6).unwrap(), "\"2001:db8:1::/64\"");
    }
}
