//! Who may write what: the store's writers and the fields each one owns.
//!
//! Every write names its [`Writer`], and the write transaction asks this module
//! what that writer may change. The rules live in the store because a rule each
//! caller keeps is a rule one caller forgets: an `apply` that rewrote a purchased
//! VM's owner handed its SSH access to someone who does not hold the NFT.
//!
//! Spec fields a writer does not own are *refused* when a person writes (the
//! operator is told which field and why) and *taken back* from the stored object
//! when a program writes (a chain event never undoes an operator's suspension).
//! Status fields are always merged: a writer's update lands on the stored status
//! with its own fields only, so concurrent writers never lose each other's work.
//! Each condition type belongs to one writer. The table is in ARCHITECTURE.md
//! ("Who writes each field"); the destructuring below makes a new field a compile
//! error until someone decides who owns it.

use blockhost_crd::meta::Condition;
use blockhost_crd::plan::PlanStatus;
use blockhost_crd::resource::Resource;
use blockhost_crd::{
    Plan, PlanSpec, Subscription, SubscriptionStatus, VirtualMachine, VirtualMachineSpec,
    VirtualMachineStatus, VmSource,
};

use crate::StoreError;
use crate::alloc::{self, Alloc};

/// Condition type the minter sets on a `Subscription`.
pub const NFT_MINTED_CONDITION: &str = "NftMinted";

/// Who writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// A person, through the API (`bhctl`).
    Operator {
        /// The API socket peer's uid, when the connection told it.
        uid: Option<u32>,
    },
    /// The chain watcher: desired state from chain events, and their undo.
    Chain,
    /// The store's allocator: VMIDs and addresses.
    Allocator,
    /// The VM reconciler: what Proxmox reports, finalizers, deletion on expiry.
    Reconciler,
    /// The minter: access NFT token ids.
    Minter,
}

impl Writer {
    /// An operator whose uid is not known (in-process callers, tests).
    pub const OPERATOR: Writer = Writer::Operator { uid: None };

    fn same_role(self, other: Writer) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

impl std::fmt::Display for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Writer::Operator { uid: Some(uid) } => write!(f, "the operator (uid {uid})"),
            Writer::Operator { uid: None } => f.write_str("the operator (uid unknown)"),
            Writer::Chain => f.write_str("the chain watcher"),
            Writer::Allocator => f.write_str("the allocator"),
            Writer::Reconciler => f.write_str("the VM reconciler"),
            Writer::Minter => f.write_str("the minter"),
        }
    }
}

/// Why a writer may not do what it asked; the transaction names the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The field refused (`spec.owner`), when one field is the reason.
    pub field: Option<&'static str>,
    /// Why, and what to do instead.
    pub reason: String,
}

impl Refusal {
    fn field(field: &'static str, reason: String) -> Self {
        Self {
            field: Some(field),
            reason: format!("{field} {reason}"),
        }
    }

    fn whole(reason: impl Into<String>) -> Self {
        Self {
            field: None,
            reason: reason.into(),
        }
    }

    /// The error naming the object.
    pub(crate) fn into_error(self, kind: &'static str, name: &str) -> StoreError {
        StoreError::NotAllowed {
            kind,
            name: name.to_owned(),
            field: self.field,
            reason: self.reason,
        }
    }
}

/// A stored kind with its ownership rules.
pub trait Kind: Resource {
    /// Mutable desired state (the store's business; [`Resource`] offers none).
    fn spec_mut(&mut self) -> &mut Self::Spec;

    /// Makes `new` what `writer` (a spec writer: the operator or the chain) may
    /// write over `stored`: refuses fields a person does not own, takes back those
    /// a program does not own.
    fn merge_spec(writer: Writer, stored: &Self, new: &mut Self::Spec) -> Result<(), Refusal>;

    /// Lays the fields of `written` that `writer` owns onto `stored`.
    fn merge_status(writer: Writer, stored: &mut Self::Status, written: Self::Status);

    /// Whether `writer` may create `new`.
    fn may_create(writer: Writer, new: &Self) -> Result<(), Refusal> {
        let _ = new;
        spec_writer(writer)
    }

    /// Whether `writer` may delete `stored`; `Some` is an audit note that is
    /// recorded with the deletion and outlives the object.
    fn may_delete(writer: Writer, stored: &Self, force: bool) -> Result<Option<String>, Refusal> {
        let _ = (stored, force);
        default_may_delete(writer)
    }

    /// Takes what a stored spec needs from the allocator (a VM's addresses).
    fn allocate(&mut self, a: &mut Alloc<'_>) -> Result<(), StoreError> {
        let _ = a;
        Ok(())
    }

    /// Gives back everything the object holds, as it is removed.
    fn release(&self, a: &mut Alloc<'_>) -> Result<(), StoreError> {
        let _ = a;
        Ok(())
    }

    /// Forgets allocations a removal gave back (a restored object allocates anew).
    fn forget_allocations(&mut self) {}
}

/// Only the operator and the chain write specs.
pub(crate) fn spec_writer(writer: Writer) -> Result<(), Refusal> {
    match writer {
        Writer::Operator { .. } | Writer::Chain => Ok(()),
        _ => Err(Refusal::whole(format!(
            "{writer} writes status only, never a spec"
        ))),
    }
}

/// Merges conditions in place: the stored ones `owns` does not claim stay, the
/// claimed ones become what the writer wrote (order kept, new ones last).
fn merge_conditions(
    stored: &mut Vec<Condition>,
    mut written: Vec<Condition>,
    owns: impl Fn(&str) -> bool,
) {
    written.retain(|c| owns(&c.type_));
    let mut out = Vec::with_capacity(stored.len() + written.len());
    for c in stored.drain(..) {
        if !owns(&c.type_) {
            out.push(c);
        } else if let Some(i) = written.iter().position(|w| w.type_ == c.type_) {
            out.push(written.remove(i));
        }
    }
    out.extend(written);
    *stored = out;
}

/// The VM condition types the allocator owns; every other one is the reconciler's.
fn vm_condition_owner(type_: &str) -> Writer {
    if type_ == alloc::ADDRESSES_CONDITION {
        Writer::Allocator
    } else {
        Writer::Reconciler
    }
}

/// Assigns `$field` of `$into` from the destructured local of the same name.
macro_rules! take {
    ($into:ident: $($field:ident),+) => {{ $( $into.$field = $field; )+ }};
}

/// `into` with the fields the chain owns taken from `from`.
fn with_chain_fields(into: &VirtualMachineSpec, from: &VirtualMachineSpec) -> VirtualMachineSpec {
    // Exhaustive on purpose: a new spec field must be given an owner here.
    let VirtualMachineSpec {
        owner,
        source,
        plan,
        resources,
        template,
        expires_at,
        power_state: _,
        network: _,
        guest_user: _,
        ssh_keys: _,
    } = from.clone();
    let mut out = into.clone();
    take!(out: owner, source, plan, resources, template, expires_at);
    out
}

/// The first field the chain owns in which two VM specs differ.
fn chain_vm_field(a: &VirtualMachineSpec, b: &VirtualMachineSpec) -> Option<&'static str> {
    [
        (a.owner != b.owner, "spec.owner"),
        (a.source != b.source, "spec.source"),
        (a.plan != b.plan, "spec.plan"),
        (a.resources != b.resources, "spec.resources"),
        (a.template != b.template, "spec.template"),
        (a.expires_at != b.expires_at, "spec.expiresAt"),
    ]
    .into_iter()
    .find_map(|(differs, field)| differs.then_some(field))
    // A chain field this list misses is still refused, if less precisely.
    .or_else(|| (with_chain_fields(a, b) != *a).then_some("spec"))
}

/// What the operator should do instead of changing a chain-owned VM field.
fn chain_vm_hint(field: &str) -> &'static str {
    match field {
        "spec.owner" => "it follows the access NFT; transfer the NFT on chain",
        "spec.expiresAt" => "extend the subscription on chain",
        "spec.source" => "it ties the VM to its purchase and never changes",
        _ => "it is what the subscription bought; change the plan on chain",
    }
}

impl Kind for VirtualMachine {
    fn spec_mut(&mut self) -> &mut Self::Spec {
        &mut self.spec
    }

    fn merge_spec(writer: Writer, stored: &Self, new: &mut Self::Spec) -> Result<(), Refusal> {
        let old = &stored.spec;
        match (writer, old.source.clone()) {
            (Writer::Chain, _) => {
                *new = with_chain_fields(old, new);
                Ok(())
            }
            (_, VmSource::Chain { subscription_id }) => match chain_vm_field(old, new) {
                Some(field) => Err(Refusal::field(
                    field,
                    format!(
                        "is owned by the chain (this is subscription {subscription_id}'s VM): {}; \
                         the operator may change powerState and labels",
                        chain_vm_hint(field)
                    ),
                )),
                None => new.validate_update(old).map_err(Refusal::whole),
            },
            (_, VmSource::Operator) => new.validate_update(old).map_err(Refusal::whole),
        }
    }

    fn merge_status(writer: Writer, stored: &mut Self::Status, written: Self::Status) {
        let VirtualMachineStatus {
            phase,
            node,
            vmid,
            addresses,
            nft_token_id,
            conditions,
            observed_generation,
            last_error,
            suspended_at,
            access_file_digest,
        } = written;
        match writer {
            Writer::Reconciler => take!(stored: phase, node, observed_generation, last_error,
                suspended_at, access_file_digest),
            Writer::Allocator => take!(stored: vmid, addresses),
            Writer::Minter => take!(stored: nft_token_id),
            Writer::Operator { .. } | Writer::Chain => {}
        }
        merge_conditions(&mut stored.conditions, conditions, |t| {
            vm_condition_owner(t).same_role(writer)
        });
    }

    fn may_delete(writer: Writer, stored: &Self, force: bool) -> Result<Option<String>, Refusal> {
        let VmSource::Chain { subscription_id } = stored.spec.source else {
            return default_may_delete(writer);
        };
        match writer {
            Writer::Operator { .. } if force => Ok(Some(format!(
                "deleted with --force by {writer}, over the chain's authority \
                 (subscription {subscription_id})"
            ))),
            Writer::Operator { .. } => Err(Refusal::whole(format!(
                "is subscription {subscription_id}'s VM and the chain owns it: it is deleted when \
                 the subscription is cancelled or expires; to delete it anyway, use --force \
                 (recorded with your uid)"
            ))),
            _ => default_may_delete(writer),
        }
    }

    fn allocate(&mut self, a: &mut Alloc<'_>) -> Result<(), StoreError> {
        let st = &mut self.status;
        a.sync_addresses(&self.spec.network, &mut st.addresses, &mut st.conditions)
    }

    fn release(&self, a: &mut Alloc<'_>) -> Result<(), StoreError> {
        a.release(self.status.vmid, &self.status.addresses)
    }

    fn forget_allocations(&mut self) {
        self.status.vmid = None;
        self.status.addresses = Default::default();
    }
}

/// The default deletion rule, for kinds and cases without their own.
fn default_may_delete(writer: Writer) -> Result<Option<String>, Refusal> {
    match writer {
        Writer::Operator { .. } | Writer::Chain | Writer::Reconciler => Ok(None),
        _ => Err(Refusal::whole(format!("{writer} does not delete objects"))),
    }
}

/// Compares a chain-owned plan field an operator wrote with the stored one:
/// left out keeps the stored value, a different value is refused.
fn chain_plan_field<T: PartialEq + std::fmt::Debug>(
    id: u64,
    field: &'static str,
    stored: &Option<T>,
    written: &Option<T>,
) -> Result<(), Refusal> {
    match written {
        None => Ok(()),
        Some(w) if Some(w) == stored.as_ref() => Ok(()),
        Some(_) => Err(Refusal::field(
            field,
            format!(
                "is chain plan {id}'s ({stored:?} on chain); change it on chain, or leave it out"
            ),
        )),
    }
}

impl Kind for Plan {
    fn spec_mut(&mut self) -> &mut Self::Spec {
        &mut self.spec
    }

    fn merge_spec(writer: Writer, stored: &Self, new: &mut Self::Spec) -> Result<(), Refusal> {
        let old = &stored.spec;
        // Exhaustive on purpose: a new field must be given an owner here.
        let PlanSpec {
            chain_plan_id: _,
            resources: _,
            template: _,
            display_name,
            price_per_day_usd_cents,
            active,
        } = new.clone();
        match (writer, old.chain_plan_id) {
            (Writer::Chain, _) => {
                let mut merged = old.clone();
                take!(merged: display_name, price_per_day_usd_cents, active);
                *new = merged;
            }
            (_, Some(id)) => {
                chain_plan_field(id, "spec.displayName", &old.display_name, &display_name)?;
                let (field, price) = ("spec.pricePerDayUsdCents", &price_per_day_usd_cents);
                chain_plan_field(id, field, &old.price_per_day_usd_cents, price)?;
                if active != old.active {
                    return Err(Refusal::field(
                        "spec.active",
                        format!(
                            "is chain plan {id}'s ({} on chain); change it on chain, or write active: {}",
                            old.active, old.active
                        ),
                    ));
                }
                new.display_name = display_name.or_else(|| old.display_name.clone());
                new.price_per_day_usd_cents =
                    price_per_day_usd_cents.or(old.price_per_day_usd_cents);
            }
            (_, None) => {}
        }
        Ok(())
    }

    fn merge_status(writer: Writer, stored: &mut Self::Status, written: Self::Status) {
        let PlanStatus {
            observed_generation,
        } = written;
        if writer == Writer::Reconciler {
            take!(stored: observed_generation);
        }
    }
}

impl Kind for Subscription {
    fn spec_mut(&mut self) -> &mut Self::Spec {
        &mut self.spec
    }

    fn merge_spec(writer: Writer, _: &Self, _: &mut Self::Spec) -> Result<(), Refusal> {
        subscription_writer(writer)
    }

    fn merge_status(writer: Writer, stored: &mut Self::Status, written: Self::Status) {
        let SubscriptionStatus {
            state,
            vm,
            nft_token_id,
            conditions,
        } = written;
        match writer {
            Writer::Chain => take!(stored: state, vm),
            Writer::Minter => take!(stored: nft_token_id),
            _ => {}
        }
        let owner = |t: &str| {
            if t == NFT_MINTED_CONDITION {
                Writer::Minter
            } else {
                Writer::Chain
            }
        };
        merge_conditions(&mut stored.conditions, conditions, |t| {
            owner(t).same_role(writer)
        });
    }

    fn may_create(writer: Writer, _: &Self) -> Result<(), Refusal> {
        subscription_writer(writer)
    }

    fn may_delete(writer: Writer, _: &Self, _: bool) -> Result<Option<String>, Refusal> {
        match writer {
            Writer::Chain => Ok(None),
            _ => Err(Refusal::whole(
                "subscriptions mirror the chain; cancel on chain instead",
            )),
        }
    }
}

fn subscription_writer(writer: Writer) -> Result<(), Refusal> {
    match writer {
        Writer::Chain => Ok(()),
        _ => Err(Refusal::whole(
            "subscriptions mirror the chain and are written by the chain watcher only",
        )),
    }
}

#[cfg(test)]
mod tests {
    use blockhost_crd::meta::{ConditionStatus, set_condition};
    use blockhost_crd::resource::AnyObject;
    use blockhost_crd::{PowerState, SubscriptionState, VmPhase};
    use chrono::Utc;

    use super::*;
    use crate::chain::{BlockRef, ChainTxn};
    use crate::{ApplyOutcome, DeleteOutcome, Store, StoreOptions};

    const SCOPE: &str = "31337:a:b";

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap()
    }

    fn vm(name: &str, chain: bool) -> VirtualMachine {
        let source = if chain {
            serde_json::json!({"chain": {"subscriptionId": 7}})
        } else {
            serde_json::json!("operator")
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "blockhost.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "source": source,
                     "plan": "basic", "template": 9000, "expiresAt": "2030-01-01T00:00:00Z",
                     "resources": {"cores": 1, "memoryMiB": 1024, "diskGiB": 10}}
        }))
        .unwrap()
    }

    fn plan(name: &str, chain_id: Option<u64>) -> Plan {
        let mut p: Plan = serde_json::from_value(serde_json::json!({
            "apiVersion": "blockhost.io/v1alpha1", "kind": "Plan",
            "metadata": {"name": name},
            "spec": {"template": 9000,
                     "resources": {"cores": 1, "memoryMiB": 1024, "diskGiB": 10}}
        }))
        .unwrap();
        p.spec.chain_plan_id = chain_id;
        p
    }

    /// One chain batch ending at block `n`, writing what `f` writes.
    fn chain(s: &Store, n: u64, f: impl FnOnce(&mut ChainTxn<'_>) -> Result<(), StoreError>) {
        let end = BlockRef {
            number: n,
            hash: [u8::try_from(n).unwrap(); 32],
        };
        s.chain_commit::<()>(SCOPE, &[], end, 64, |_, _| Ok(()), f)
            .unwrap();
    }

    fn refused_field(e: StoreError) -> Option<&'static str> {
        match e {
            StoreError::NotAllowed { field, .. } => field,
            other => panic!("expected a refusal, got {other}"),
        }
    }

    fn apply_vm(s: &Store, v: VirtualMachine) -> Result<ApplyOutcome, StoreError> {
        let w = Writer::Operator { uid: Some(1234) };
        s.apply_as(w, vec![AnyObject::VirtualMachine(Box::new(v))], false)
            .map(|r| r[0].outcome)
    }

    #[test]
    fn the_chain_fields_of_a_purchased_vm_are_refused_to_the_operator() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        chain(&s, 1, |tx| tx.put(&vm("a", true)).map(|_| ()));
        type Edit = fn(&mut VirtualMachineSpec);
        let edits: [(&str, Edit); 6] = [
            ("spec.owner", |v| {
                v.owner = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
                    .parse()
                    .unwrap()
            }),
            ("spec.expiresAt", |v| v.expires_at = None),
            ("spec.plan", |v| v.plan = None),
            ("spec.resources", |v| {
                v.resources.cores = blockhost_crd::Cores::new(8).unwrap()
            }),
            ("spec.template", |v| v.template = None),
            ("spec.source", |v| v.source = VmSource::Operator),
        ];
        for (field, edit) in edits {
            let mut v = vm("a", true);
            edit(&mut v.spec);
            let err = apply_vm(&s, v).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
            assert_eq!(refused_field(err), Some(field));
        }
        let mut v = vm("a", true);
        v.spec.power_state = PowerState::Suspended;
        v.metadata.labels.insert("abuse".into(), "ticket-9".into());
        assert_eq!(apply_vm(&s, v).unwrap(), ApplyOutcome::Configured);
        // An operator VM's owner is the operator's to change.
        apply_vm(&s, vm("mine", false)).unwrap();
        let mut v = vm("mine", false);
        v.spec.owner = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
            .parse()
            .unwrap();
        assert_eq!(apply_vm(&s, v).unwrap(), ApplyOutcome::Configured);
    }

    #[test]
    fn a_purchased_vm_is_deleted_by_the_operator_only_with_force_and_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        chain(&s, 1, |tx| {
            tx.put(&vm("a", true))?;
            tx.put(&vm("b", true)).map(|_| ())
        });
        let op = Writer::Operator { uid: Some(1234) };
        let err = s.delete_as(op, "VirtualMachine", "a", false).unwrap_err();
        assert_eq!(refused_field(err), None);
        assert!(s.get::<VirtualMachine>("a").unwrap().is_some());
        assert_eq!(
            s.delete_as(op, "VirtualMachine", "a", true).unwrap(),
            DeleteOutcome::Deleted
        );
        let ev = s.events(Some(("VirtualMachine", "a")), 10).unwrap();
        assert_eq!(ev.len(), 1, "only the audit note outlives the VM: {ev:?}");
        assert_eq!(ev[0].reason, crate::write::FORCE_DELETED);
        assert!(ev[0].message.contains("uid 1234"), "{}", ev[0].message);
        // Expiry is the chain's word: the reconciler deletes without force.
        assert_eq!(
            s.delete("VirtualMachine", "b").unwrap(),
            DeleteOutcome::Deleted
        );
        // Subscriptions go only with the chain, force or not.
        let sub = subscription();
        chain(&s, 2, |tx| tx.put(&sub).map(|_| ()));
        let name = sub.metadata.name.as_str();
        assert!(s.delete_as(op, "Subscription", name, true).is_err());
    }

    #[test]
    fn chain_writes_and_their_undo_keep_the_operators_fields() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        chain(&s, 1, |tx| tx.put(&vm("a", true)).map(|_| ()));
        let mut v = vm("a", true);
        v.spec.power_state = PowerState::Suspended;
        apply_vm(&s, v).unwrap();
        // The watcher extends it from an object that still says Running.
        let mut extended = vm("a", true);
        extended.spec.expires_at = Some("2031-01-01T00:00:00Z".parse().unwrap());
        chain(&s, 2, |tx| tx.put(&extended).map(|_| ()));
        let got: VirtualMachine = s.get("a").unwrap().unwrap();
        assert_eq!(got.spec.power_state, PowerState::Suspended);
        assert_eq!(got.spec.expires_at, extended.spec.expires_at);
        // A reorg takes the extension back, not the suspension.
        let fork = BlockRef {
            number: 1,
            hash: [1; 32],
        };
        assert_eq!(s.chain_revert(SCOPE, fork).unwrap(), 1);
        let got: VirtualMachine = s.get("a").unwrap().unwrap();
        assert_eq!(got.spec.power_state, PowerState::Suspended);
        assert_eq!(got.spec.expires_at, vm("a", true).spec.expires_at);
    }

    #[test]
    fn plan_fields_belong_to_the_chain_or_the_operator() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let apply = |p: Plan| s.apply(vec![AnyObject::Plan(Box::new(p))], false);
        apply(plan("gold", Some(3))).unwrap();
        // The chain names, prices and (de)activates; resources stay the operator's.
        let mut on_chain = plan("gold", Some(3));
        on_chain.spec.display_name = Some("Gold".into());
        on_chain.spec.price_per_day_usd_cents = Some(150);
        on_chain.spec.active = false;
        on_chain.spec.resources.cores = blockhost_crd::Cores::new(16).unwrap();
        chain(&s, 1, |tx| tx.put(&on_chain).map(|_| ()));
        let got: Plan = s.get("gold").unwrap().unwrap();
        assert_eq!(got.spec.display_name.as_deref(), Some("Gold"));
        assert_eq!(got.spec.price_per_day_usd_cents, Some(150));
        assert!(!got.spec.active);
        assert_eq!(got.spec.resources, plan("gold", None).spec.resources);
        // The operator changes resources; left-out chain fields keep the chain's values.
        let mut mine = plan("gold", Some(3));
        mine.spec.active = false;
        mine.spec.resources.cores = blockhost_crd::Cores::new(2).unwrap();
        assert_eq!(
            apply(mine.clone()).unwrap()[0].outcome,
            ApplyOutcome::Configured
        );
        let got: Plan = s.get("gold").unwrap().unwrap();
        assert_eq!(got.spec.display_name.as_deref(), Some("Gold"));
        assert_eq!(got.spec.resources.cores.get(), 2);
        // Writing a chain field differently is refused, naming it.
        let mut renamed = mine.clone();
        renamed.spec.display_name = Some("Silver".into());
        assert_eq!(
            refused_field(apply(renamed).unwrap_err()),
            Some("spec.displayName")
        );
        let mut activated = mine;
        activated.spec.active = true;
        assert_eq!(
            refused_field(apply(activated).unwrap_err()),
            Some("spec.active")
        );
        // A plan without a chain id is the operator's alone.
        apply(plan("local", None)).unwrap();
        let mut local = plan("local", None);
        local.spec.display_name = Some("Local".into());
        local.spec.active = false;
        assert_eq!(apply(local).unwrap()[0].outcome, ApplyOutcome::Configured);
    }

    fn ready(status: ConditionStatus) -> Condition {
        Condition {
            type_: "Ready".into(),
            status,
            reason: "Started".into(),
            message: "running".into(),
            last_transition_time: Utc::now(),
        }
    }

    #[test]
    fn vm_status_writers_merge_only_their_own_fields() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        apply_vm(&s, vm("a", false)).unwrap();
        let v = s
            .update_status_as::<VirtualMachine>(Writer::Reconciler, "a", |v| {
                v.status.phase = VmPhase::Running;
                v.status.nft_token_id = Some(5); // the minter's
                v.status.vmid = Some(100); // the allocator's
                set_condition(&mut v.status.conditions, ready(ConditionStatus::True));
                v.metadata.finalizers.push("blockhost.io/proxmox".into());
                true
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (v.status.phase, v.status.nft_token_id, v.status.vmid),
            (VmPhase::Running, None, None)
        );
        assert_eq!(v.status.conditions.len(), 1);
        assert_eq!(v.metadata.finalizers.len(), 1);
        let v = s
            .update_status_as::<VirtualMachine>(Writer::Minter, "a", |v| {
                v.status.nft_token_id = Some(5);
                v.status.phase = VmPhase::Failed; // the reconciler's
                v.status.conditions.clear(); // the reconciler's
                v.metadata.finalizers.clear(); // the reconciler's
                true
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (v.status.phase, v.status.nft_token_id),
            (VmPhase::Running, Some(5))
        );
        assert_eq!(
            v.status.conditions,
            vec![ready(ConditionStatus::True)]
                .into_iter()
                .map(|mut c| {
                    c.last_transition_time = v.status.conditions[0].last_transition_time;
                    c
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(v.metadata.finalizers.len(), 1);
        // The allocator's condition is its own: the reconciler cannot fake it.
        let v = s
            .update_status_as::<VirtualMachine>(Writer::Reconciler, "a", |v| {
                let mut c = ready(ConditionStatus::True);
                c.type_ = alloc::ADDRESSES_CONDITION.into();
                set_condition(&mut v.status.conditions, c)
            })
            .unwrap()
            .unwrap();
        assert!(v.status.conditions.iter().all(|c| c.type_ == "Ready"));
        // A writer that owns nothing it changed writes nothing.
        let rv = v.metadata.resource_version;
        let v = s
            .update_status_as::<VirtualMachine>(Writer::Allocator, "a", |v| {
                v.status.last_error = Some("x".into());
                true
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (v.metadata.resource_version, v.status.last_error),
            (rv, None)
        );
    }

    fn subscription() -> Subscription {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "blockhost.io/v1alpha1", "kind": "Subscription",
            "metadata": {"name": "blockhost-007"},
            "spec": {"subscriptionId": 7, "planId": 3,
                     "subscriber": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                     "expiresAt": "2030-01-01T00:00:00Z", "vmName": "blockhost-007",
                     "blockNumber": 1, "transactionHash": "0xab"}
        }))
        .unwrap()
    }

    #[test]
    fn subscription_status_is_the_chains_and_the_token_the_minters() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let mut sub = subscription();
        sub.status.state = SubscriptionState::Active;
        sub.status.nft_token_id = Some(99); // not the chain's to write
        chain(&s, 1, |tx| tx.put(&sub).map(|_| ()));
        let got: Subscription = s.get("blockhost-007").unwrap().unwrap();
        assert_eq!(
            (got.status.state, got.status.nft_token_id),
            (SubscriptionState::Active, None)
        );
        s.update_status_as::<Subscription>(Writer::Minter, "blockhost-007", |s| {
            s.status.nft_token_id = Some(4);
            s.status.state = SubscriptionState::Cancelled; // the chain's
            let mut c = ready(ConditionStatus::True);
            c.type_ = NFT_MINTED_CONDITION.into();
            set_condition(&mut s.status.conditions, c)
        })
        .unwrap();
        // A later chain write from an object that predates the mint keeps it.
        let mut later = sub.clone();
        later.spec.expires_at = "2031-01-01T00:00:00Z".parse().unwrap();
        later.status.nft_token_id = None;
        chain(&s, 2, |tx| tx.put(&later).map(|_| ()));
        let got: Subscription = s.get("blockhost-007").unwrap().unwrap();
        assert_eq!(got.status.nft_token_id, Some(4));
        assert_eq!(got.status.state, SubscriptionState::Active);
        assert!(
            got.status
                .conditions
                .iter()
                .any(|c| c.type_ == NFT_MINTED_CONDITION)
        );
        assert_eq!(got.spec.expires_at, later.spec.expires_at);
        // The operator writes no subscription at all.
        let err = s
            .apply(vec![AnyObject::Subscription(Box::new(later))], false)
            .unwrap_err();
        assert!(err.to_string().contains("chain watcher only"), "{err}");
    }
}
