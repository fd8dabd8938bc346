//! EIP-191 `personal_sign` hashing and signature verification (being written).
