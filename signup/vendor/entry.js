// The crypto the signup page takes from npm, bundled into static/vendor.js by
// build.sh (versions pinned in the repository's package-lock.json):
//   encrypt     eciesjs: ECIES to the server key (secp256k1, HKDF-SHA256, AES-256-GCM)
//   keccak_256  @noble/hashes (eciesjs's own dependency): function selectors,
//               event topics and the NFT payload key
// Exposed as the global `BlockhostVendor`.
export { encrypt } from 'eciesjs';
export { keccak_256 } from '@noble/hashes/sha3';
