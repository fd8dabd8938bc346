//! Contract bindings generated from the committed build artifacts.
//!
//! `contracts/build.sh` writes `contracts/artifacts/<Name>.json` (`{abi,
//! bytecode}`) and `contracts/check-fresh.sh` proves they match the Solidity
//! sources; generating the bindings from those same files means calls, events
//! and errors here always have the selectors of the deployed code. Each module
//! also carries the creation bytecode (`BYTECODE`) for deployment.
//!
//! The tests at the bottom recompute every selector and topic from the JSON
//! ABI and pin the ones external clients depend on (REFERENCE.md §1).

use alloy_sol_types::sol;

sol!(
    /// Subscriptions: plans, payment methods, purchases, extensions, cancellations.
    #[derive(Debug, PartialEq, Eq)]
    BlockhostSubscriptions,
    "../../contracts/artifacts/BlockhostSubscriptions.json"
);

sol!(
    /// The access NFT: one token per VM, carrying the encrypted connection details.
    #[derive(Debug, PartialEq, Eq)]
    AccessCredentialNFT,
    "../../contracts/artifacts/AccessCredentialNFT.json"
);

sol!(
    /// Test/dev-chain ERC-20 with open minting and chosen decimals.
    #[derive(Debug, PartialEq, Eq)]
    MockERC20,
    "../../contracts/artifacts/MockERC20.json"
);

sol!(
    /// Test/dev-chain Uniswap-V2 pair with settable reserves.
    #[derive(Debug, PartialEq, Eq)]
    MockUniswapV2Pair,
    "../../contracts/artifacts/MockUniswapV2Pair.json"
);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeSet;

    use alloy_primitives::{B256, hex, keccak256};
    use serde_json::Value;

    use super::*;

    /// The canonical type of one ABI parameter (tuples spelled out), as used in
    /// selector and topic preimages.
    fn canonical_type(param: &Value) -> String {
        let ty = param["type"].as_str().unwrap();
        match ty.strip_prefix("tuple") {
            Some(suffix) => {
                let inner: Vec<String> = param["components"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(canonical_type)
                    .collect();
                format!("({}){suffix}", inner.join(","))
            }
            None => ty.to_owned(),
        }
    }

    /// keccak256 of `name(types)` for every ABI entry of `kind`, computed here
    /// from the JSON independently of the `sol!` macro.
    fn hashes(artifact: &str, kind: &str) -> BTreeSet<B256> {
        let json: Value = serde_json::from_str(artifact).unwrap();
        json["abi"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == kind)
            .map(|e| {
                let types: Vec<String> = e["inputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(canonical_type)
                    .collect();
                keccak256(format!(
                    "{}({})",
                    e["name"].as_str().unwrap(),
                    types.join(",")
                ))
            })
            .collect()
    }

    fn selectors(artifact: &str, kind: &str) -> BTreeSet<[u8; 4]> {
        hashes(artifact, kind)
            .into_iter()
            .map(|h| h[..4].try_into().unwrap())
            .collect()
    }

    fn set<T: Ord + Copy>(items: &[T]) -> BTreeSet<T> {
        items.iter().copied().collect()
    }

    fn set_b256(items: &[[u8; 32]]) -> BTreeSet<B256> {
        items.iter().map(|t| B256::from(*t)).collect()
    }

    const SUBS_JSON: &str =
        include_str!("../../../contracts/artifacts/BlockhostSubscriptions.json");
    const NFT_JSON: &str = include_str!("../../../contracts/artifacts/AccessCredentialNFT.json");
    const ERC20_JSON: &str = include_str!("../../../contracts/artifacts/MockERC20.json");
    const PAIR_JSON: &str = include_str!("../../../contracts/artifacts/MockUniswapV2Pair.json");

    #[test]
    fn subscriptions_selectors_equal_the_compiled_abi() {
        use BlockhostSubscriptions::*;
        assert_eq!(
            set(BlockhostSubscriptionsCalls::SELECTORS),
            selectors(SUBS_JSON, "function")
        );
        assert_eq!(
            set_b256(BlockhostSubscriptionsEvents::SELECTORS),
            hashes(SUBS_JSON, "event")
        );
        assert_eq!(
            set(BlockhostSubscriptionsErrors::SELECTORS),
            selectors(SUBS_JSON, "error")
        );
    }

    #[test]
    fn nft_selectors_equal_the_compiled_abi() {
        use AccessCredentialNFT::*;
        assert_eq!(
            set(AccessCredentialNFTCalls::SELECTORS),
            selectors(NFT_JSON, "function")
        );
        assert_eq!(
            set_b256(AccessCredentialNFTEvents::SELECTORS),
            hashes(NFT_JSON, "event")
        );
        assert_eq!(
            set(AccessCredentialNFTErrors::SELECTORS),
            selectors(NFT_JSON, "error")
        );
    }

    #[test]
    fn mock_selectors_equal_the_compiled_abi() {
        assert_eq!(
            set(MockERC20::MockERC20Calls::SELECTORS),
            selectors(ERC20_JSON, "function")
        );
        assert_eq!(
            set(MockUniswapV2Pair::MockUniswapV2PairCalls::SELECTORS),
            selectors(PAIR_JSON, "function")
        );
    }

    /// Values computed with `cast sig` / `cast sig-event` from the signature
    /// strings in REFERENCE.md §1: what existing signup pages and scripts send
    /// and filter on. A change here breaks them.
    #[test]
    fn reference_selectors_and_topics_are_pinned() {
        use AccessCredentialNFT as N;
        use BlockhostSubscriptions as S;
        use alloy_sol_types::{SolCall, SolError, SolEvent};

        assert_eq!(S::createPlanCall::SELECTOR, hex!("4e09bf46"));
        assert_eq!(S::buySubscriptionCall::SELECTOR, hex!("d4e69225"));
        assert_eq!(S::extendSubscriptionCall::SELECTOR, hex!("526e1442"));
        assert_eq!(S::cancelSubscriptionCall::SELECTOR, hex!("21235083"));
        assert_eq!(S::getSubscriptionCall::SELECTOR, hex!("dc311dd3"));
        assert_eq!(S::PlanNotFound::SELECTOR, hex!("abb34a7c"));
        assert_eq!(N::mintCall::SELECTOR, hex!("b510391f"));
        assert_eq!(N::getUserEncryptedCall::SELECTOR, hex!("191803d1"));
        assert_eq!(N::updateUserEncryptedCall::SELECTOR, hex!("804a083e"));

        let topic = |h: &str| B256::from_slice(&hex::decode(h).unwrap());
        assert_eq!(
            S::SubscriptionCreated::SIGNATURE_HASH,
            topic("f8d0042297eb90d4c0e69b16b80a93bdee5b71f0a963a1961a4de8c551958b55")
        );
        assert_eq!(
            S::SubscriptionExtended::SIGNATURE_HASH,
            topic("80f867aeffc74b04b4f387cfc5572b2a3537d8705579fb696da4019cc8069e09")
        );
        assert_eq!(
            S::SubscriptionCancelled::SIGNATURE_HASH,
            topic("66f43ba68b89239cf7af6921b9dcdaf6ce93c7223af7a53e343dbedcc082a104")
        );
        assert_eq!(
            S::PlanCreated::SIGNATURE_HASH,
            topic("135a65e1936006594178a9666e5ddf1d2099f18e72674253a206ed70ade01cc9")
        );
        assert_eq!(
            S::PlanUpdated::SIGNATURE_HASH,
            topic("98d9b93420109e31b5f297c50e34a5907d18ec99519b549841a4e2e44ed603eb")
        );
        assert_eq!(
            N::CredentialMinted::SIGNATURE_HASH,
            topic("cde916bd9d7a22898d8fc86b92ef660fa8dddb29c63944348dd33e5d9f1e3f98")
        );
        assert_eq!(
            N::CredentialUpdated::SIGNATURE_HASH,
            topic("af546e6879a109130d587e5ae972d905c080f1395212533857157316489f2c34")
        );
        assert_eq!(
            N::Transfer::SIGNATURE_HASH,
            topic("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef")
        );
    }

    #[test]
    fn bytecode_is_the_artifacts() {
        for (json, code) in [
            (SUBS_JSON, &BlockhostSubscriptions::BYTECODE),
            (NFT_JSON, &AccessCredentialNFT::BYTECODE),
            (ERC20_JSON, &MockERC20::BYTECODE),
            (PAIR_JSON, &MockUniswapV2Pair::BYTECODE),
        ] {
            let v: Value = serde_json::from_str(json).unwrap();
            let want = hex::decode(v["bytecode"].as_str().unwrap()).unwrap();
            assert!(!want.is_empty());
            assert_eq!(code.as_ref(), want.as_slice());
        }
    }

    /// The token id of a fresh credential is in the receipt: both mint events
    /// index it, and decoding a log yields it without any extra call.
    #[test]
    fn minted_token_id_decodes_from_log() {
        use alloy_primitives::{Address, LogData, U256};
        use alloy_sol_types::SolEvent;

        let recipient = Address::repeat_byte(0x11);
        let event = AccessCredentialNFT::CredentialMinted {
            tokenId: U256::from(42u64),
            recipient,
        };
        let data: LogData = event.encode_log_data();
        assert_eq!(data.topics()[1], B256::from(U256::from(42u64)));
        let decoded = AccessCredentialNFT::CredentialMinted::decode_log_data(&data).unwrap();
        assert_eq!(decoded.tokenId, U256::from(42u64));
        assert_eq!(decoded.recipient, recipient);
    }

    #[test]
    fn subscription_created_round_trips() {
        use alloy_primitives::{Address, Bytes, U256};
        use alloy_sol_types::SolEvent;

        let event = BlockhostSubscriptions::SubscriptionCreated {
            subscriptionId: U256::from(7u64),
            planId: U256::from(1u64),
            subscriber: Address::repeat_byte(0xab),
            expiresAt: U256::from(1_800_000_000u64),
            paidAmount: U256::from(45_000_000u64),
            paymentToken: Address::repeat_byte(0xcd),
            userEncrypted: Bytes::from_static(b"\x04opaque"),
        };
        let data = event.encode_log_data();
        assert_eq!(
            data.topics().len(),
            4,
            "three indexed parameters plus the signature"
        );
        let decoded = BlockhostSubscriptions::SubscriptionCreated::decode_log_data(&data).unwrap();
        assert_eq!(decoded, event);
    }
}
