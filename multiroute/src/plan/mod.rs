//! What multiroute wants the kernel to hold, as pure data: the seed's per-uplink
//! tables, the rules that lead into them, the main-table multipath default and the
//! datapath's map contents. Computed from the config and what the host shows; applied
//! by `apply`; tested here without root against the seed's own commands.
mod datapath;
mod firewall;
mod maglev;
mod model;
pub mod nft;
mod observed;
pub mod policy;
pub mod priority;
mod routing;
pub mod slots;
mod uplink;

use std::collections::BTreeSet;

pub use maglev::{Member, build_ring};
pub use model::{
    LocalMatch, MAIN_DEFAULT_METRIC, MAIN_TABLE, Nexthop, Route, RouteNext, Rule, Selector,
};

pub use observed::{Interface, Observed};
pub use policy::{Policy, RuleUse};
use routing::{main_default, rules, table_routes};
pub use uplink::{Hop, Readiness, UplinkPlan, health_name};
use uplink::{active_tier, readiness, readiness6};

use crate::{
    config::{Config, Failback},
    net::{Family, IpNet},
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
    /// Routes of the per-uplink tables.
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    /// The weighted multipath default for the main table, when `main_default` is on
    /// and at least one uplink is alive and weighted.
    pub main_default: Option<Route>,
    /// The same for IPv6, over the uplinks whose IPv6 is alive.
    pub main_default6: Option<Route>,
    /// Contents of the datapath's uplink table, indexed by slot; free slots are
    /// all zero (not alive).
    pub datapath_uplinks: Vec<multiroute_ebpf::Uplink>,
    pub ring: Vec<u32>,
    /// The IPv6 ring: uplinks whose IPv6 takes new flows.
    pub ring6: Vec<u32>,
    /// Ifindex of every LAN interface, by name, for the classifier.
    pub lan: Vec<(String, u32)>,
    /// The conntrack marks of inbound symmetry, per ready uplink.
    pub inbound: Vec<nft::InboundMark>,
    /// NAT for the LAN's IPv6, per uplink whose IPv6 is ready and translated.
    pub nat6: Vec<nft::Nat66>,
    /// `[balance] by`, as the datapath reads it (`multiroute_ebpf::balance`).
    pub balance_by: u32,
    /// Policy rules as the classifier matches them.
    pub policy: Policy,
    /// Destinations the classifier leaves unmarked, to the main table: its specific
    /// routes and the router's own addresses, of each family that fits the
    /// datapath (see `direct_destinations`).
    pub direct: BTreeSet<IpNet>,
    /// Which uplink each policy rule uses now.
    pub rule_uses: Vec<RuleUse>,
}

impl Plan {
    /// `dead` names uplinks health checks consider down; `previous_slots` is the
    /// slot assignment the datapath holds now (empty on a fresh start).
    pub fn build(
        config: &Config,
        observed: &Observed,
        dead: &BTreeSet<String>,
        previous_slots: &slots::Slots,
    ) -> Result<Plan, PlanError> {
        let lan = lan_interfaces(config, observed)?;
        let uplinks = uplink_plans(config, observed, dead, previous_slots)?;
        // Routing: the uplinks' tables, the rules into them, the main defaults.
        let routes = Family::ALL
            .into_iter()
            .flat_map(|family| table_routes(config, observed, &uplinks, family))
            .collect();
        let rule_uses = policy::uses(&config.rules, &uplinks);
        let direct = Family::ALL.map(|family| (family, datapath::direct(observed, family)));
        let rules = direct
            .iter()
            .flat_map(|(family, direct)| {
                rules(config, &uplinks, &rule_uses, *family, direct.is_none())
            })
            .collect();
        let main_default = |family| {
            config
                .routing
                .main_default
                .then(|| main_default(&uplinks, family))
                .flatten()
        };
        // The datapath: uplink entries, rings, rules, the balance mode.
        let policy = policy::datapath(&config.rules, |name| {
            policy::named(&uplinks, name).map(|u| u.slot)
        });
        Ok(Plan {
            routes,
            rules,
            main_default: main_default(Family::V4),
            main_default6: main_default(Family::V6),
            datapath_uplinks: datapath::uplink_entries(&uplinks, config.routing.fwmark_mask),
            ring: datapath::ring(&uplinks, Family::V4),
            ring6: datapath::ring(&uplinks, Family::V6),
            lan,
            inbound: firewall::inbound_marks(config, &uplinks),
            nat6: firewall::nat66(config, observed, &uplinks),
            balance_by: datapath::balance_by(config.balance.by),
            policy,
            rule_uses,
            direct: direct
                .into_iter()
                .flat_map(|(_, direct)| direct.unwrap_or_default())
                .collect(),
            uplinks,
        })
    }
}

impl Plan {
    /// The same rules with each family's main-table lookup in front of the marks
    /// (`rule_priority` is the config's base): what `load` holds until the
    /// classifier leaves the direct destinations unmarked. A classifier an older
    /// release left running marks them, and so does the new one until its direct
    /// tries are written.
    pub fn rules_main_first(&self, rule_priority: u32) -> Vec<Rule> {
        self.rules
            .iter()
            .map(|rule| {
                let mut rule = rule.clone();
                if rule.table == MAIN_TABLE && rule.suppress_prefixlength == Some(0) {
                    rule.priority = rule_priority + priority::MAIN_FIRST;
                }
                rule
            })
            .collect()
    }
}

impl Plan {
    /// The rules, then every route (uplink tables and the main default), one per
    /// line in `ip` syntax: what `check --plan` prints and tests compare with the
    /// kernel.
    pub fn lines(&self) -> Vec<String> {
        let rules = self.rules.iter().map(ToString::to_string);
        let routes = self
            .routes
            .iter()
            .chain(&self.main_default)
            .chain(&self.main_default6)
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
    /// Not while standing by: then nothing is wrong.
    pub fn fail_open(&self) -> bool {
        !self.uplinks.is_empty()
            && !self.standby()
            && !self.uplinks.iter().any(|u| u.alive && u.weight > 0)
    }

    /// Every uplink is up but has no address: the backup of a VRRP pair, whose
    /// peer holds the uplinks' addresses (and the LAN's gateway). Nothing to steer
    /// until they arrive.
    pub fn standby(&self) -> bool {
        !self.uplinks.is_empty()
            && self
                .uplinks
                .iter()
                .all(|u| u.readiness == Readiness::NoAddress)
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

/// Each uplink's slot, numbers, readiness and liveness per family (`dead`: what
/// health declared dead), and whether it stands by on a backup tier.
fn uplink_plans(
    config: &Config,
    observed: &Observed,
    dead: &BTreeSet<String>,
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
            let readiness6 = readiness6(uplink, iface);
            // Without IPv6 targets of its own (only IPv4 addresses listed), an
            // uplink's IPv6 lives and dies with its IPv4.
            let dead6 = if config.probes_ipv6(uplink) {
                dead.contains(&health_name(&uplink.name, Family::V6))
            } else {
                dead.contains(&uplink.name)
            };
            Ok(UplinkPlan {
                name: uplink.name.clone(),
                slot,
                interface: uplink.interface.clone(),
                table: config.numbering().table(slot),
                mark: config.numbering().mark(slot),
                weight: uplink.weight,
                tier: uplink.tier,
                alive: matches!(readiness, Readiness::Ready { .. }) && !dead.contains(&uplink.name),
                readiness,
                alive6: readiness6.is_ready() && !dead6,
                readiness6,
                nat6: uplink.nat6,
                standby: false,
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    let active = active_tier(&uplinks, Family::V4);
    if config.balance.failback == Failback::Move {
        for uplink in &mut uplinks {
            uplink.standby = uplink.alive && Some(uplink.tier) > active;
        }
    }
    Ok(uplinks)
}

#[cfg(test)]
mod tests;
