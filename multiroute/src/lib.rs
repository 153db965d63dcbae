//! multiroute: per-session multi-WAN steering for NATed consumer uplinks.
//!
//! The tree follows the flow of the program: [`config`] (what the user asked for) →
//! [`plan`] (pure data: tables, rules, routes, map entries) → [`apply`] (netlink and
//! BPF, idempotent and reversible) → [`commands`] (the CLI, one file per command).
pub mod config;
pub mod net;
pub mod plan;
