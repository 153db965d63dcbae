//! One view of an uplink, built once from the plan, the daemon's health report and
//! the datapath's counters, and rendered three ways: `status --json` (its serde
//! shape), the `status` table and the OpenMetrics endpoint.
use multiroute_ebpf::Traffic;
use serde::Serialize;

use super::{
    health::TargetReport,
    report::{BudgetReport, DaemonReport, UplinkReport},
};
use crate::{
    apply::datapath::Maps,
    config::format_size,
    net::Family,
    plan::{Condition, Plan, Readiness, UplinkPlan},
};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UplinkView {
    pub name: String,
    /// "up", "degraded" (alive, over a quality limit: no new flows while a good
    /// uplink of its tier has them), "down", "exhausted" (its budget is used up)
    /// or "drained" (alive, weight 0: keeps its flows, takes no new ones).
    pub state: &'static str,
    pub weight: u32,
    /// Lower is preferred: new flows use the best tier with a live uplink.
    pub tier: u32,
    /// Takes new flows now: alive, weighted and on the best live tier.
    pub new_flows: bool,
    pub interface: String,
    /// Its IPv4 address, gateway and probes.
    #[serde(flatten)]
    pub ipv4: FamilyView,
    pub table: u32,
    pub mark: String,
    pub flows: usize,
    pub packets: u64,
    pub bytes: u64,
    /// Of its packets both ways, how many the fast path forwarded.
    pub fast_packets: u64,
    /// Since when the uplink is in its state (Unix seconds; null without a daemon).
    pub since: Option<f64>,
    /// Why it is in that state.
    pub reason: Option<String>,
    /// Transitions between up, degraded and down since `load` started.
    pub state_changes: u64,
    /// Last probe round-trip time, from the best answering target.
    pub rtt_ms: Option<f64>,
    /// Probe loss over the last probes of the best target, in percent.
    pub loss_percent: Option<f64>,
    /// Its IPv6 side, judged apart from its IPv4.
    pub ipv6: Ipv6View,
    /// A metered uplink's count (null for an unmetered one, or without a daemon).
    pub budget: Option<BudgetReport>,
}

/// What one family of an uplink has: its address, next hop and probes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FamilyView {
    pub address: Option<String>,
    /// The gateway, or a point-to-point link's peer (null when its address names
    /// none).
    pub gateway: Option<String>,
    pub probes: Vec<TargetReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ipv6View {
    /// "up", "degraded", "down", or why it cannot carry IPv6 ("no address", "no
    /// gateway", "link down").
    pub state: &'static str,
    #[serde(flatten)]
    pub side: FamilyView,
}

/// What the datapath counted for an uplink.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counted {
    pub traffic: Traffic,
    pub flows: usize,
    pub fast_packets: u64,
}

impl UplinkView {
    /// Every planned uplink's view: `health` is the daemon's report (None without
    /// one), `maps` the datapath's (None when it is not loaded).
    pub fn all(plan: &Plan, health: Option<&DaemonReport>, maps: Option<&Maps>) -> Vec<Self> {
        let flows = maps.map(Maps::flows_per_uplink).unwrap_or_default();
        plan.uplinks
            .iter()
            .map(|uplink| {
                let counted = Counted {
                    traffic: maps
                        .and_then(|m| m.traffic(uplink.slot).ok())
                        .unwrap_or_default(),
                    flows: flows.get(&uplink.slot).copied().unwrap_or(0),
                    fast_packets: maps
                        .and_then(|m| m.fast.packets(uplink.slot).ok())
                        .unwrap_or(0),
                };
                let report = health.and_then(|h| h.uplinks.iter().find(|u| u.name == uplink.name));
                UplinkView::new(uplink, plan.active_tier(), report, counted)
            })
            .collect()
    }

    /// `health` is the running daemon's report (None without one: then the plan's
    /// own judgement stands); `active_tier` is the plan's.
    pub fn new(
        uplink: &UplinkPlan,
        active_tier: Option<u32>,
        health: Option<&UplinkReport>,
        counted: Counted,
    ) -> Self {
        // `multiroute weight` changes live in the daemon, not in the file.
        let weight = health.map_or(uplink.weight, |u| u.weight);
        let budget = health.and_then(|u| u.budget.clone());
        let exhausted = budget
            .as_ref()
            .is_some_and(|b| b.exhausted && b.at_quota != "warn");
        let (state, ipv6_state) = states(uplink, health, weight, exhausted);
        let probes = |family| {
            health
                .map(|u| match family {
                    Family::V4 => u.probes.clone(),
                    Family::V6 => u.probes6.clone(),
                })
                .unwrap_or_default()
        };
        let side = |family| FamilyView {
            address: uplink.readiness[family].net().map(|a| a.to_string()),
            gateway: uplink.readiness[family]
                .hop()
                .and_then(|hop| hop.probe_address())
                .map(|g| g.to_string()),
            probes: probes(family),
        };
        UplinkView {
            name: uplink.name.clone(),
            state,
            weight,
            tier: uplink.tier,
            new_flows: health.map_or(uplink.takes_new_flows(Family::V4, active_tier), |u| {
                u.new_flows
            }),
            interface: uplink.interface.clone(),
            ipv4: side(Family::V4),
            table: uplink.table,
            mark: format!("{:#x}", uplink.mark),
            flows: counted.flows,
            packets: counted.traffic.packets,
            bytes: counted.traffic.bytes,
            fast_packets: counted.fast_packets,
            since: health.map(|u| u.since),
            reason: match &budget {
                Some(b) if exhausted => Some(format!(
                    "budget used up: {} of {}; at_quota = \"{}\"",
                    format_size(b.used_bytes),
                    format_size(b.quota_bytes),
                    b.at_quota
                )),
                _ => health
                    .map(|u| u.reason.clone())
                    .or_else(|| uplink.readiness.v4.problem(Family::V4)),
            },
            state_changes: health.map_or(0, |u| u.state_changes),
            rtt_ms: health.and_then(|u| super::health::best(&u.probes).0),
            loss_percent: health.and_then(|u| super::health::best(&u.probes).1),
            ipv6: Ipv6View {
                state: ipv6_state,
                side: side(Family::V6),
            },
            budget,
        }
    }

    /// Takes traffic of `family` (a drained uplink still carries its flows).
    pub fn up(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.state != "down",
            Family::V6 => matches!(self.ipv6.state, "up" | "degraded"),
        }
    }

    /// Alive but over a quality limit in `family`.
    pub fn degraded(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.state == "degraded",
            Family::V6 => self.ipv6.state == "degraded",
        }
    }

    /// Both families' probes: their target addresses tell them apart.
    pub fn all_probes(&self) -> impl Iterator<Item = &TargetReport> {
        self.ipv4.probes.iter().chain(&self.ipv6.side.probes)
    }
}

/// The state words of the uplink's IPv4 side (the uplink's) and of its IPv6 side,
/// by the daemon's judgement when there is one.
fn states(
    uplink: &UplinkPlan,
    health: Option<&UplinkReport>,
    weight: u32,
    exhausted: bool,
) -> (&'static str, &'static str) {
    let condition = |family| match health {
        None => uplink.condition(family),
        Some(u) => match family {
            Family::V4 => Condition::of(u.alive, u.degraded),
            Family::V6 => Condition::of(u.alive6, u.degraded6),
        },
    };
    let state = match (condition(Family::V4), weight) {
        (Condition::Down, _) => "down",
        _ if exhausted => "exhausted",
        (_, 0) => "drained",
        (other, _) => other.as_str(),
    };
    let ipv6 = match &uplink.readiness.v6 {
        Readiness::Ready { .. } => condition(Family::V6).as_str(),
        other => other.state(),
    };
    (state, ipv6)
}
