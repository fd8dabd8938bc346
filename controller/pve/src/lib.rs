//! Typed async client for the Proxmox VE HTTP API (being written).
