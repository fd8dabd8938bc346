//! blockhostd and bhctl (being written).
