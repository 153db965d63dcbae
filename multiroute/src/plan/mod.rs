//! What multiroute wants the kernel to hold, as pure data: the seed's per-uplink
//! tables, the rules that lead into them, the main-table multipath default and the
//! datapath's map contents. Computed from the config and what the host shows; applied
//! by `apply`; tested here without root against the seed's own commands.
mod datapath;
mod firewall;
pub mod host;
mod maglev;
mod model;
pub mod nft;
mod observed;
pub mod policy;
pub mod priority;
mod routing;
pub mod slots;
mod uplink;

pub use maglev::{Member, build_ring};
pub use model::{
    LocalMatch, MAIN_DEFAULT_METRIC, MAIN_TABLE, Nexthop, Route, RouteNext, Rule, Selector,
};

pub use datapath::DatapathPlan;
pub use firewall::FirewallPlan;
pub use observed::{Interface, Observed, RouteOrigin};
pub use policy::{Policy, RuleUse};
pub use routing::RoutingPlan;
pub use uplink::{Condition, EXHAUSTED_TIER, Hop, Readiness, UplinkPlan, Verdicts, health_name};
use uplink::{active_tier, pass_over_degraded, readiness};

use crate::{
    config::{AtQuota, Config, Failback},
    net::{Family, PerFamily},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("LAN interface {0:?} does not exist; fix `lan` or create the interface")]
    MissingLan(String),
    #[error(
        "interface {interface:?} of uplink {uplink:?} does not exist; fix `uplink.interface` or create the interface"
    )]
    MissingUplink { uplink: String, interface: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub uplinks: Vec<UplinkPlan>,
    pub routing: RoutingPlan,
    pub datapath: DatapathPlan,
    pub firewall: FirewallPlan,
    /// Which uplink each policy rule uses now.
    pub rule_uses: Vec<RuleUse>,
}

impl Plan {
    /// `verdicts` names the uplinks health checks found dead or degraded;
    /// `previous_slots` is the slot assignment the datapath holds now (empty on a
    /// fresh start).
    pub fn build(
        config: &Config,
        observed: &Observed,
        verdicts: &Verdicts,
        previous_slots: &slots::Slots,
    ) -> Result<Plan, PlanError> {
        let lan = lan_interfaces(config, observed)?;
        let uplinks = uplink_plans(config, observed, verdicts, previous_slots)?;
        let rule_uses = policy::uses(&config.rules, &uplinks);
        let direct = PerFamily::from_fn(|family| datapath::direct(observed, family));
        let fits = PerFamily::from_fn(|family| direct[family].is_some());
        Ok(Plan {
            routing: routing::plan(config, observed, &uplinks, &rule_uses, fits),
            datapath: datapath::plan(config, observed, &uplinks, lan, direct),
            firewall: firewall::plan(config, observed, &uplinks),
            rule_uses,
            uplinks,
        })
    }

    /// The rules, then every route (uplink tables and the main defaults), one per
    /// line in `ip` syntax: what `check --plan` prints and tests compare with the
    /// kernel.
    pub fn lines(&self) -> Vec<String> {
        let routing = &self.routing;
        let rules = routing.rules.iter().map(ToString::to_string);
        let routes = routing
            .routes
            .iter()
            .chain(routing.main_default.values().flatten())
            .map(ToString::to_string);
        rules.chain(routes).collect()
    }

    /// The uplink called `name`.
    pub fn uplink(&self, name: &str) -> Option<&UplinkPlan> {
        policy::named(&self.uplinks, name)
    }

    /// The tier new flows use: the best one with a live, weighted uplink.
    pub fn active_tier(&self) -> Option<u32> {
        active_tier(&self.uplinks, Family::V4)
    }

    /// No uplink can take new flows: the datapath passes them unmarked and the main
    /// table's original default carries them, rather than blackholing the LAN.
    /// Not while the HA pair's backup: then nothing is wrong.
    pub fn fail_open(&self) -> bool {
        !self.uplinks.is_empty()
            && !self.ha_backup()
            && !self.uplinks.iter().any(|u| u.alive.v4 && u.weight > 0)
    }

    /// Every uplink is up but has no address: the backup of a VRRP pair, whose
    /// peer holds the uplinks' addresses (and the LAN's gateway). Nothing to steer
    /// until they arrive.
    pub fn ha_backup(&self) -> bool {
        !self.uplinks.is_empty()
            && self
                .uplinks
                .iter()
                .all(|u| u.readiness.v4 == Readiness::NoAddress)
    }
}

/// Every LAN interface with its ifindex, for the classifier.
fn lan_interfaces(config: &Config, observed: &Observed) -> Result<Vec<(String, u32)>, PlanError> {
    config
        .lan
        .iter()
        .map(|name| {
            observed
                .get(name)
                .map(|iface| (name.clone(), iface.index))
                .ok_or_else(|| PlanError::MissingLan(name.clone()))
        })
        .collect()
}

/// Each uplink's slot, numbers, readiness and health per family (`verdicts`: what
/// health declared dead or degraded), and whether it stands by on a backup tier.
fn uplink_plans(
    config: &Config,
    observed: &Observed,
    verdicts: &Verdicts,
    previous_slots: &slots::Slots,
) -> Result<Vec<UplinkPlan>, PlanError> {
    let slots = slots::assign(
        previous_slots,
        config.uplinks.iter().map(|u| u.name.as_str()),
        config.numbering().capacity(),
    );
    let mut uplinks = config
        .uplinks
        .iter()
        .map(|uplink| {
            // Validation keeps the uplink count within the capacity.
            let slot = slots.get(&uplink.name).copied().unwrap_or_default();
            let iface =
                observed
                    .get(&uplink.interface)
                    .ok_or_else(|| PlanError::MissingUplink {
                        uplink: uplink.name.clone(),
                        interface: uplink.interface.clone(),
                    })?;
            let readiness = readiness(uplink, iface);
            // Without IPv6 targets of its own (only IPv4 addresses listed), an
            // uplink's IPv6 lives and dies with its IPv4.
            let judged = |family| match family {
                Family::V6 if config.probes_ipv6(uplink) => health_name(&uplink.name, family),
                _ => uplink.name.clone(),
            };
            let alive = PerFamily::from_fn(|f| {
                readiness[f].is_ready() && !verdicts.dead.contains(&judged(f))
            });
            let degraded =
                PerFamily::from_fn(|f| alive[f] && verdicts.degraded.contains(&judged(f)));
            let exhausted = verdicts.exhausted.contains(&uplink.name)
                && uplink
                    .budget
                    .as_ref()
                    .is_some_and(|b| b.at_quota != AtQuota::Warn);
            Ok(UplinkPlan {
                name: uplink.name.clone(),
                slot,
                interface: uplink.interface.clone(),
                table: config.numbering().table(slot),
                mark: config.numbering().mark(slot),
                weight: uplink.weight,
                tier: if exhausted {
                    EXHAUSTED_TIER
                } else {
                    uplink.tier
                },
                exhausted,
                readiness,
                alive,
                degraded,
                passed_over: PerFamily::default(),
                nat6: uplink.nat6,
                standby: false,
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    let active = active_tier(&uplinks, Family::V4);
    let move_back = config.balance.failback == Failback::Move;
    for (uplink, configured) in uplinks.iter_mut().zip(&config.uplinks) {
        let worse = uplink.alive.v4 && Some(uplink.tier) > active;
        // A used-up budget moves the uplink's sessions off it whatever the
        // failback: it was to stop spending. "stop" carries nothing at all.
        let stopped = uplink.exhausted
            && configured.budget.as_ref().map(|b| b.at_quota) == Some(AtQuota::Stop);
        uplink.standby = stopped || (worse && (move_back || uplink.exhausted));
    }
    pass_over_degraded(&mut uplinks);
    Ok(uplinks)
}

#[cfg(test)]
mod tests;
