//! The token index: which `Subscription` an access NFT was minted for, without
//! reading every subscription (the signup page answers `GET /api/v1/nfts/{id}`
//! from it, and the watcher maps an NFT `Transfer` to its VM by it).
//!
//! Layout: `index_nft_token`: (token id, subscription name) → `()`, one entry
//! per subscription whose `status.nftTokenId` is set. Token ids are unique on
//! chain, but the key holds the name too, so two subscriptions claiming one id
//! (a bug elsewhere) are both kept and a lookup answers as a scan in name order
//! did: the first.
//!
//! Why it cannot disagree with the objects: it is written only by the store's
//! one write path ([`crate::write::WriteTxn`]), in the same redb transaction as
//! the object it follows, and from the object's stored bytes before and after
//! the write — whoever writes (the minter's status, a chain batch, its undo on a
//! reorg, a deletion). Databases from before the index get it built once, by the
//! schema migration to version 2 ([`build`]).

use blockhost_crd::Subscription;
use blockhost_crd::resource::Resource;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::Deserialize;

use crate::{OBJECTS, StoreError};

/// (token id, subscription name) → nothing.
pub(crate) const NFT_TOKENS: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("index_nft_token");

/// The only field of a stored subscription the index reads.
#[derive(Deserialize)]
struct Stored {
    #[serde(default)]
    status: StoredStatus,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredStatus {
    #[serde(default)]
    nft_token_id: Option<u64>,
}

/// The token id in an object's stored JSON; `None` for other kinds.
fn token_of(k: &str, bytes: Option<&[u8]>) -> Result<Option<u64>, StoreError> {
    let Some(bytes) = bytes.filter(|_| is_subscription(k)) else {
        return Ok(None);
    };
    let s: Stored = crate::decode(k, bytes)?;
    Ok(s.status.nft_token_id)
}

fn is_subscription(k: &str) -> bool {
    k.split_once('/')
        .is_some_and(|(kind, _)| kind == Subscription::KIND)
}

/// Moves the object `k`'s entry from what `before` holds to what `after`
/// holds (either `None`: created or removed), in the write's transaction.
pub(crate) fn follow(
    txn: &WriteTransaction,
    k: &str,
    before: Option<&[u8]>,
    after: Option<&[u8]>,
) -> Result<(), StoreError> {
    let (old, new) = (token_of(k, before)?, token_of(k, after)?);
    if old == new {
        return Ok(());
    }
    let name = crate::write::name_of(k);
    let mut t = txn.open_table(NFT_TOKENS)?;
    if let Some(old) = old {
        t.remove((old, name))?;
    }
    if let Some(new) = new {
        t.insert((new, name), ())?;
    }
    Ok(())
}

/// The name of the (first, by name) subscription holding `token`.
pub(crate) fn lookup(
    t: &impl ReadableTable<(u64, &'static str), ()>,
    token: u64,
) -> Result<Option<String>, StoreError> {
    let mut range = t.range((token, "")..)?;
    match range.next() {
        Some(entry) => {
            let (key, _) = entry?;
            let (got, name) = key.value();
            Ok((got == token).then(|| name.to_owned()))
        }
        None => Ok(None),
    }
}

/// Builds the index from every stored subscription (the migration from schema
/// version 1, whose databases have none; also correct over a partial one).
pub(crate) fn build(txn: &WriteTransaction) -> Result<(), StoreError> {
    let objects = txn.open_table(OBJECTS)?;
    let mut index = txn.open_table(NFT_TOKENS)?;
    let (start, end) = crate::kind_range(Subscription::KIND);
    let mut n = 0u64;
    for entry in objects.range(start.as_str()..end.as_str())? {
        let (k, v) = entry?;
        if let Some(token) = token_of(k.value(), Some(v.value()))? {
            index.insert((token, crate::write::name_of(k.value())), ())?;
            n += 1;
        }
    }
    tracing::info!(entries = n, "built the NFT token index");
    Ok(())
}

#[cfg(test)]
mod tests {
    use blockhost_crd::Subscription;

    use super::*;
    use crate::chain::{BlockRef, ChainTxn};
    use crate::{Store, StoreOptions, Writer};

    const SCOPE: &str = "31337:a:b";

    fn sub(id: u64) -> Subscription {
        let name = format!("blockhost-{id:03}");
        serde_json::from_value(serde_json::json!({
            "apiVersion": "blockhost.io/v1alpha1", "kind": "Subscription",
            "metadata": {"name": name},
            "spec": {"subscriptionId": id, "planId": 3,
                     "subscriber": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                     "expiresAt": "2030-01-01T00:00:00Z", "vmName": name,
                     "blockNumber": 1, "transactionHash": "0xab"}
        }))
        .unwrap()
    }

    fn block(n: u8) -> BlockRef {
        BlockRef {
            number: u64::from(n),
            hash: [n; 32],
        }
    }

    fn chain(s: &Store, n: u8, f: impl FnOnce(&mut ChainTxn<'_>) -> Result<(), StoreError>) {
        s.chain_commit::<()>(SCOPE, &[], block(n), 64, |_, _| Ok(()), f)
            .unwrap();
    }

    fn mint(s: &Store, id: u64, token: u64) {
        let name = sub(id).metadata.name.to_string();
        s.update_status_as::<Subscription>(Writer::Minter, &name, |s| {
            s.status.nft_token_id = Some(token);
            true
        })
        .unwrap()
        .unwrap();
    }

    /// The subscription id the store finds for `token`.
    fn found(s: &Store, token: u64) -> Option<u64> {
        let got = s.subscription_for_token(token).unwrap();
        got.map(|s| s.spec.subscription_id)
    }

    #[test]
    fn the_index_follows_mint_transfer_delete_and_undo() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap();
        chain(&s, 1, |tx| {
            tx.put(&sub(7))?;
            tx.put(&sub(8)).map(|_| ())
        });
        assert_eq!(found(&s, 4), None, "nothing minted yet");
        mint(&s, 7, 4);
        mint(&s, 8, 5);
        assert_eq!(
            (found(&s, 4), found(&s, 5), found(&s, 6)),
            (Some(7), Some(8), None)
        );
        // A transfer: the watcher finds the subscription in its own batch, and
        // its later write of the subscription (without a token) keeps the entry.
        chain(&s, 2, |tx| {
            tx.set_nft_owner(4, Some([9; 20]))?;
            let held = tx
                .subscription_for_token(4)?
                .map(|s| s.spec.subscription_id);
            assert_eq!(held, Some(7));
            let mut later = sub(7);
            later.spec.expires_at = "2031-01-01T00:00:00Z".parse().unwrap();
            tx.put(&later).map(|_| ())
        });
        assert_eq!(found(&s, 4), Some(7));
        // A changed token moves the entry (no stale one left behind).
        mint(&s, 8, 6);
        assert_eq!((found(&s, 5), found(&s, 6)), (None, Some(8)));
        // Deleted on chain: gone from the index in the same transaction.
        chain(&s, 3, |tx| {
            tx.delete(Subscription::KIND, "blockhost-007").map(|_| ())
        });
        assert_eq!(found(&s, 4), None);
        // The reorg undoes the deletion: the restored object is indexed again.
        assert_eq!(s.chain_revert(SCOPE, block(2)).unwrap(), 1);
        assert_eq!(found(&s, 4), Some(7));
        // And undoing the block that created them removes their entries.
        s.chain_revert(
            SCOPE,
            BlockRef {
                number: 0,
                hash: [0; 32],
            },
        )
        .unwrap();
        assert_eq!((found(&s, 4), found(&s, 6)), (None, None));
        assert_eq!(s.count(Subscription::KIND).unwrap(), 0);
    }

    #[test]
    fn a_database_without_the_index_gets_it_built_once_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let v1 = StoreOptions {
            schema_version: 1,
            migrations: &[],
            ..StoreOptions::default()
        };
        {
            let s = Store::open(&path, v1).unwrap();
            chain(&s, 1, |tx| tx.put(&sub(7)).map(|_| ()));
            mint(&s, 7, 4);
            // What a database written before the index looks like.
            let txn = s.inner.db.begin_write().unwrap();
            txn.delete_table(NFT_TOKENS).unwrap();
            txn.commit().unwrap();
            assert_eq!(s.schema_version().unwrap(), 1);
        }
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(s.schema_version().unwrap(), crate::SCHEMA_VERSION);
        assert_eq!(found(&s, 4), Some(7), "built by the migration");
        // Once: a later open does not rebuild (an entry removed by hand stays gone).
        let txn = s.inner.db.begin_write().unwrap();
        txn.open_table(NFT_TOKENS)
            .unwrap()
            .remove((4, "blockhost-007"))
            .unwrap();
        txn.commit().unwrap();
        drop(s);
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(found(&s, 4), None);
    }
}
