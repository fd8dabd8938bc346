//! Decoding raw logs into the events the watcher acts on, with every on-chain
//! number checked: ids must fit in 64 bits, timestamps in the years chrono and
//! RFC 3339 can write. A log that fails is reported and skipped — it can never
//! panic or stall the watcher.

use alloy_primitives::{LogData, U256};
use alloy_sol_types::SolEvent;
use blockhost_chain::bindings::{AccessCredentialNFT as Nft, BlockhostSubscriptions as Subs};
use chrono::{DateTime, Utc};

use blockhost_chain::node::RawLog;

/// The latest instant accepted as an expiry: 9999-12-31T23:59:59Z. Later values
/// (absurd purchases of billions of days) are clamped to it.
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// An event the watcher maps to specs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEvent {
    /// `PlanCreated` or `PlanUpdated`.
    Plan {
        /// Plan id.
        plan_id: u64,
        /// On-chain name.
        name: String,
        /// Price per day in US cents, `None` when beyond 64 bits.
        price: Option<u64>,
        /// Whether it can be bought (`PlanCreated`: true).
        active: bool,
    },
    /// `SubscriptionCreated`.
    Created {
        /// Subscription id.
        id: u64,
        /// Plan id.
        plan_id: u64,
        /// Buyer.
        subscriber: [u8; 20],
        /// Expiry.
        expires_at: DateTime<Utc>,
        /// The buyer's encrypted signature (opaque, possibly hostile).
        user_encrypted: Vec<u8>,
        /// Block of the purchase.
        block_number: u64,
        /// Its transaction.
        transaction_hash: [u8; 32],
    },
    /// `SubscriptionExtended`.
    Extended {
        /// Subscription id.
        id: u64,
        /// The new, absolute expiry.
        new_expires_at: DateTime<Utc>,
    },
    /// `SubscriptionCancelled`.
    Cancelled {
        /// Subscription id.
        id: u64,
    },
    /// ERC-721 `Transfer` of the access NFT (mints and burns included).
    Transfer {
        /// Previous holder (zero for a mint).
        from: [u8; 20],
        /// New holder (zero for a burn).
        to: [u8; 20],
        /// Token id.
        token: u64,
    },
}

/// Why a log was not decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The ABI decoding failed (wrong topics or data for the signature).
    #[error("log does not decode as {event}")]
    Abi {
        /// The event it claimed to be.
        event: &'static str,
        /// Why.
        #[source]
        source: alloy_sol_types::Error,
    },
    /// A number does not fit.
    #[error("{event}.{field} = {value} is out of range")]
    Range {
        /// Event.
        event: &'static str,
        /// Field.
        field: &'static str,
        /// The value.
        value: U256,
    },
}

fn u64_of(event: &'static str, field: &'static str, v: U256) -> Result<u64, DecodeError> {
    u64::try_from(v).map_err(|_| DecodeError::Range {
        event,
        field,
        value: v,
    })
}

/// Converts an on-chain Unix time, clamping absurd values to [`MAX_TIMESTAMP`].
pub fn timestamp(v: U256) -> DateTime<Utc> {
    let secs = i64::try_from(v).unwrap_or(MAX_TIMESTAMP).min(MAX_TIMESTAMP);
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Decodes a log of one of the two contracts. `Ok(None)`: an event the watcher
/// does not act on (payment methods, withdrawals, `CredentialMinted`, …).
pub fn decode(
    log: &RawLog,
    subscriptions: [u8; 20],
    nft: [u8; 20],
) -> Result<Option<ChainEvent>, DecodeError> {
    let Some(topic0) = log.topics.first() else {
        return Ok(None);
    };
    let data = LogData::new_unchecked(
        log.topics.iter().map(|t| (*t).into()).collect(),
        log.data.clone().into(),
    );
    macro_rules! dec {
        ($t:ty, $name:literal) => {
            <$t>::decode_log_data(&data).map_err(|source| DecodeError::Abi {
                event: $name,
                source,
            })?
        };
    }
    let t = alloy_primitives::B256::from(*topic0);
    if log.address == subscriptions {
        if t == Subs::SubscriptionCreated::SIGNATURE_HASH {
            let e = dec!(Subs::SubscriptionCreated, "SubscriptionCreated");
            return Ok(Some(ChainEvent::Created {
                id: u64_of("SubscriptionCreated", "subscriptionId", e.subscriptionId)?,
                plan_id: u64_of("SubscriptionCreated", "planId", e.planId)?,
                subscriber: e.subscriber.into_array(),
                expires_at: timestamp(e.expiresAt),
                user_encrypted: e.userEncrypted.to_vec(),
                block_number: log.block_number,
                transaction_hash: log.transaction_hash,
            }));
        }
        if t == Subs::SubscriptionExtended::SIGNATURE_HASH {
            let e = dec!(Subs::SubscriptionExtended, "SubscriptionExtended");
            return Ok(Some(ChainEvent::Extended {
                id: u64_of("SubscriptionExtended", "subscriptionId", e.subscriptionId)?,
                new_expires_at: timestamp(e.newExpiresAt),
            }));
        }
        if t == Subs::SubscriptionCancelled::SIGNATURE_HASH {
            let e = dec!(Subs::SubscriptionCancelled, "SubscriptionCancelled");
            return Ok(Some(ChainEvent::Cancelled {
                id: u64_of("SubscriptionCancelled", "subscriptionId", e.subscriptionId)?,
            }));
        }
        if t == Subs::PlanCreated::SIGNATURE_HASH {
            let e = dec!(Subs::PlanCreated, "PlanCreated");
            return Ok(Some(ChainEvent::Plan {
                plan_id: u64_of("PlanCreated", "planId", e.planId)?,
                name: e.name,
                price: u64::try_from(e.pricePerDayUsdCents).ok(),
                active: true,
            }));
        }
        if t == Subs::PlanUpdated::SIGNATURE_HASH {
            let e = dec!(Subs::PlanUpdated, "PlanUpdated");
            return Ok(Some(ChainEvent::Plan {
                plan_id: u64_of("PlanUpdated", "planId", e.planId)?,
                name: e.name,
                price: u64::try_from(e.pricePerDayUsdCents).ok(),
                active: e.active,
            }));
        }
    } else if log.address == nft && t == Nft::Transfer::SIGNATURE_HASH {
        let e = dec!(Nft::Transfer, "Transfer");
        return Ok(Some(ChainEvent::Transfer {
            from: e.from.into_array(),
            to: e.to.into_array(),
            token: u64_of("Transfer", "tokenId", e.tokenId)?,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{Address, Bytes};

    use super::*;

    const SUBS: [u8; 20] = [0x11; 20];
    const NFT: [u8; 20] = [0x22; 20];

    fn raw(address: [u8; 20], d: LogData) -> RawLog {
        RawLog {
            address,
            topics: d.topics().iter().map(|t| t.0).collect(),
            data: d.data.to_vec(),
            block_number: 9,
            block_hash: [1; 32],
            log_index: 0,
            transaction_hash: [2; 32],
        }
    }

    #[test]
    fn absurd_values_are_refused_or_clamped() {
        let e = Subs::SubscriptionCreated {
            subscriptionId: U256::MAX,
            planId: U256::from(1),
            subscriber: Address::repeat_byte(3),
            expiresAt: U256::from(5),
            paidAmount: U256::ZERO,
            paymentToken: Address::ZERO,
            userEncrypted: Bytes::new(),
        };
        let err = decode(&raw(SUBS, e.encode_log_data()), SUBS, NFT).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert_eq!(timestamp(U256::MAX).timestamp(), MAX_TIMESTAMP);

        // Right topic, truncated data: an error, not a panic.
        let mut log = raw(
            SUBS,
            Subs::SubscriptionExtended {
                subscriptionId: U256::from(1),
                planId: U256::from(1),
                extendedBy: Address::ZERO,
                newExpiresAt: U256::from(10),
                paidAmount: U256::ZERO,
                paymentToken: Address::ZERO,
            }
            .encode_log_data(),
        );
        log.data.truncate(10);
        assert!(decode(&log, SUBS, NFT).is_err());
        // The same topic from another address is ignored.
        log.address = [9; 20];
        assert!(decode(&log, SUBS, NFT).unwrap().is_none());
    }
}

#[cfg(test)]
mod fuzz {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Random data under every topic the watcher knows (and random topics):
    /// decoding returns an event or an error, never panics.
    #[test]
    fn random_logs_never_panic() {
        let sigs = [
            Subs::SubscriptionCreated::SIGNATURE_HASH,
            Subs::SubscriptionExtended::SIGNATURE_HASH,
            Subs::SubscriptionCancelled::SIGNATURE_HASH,
            Subs::PlanCreated::SIGNATURE_HASH,
            Subs::PlanUpdated::SIGNATURE_HASH,
            Nft::Transfer::SIGNATURE_HASH,
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..20_000 {
            let mut topics = vec![if i % 7 == 0 {
                rng.r#gen::<[u8; 32]>()
            } else {
                sigs[i % sigs.len()].0
            }];
            for _ in 0..rng.gen_range(0..4) {
                let mut t = [0u8; 32];
                // Small numbers are the interesting ones (ids, addresses).
                let from = rng.gen_range(0..32);
                rng.fill(&mut t[from..]);
                topics.push(t);
            }
            let len = [0, 31, 32, 64, 96, 160, 224, 300, 1000][rng.gen_range(0..9)];
            let mut data = vec![0u8; len];
            rng.fill(data.as_mut_slice());
            // Plausible offsets/lengths now and then, to reach the dynamic types.
            if len >= 64 && rng.gen_bool(0.5) {
                data[31] = 0x20;
                data[63] = rng.r#gen();
            }
            let log = RawLog {
                address: if i % 2 == 0 { [1; 20] } else { [2; 20] },
                topics,
                data,
                block_number: 1,
                block_hash: [0; 32],
                log_index: 0,
                transaction_hash: [0; 32],
            };
            let _ = decode(&log, [1; 20], [2; 20]);
        }
    }
}
