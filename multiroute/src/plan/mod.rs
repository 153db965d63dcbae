//! What multiroute wants the kernel to hold, as pure data: the seed's per-uplink
//! tables, the rules that lead into them, the main-table multipath default and the
//! datapath's map contents. Computed from the config and what the host shows; applied
//! by `apply`; tested here without root against the seed's own commands.
mod maglev;
mod model;
pub mod nft;
mod observed;
pub mod policy;
pub mod priority;
mod routing;
pub mod slots;
mod uplink;

use std::{collections::BTreeSet, net::IpAddr};

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
    config::{BalanceBy, Config, Failback, Nat6},
    net::{Family, IpNet, Ipv6Net},
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
        let slots = slots::assign(
            previous_slots,
            config.uplinks.iter().map(|u| u.name.as_str()),
            config.numbering().capacity(),
        );
        let lan = config
            .lan
            .iter()
            .map(|name| {
                observed
                    .get(name)
                    .map(|iface| (name.clone(), iface.index))
                    .ok_or_else(|| PlanError::MissingLan(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let uplinks = config
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
                // Without IPv6 targets of its own (only IPv4 addresses listed),
                // an uplink's IPv6 lives and dies with its IPv4.
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
                    alive: matches!(readiness, Readiness::Ready { .. })
                        && !dead.contains(&uplink.name),
                    readiness,
                    alive6: readiness6.is_ready() && !dead6,
                    readiness6,
                    nat6: uplink.nat6,
                    standby: false,
                })
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        let mut uplinks = uplinks;
        let active = active_tier(&uplinks, Family::V4);
        if config.balance.failback == Failback::Move {
            for uplink in &mut uplinks {
                uplink.standby = uplink.alive && Some(uplink.tier) > active;
            }
        }

        let routes = Family::ALL
            .into_iter()
            .flat_map(|family| table_routes(config, observed, &uplinks, family))
            .collect();
        let rule_uses = policy::uses(&config.rules, &uplinks);
        let direct = Family::ALL.map(|family| (family, direct_destinations(observed, family)));
        let rules = direct
            .iter()
            .flat_map(|(family, direct)| {
                rules(config, &uplinks, &rule_uses, *family, direct.is_none())
            })
            .collect();
        let direct = direct
            .into_iter()
            .flat_map(|(_, direct)| direct.unwrap_or_default())
            .collect();
        let policy = policy::datapath(&config.rules, |name| {
            policy::named(&uplinks, name).map(|u| u.slot)
        });
        let main_default = |family| {
            config
                .routing
                .main_default
                .then(|| main_default(&uplinks, family))
                .flatten()
        };
        let (main_default, main_default6) = (main_default(Family::V4), main_default(Family::V6));
        let mask = config.routing.fwmark_mask;
        let used = uplinks.iter().map(|u| u.slot + 1).max().unwrap_or(0);
        let mut datapath_uplinks = vec![multiroute_ebpf::Uplink::default(); used as usize];
        for u in &uplinks {
            datapath_uplinks[u.slot as usize] = multiroute_ebpf::Uplink {
                mark: u.mark,
                mask,
                alive: u32::from(u.carries_in(Family::V4)),
                alive6: u32::from(u.carries_in(Family::V6)),
            };
        }
        let ring_of = |family| {
            let active = active_tier(&uplinks, family);
            let members: Vec<_> = uplinks
                .iter()
                .filter(|u| u.takes_new_flows_in(family, active))
                .map(|u| Member {
                    index: u.slot,
                    name: &u.name,
                    weight: u.weight,
                })
                .collect();
            build_ring(&members, multiroute_ebpf::RING_SIZE)
        };
        let (ring, ring6) = (ring_of(Family::V4), ring_of(Family::V6));
        let inbound = uplinks
            .iter()
            .filter(|u| matches!(u.readiness, Readiness::Ready { .. }))
            .map(|u| nft::InboundMark {
                interface: u.interface.clone(),
                mark: u.mark | config.numbering().inbound_flag(),
            })
            .collect();
        let lan6 = config
            .lan
            .iter()
            .filter_map(|name| observed.get(name)?.addresses6.first())
            .map(|address| address.network())
            .next();
        let nat6 = uplinks.iter().filter_map(|u| nat66(u, lan6)).collect();
        Ok(Plan {
            uplinks,
            routes,
            rules,
            main_default,
            main_default6,
            datapath_uplinks,
            ring,
            ring6,
            lan,
            inbound,
            nat6,
            balance_by: match config.balance.by {
                BalanceBy::Connection => multiroute_ebpf::balance::CONNECTION,
                BalanceBy::Addresses => multiroute_ebpf::balance::ADDRESSES,
                BalanceBy::Source => multiroute_ebpf::balance::SOURCE,
            },
            policy,
            rule_uses,
            direct,
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

/// The IPv6 NAT of one uplink, when its IPv6 is ready and translated. `lan` is
/// the LAN's IPv6 prefix (the first LAN interface's), which prefix translation
/// maps; without one there is nothing to map.
fn nat66(uplink: &UplinkPlan, lan: Option<Ipv6Net>) -> Option<nft::Nat66> {
    let Readiness::Ready { address, .. } = uplink.readiness6 else {
        return None;
    };
    let translation = match uplink.nat6 {
        Nat6::None => return None,
        Nat6::Masquerade => nft::Translation::Masquerade,
        // Learned: the uplink's own prefix (its address's network). The LAN side
        // is taken at the same length, so the mapping is 1:1 both ways.
        Nat6::Npt { prefix } => {
            let outside = prefix.unwrap_or(address.network());
            let lan = Ipv6Net::new(lan?.addr, outside.prefix_len).network();
            nft::Translation::Prefix { lan, outside }
        }
    };
    Some(nft::Nat66 {
        interface: uplink.interface.clone(),
        translation,
    })
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

/// What the classifier leaves to the main table, of `family`: the destinations of
/// the main table's specific routes, and the router's own addresses (the local
/// table routes them first anyway; unmarked they are not counted as an uplink's).
/// `None` when they are more than the datapath holds: the main table is then
/// consulted before the marks instead.
fn direct_destinations(observed: &Observed, family: Family) -> Option<BTreeSet<IpNet>> {
    let own = observed.values().flat_map(|iface| {
        let v4 = iface.addresses.iter().map(|a| IpAddr::V4(a.addr));
        let v6 = iface.addresses6.iter().map(|a| IpAddr::V6(a.addr));
        v4.chain(v6).map(IpNet::host)
    });
    let direct: BTreeSet<IpNet> = observed
        .main_routes
        .iter()
        .copied()
        .chain(own)
        .filter(|net| net.family() == family)
        .collect();
    (direct.len() <= multiroute_ebpf::MAX_DIRECT_PREFIXES as usize).then_some(direct)
}

#[cfg(test)]
mod tests;
