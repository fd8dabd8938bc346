//! EIP-1559 (type 2) transactions: fields, signing and the raw bytes a node's
//! `eth_sendRawTransaction` takes.
//!
//! Why our own ~100 lines instead of alloy's consensus and signer crates: the
//! server only ever signs one kind of transaction (type 2, empty access list) with
//! a local key, and those crates would add alloy-eips, alloy-serde, alloy-trie and
//! their derive stacks to a build that runs on two cores. The RLP itself is
//! alloy's (`alloy-rlp`, already built for `alloy-primitives`); signing is the
//! same k256 code the rest of the project uses. The tests check the bytes against
//! foundry's `cast mktx` and recover the sender from our own signature.
//!
//! Layout (EIP-1559): `0x02 || rlp([chainId, nonce, maxPriorityFeePerGas,
//! maxFeePerGas, gasLimit, to, value, data, accessList, yParity, r, s])`; the
//! signature covers `keccak256(0x02 || rlp(first nine fields))` and the
//! transaction hash is `keccak256` of the whole raw encoding.

use alloy_primitives::{U256, keccak256};
use alloy_rlp::{Encodable, Header};
use k256::ecdsa::{RecoveryId, SigningKey};

/// Transaction type byte of EIP-1559 transactions.
pub const EIP1559_TYPE: u8 = 0x02;

/// An unsigned EIP-1559 transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eip1559Tx {
    /// EIP-155 chain id (replay protection across chains).
    pub chain_id: u64,
    /// The sender's nonce.
    pub nonce: u64,
    /// Tip per gas to the block producer, in wei.
    pub max_priority_fee_per_gas: u128,
    /// Most the sender pays per gas (base fee + tip), in wei.
    pub max_fee_per_gas: u128,
    /// Gas limit.
    pub gas_limit: u64,
    /// Recipient; `None` deploys a contract with `input` as its creation code.
    pub to: Option<[u8; 20]>,
    /// Value in wei.
    pub value: U256,
    /// Call data or creation code.
    pub input: Vec<u8>,
}

/// A signed transaction, ready to broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// The raw encoding for `eth_sendRawTransaction`.
    pub raw: Vec<u8>,
    /// Its hash, as nodes and explorers name it.
    pub hash: [u8; 32],
}

/// Why a transaction could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// k256 refused to sign (only possible with a degenerate key or digest).
    #[error("signing the transaction failed")]
    Signing,
}

/// An RLP string holding a big-endian integer without leading zeros (how RLP
/// spells `r` and `s`).
fn encode_be_integer(bytes: &[u8], out: &mut Vec<u8>) {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[start..].encode(out);
}

impl Eip1559Tx {
    /// The nine unsigned fields, RLP-encoded one after another (no list header).
    fn encode_fields(&self, out: &mut Vec<u8>) {
        self.chain_id.encode(out);
        self.nonce.encode(out);
        self.max_priority_fee_per_gas.encode(out);
        self.max_fee_per_gas.encode(out);
        self.gas_limit.encode(out);
        match &self.to {
            Some(to) => to[..].encode(out),
            None => out.push(alloy_rlp::EMPTY_STRING_CODE),
        }
        encode_be_integer(&self.value.to_be_bytes::<32>(), out);
        self.input[..].encode(out);
        // Empty access list.
        out.push(alloy_rlp::EMPTY_LIST_CODE);
    }

    /// `0x02 || rlp(list of payload)`.
    fn typed(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 10);
        out.push(EIP1559_TYPE);
        Header {
            list: true,
            payload_length: payload.len(),
        }
        .encode(&mut out);
        out.extend_from_slice(payload);
        out
    }

    /// The digest the sender signs.
    pub fn signing_hash(&self) -> [u8; 32] {
        let mut fields = Vec::with_capacity(self.input.len() + 128);
        self.encode_fields(&mut fields);
        keccak256(Self::typed(&fields)).0
    }

    /// Signs with `key` (RFC 6979, low-s) and encodes the result.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedTx, TxError> {
        let digest = self.signing_hash();
        let (sig, recid) = key
            .sign_prehash_recoverable(&digest)
            .map_err(|_| TxError::Signing)?;
        // Nodes refuse high-s signatures (EIP-2); flipping s flips the parity.
        let (sig, recid) = match sig.normalize_s() {
            Some(low) => (
                low,
                RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced()),
            ),
            None => (sig, recid),
        };
        let bytes = sig.to_bytes();
        let mut fields = Vec::with_capacity(self.input.len() + 200);
        self.encode_fields(&mut fields);
        u8::from(recid.is_y_odd()).encode(&mut fields);
        encode_be_integer(&bytes[..32], &mut fields);
        encode_be_integer(&bytes[32..], &mut fields);
        let raw = Self::typed(&fields);
        let hash = keccak256(&raw).0;
        Ok(SignedTx { raw, hash })
    }
}

/// The address of a secp256k1 key (last 20 bytes of the keccak of its
/// uncompressed public point).
pub fn address_of(key: &SigningKey) -> [u8; 20] {
    let point = key.verifying_key().to_encoded_point(false);
    let h = keccak256(&point.as_bytes()[1..]);
    let mut a = [0u8; 20];
    a.copy_from_slice(&h[12..]);
    a
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloy_primitives::hex;
    use k256::ecdsa::{Signature, VerifyingKey};

    /// anvil's first dev key (well known; holds test ether only).
    const DEV_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    fn key() -> SigningKey {
        SigningKey::from_slice(&hex::decode(DEV_KEY).unwrap()).unwrap()
    }

    fn sample() -> Eip1559Tx {
        Eip1559Tx {
            chain_id: 31337,
            nonce: 7,
            max_priority_fee_per_gas: 1_000_000_000,
            max_fee_per_gas: 3_000_000_000,
            gas_limit: 200_000,
            to: Some([0x5f; 20]),
            value: U256::ZERO,
            input: hex::decode("b510391f").unwrap(),
        }
    }

    #[test]
    fn dev_key_has_its_known_address() {
        assert_eq!(
            hex::encode(address_of(&key())),
            "f39fd6e51aad88f6f4ce6ab8827279cfffb92266"
        );
    }

    /// The same fields signed by `cast mktx` (foundry 1.7.1):
    /// `cast mktx --private-key $DEV_KEY --chain 31337 --nonce 7 --gas-limit 200000
    ///  --gas-price 3000000000 --priority-gas-price 1000000000
    ///  0x5f5f…5f 0xb510391f` (RFC 6979 makes the signature deterministic).
    #[test]
    fn signed_bytes_match_cast() {
        let signed = sample().sign(&key()).unwrap();
        let expect = include_str!("../tests/cast_mktx_vector.txt").trim();
        assert_eq!(format!("0x{}", hex::encode(&signed.raw)), expect);
        assert_eq!(signed.hash, keccak256(&signed.raw).0);
    }

    #[test]
    fn signature_recovers_the_sender() {
        let tx = sample();
        let signed = tx.sign(&key()).unwrap();
        // The last 67 bytes are: yParity (1), 0xa0 r (33), 0xa0 s (33) unless r
        // or s have leading zero bytes; this sample's do not.
        let tail = &signed.raw[signed.raw.len() - 67..];
        let parity = tail[0];
        assert!(parity == 0x80 || parity == 0x01);
        assert_eq!(tail[1], 0xa0);
        let mut rs = [0u8; 64];
        rs[..32].copy_from_slice(&tail[2..34]);
        rs[32..].copy_from_slice(&tail[35..67]);
        let sig = Signature::from_slice(&rs).unwrap();
        assert!(sig.normalize_s().is_none(), "low-s");
        let recid = RecoveryId::new(parity == 0x01, false);
        let vk = VerifyingKey::recover_from_prehash(&tx.signing_hash(), &sig, recid).unwrap();
        assert_eq!(vk, *key().verifying_key());
    }

    #[test]
    fn leading_zeros_are_stripped_from_integers() {
        let mut out = Vec::new();
        encode_be_integer(&[0, 0, 1, 2], &mut out);
        assert_eq!(out, vec![0x82, 1, 2]);
        let mut out = Vec::new();
        encode_be_integer(&[0, 0x05], &mut out);
        assert_eq!(out, vec![0x05]);
        let mut out = Vec::new();
        encode_be_integer(&[0, 0], &mut out);
        assert_eq!(out, vec![0x80]);
    }
}
