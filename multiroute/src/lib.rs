//! multiroute: per-session multi-WAN steering for NATed consumer uplinks.
//!
//! The tree follows the flow of the program: [`config`] (what the user asked for) →
//! [`plan`] (pure data: tables, rules, routes, map entries) → [`netlink`] (the typed
//! layer over rtnetlink) → [`observe`] (reading the host) → [`apply`] (writing it:
//! netlink and BPF, idempotent and reversible) → [`run`] (the daemon: health probes,
//! link events, the control socket). Each uses only those before it (`cargo xtask
//! layers`). The binary's `commands/` hold one file per subcommand; [`instance`]
//! keeps one `load` per config.
pub mod apply;
pub mod config;
pub mod instance;
pub mod net;
pub mod netlink;
pub mod observe;
pub mod path_error;
pub mod plan;
pub mod run;

/// This build's version, the commit it was built from and the layout of the BPF maps
/// it pins (an upgrade adopts only maps of a layout it knows), e.g.
/// `0.1.0 (commit 9bd0093a1b2c, map layout 4)`.
pub fn version() -> String {
    format!(
        "{} (commit {}, map layout {})",
        env!("CARGO_PKG_VERSION"),
        env!("MULTIROUTE_COMMIT"),
        multiroute_ebpf::MAP_LAYOUT
    )
}
