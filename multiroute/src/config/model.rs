//! The validated config: what the user asked for, every field known good.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::Deserialize;

use super::{
    numbering::Numbering, policy::PolicyRule, probe_target::ProbeTarget, reference as key,
};
use crate::net::{Ipv6Net, PerFamily};

/// A config problem, always naming the file, the key and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub lan: Vec<String>,
    pub uplinks: Vec<UplinkConfig>,
    pub health: HealthConfig,
    pub routing: RoutingConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    pub balance: BalanceConfig,
    pub datapath: DatapathConfig,
    /// Policy rules in the order they are matched: every uplink's `pin` and
    /// `pin_from` as one-uplink rules, then the `[[rule]]`s in file order.
    pub rules: Vec<PolicyRule>,
    /// `[[hook]]`s, in file order.
    pub hooks: Vec<super::hook::Hook>,
    pub web: WebConfig,
}

/// `[datapath]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Established sessions bypass the rule walk and netfilter (on by default).
    pub fast_path: bool,
}

/// `[balance]`: what a new flow's uplink is chosen by, and what backup-tier flows
/// do when a better tier recovers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalanceConfig {
    pub by: BalanceBy,
    pub failback: Failback,
}

/// The granularity of balancing (mwan3 `sticky`, pfSense sticky connections,
/// MikroTik PCC classifiers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceBy {
    /// Each connection (5-tuple) on its own.
    #[default]
    Connection,
    /// Every connection between one LAN host and one server shares an uplink.
    Addresses,
    /// Every connection of one LAN host shares an uplink.
    Source,
}

/// Flows on a backup tier when a better tier has a live uplink again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failback {
    /// They stay until they end.
    #[default]
    Keep,
    /// They move back; the backup's conntrack entries are flushed (metered LTE).
    Move,
}

/// How the LAN's IPv6 leaves through an uplink (`nat6`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Nat6 {
    /// NAT66 to the uplink's current global address (one address for the LAN,
    /// as IPv4 masquerade), followed when it changes.
    #[default]
    Masquerade,
    /// 1:1 prefix translation of the LAN's prefix onto `prefix`, or onto the
    /// uplink's own prefix when none is given (followed when it changes).
    Npt { prefix: Option<Ipv6Net> },
    /// Routed: the LAN's addresses leave as they are (a delegated prefix); the
    /// user's firewall decides.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    pub name: String,
    pub interface: String,
    /// `gateway` and `gateway6`; learned from the default routes when unset. The
    /// IPv6 one is usually a link-local router.
    pub gateway: PerFamily<Option<IpAddr>>,
    pub nat6: Nat6,
    pub weight: u32,
    /// Lower is preferred: new flows use the best tier that has a live uplink.
    pub tier: u32,
    pub probe: Vec<ProbeTarget>,
    /// Its `[uplink.health]` over `[health]`'s limits.
    pub quality: Quality,
    /// A metered uplink's data quota.
    pub budget: Option<super::budget::Budget>,
    /// What to do once it has been dead for a while.
    pub on_dead: Option<super::on_dead::OnDead>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub targets: Vec<ProbeTarget>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub down: u32,
    pub up: u32,
    /// The limits of uplinks that set none of their own.
    pub quality: Quality,
}

/// When a live uplink is "degraded": over a limit on the last `window` probes of
/// its targets, back once under the (lower) recover limits, each verdict held for
/// at least `min_state_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quality {
    pub max_loss_percent: u32,
    pub max_rtt_ms: u32,
    pub recover_loss_percent: u32,
    pub recover_rtt_ms: u32,
    pub window: u32,
    /// Of the uplink's targets, how many must answer (alive) and be within the
    /// limits (not degraded); at most as many as it has.
    pub targets_needed: u32,
    pub min_state_ms: u32,
}

/// A key's default as the model's number (every quality default fits).
fn number(key: &key::Key) -> u32 {
    key.default_number() as u32
}

impl Default for Quality {
    fn default() -> Self {
        Self {
            max_loss_percent: number(&key::MAX_LOSS_PERCENT),
            max_rtt_ms: number(&key::MAX_RTT_MS),
            recover_loss_percent: number(&key::RECOVER_LOSS_PERCENT),
            recover_rtt_ms: number(&key::RECOVER_RTT_MS),
            window: number(&key::WINDOW),
            targets_needed: number(&key::TARGETS_NEEDED),
            min_state_ms: number(&key::MIN_STATE_MS),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    pub table_base: u32,
    pub rule_priority: u32,
    pub fwmark_mask: u32,
    pub main_default: bool,
    pub pin_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub socket: PathBuf,
    /// What must outlive a restart or a reboot (the budgets' byte counts).
    pub state_dir: PathBuf,
}

/// `[metrics]`: Prometheus/OpenMetrics text over HTTP, off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

/// `[web]`: the read-only live status page, off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    pub listen: Option<SocketAddr>,
    /// Required for a non-loopback `listen`: the page is opened once as
    /// `/?token=…`, then the token is kept in a cookie.
    pub token: Option<String>,
}

/// A name that is not one of the config's uplinks, with the ones there are.
#[derive(Debug, thiserror::Error)]
#[error("no uplink named {name:?}; the uplinks are: {known}")]
pub struct UnknownUplink {
    pub name: String,
    pub known: String,
}

/// Rule priorities multiroute may use above `rule_priority`.
pub const RULE_PRIORITY_SPAN: u32 = 1000;

impl Config {
    /// Slots, tables and marks under this config's `[routing]`.
    pub fn numbering(&self) -> Numbering {
        Numbering::new(self.routing.table_base, self.routing.fwmark_mask)
    }

    /// The targets `uplink` is probed at: its own `probe` list or `[health].targets`.
    pub fn targets<'a>(&'a self, uplink: &'a UplinkConfig) -> &'a [ProbeTarget] {
        if uplink.probe.is_empty() {
            &self.health.targets
        } else {
            &uplink.probe
        }
    }

    /// Whether `uplink`'s IPv6 is probed on its own: an IPv6 target or "gateway"
    /// (the IPv6 gateway, for IPv6) is listed. Otherwise its IPv6 follows its IPv4.
    pub fn probes_ipv6(&self, uplink: &UplinkConfig) -> bool {
        self.targets(uplink).iter().any(|target| match target {
            ProbeTarget::Gateway => true,
            ProbeTarget::Target(target) => target.family() == crate::net::Family::V6,
        })
    }

    /// Where uplink `name` is in `uplinks`.
    pub fn uplink_position(&self, name: &str) -> Result<usize, UnknownUplink> {
        self.uplinks
            .iter()
            .position(|u| u.name == name)
            .ok_or_else(|| UnknownUplink {
                name: name.to_owned(),
                known: self
                    .uplinks
                    .iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}
