//! The key a client is counted under by the connection and rate limits.
//!
//! An IPv4 client has one address; an IPv6 client usually has a whole /64 (or
//! more) and can pick a new address for every connection, so IPv6 addresses
//! are counted by their prefix. IPv4-mapped IPv6 addresses (a dual-stack
//! socket) count as the IPv4 address they carry.

use std::net::{IpAddr, Ipv6Addr};

/// Default IPv6 prefix length clients are aggregated by.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The client key of `ip`: the address itself for IPv4, the first
/// `ipv6_prefix` bits for IPv6 (0–128; larger values are taken as 128).
pub fn key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_by_prefix_v4_by_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0; 4]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(key(a, 64), key(b, 64));
        assert_ne!(key(a, 64), key(c, 64));
        assert_eq!(key(a, 48), key(c, 48));
        assert_ne!(key(a, 128), key(b, 128));
        assert_eq!(key(a, 0), IpAddr::from([0u16; 8]));
        let v4 = IpAddr::from([192, 0, 2, 7]);
        assert_eq!(key(v4, 64), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(key(mapped, 64), v4);
    }
}
