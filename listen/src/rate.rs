//! A per-client request limiter: a fixed window per client key
//! ([`crate::client::key`]: IPv4 address or IPv6 prefix) in a table of bounded
//! size that evicts the least recently seen client when full.
//!
//! Why least recently seen: a client that churns through addresses (a botnet,
//! or IPv6 addresses outside the aggregated prefix) only ever adds one-shot
//! entries, which are the first to go; a client hammering from one key is seen
//! all the time and keeps its count. The old table was cleared whole when full,
//! which handed every heavy client a fresh window.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    count: u32,
    seen: u64,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Recency order: `seen` sequence -> key.
    order: BTreeMap<u64, IpAddr>,
    seq: u64,
}

/// The limiter.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    capacity: usize,
    ipv6_prefix: u8,
    table: Mutex<Table>,
}

impl RateLimiter {
    /// `limit` requests per `window` per client key; at most `capacity` clients
    /// tracked; IPv6 clients aggregated by their first `ipv6_prefix` bits.
    pub fn new(limit: u32, window: Duration, capacity: usize, ipv6_prefix: u8) -> Self {
        Self {
            limit,
            window,
            capacity: capacity.max(1),
            ipv6_prefix,
            table: Mutex::default(),
        }
    }

    /// Counts one request from `ip` at `now`; `true` when it is within the limit.
    pub fn check(&self, ip: IpAddr, now: Instant) -> bool {
        let key = crate::client::key(ip, self.ipv6_prefix);
        // Each critical section leaves the table consistent: recover from poisoning.
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.seq += 1;
        let seq = t.seq;
        let Table { entries, order, .. } = &mut *t;
        let allowed = match entries.get_mut(&key) {
            Some(e) => {
                order.remove(&e.seen);
                e.seen = seq;
                if now.saturating_duration_since(e.window_start) >= self.window {
                    e.window_start = now;
                    e.count = 0;
                }
                e.count = e.count.saturating_add(1);
                e.count <= self.limit
            }
            None => {
                while entries.len() >= self.capacity {
                    let Some((_, oldest)) = order.pop_first() else {
                        break;
                    };
                    entries.remove(&oldest);
                }
                entries.insert(
                    key,
                    Entry {
                        window_start: now,
                        count: 1,
                        seen: seq,
                    },
                );
                1 <= self.limit
            }
        };
        order.insert(seq, key);
        allowed
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn a_heavy_client_keeps_its_count_under_address_churn() {
        let rl = RateLimiter::new(10, Duration::from_secs(60), 100, 64);
        let now = Instant::now();
        let heavy = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..10 {
            assert!(rl.check(heavy, now));
        }
        assert!(!rl.check(heavy, now));
        // 10,000 one-shot addresses, the heavy client trying between them.
        for i in 0u32..10_000 {
            let churn = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            assert!(rl.check(churn, now));
            if i % 50 == 0 {
                assert!(!rl.check(heavy, now), "reset after {i} addresses");
            }
        }
        assert!(rl.tracked() <= 100);
        // Its window ends as usual.
        assert!(rl.check(heavy, now + Duration::from_secs(60)));
    }

    #[test]
    fn ipv6_addresses_of_one_prefix_share_a_count() {
        let rl = RateLimiter::new(5, Duration::from_secs(60), 100, 64);
        let now = Instant::now();
        let base = u128::from(
            "2001:db8:7:9::"
                .parse::<Ipv6Addr>()
                .unwrap_or(Ipv6Addr::LOCALHOST),
        );
        let allowed = (0u128..50)
            .filter(|i| rl.check(IpAddr::V6(Ipv6Addr::from(base + i * 7919 + 1)), now))
            .count();
        assert_eq!(allowed, 5);
        assert_eq!(rl.tracked(), 1);
        // Another /64 has its own count; a /128 setting counts addresses.
        assert!(rl.check(IpAddr::V6(Ipv6Addr::from(base + (1 << 64))), now));
        let per_address = RateLimiter::new(5, Duration::from_secs(60), 100, 128);
        assert!((0u128..50).all(|i| per_address.check(IpAddr::V6(Ipv6Addr::from(base + i)), now)));
    }
}
