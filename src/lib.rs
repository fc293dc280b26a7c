//! sft: a federated selective forwarding unit for group video calls.
//!
//! `core` is the sans-IO heart: conferences, slots, selection, rewriting.
//! `edge` (media), `signalling` and `admin` (HTTP) are thin shells around
//! it; `server` wires them together from a checked `config`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod certs;
pub mod config;
pub mod core;
pub mod drain;
pub mod edge;
pub mod federation;
#[cfg(test)]
mod fuzz;
pub mod http;
#[cfg(feature = "load")]
pub mod load;
pub mod metrics;
pub mod process;
pub mod reload;
pub mod server;
pub mod signalling;
pub mod tls;
pub mod wire;
