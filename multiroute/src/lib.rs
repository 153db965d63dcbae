//! multiroute: per-session multi-WAN steering for NATed consumer uplinks.
//!
//! The tree follows the flow of the program: [`config`] (what the user asked for) →
//! [`plan`] (pure data: tables, rules, routes, map entries) → [`apply`] (netlink and
//! BPF, idempotent and reversible) → [`run`] (the daemon: health probes, link events,
//! the control socket). The binary's `commands/` hold one file per subcommand;
//! [`instance`] keeps one `load` per config.
pub mod apply;
pub mod config;
pub mod instance;
pub mod net;
pub mod path_error;
pub mod plan;
pub mod run;
