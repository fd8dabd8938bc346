//! From chain events to specs: one function per event, working inside the
//! batch's transaction ([`ChainTxn`]), so every change it makes is undone with
//! its block on a reorg and lands together with the cursor.
//!
//! Hostile input ends in a status condition and an event on the `Subscription`,
//! never in an error that would stop the batch: only store failures propagate.

use blockhost_chain::user_encrypted;
use blockhost_crd::config::PlanDefaults;
use blockhost_crd::eip191::{self, Signature};
use blockhost_crd::meta::{Condition, ConditionStatus, set_condition};
use blockhost_crd::subscription::vm_name_for;
use blockhost_crd::vm::NetworkSpec;
use blockhost_crd::{ConditionType, Reason};
use blockhost_crd::{
    Name, Plan, PlanSpec, PowerState, Resource, Subscription, SubscriptionSpec, SubscriptionState,
    UnixUser, VirtualMachine, VirtualMachineSpec, VmSource, WalletAddress,
};
use k256::SecretKey;

use super::events::ChainEvent;
use crate::store::StoreError;
use crate::store::chain::ChainTxn;
use crate::store::write::Note;

/// `userEncrypted` longer than this is refused before any decryption: the real
/// payload is 97 + 132 = 229 bytes, and a purchase cannot make us spend time on
/// megabytes of ciphertext.
pub const MAX_USER_ENCRYPTED: usize = 1024;

/// What the mapping needs besides the events.
pub struct Mapper {
    /// The server key `userEncrypted` is encrypted to.
    pub server_key: SecretKey,
    /// The text buyers sign.
    pub public_secret: String,
    /// Resources and template of plans first seen on chain.
    pub plan_defaults: PlanDefaults,
}

impl std::fmt::Debug for Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Mapper")
            .field("public_secret", &self.public_secret)
            .finish_non_exhaustive()
    }
}

fn condition(
    type_: ConditionType,
    ok: bool,
    reason: Reason,
    message: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Condition {
    let status = if ok {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    Condition::new(type_, status, reason, message, now)
}

impl Mapper {
    /// Applies one event. Returns whether plans changed (the caller then
    /// re-examines subscriptions waiting for a plan).
    pub fn apply(&self, tx: &mut ChainTxn<'_>, ev: &ChainEvent) -> Result<bool, StoreError> {
        match ev {
            ChainEvent::Plan {
                plan_id,
                name,
                price,
                active,
            } => {
                self.plan(tx, *plan_id, name, *price, *active)?;
                return Ok(true);
            }
            ChainEvent::Created {
                id,
                plan_id,
                subscriber,
                expires_at,
                user_encrypted,
                block_number,
                transaction_hash,
            } => {
                let name = vm_name_for(*id);
                let spec = SubscriptionSpec {
                    subscription_id: *id,
                    plan_id: *plan_id,
                    subscriber: WalletAddress::from_bytes(*subscriber),
                    expires_at: *expires_at,
                    cancelled: false,
                    vm_name: name.clone(),
                    block_number: *block_number,
                    transaction_hash: format!("0x{}", hex::encode(transaction_hash)),
                };
                self.created(tx, Subscription::new(name, spec), user_encrypted)?;
            }
            ChainEvent::Extended { id, new_expires_at } => {
                self.extended(tx, *id, new_expires_at)?;
            }
            ChainEvent::Cancelled { id } => self.cancelled(tx, *id)?,
            ChainEvent::Transfer { from, to, token } => self.transfer(tx, from, to, *token)?,
        }
        Ok(false)
    }

    /// A purchase: the subscription, and its VM when the buyer's payload holds
    /// their signature (otherwise the subscription records why there is none).
    fn created(
        &self,
        tx: &mut ChainTxn<'_>,
        mut sub: Subscription,
        user_encrypted: &[u8],
    ) -> Result<(), StoreError> {
        let id = sub.spec.subscription_id;
        match self.signature(user_encrypted, &sub.spec.subscriber) {
            Ok(sig) => {
                tx.set_signature(id, Some(sig.as_bytes()))?;
                set_condition(
                    &mut sub.status.conditions,
                    condition(
                        ConditionType::PayloadValid,
                        true,
                        Reason::Decrypted,
                        "userEncrypted holds the subscriber's signature",
                        tx.now(),
                    ),
                );
                self.provision(tx, &mut sub)?;
            }
            Err((reason, message)) => {
                sub.status.state = SubscriptionState::PayloadInvalid;
                set_condition(
                    &mut sub.status.conditions,
                    condition(
                        ConditionType::PayloadValid,
                        false,
                        reason,
                        &message,
                        tx.now(),
                    ),
                );
                tx.put(&sub)?;
                tx.event(
                    Subscription::KIND,
                    sub.metadata.name.as_str(),
                    Note::warning(reason.as_str(), &format!("no VM: {message}")),
                )?;
                tracing::warn!(
                    subscription = id,
                    reason = reason.as_str(),
                    "purchase not provisioned: {message}"
                );
            }
        }
        Ok(())
    }

    /// A renewal moves the expiry of the subscription and of its VM.
    fn extended(
        &self,
        tx: &mut ChainTxn<'_>,
        id: u64,
        new_expires_at: &chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        let name = vm_name_for(id);
        let Some(mut sub) = tx.get::<Subscription>(name.as_str())? else {
            tracing::warn!(
                subscription = id,
                "extension of a subscription never seen (bought before deploymentBlock?); ignored"
            );
            return Ok(());
        };
        sub.spec.expires_at = *new_expires_at;
        tx.put(&sub)?;
        if let Some(mut vm) = self.own_vm(tx, &sub)? {
            vm.spec.expires_at = Some(*new_expires_at);
            tx.put(&vm)?;
        }
        tx.event(
            Subscription::KIND,
            name.as_str(),
            Note::normal(
                "Extended",
                &format!("expires at {}", new_expires_at.to_rfc3339()),
            ),
        )?;
        Ok(())
    }

    /// A cancellation deletes the VM and marks the subscription.
    fn cancelled(&self, tx: &mut ChainTxn<'_>, id: u64) -> Result<(), StoreError> {
        let name = vm_name_for(id);
        let Some(mut sub) = tx.get::<Subscription>(name.as_str())? else {
            tracing::warn!(
                subscription = id,
                "cancellation of a subscription never seen; ignored"
            );
            return Ok(());
        };
        sub.spec.cancelled = true;
        sub.status.state = SubscriptionState::Cancelled;
        if self.own_vm(tx, &sub)?.is_some() {
            tx.delete(VirtualMachine::KIND, name.as_str())?;
        }
        tx.put(&sub)?;
        tx.event(
            Subscription::KIND,
            name.as_str(),
            Note::normal("Cancelled", "cancelled on chain; its VM is deleted"),
        )?;
        Ok(())
    }

    /// An NFT transfer hands the VM to the new holder (mints and burns only
    /// record the owner).
    fn transfer(
        &self,
        tx: &mut ChainTxn<'_>,
        from: &[u8; 20],
        to: &[u8; 20],
        token: u64,
    ) -> Result<(), StoreError> {
        let burn = *to == [0; 20];
        tx.set_nft_owner(token, (!burn).then_some(*to))?;
        if *from == [0; 20] || burn {
            return Ok(());
        }
        if let Some(sub) = tx.subscription_for_token(token)?
            && let Some(mut vm) = self.own_vm(tx, &sub)?
        {
            let owner = WalletAddress::from_bytes(*to);
            if vm.spec.owner != owner {
                vm.spec.owner = owner;
                tx.put(&vm)?;
                tx.event(
                    VirtualMachine::KIND,
                    vm.metadata.name.as_str(),
                    Note::normal(
                        "OwnerChanged",
                        &format!("access NFT {token} transferred to {owner}"),
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// Decrypts and checks the buyer's signature; the error is a condition
    /// reason and a message for people.
    fn signature(
        &self,
        user_encrypted: &[u8],
        subscriber: &WalletAddress,
    ) -> Result<Signature, (Reason, String)> {
        if user_encrypted.len() > MAX_USER_ENCRYPTED {
            return Err((
                Reason::PayloadTooLarge,
                format!(
                    "userEncrypted is {} bytes; at most {MAX_USER_ENCRYPTED} are accepted",
                    user_encrypted.len()
                ),
            ));
        }
        let sig = user_encrypted::decrypt_signature(&self.server_key, user_encrypted)
            .map_err(|e| (Reason::PayloadUndecryptable, crate::error_chain(&e)))?;
        eip191::verify(self.public_secret.as_bytes(), &sig, subscriber).map_err(|_| {
            (Reason::SignatureMismatch, format!("the decrypted signature is not {subscriber}'s signature of the public secret; the buyer could not open their NFT"))
        })?;
        Ok(sig)
    }

    /// The VM of a subscription, if it exists and really is that subscription's.
    fn own_vm(
        &self,
        tx: &ChainTxn<'_>,
        sub: &Subscription,
    ) -> Result<Option<VirtualMachine>, StoreError> {
        let vm = tx.get::<VirtualMachine>(sub.spec.vm_name.as_str())?;
        Ok(vm.filter(|v| {
            v.spec.source
                == VmSource::Chain {
                    subscription_id: sub.spec.subscription_id,
                }
        }))
    }

    /// Writes the VM of a subscription whose payload is valid, or records why not.
    pub fn provision(
        &self,
        tx: &mut ChainTxn<'_>,
        sub: &mut Subscription,
    ) -> Result<(), StoreError> {
        let now = tx.now();
        let name = sub.metadata.name.clone();
        let plans = tx.list::<Plan>()?;
        let Some(plan) = plans
            .into_iter()
            .find(|p| p.spec.chain_plan_id == Some(sub.spec.plan_id))
        else {
            let msg = format!(
                "no Plan has chainPlanId {}; the VM is created when one is applied",
                sub.spec.plan_id
            );
            let why = (ConditionType::PlanKnown, Reason::PlanUnknown);
            return hold(tx, sub, SubscriptionState::PlanUnknown, why, &msg);
        };
        set_condition(
            &mut sub.status.conditions,
            condition(
                ConditionType::PlanKnown,
                true,
                Reason::PlanFound,
                &format!("plan {}", plan.metadata.name),
                now,
            ),
        );
        if let Some(existing) = tx.get::<VirtualMachine>(name.as_str())?
            && existing.spec.source
                != (VmSource::Chain {
                    subscription_id: sub.spec.subscription_id,
                })
        {
            let msg = format!(
                "a VirtualMachine named {name} exists and is not this subscription's; rename or delete it"
            );
            let why = (ConditionType::VmWritten, Reason::NameTaken);
            return hold(tx, sub, SubscriptionState::Pending, why, &msg);
        }
        // The NFT's holder when it has changed hands, else the buyer.
        let owner = match sub
            .status
            .nft_token_id
            .and_then(|t| tx.nft_owner(t).ok().flatten())
        {
            Some(holder) => WalletAddress::from_bytes(holder),
            None => sub.spec.subscriber,
        };
        tx.put(&vm_for(&name, sub, &plan, owner))?;
        sub.status.state = SubscriptionState::Active;
        sub.status.vm = Some(name);
        tx.put(&*sub)?;
        Ok(())
    }

    fn plan(
        &self,
        tx: &mut ChainTxn<'_>,
        plan_id: u64,
        name: &str,
        price: Option<u64>,
        active: bool,
    ) -> Result<(), StoreError> {
        // On-chain names are free text: keep printable characters, at most 64.
        let display: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
        let display = (!display.trim().is_empty()).then_some(display);
        let plans = tx.list::<Plan>()?;
        let mut plan = match plans
            .into_iter()
            .find(|p| p.spec.chain_plan_id == Some(plan_id))
        {
            Some(p) => p,
            None => {
                let Ok(pname) = Name::new(format!("plan-{plan_id}")) else {
                    return Ok(());
                };
                if tx.get::<Plan>(pname.as_str())?.is_some() {
                    tracing::warn!(plan_id, name = %pname, "a Plan with this name exists for another chain plan; not mirrored");
                    return Ok(());
                }
                Plan {
                    api_version: blockhost_crd::API_VERSION.into(),
                    kind: Plan::KIND.into(),
                    metadata: blockhost_crd::ObjectMeta::named(pname),
                    spec: PlanSpec {
                        chain_plan_id: Some(plan_id),
                        display_name: None,
                        resources: self.plan_defaults.resources,
                        template: self.plan_defaults.template,
                        price_per_day_usd_cents: None,
                        active: true,
                    },
                    status: Default::default(),
                }
            }
        };
        plan.spec.display_name = display;
        plan.spec.price_per_day_usd_cents = price;
        plan.spec.active = active;
        tx.put(&plan)?;
        Ok(())
    }

    /// Re-examines subscriptions waiting for a plan (a plan may exist now) and
    /// VMs whose NFT changed hands before the token id was recorded. Returns how
    /// many objects it changed.
    pub fn resync(&self, tx: &mut ChainTxn<'_>) -> Result<usize, StoreError> {
        let mut n = 0;
        for mut sub in tx.list::<Subscription>()? {
            if sub.status.state == SubscriptionState::PlanUnknown
                || (sub.status.state == SubscriptionState::Pending && !sub.spec.cancelled)
            {
                let plans = tx.list::<Plan>()?;
                if plans
                    .iter()
                    .any(|p| p.spec.chain_plan_id == Some(sub.spec.plan_id))
                {
                    self.provision(tx, &mut sub)?;
                    n += 1;
                }
            } else if let Some(token) = sub.status.nft_token_id
                && let Some(holder) = tx.nft_owner(token)?
                && let Some(mut vm) = self.own_vm(tx, &sub)?
            {
                let owner = WalletAddress::from_bytes(holder);
                if vm.spec.owner != owner {
                    vm.spec.owner = owner;
                    tx.put(&vm)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Whether [`Mapper::resync`] would change anything (read-only; lets the
    /// watcher skip a write transaction when nothing waits).
    pub fn resync_needed(
        subs: &[Subscription],
        plans: &[Plan],
        vm_owner: impl Fn(&Subscription) -> Option<(WalletAddress, WalletAddress)>,
    ) -> bool {
        subs.iter().any(|s| {
            ((s.status.state == SubscriptionState::PlanUnknown)
                && plans
                    .iter()
                    .any(|p| p.spec.chain_plan_id == Some(s.spec.plan_id)))
                || vm_owner(s).is_some_and(|(have, want)| have != want)
        })
    }
}

/// Records on the subscription why its VM is not written yet: the condition,
/// the state, and a warning event.
fn hold(
    tx: &mut ChainTxn<'_>,
    sub: &mut Subscription,
    state: SubscriptionState,
    (type_, reason): (ConditionType, Reason),
    msg: &str,
) -> Result<(), StoreError> {
    let now = tx.now();
    set_condition(
        &mut sub.status.conditions,
        condition(type_, false, reason, msg, now),
    );
    sub.status.state = state;
    tx.put(&*sub)?;
    tx.event(
        Subscription::KIND,
        sub.metadata.name.as_str(),
        Note::warning(reason.as_str(), msg),
    )?;
    Ok(())
}

/// The VM a subscription buys: the plan's resources and template, the
/// subscription's expiry, owned by `owner`.
fn vm_for(name: &Name, sub: &Subscription, plan: &Plan, owner: WalletAddress) -> VirtualMachine {
    VirtualMachine::new(
        name.clone(),
        VirtualMachineSpec {
            owner,
            source: VmSource::Chain {
                subscription_id: sub.spec.subscription_id,
            },
            plan: Some(plan.metadata.name.clone()),
            resources: plan.spec.resources,
            template: Some(plan.spec.template),
            expires_at: Some(sub.spec.expires_at),
            power_state: PowerState::Running,
            network: NetworkSpec::default(),
            guest_user: UnixUser::default(),
            ssh_keys: Vec::new(),
        },
    )
}
