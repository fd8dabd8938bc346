//! Allocation of scarce, unique things: Proxmox VMIDs and VM addresses.
//!
//! Each allocation is a row in its own table (`vmids`, `ipv4`, `ipv6`: value →
//! `"Kind/name"`) written in the same transaction as the object that holds it, so
//! uniqueness is enforced by redb's single writer and a crash can never leave an
//! address recorded in one place and not the other. Addresses are allocated in the
//! transaction that creates the spec; a VMID is reserved by the reconciler just
//! before it clones (Proxmox's `nextid` reserves nothing, and the original let the
//! two disagree). Everything an object holds is released in the transaction that
//! removes it.
//!
//! Searches start from a per-pool hint (the last allocation) and wrap around, so
//! filling a pool of n addresses costs O(n) in total rather than O(n²).

use std::net::{Ipv4Addr, Ipv6Addr};

use blockhost_crd::config::{Ipv4Pool, Ipv6Pool};
use blockhost_crd::meta::{Condition, ConditionStatus, set_condition};
use blockhost_crd::vm::{Addresses, NetworkSpec};
use blockhost_crd::{ConditionType, Reason};
use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::StoreError;

pub(crate) const VMIDS: TableDefinition<u32, &str> = TableDefinition::new("vmids");
pub(crate) const IPV4: TableDefinition<u32, &str> = TableDefinition::new("ipv4");
pub(crate) const IPV6: TableDefinition<u128, &str> = TableDefinition::new("ipv6");
const HINTS: TableDefinition<&str, u128> = TableDefinition::new("alloc_hints");

/// Owner recorded for a VMID found taken in Proxmox by something that is not ours:
/// never handed out again.
pub const FOREIGN: &str = "-/foreign";

/// Condition type set when a wanted address could not be allocated.
pub const ADDRESSES_CONDITION: &str = ConditionType::AddressesAllocated.as_str();

/// The address pools the store allocates from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pools {
    /// IPv4 pool.
    pub ipv4: Option<Ipv4Pool>,
    /// IPv6 pool.
    pub ipv6: Option<Ipv6Pool>,
}

/// Creates the allocation tables (so readers never meet a missing table).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(VMIDS)?;
    txn.open_table(IPV4)?;
    txn.open_table(IPV6)?;
    txn.open_table(HINTS)?;
    Ok(())
}

/// Finds a free value in `[lo, hi]`, starting after the hint and wrapping around.
fn find_free(
    lo: u128,
    hi: u128,
    hint: Option<u128>,
    mut is_free: impl FnMut(u128) -> Result<bool, StoreError>,
) -> Result<Option<u128>, StoreError> {
    if lo > hi {
        return Ok(None);
    }
    let start = hint.filter(|h| (lo..hi).contains(h)).map_or(lo, |h| h + 1);
    let mut v = start;
    // Bounded: at most one lap (a huge IPv6 prefix is never scanned whole, because
    // it is never nearly full; the bound below keeps even that case finite).
    let mut steps: u128 = 0;
    let limit = (hi - lo).saturating_add(1).min(10_000_000);
    while steps < limit {
        if is_free(v)? {
            return Ok(Some(v));
        }
        v = if v >= hi { lo } else { v + 1 };
        steps += 1;
    }
    Ok(None)
}

/// Allocates (or releases) the addresses an object's network spec asks for,
/// updating `addrs` and the object's conditions. An exhausted pool is not an
/// error: the object is stored with a condition saying so, and allocation is
/// retried when the object is applied again or reconciled.
fn sync_addresses(
    txn: &WriteTransaction,
    pools: &Pools,
    key: &str,
    want: &NetworkSpec,
    addrs: &mut Addresses,
    conditions: &mut Vec<Condition>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut problems = Vec::new();
    {
        let mut hints = txn.open_table(HINTS)?;
        let mut t4 = txn.open_table(IPV4)?;
        if let Some(problem) = sync_ipv4(&mut t4, &mut hints, pools, key, want.ipv4, addrs)? {
            problems.push(problem);
        }
        let mut t6 = txn.open_table(IPV6)?;
        if let Some(problem) = sync_ipv6(&mut t6, &mut hints, pools, key, want.ipv6, addrs)? {
            problems.push(problem);
        }
    }
    let had = conditions.iter().any(|c| c.type_ == ADDRESSES_CONDITION);
    let (status, reason, message) = if !problems.is_empty() {
        let msg = format!(
            "{}; free addresses or widen the pool, then it is retried",
            problems.join("; ")
        );
        (ConditionStatus::False, Reason::PoolExhausted.as_str(), msg)
    } else if had {
        let msg = "every wanted address is allocated".to_owned();
        (ConditionStatus::True, Reason::Allocated.as_str(), msg)
    } else {
        return Ok(());
    };
    set_condition(
        conditions,
        Condition {
            type_: ADDRESSES_CONDITION.into(),
            status,
            reason: reason.into(),
            message,
            last_transition_time: now,
        },
    );
    Ok(())
}

type Hints<'t> = redb::Table<'t, &'static str, u128>;

/// Takes or gives back the IPv4 address; `Some` says why none could be taken.
fn sync_ipv4(
    t4: &mut redb::Table<'_, u32, &'static str>,
    hints: &mut Hints<'_>,
    pools: &Pools,
    key: &str,
    want: bool,
    addrs: &mut Addresses,
) -> Result<Option<String>, StoreError> {
    match (&pools.ipv4, want, addrs.ipv4.as_deref()) {
        (Some(pool), true, None) => {
            let (lo, hi) = pool.range();
            let gw = u32::from(pool.gateway);
            let hint = hints.get("ipv4")?.map(|g| g.value());
            let found = find_free(u128::from(lo), u128::from(hi), hint, |v| {
                let v = u32::try_from(v).unwrap_or(gw);
                Ok(v != gw && t4.get(v)?.is_none())
            })?;
            let Some(v) = found.and_then(|v| u32::try_from(v).ok()) else {
                return Ok(Some(format!("the IPv4 pool {} is exhausted", pool.cidr)));
            };
            t4.insert(v, key)?;
            hints.insert("ipv4", u128::from(v))?;
            addrs.ipv4 = Some(Ipv4Addr::from(v).to_string());
        }
        (_, false, Some(a)) => {
            if let Ok(ip) = a.parse::<Ipv4Addr>() {
                t4.remove(u32::from(ip))?;
            }
            addrs.ipv4 = None;
        }
        _ => {}
    }
    Ok(None)
}

/// Takes or gives back the IPv6 address; `Some` says why none could be taken.
fn sync_ipv6(
    t6: &mut redb::Table<'_, u128, &'static str>,
    hints: &mut Hints<'_>,
    pools: &Pools,
    key: &str,
    want: bool,
    addrs: &mut Addresses,
) -> Result<Option<String>, StoreError> {
    match (&pools.ipv6, want, addrs.ipv6.as_deref()) {
        (Some(pool), true, None) => {
            let (lo, hi) = pool.range();
            let gw = u128::from(pool.gateway);
            let hint = hints.get("ipv6")?.map(|g| g.value());
            let found = find_free(lo, hi, hint, |v| Ok(v != gw && t6.get(v)?.is_none()))?;
            let Some(v) = found else {
                return Ok(Some(format!(
                    "the IPv6 prefix {} is exhausted",
                    pool.prefix
                )));
            };
            t6.insert(v, key)?;
            hints.insert("ipv6", v)?;
            addrs.ipv6 = Some(Ipv6Addr::from(v).to_string());
        }
        (_, false, Some(a)) => {
            if let Ok(ip) = a.parse::<Ipv6Addr>() {
                t6.remove(u128::from(ip))?;
            }
            addrs.ipv6 = None;
        }
        _ => {}
    }
    Ok(None)
}

/// The allocator's view of one write: the transaction, the pools, the object
/// (`"Kind/name"`) allocations are made for, and the time conditions carry.
pub struct Alloc<'t> {
    pub(crate) txn: &'t WriteTransaction,
    pub(crate) pools: &'t Pools,
    pub(crate) key: &'t str,
    pub(crate) now: DateTime<Utc>,
}

impl std::fmt::Debug for Alloc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alloc")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Alloc<'_> {
    /// [`sync_addresses`] for this object.
    pub(crate) fn sync_addresses(
        &mut self,
        want: &NetworkSpec,
        addrs: &mut Addresses,
        conditions: &mut Vec<Condition>,
    ) -> Result<(), StoreError> {
        sync_addresses(
            self.txn, self.pools, self.key, want, addrs, conditions, self.now,
        )
    }

    /// Releases the VMID and addresses this object holds (those recorded as its).
    pub(crate) fn release(
        &mut self,
        vmid: Option<u32>,
        addrs: &Addresses,
    ) -> Result<(), StoreError> {
        let key = self.key;
        if let Some(v) = vmid {
            let mut t = self.txn.open_table(VMIDS)?;
            if t.get(v)?.is_some_and(|g| g.value() == key) {
                t.remove(v)?;
            }
        }
        if let Some(ip) = addrs
            .ipv4
            .as_deref()
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
        {
            let mut t = self.txn.open_table(IPV4)?;
            if t.get(u32::from(ip))?.is_some_and(|g| g.value() == key) {
                t.remove(u32::from(ip))?;
            }
        }
        if let Some(ip) = addrs
            .ipv6
            .as_deref()
            .and_then(|a| a.parse::<Ipv6Addr>().ok())
        {
            let mut t = self.txn.open_table(IPV6)?;
            if t.get(u128::from(ip))?.is_some_and(|g| g.value() == key) {
                t.remove(u128::from(ip))?;
            }
        }
        Ok(())
    }
}

/// Reserves a free VMID in `[first, last]` for `key`, skipping ids `taken` in
/// Proxmox. Returns it.
pub(crate) fn reserve_vmid(
    txn: &WriteTransaction,
    key: &str,
    first: u32,
    last: u32,
    taken: &dyn Fn(u32) -> bool,
) -> Result<Option<u32>, StoreError> {
    let mut t = txn.open_table(VMIDS)?;
    let mut hints = txn.open_table(HINTS)?;
    let hint = hints.get("vmid")?.map(|g| g.value());
    let found = find_free(u128::from(first), u128::from(last), hint, |v| {
        let v = u32::try_from(v).unwrap_or(u32::MAX);
        Ok(!taken(v) && t.get(v)?.is_none())
    })?;
    let Some(v) = found.and_then(|v| u32::try_from(v).ok()) else {
        return Ok(None);
    };
    t.insert(v, key)?;
    hints.insert("vmid", u128::from(v))?;
    Ok(Some(v))
}

/// Marks a VMID as used by something that is not ours (never handed out again)
/// and drops it from `key`.
pub(crate) fn mark_foreign(txn: &WriteTransaction, vmid: u32) -> Result<(), StoreError> {
    txn.open_table(VMIDS)?.insert(vmid, FOREIGN)?;
    Ok(())
}

/// Who holds a VMID, if anyone.
pub(crate) fn vmid_owner(
    txn: &redb::ReadTransaction,
    vmid: u32,
) -> Result<Option<String>, StoreError> {
    Ok(txn
        .open_table(VMIDS)?
        .get(vmid)?
        .map(|g| g.value().to_owned()))
}

/// Who holds an IPv4 or IPv6 address, if anyone.
pub(crate) fn address_owner(
    txn: &redb::ReadTransaction,
    addr: &str,
) -> Result<Option<String>, StoreError> {
    if let Ok(a) = addr.parse::<Ipv4Addr>() {
        return Ok(txn
            .open_table(IPV4)?
            .get(u32::from(a))?
            .map(|g| g.value().to_owned()));
    }
    if let Ok(a) = addr.parse::<Ipv6Addr>() {
        return Ok(txn
            .open_table(IPV6)?
            .get(u128::from(a))?
            .map(|g| g.value().to_owned()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use blockhost_crd::resource::AnyObject;
    use blockhost_crd::{ConditionStatus, VirtualMachine};

    use super::*;
    use crate::{Store, StoreOptions};

    fn pools(v4: &str, v6: &str) -> Pools {
        let v4: blockhost_crd::net::Ipv4Cidr = v4.parse().unwrap();
        let v6: blockhost_crd::net::Ipv6Cidr = v6.parse().unwrap();
        let gw4 = Ipv4Addr::from(v4.hosts().0);
        Pools {
            ipv4: Some(Ipv4Pool {
                cidr: v4,
                gateway: gw4,
                first: None,
                last: None,
            }),
            ipv6: Some(Ipv6Pool {
                prefix: v6,
                gateway: Ipv6Addr::from(v6.hosts().0 + 1),
            }),
        }
    }

    fn open(dir: &tempfile::TempDir, pools: Pools) -> Store {
        Store::open(
            &dir.path().join("s.redb"),
            StoreOptions {
                pools,
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    fn vm(name: &str, ipv4: bool) -> AnyObject {
        let v: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "blockhost.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                     "resources": {"cores": 1, "memoryMiB": 1024, "diskGiB": 10},
                     "network": {"ipv4": ipv4, "ipv6": true}}
        }))
        .unwrap();
        AnyObject::VirtualMachine(Box::new(v))
    }

    fn get(s: &Store, n: &str) -> VirtualMachine {
        s.get(n).unwrap().unwrap()
    }

    #[test]
    fn addresses_come_with_the_spec_and_exhaustion_is_a_condition() {
        let dir = tempfile::tempdir().unwrap();
        // A /29 holds 6 hosts; the gateway takes one: 5 for VMs.
        let s = open(&dir, pools("192.0.2.0/29", "2001:db8:1::/64"));
        let names: Vec<String> = (0..6).map(|i| format!("vm{i}")).collect();
        s.apply(names.iter().map(|n| vm(n, true)).collect(), false)
            .unwrap();
        let v4: Vec<Option<String>> = names
            .iter()
            .map(|n| get(&s, n).status.addresses.ipv4)
            .collect();
        let got: HashSet<_> = v4.iter().flatten().cloned().collect();
        assert_eq!(got.len(), 5, "{v4:?}");
        assert!(
            !got.contains("192.0.2.1"),
            "the gateway is never handed out"
        );
        assert!(
            !got.contains("192.0.2.0") && !got.contains("192.0.2.7"),
            "network and broadcast are not hosts"
        );
        let last = get(&s, "vm5");
        assert!(last.status.addresses.ipv4.is_none());
        let c = last
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == ADDRESSES_CONDITION)
            .unwrap();
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::False, "PoolExhausted")
        );
        assert!(last.status.addresses.ipv6.is_some(), "IPv6 still allocated");

        // Deleting one frees its address; the starved VM gets it on retry.
        let freed = get(&s, "vm2").status.addresses.ipv4.unwrap();
        s.delete("VirtualMachine", "vm2").unwrap();
        let vm5 = s.retry_addresses("vm5").unwrap().unwrap();
        assert_eq!(vm5.status.addresses.ipv4.as_deref(), Some(freed.as_str()));
        let c = vm5
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == ADDRESSES_CONDITION)
            .unwrap();
        assert_eq!(c.status, ConditionStatus::True);
    }

    #[test]
    fn turning_ipv4_off_releases_it_and_dry_runs_allocate_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir, pools("10.0.0.0/30", "2001:db8::/120"));
        s.apply(vec![vm("a", true)], true).unwrap();
        s.apply(vec![vm("a", true)], false).unwrap();
        // A /30 has two hosts, one the gateway: exactly one address, the one a dry run did not take.
        assert_eq!(
            get(&s, "a").status.addresses.ipv4.as_deref(),
            Some("10.0.0.2")
        );
        s.apply(vec![vm("a", false)], false).unwrap();
        assert!(get(&s, "a").status.addresses.ipv4.is_none());
        s.apply(vec![vm("b", true)], false).unwrap();
        assert_eq!(
            get(&s, "b").status.addresses.ipv4.as_deref(),
            Some("10.0.0.2")
        );
    }

    #[test]
    fn addresses_are_unique_under_concurrent_applies() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir, pools("10.1.0.0/16", "2001:db8:2::/64"));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        s.apply(vec![vm(&format!("t{t}-{i}"), true)], false)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = s.list::<VirtualMachine>().unwrap();
        assert_eq!(all.len(), 200);
        let v4: HashSet<_> = all
            .iter()
            .map(|v| v.status.addresses.ipv4.clone().unwrap())
            .collect();
        let v6: HashSet<_> = all
            .iter()
            .map(|v| v.status.addresses.ipv6.clone().unwrap())
            .collect();
        assert_eq!((v4.len(), v6.len()), (200, 200));
    }

    #[test]
    fn vmids_are_reserved_idempotently_skip_taken_ids_and_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir, Pools::default());
        s.apply(vec![vm("a", false), vm("b", false), vm("c", false)], false)
            .unwrap();
        let taken = |v: u32| v == 100;
        let a = s.reserve_vmid("a", 100, 102, &taken).unwrap();
        assert_eq!(a, 101, "100 exists in Proxmox already");
        assert_eq!(
            s.reserve_vmid("a", 100, 102, &taken).unwrap(),
            a,
            "idempotent"
        );
        assert_eq!(get(&s, "a").status.vmid, Some(101));
        let b = s.reserve_vmid("b", 100, 102, &taken).unwrap();
        assert_eq!(b, 102);
        let err = s
            .reserve_vmid("c", 100, 102, &taken)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no free VMID"), "{err}");
        // Proxmox says 102 is someone else's: b gives it up and never gets it back.
        s.reject_vmid("b", 102).unwrap();
        assert_eq!(s.vmid_owner(102).unwrap().as_deref(), Some(FOREIGN));
        assert!(s.reserve_vmid("b", 100, 102, &taken).is_err());
        // Removing a VM releases its VMID (through finalizers, as the reconciler does).
        s.update_status::<VirtualMachine>("a", |v| {
            v.metadata.finalizers.push("blockhost.io/proxmox".into());
            true
        })
        .unwrap();
        s.delete("VirtualMachine", "a").unwrap();
        assert!(
            s.vmid_owner(101).unwrap().is_some(),
            "held while Terminating"
        );
        s.update_status::<VirtualMachine>("a", |v| {
            v.metadata.finalizers.clear();
            true
        })
        .unwrap();
        assert!(s.vmid_owner(101).unwrap().is_none());
        assert_eq!(s.reserve_vmid("c", 100, 102, &taken).unwrap(), 101);
    }
}
