//! Wallet-signature SSH login (being written).
