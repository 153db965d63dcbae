//! What multiroute wants the kernel to hold, as pure data: the seed's per-uplink
//! tables, the rules that lead into them, the main-table multipath default and the
//! datapath's map contents. Computed from the config and what the host shows; applied
//! by `apply`; tested here without root against the seed's own commands.
mod maglev;
mod model;
pub mod nft;
pub mod numbering;
pub mod policy;
pub mod slots;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

pub use maglev::{Member, build_ring};
pub use model::{LocalMatch, MAIN_TABLE, Nexthop, Route, RouteNext, Rule, Selector};
pub use numbering::Numbering;
pub use policy::{Policy, RuleUse};

use crate::{
    config::{BalanceBy, Config, Failback, UplinkConfig},
    net::Ipv4Net,
};

/// Rule priority offsets inside `[rule_priority, rule_priority + 999]`, in the order
/// the kernel consults them. Per-uplink rules sit at `offset + slot`, and an
/// uplink's slot never changes while it exists, so one uplink coming or going never
/// renumbers another's rules.
pub mod priority {
    use multiroute_ebpf::MAX_UPLINKS;

    use crate::config::{MAX_ROUTER_RULES, RULE_PRIORITY_SPAN};

    /// `lookup main suppress_prefixlength 0`: specific main routes (LAN, VPN, other
    /// local subnets) win over every steering rule below.
    pub const MAIN_SPECIFIC: u32 = 0;
    /// `fwmark <mark>/<mask>`: the datapath's per-flow choice (policy rules for
    /// LAN traffic included: the classifier matched them). First after the main
    /// table: a marked LAN packet walks no rule meant for other traffic. An
    /// inbound reply's mark carries the flag, so it matches none of these.
    pub const FWMARK: u32 = 100;
    /// `fwmark <mark | inbound flag>/<mask>`: replies to connections that arrived on
    /// an uplink (port forwards), marked from conntrack (see `nft`).
    pub const INBOUND: u32 = 200;
    /// `from <uplink address>`: replies and router-originated traffic sourced from an
    /// uplink's address leave through that uplink (the seed's NAT/DNAT symmetry).
    pub const FROM_UPLINK: u32 = 300;
    /// `iif lo …`: policy rules for the router's own traffic, numbered over every
    /// configured rule. After the LAN's rules: a LAN packet never walks them.
    pub const LOCAL_POLICY: u32 = 400;

    // Every band holds what can be put in it, and the last one ends in the range.
    const _: () = assert!(MAIN_SPECIFIC < FWMARK);
    const _: () = assert!(FWMARK + MAX_UPLINKS <= INBOUND);
    const _: () = assert!(INBOUND + MAX_UPLINKS <= FROM_UPLINK);
    const _: () = assert!(FROM_UPLINK + MAX_UPLINKS <= LOCAL_POLICY);
    const _: () = assert!(LOCAL_POLICY + MAX_ROUTER_RULES as u32 <= RULE_PRIORITY_SPAN);
}

/// What the host shows of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    /// Administratively up with carrier (IFF_UP and IFF_LOWER_UP).
    pub up: bool,
    /// IPv4 addresses with their prefix lengths, primary first.
    pub addresses: Vec<Ipv4Net>,
    /// Gateway of a default route through this interface, if the host has one
    /// (DHCP client, PPP, the admin).
    pub gateway: Option<Ipv4Addr>,
    /// The far end of the primary address on a point-to-point link (`inet A peer
    /// B/32`, as pppd and LTE modems in raw-IP mode configure it).
    pub peer: Option<Ipv4Addr>,
    /// A default route through this interface without a gateway (`default dev
    /// ppp0`): the link itself is the way out.
    pub default_dev: bool,
}

/// The host's interfaces by name.
pub type Observed = BTreeMap<String, Interface>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("LAN interface {0:?} does not exist; fix `lan` or create the interface")]
    MissingLan(String),
    #[error(
        "interface {interface:?} of uplink {uplink:?} does not exist; fix `uplink.interface` or create the interface"
    )]
    MissingUplink { uplink: String, interface: String },
}

/// Where an uplink's traffic goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Through a gateway on the link (Ethernet, DHCP).
    Via(Ipv4Addr),
    /// Straight into a point-to-point link (PPPoE, LTE raw-IP, WireGuard, GRE):
    /// `default dev <if>`; the peer, when the address names one, is what the
    /// "gateway" probe target means.
    PointToPoint { peer: Option<Ipv4Addr> },
}

impl Hop {
    /// The gateway in a `via`, if any.
    pub fn via(self) -> Option<Ipv4Addr> {
        match self {
            Hop::Via(gateway) => Some(gateway),
            Hop::PointToPoint { .. } => None,
        }
    }

    /// What the "gateway" probe target stands for: the gateway, or the peer.
    pub fn probe_address(self) -> Option<Ipv4Addr> {
        match self {
            Hop::Via(gateway) => Some(gateway),
            Hop::PointToPoint { peer } => peer,
        }
    }
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hop::Via(gateway) => write!(f, "{gateway}"),
            Hop::PointToPoint { peer: Some(peer) } => write!(f, "point-to-point, peer {peer}"),
            Hop::PointToPoint { peer: None } => f.write_str("point-to-point"),
        }
    }
}

/// Why an uplink cannot carry traffic right now, or `Ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready {
        address: Ipv4Net,
        gateway: Hop,
    },
    /// Down, or no carrier: the kernel cannot send through it.
    LinkDown,
    NoAddress,
    NoGateway {
        address: Ipv4Net,
    },
}

impl Readiness {
    /// Why the uplink cannot carry traffic, in words an operator acts on.
    pub fn problem(&self) -> Option<&'static str> {
        match self {
            Readiness::Ready { .. } => None,
            Readiness::LinkDown => Some("the interface is down or has no carrier"),
            Readiness::NoAddress => {
                Some("the interface has no IPv4 address; it carries no traffic until it gets one")
            }
            Readiness::NoGateway { .. } => Some(
                "no gateway: set `gateway` in the config or give the interface a default route",
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkPlan {
    pub name: String,
    /// Index in the datapath's uplink table; decides `table` and `mark` (see `slots`).
    pub slot: u32,
    pub interface: String,
    pub table: u32,
    pub mark: u32,
    pub weight: u32,
    pub tier: u32,
    pub readiness: Readiness,
    /// Ready and not declared dead by health checks.
    pub alive: bool,
    /// Alive, but on a worse tier than the best live one with `failback = "move"`:
    /// its flows move to the best tier, as if it were dead, though it stays probed
    /// and ready to take over.
    pub standby: bool,
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
    /// Contents of the datapath's uplink table, indexed by slot; free slots are
    /// all zero (not alive).
    pub datapath_uplinks: Vec<multiroute_ebpf::Uplink>,
    pub ring: Vec<u32>,
    /// Ifindex of every LAN interface, by name, for the classifier.
    pub lan: Vec<(String, u32)>,
    /// The conntrack marks of inbound symmetry, per ready uplink.
    pub inbound: Vec<nft::InboundMark>,
    /// `[balance] by`, as the datapath reads it (`multiroute_ebpf::balance`).
    pub balance_by: u32,
    /// Policy rules as the classifier matches them.
    pub policy: Policy,
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
                    standby: false,
                })
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        let mut uplinks = uplinks;
        let active = active_tier(&uplinks);
        if config.balance.failback == Failback::Move {
            for uplink in &mut uplinks {
                uplink.standby = uplink.alive && Some(uplink.tier) > active;
            }
        }

        let routes = table_routes(config, observed, &uplinks);
        let rule_uses = policy::uses(&config.rules, &uplinks);
        let rules = rules(config, &uplinks, &rule_uses);
        let policy = policy::datapath(&config.rules, |name| {
            policy::named(&uplinks, name).map(|u| u.slot)
        });
        let main_default = config
            .routing
            .main_default
            .then(|| main_default(&uplinks, active))
            .flatten();
        let mask = config.routing.fwmark_mask;
        let used = uplinks.iter().map(|u| u.slot + 1).max().unwrap_or(0);
        let mut datapath_uplinks = vec![multiroute_ebpf::Uplink::default(); used as usize];
        for u in &uplinks {
            datapath_uplinks[u.slot as usize] = multiroute_ebpf::Uplink {
                mark: u.mark,
                mask,
                alive: u32::from(u.carries()),
                pad: 0,
            };
        }
        let members: Vec<_> = uplinks
            .iter()
            .filter(|u| u.takes_new_flows(active))
            .map(|u| Member {
                index: u.slot,
                name: &u.name,
                weight: u.weight,
            })
            .collect();
        let ring = build_ring(&members, multiroute_ebpf::RING_SIZE);
        let inbound = uplinks
            .iter()
            .filter(|u| matches!(u.readiness, Readiness::Ready { .. }))
            .map(|u| nft::InboundMark {
                interface: u.interface.clone(),
                mark: u.mark | config.numbering().inbound_flag(),
            })
            .collect();
        Ok(Plan {
            uplinks,
            routes,
            rules,
            main_default,
            datapath_uplinks,
            ring,
            lan,
            inbound,
            balance_by: match config.balance.by {
                BalanceBy::Connection => multiroute_ebpf::balance::CONNECTION,
                BalanceBy::Addresses => multiroute_ebpf::balance::ADDRESSES,
                BalanceBy::Source => multiroute_ebpf::balance::SOURCE,
            },
            policy,
            rule_uses,
        })
    }
}

/// The best (lowest) tier with a live, weighted uplink: the one new flows use.
fn active_tier(uplinks: &[UplinkPlan]) -> Option<u32> {
    uplinks
        .iter()
        .filter(|u| u.alive && u.weight > 0)
        .map(|u| u.tier)
        .min()
}

impl UplinkPlan {
    /// May carry flows: alive and not standing by on a backup tier. The datapath
    /// moves the flows of an uplink that does not.
    pub fn carries(&self) -> bool {
        self.alive && !self.standby
    }

    /// In the ring: carries flows, is weighted and on the best live tier.
    pub fn takes_new_flows(&self, active_tier: Option<u32>) -> bool {
        self.carries() && self.weight > 0 && Some(self.tier) == active_tier
    }

    /// The uplink's own address, when it has one.
    pub fn address(&self) -> Option<Ipv4Addr> {
        match self.readiness {
            Readiness::Ready { address, .. } | Readiness::NoGateway { address } => {
                Some(address.addr)
            }
            Readiness::LinkDown | Readiness::NoAddress => None,
        }
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
            .map(ToString::to_string);
        rules.chain(routes).collect()
    }

    /// The uplink called `name`.
    pub fn uplink(&self, name: &str) -> Option<&UplinkPlan> {
        policy::named(&self.uplinks, name)
    }

    /// The tier new flows use: the best one with a live, weighted uplink.
    pub fn active_tier(&self) -> Option<u32> {
        active_tier(&self.uplinks)
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

fn readiness(uplink: &UplinkConfig, iface: &Interface) -> Readiness {
    if !iface.up {
        return Readiness::LinkDown;
    }
    let Some(&address) = iface.addresses.first() else {
        return Readiness::NoAddress;
    };
    let point_to_point = (iface.peer.is_some() || iface.default_dev)
        .then_some(Hop::PointToPoint { peer: iface.peer });
    match uplink
        .gateway
        .or(iface.gateway)
        .map(Hop::Via)
        .or(point_to_point)
    {
        Some(gateway) => Readiness::Ready { address, gateway },
        None => Readiness::NoGateway { address },
    }
}

/// The seed's tables: every table knows loopback, the LAN and every uplink's
/// connected network (with its `src`), and defaults via its own uplink's gateway.
fn table_routes(config: &Config, observed: &Observed, uplinks: &[UplinkPlan]) -> Vec<Route> {
    let mut shared = vec![(
        Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8),
        RouteNext::Dev {
            dev: "lo".into(),
            src: None,
        },
    )];
    for name in &config.lan {
        // No `src` on LAN routes: it would break DNAT (port forwarding), says the seed.
        for net in lan_networks(observed, name) {
            shared.push((
                net,
                RouteNext::Dev {
                    dev: name.clone(),
                    src: None,
                },
            ));
        }
    }
    for uplink in uplinks {
        let (address, peer) = match uplink.readiness {
            Readiness::Ready {
                address,
                gateway: Hop::PointToPoint { peer },
            } => (address, peer),
            Readiness::Ready { address, .. } | Readiness::NoGateway { address } => (address, None),
            Readiness::LinkDown | Readiness::NoAddress => continue,
        };
        // A point-to-point link's connected network is its peer, as the kernel's
        // own route for `inet A peer B/32` says.
        let connected = peer.map_or(address.network(), Ipv4Net::host);
        shared.push((
            connected,
            RouteNext::Dev {
                dev: uplink.interface.clone(),
                src: Some(address.addr),
            },
        ));
    }
    let mut routes = Vec::new();
    for uplink in uplinks {
        let Readiness::Ready { gateway, .. } = uplink.readiness else {
            continue;
        };
        routes.extend(shared.iter().map(|(dst, next)| Route {
            table: uplink.table,
            dst: *dst,
            next: next.clone(),
        }));
        routes.push(Route {
            table: uplink.table,
            dst: Ipv4Net::DEFAULT,
            next: default_next(gateway, &uplink.interface),
        });
    }
    routes
}

fn lan_networks(observed: &Observed, name: &str) -> BTreeSet<Ipv4Net> {
    observed
        .get(name)
        .map(|iface| iface.addresses.iter().map(|a| a.network()).collect())
        .unwrap_or_default()
}

fn rules(config: &Config, uplinks: &[UplinkPlan], rule_uses: &[RuleUse]) -> Vec<Rule> {
    let base = config.routing.rule_priority;
    let mut rules = vec![Rule {
        priority: base + priority::MAIN_SPECIFIC,
        selector: Selector::All,
        table: MAIN_TABLE,
        suppress_prefixlength: Some(0),
    }];
    let ready: Vec<_> = uplinks
        .iter()
        .filter_map(|plan| match plan.readiness {
            Readiness::Ready { address, .. } => Some((plan, address)),
            _ => None,
        })
        .collect();
    let lookup = |priority: u32, selector: Selector, table: u32| Rule {
        priority,
        selector,
        table,
        suppress_prefixlength: None,
    };
    for (plan, _) in &ready {
        rules.push(lookup(
            base + priority::FWMARK + plan.slot,
            Selector::Fwmark {
                mark: plan.mark,
                mask: config.routing.fwmark_mask,
            },
            plan.table,
        ));
    }
    for (plan, _) in &ready {
        rules.push(lookup(
            base + priority::INBOUND + plan.slot,
            Selector::Fwmark {
                mark: plan.mark | config.numbering().inbound_flag(),
                mask: config.routing.fwmark_mask,
            },
            plan.table,
        ));
    }
    for (plan, address) in &ready {
        rules.push(lookup(
            base + priority::FROM_UPLINK + plan.slot,
            Selector::From(Ipv4Net::host(address.addr)),
            plan.table,
        ));
    }
    rules.extend(policy::router_rules(
        &config.rules,
        rule_uses,
        uplinks,
        base + priority::LOCAL_POLICY,
    ));
    rules
}

/// A table's default: via the gateway, or straight into a point-to-point link.
fn default_next(hop: Hop, dev: &str) -> RouteNext {
    match hop {
        Hop::Via(gateway) => RouteNext::Gateway {
            gateway,
            dev: dev.to_owned(),
        },
        Hop::PointToPoint { .. } => RouteNext::Dev {
            dev: dev.to_owned(),
            src: None,
        },
    }
}

/// The seed's `default scope global nexthop via … weight …` over the live, weighted
/// uplinks, for traffic the router itself originates.
fn main_default(uplinks: &[UplinkPlan], active_tier: Option<u32>) -> Option<Route> {
    let nexthops: Vec<_> = uplinks
        .iter()
        .filter(|u| u.takes_new_flows(active_tier))
        .filter_map(|u| match u.readiness {
            Readiness::Ready { gateway, .. } => Some(Nexthop {
                gateway: gateway.via(),
                dev: u.interface.clone(),
                weight: u.weight,
            }),
            _ => None,
        })
        .collect();
    let next = match nexthops.as_slice() {
        [] => return None,
        [only] => match only.gateway {
            Some(gateway) => RouteNext::Gateway {
                gateway,
                dev: only.dev.clone(),
            },
            None => RouteNext::Dev {
                dev: only.dev.clone(),
                src: None,
            },
        },
        _ => RouteNext::Multipath(nexthops),
    };
    Some(Route {
        table: MAIN_TABLE,
        dst: Ipv4Net::DEFAULT,
        next,
    })
}

#[cfg(test)]
mod tests;
