//! The minter's part of the store: one record per subscription holding every
//! transaction signed to mint its access NFT, written **before** the transaction
//! is broadcast.
//!
//! Why before: a daemon killed between "sent" and "recorded" would not know a
//! mint is in flight and would mint again — two NFTs for one VM. With the record
//! first, a restart finds the signed bytes and their hash, looks for the receipt,
//! and re-sends the very same transaction if the node never got it; a node
//! cannot mine two transactions with one nonce, so at most one mint lands.
//!
//! Layout: `chain_mints`: (scope, subscription id) → JSON [`MintRecord`]. The
//! scope is the chain watcher's (`"<chainId>:<subscriptions>:<nft>"`), so a new
//! contract set starts afresh. Records stay after minting: they are the durable
//! source of the token id (a reorg undo of a later block can restore a
//! `Subscription` snapshot that predates it; the minter writes it back).

use chrono::{DateTime, Utc};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

const MINTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chain_mints");

/// One signed `mint` transaction (a fee bump adds another with the same nonce).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintAttempt {
    /// Transaction hash, `0x…`.
    pub hash: String,
    /// The signed raw transaction, `0x…`, exactly as broadcast.
    pub raw: String,
    /// `maxFeePerGas` offered, in wei (decimal string: may exceed JSON's safe
    /// integers).
    pub max_fee: String,
    /// `maxPriorityFeePerGas` offered, in wei.
    pub priority_fee: String,
    /// When it was signed.
    pub signed_at: DateTime<Utc>,
}

/// Where a mint stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum MintState {
    /// Signed (and maybe broadcast); no receipt yet.
    Pending,
    /// Mined with enough confirmations.
    #[serde(rename_all = "camelCase")]
    Minted {
        /// The token id, from the receipt's `CredentialMinted` event.
        token_id: u64,
        /// The block holding the mint.
        block: u64,
        /// The transaction that minted it.
        transaction: String,
    },
}

/// Everything known about minting one subscription's NFT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintRecord {
    /// The subscription.
    pub subscription_id: u64,
    /// Its VM.
    pub vm: String,
    /// Who receives the token, `0x…`.
    pub recipient: String,
    /// The server wallet's nonce all attempts share.
    pub nonce: u64,
    /// Signed transactions, oldest first.
    pub attempts: Vec<MintAttempt>,
    /// Where it stands.
    #[serde(flatten)]
    pub state: MintState,
    /// When the first attempt was signed.
    pub created_at: DateTime<Utc>,
}

impl MintRecord {
    /// Whether a receipt is still awaited.
    pub fn pending(&self) -> bool {
        self.state == MintState::Pending
    }

    /// The token id, once minted.
    pub fn token_id(&self) -> Option<u64> {
        match self.state {
            MintState::Minted { token_id, .. } => Some(token_id),
            MintState::Pending => None,
        }
    }
}

fn corrupt(scope: &str, id: u64, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: format!("chain_mints/{scope}/{id}"),
        source,
    }
}

impl Store {
    /// Every mint record of `scope`, by subscription id.
    pub fn mint_records(&self, scope: &str) -> Result<Vec<MintRecord>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let Some(t) = crate::read_table(&txn, MINTS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in t.range((scope, 0)..=(scope, u64::MAX))? {
            let (k, v) = entry?;
            let id = k.value().1;
            out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt(scope, id, e))?);
        }
        Ok(out)
    }

    /// The mint record of one subscription.
    pub fn mint_record(&self, scope: &str, id: u64) -> Result<Option<MintRecord>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let Some(t) = crate::read_table(&txn, MINTS)? else {
            return Ok(None);
        };
        t.get((scope, id))?
            .map(|g| serde_json::from_slice(g.value()).map_err(|e| corrupt(scope, id, e)))
            .transpose()
    }

    /// Writes a mint record durably (the commit waits for fsync). Call it before
    /// broadcasting any transaction the record holds.
    pub fn put_mint_record(&self, scope: &str, rec: &MintRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| corrupt(scope, rec.subscription_id, e))?;
        let txn = self.inner.db.begin_write()?;
        {
            let mut t = txn.open_table(MINTS)?;
            t.insert((scope, rec.subscription_id), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Forgets a pending mint whose nonce another transaction consumed (none of
    /// its attempts can ever be mined). Refuses to forget a minted one.
    pub fn drop_mint_record(&self, scope: &str, id: u64) -> Result<(), StoreError> {
        let txn = self.inner.db.begin_write()?;
        {
            let mut t = txn.open_table(MINTS)?;
            let minted = match t.get((scope, id))? {
                Some(g) => serde_json::from_slice::<MintRecord>(g.value())
                    .map_err(|e| corrupt(scope, id, e))?
                    .token_id()
                    .is_some(),
                None => false,
            };
            if minted {
                return Err(StoreError::Rejected {
                    kind: "MintRecord",
                    name: id.to_string(),
                    reason: "a minted NFT's record is kept".into(),
                });
            }
            t.remove((scope, id))?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn record(id: u64) -> MintRecord {
        MintRecord {
            subscription_id: id,
            vm: format!("blockhost-{id:03}"),
            recipient: format!("0x{}", "11".repeat(20)),
            nonce: 4,
            attempts: vec![MintAttempt {
                hash: format!("0x{}", "ab".repeat(32)),
                raw: "0x02f8".into(),
                max_fee: "3000000000".into(),
                priority_fee: "1000000000".into(),
                signed_at: Utc::now(),
            }],
            state: MintState::Pending,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn records_survive_reopen_and_minted_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open(&path, StoreOptions::default()).unwrap();
            assert!(s.mint_records("1:a:b").unwrap().is_empty());
            s.put_mint_record("1:a:b", &record(1)).unwrap();
            s.put_mint_record("1:a:b", &record(2)).unwrap();
            s.put_mint_record("2:a:b", &record(1)).unwrap();
        }
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        let recs = s.mint_records("1:a:b").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0], record(1).clone_with_times(&recs[0]));
        let mut minted = record(2);
        minted.state = MintState::Minted {
            token_id: 9,
            block: 3,
            transaction: minted.attempts[0].hash.clone(),
        };
        s.put_mint_record("1:a:b", &minted).unwrap();
        assert_eq!(
            s.mint_record("1:a:b", 2).unwrap().unwrap().token_id(),
            Some(9)
        );
        assert!(s.drop_mint_record("1:a:b", 2).is_err());
        s.drop_mint_record("1:a:b", 1).unwrap();
        assert!(s.mint_record("1:a:b", 1).unwrap().is_none());
        assert_eq!(s.mint_records("2:a:b").unwrap().len(), 1);
    }

    impl MintRecord {
        /// `self` with the timestamps of `other` (for equality checks).
        fn clone_with_times(&self, other: &MintRecord) -> MintRecord {
            let mut r = self.clone();
            r.created_at = other.created_at;
            for (a, b) in r.attempts.iter_mut().zip(&other.attempts) {
                a.signed_at = b.signed_at;
            }
            r
        }
    }
}
