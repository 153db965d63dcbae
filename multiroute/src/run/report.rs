//! What the running daemon tells `status` and the metrics over the control socket:
//! each uplink's health, the policy rules' uplinks, whether the kernel holds the plan.
use serde::{Deserialize, Serialize};

use super::health::TargetReport;

/// One uplink's health as the daemon reports it (`status`, the control socket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkReport {
    pub name: String,
    pub alive: bool,
    /// Alive but over a quality limit (`reason` says which).
    #[serde(default)]
    pub degraded: bool,
    /// The weight in force (the config's, or what `multiroute weight` set since).
    pub weight: u32,
    pub tier: u32,
    /// In the ring: alive, weighted and on the best live tier.
    pub new_flows: bool,
    /// When the uplink entered its current state (seconds since the Unix epoch).
    pub since: f64,
    /// Why it is in that state.
    pub reason: String,
    /// Transitions between up, degraded and down since `load` started.
    pub state_changes: u64,
    pub probes: Vec<TargetReport>,
    /// Its IPv6 may carry flows (judged apart from its IPv4).
    pub alive6: bool,
    #[serde(default)]
    pub degraded6: bool,
    /// The probes of its IPv6 side.
    pub probes6: Vec<TargetReport>,
    /// A metered uplink's count in its period.
    #[serde(default)]
    pub budget: Option<BudgetReport>,
}

/// A metered uplink's budget as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetReport {
    /// Bytes both ways in the current period.
    pub used_bytes: u64,
    pub quota_bytes: u64,
    /// When the period ends and the count starts again (Unix seconds).
    pub period_end: i64,
    /// The quota is used up.
    pub exhausted: bool,
    /// What that does: "standby", "stop" or "warn".
    pub at_quota: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonReport {
    /// The running daemon's [`crate::version`] (empty from one older than that).
    #[serde(default)]
    pub version: String,
    /// Rules, routes, the datapath and its maps are all in place and match the plan.
    pub ready: bool,
    /// No uplink can take new flows: traffic falls back to the main table.
    pub fail_open: bool,
    /// No uplink has its address: the backup of a VRRP pair.
    #[serde(default)]
    pub standby: bool,
    pub uplinks: Vec<UplinkReport>,
    /// Each policy rule and the uplink it uses now.
    #[serde(default)]
    pub rules: Vec<RuleReport>,
}

/// A policy rule's uplink in use: the first listed one that carries traffic, or
/// none (all dead: what it matches is balanced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleReport {
    pub name: String,
    pub using: Option<String>,
}
