//! sft: a federated selective forwarding unit for group video calls.
//!
//! `core` is the sans-IO heart; everything else is a thin shell around it.

pub mod core;
