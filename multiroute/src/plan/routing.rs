//! The routing side of the plan, the seed's recipe per family: each uplink's table
//! (the LAN, every uplink's connected network with its `src`, loopback, its own
//! default), the rules that lead into the tables in their priority bands, and the
//! main table's weighted multipath default for the router's own traffic.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use super::{
    model::{MAIN_TABLE, Nexthop, Route, RouteNext, Rule, Selector},
    observed::Observed,
    policy::{self, RuleUse},
    priority,
    uplink::{Hop, UplinkPlan, active_tier},
};
use crate::{
    config::Config,
    net::{Family, IpNet, Ipv4Net, Ipv6Net, PerFamily},
};

/// The routing side of the plan: what the kernel's tables and rules hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingPlan {
    /// Routes of the per-uplink tables.
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    /// The weighted multipath default for the main table, per family, when
    /// `main_default` is on and at least one uplink of the family is alive and
    /// weighted.
    pub main_default: PerFamily<Option<Route>>,
}

/// `direct_fits`: per family, whether the main table's specific destinations fit
/// the datapath (see `datapath::direct`); where they do not, the main table's
/// lookup comes before the marks.
pub(super) fn plan(
    config: &Config,
    observed: &Observed,
    uplinks: &[UplinkPlan],
    rule_uses: &[RuleUse],
    direct_fits: PerFamily<bool>,
) -> RoutingPlan {
    RoutingPlan {
        routes: Family::ALL
            .into_iter()
            .flat_map(|family| table_routes(config, observed, uplinks, family))
            .collect(),
        rules: Family::ALL
            .into_iter()
            .flat_map(|family| rules(config, uplinks, rule_uses, family, !direct_fits[family]))
            .collect(),
        main_default: PerFamily::from_fn(|family| {
            config
                .routing
                .main_default
                .then(|| main_default(uplinks, family))
                .flatten()
        }),
    }
}

impl RoutingPlan {
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

/// The seed's tables, per family: every table knows the LAN and every uplink's
/// connected network (with its `src`), loopback for IPv4, and defaults via its
/// own uplink's gateway.
fn table_routes(
    config: &Config,
    observed: &Observed,
    uplinks: &[UplinkPlan],
    family: Family,
) -> Vec<Route> {
    let dev = |name: &str, src: Option<IpAddr>| RouteNext::Dev {
        dev: name.to_owned(),
        src,
    };
    let mut shared = Vec::new();
    if family == Family::V4 {
        shared.push((
            IpNet::V4(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8)),
            dev("lo", None),
        ));
    }
    for name in &config.lan {
        // No `src` on LAN routes: it would break DNAT (port forwarding), says the seed.
        for net in lan_networks(observed, name, family) {
            shared.push((net, dev(name, None)));
        }
    }
    for uplink in uplinks {
        if let Some(side) = uplink.side(family) {
            shared.push((side.connected, dev(&uplink.interface, Some(side.address))));
        }
    }
    let mut routes = Vec::new();
    for uplink in uplinks {
        let Some(hop) = uplink.side(family).and_then(|side| side.hop) else {
            continue;
        };
        routes.extend(shared.iter().map(|(dst, next)| Route {
            table: uplink.table,
            dst: *dst,
            next: next.clone(),
        }));
        routes.push(Route {
            table: uplink.table,
            dst: default_route(family),
            next: default_next(hop, &uplink.interface),
        });
    }
    routes
}

pub(super) fn default_route(family: Family) -> IpNet {
    match family {
        Family::V4 => IpNet::V4(Ipv4Net::DEFAULT),
        Family::V6 => IpNet::V6(Ipv6Net::DEFAULT),
    }
}

fn lan_networks(observed: &Observed, name: &str, family: Family) -> BTreeSet<IpNet> {
    observed.get(name).map_or_else(BTreeSet::new, |iface| {
        iface.addresses[family]
            .iter()
            .map(|a| a.network())
            .collect()
    })
}

/// `main_first`: the main table's specific routes do not fit the datapath (see
/// [`direct_destinations`]), so its lookup comes before the marks.
fn rules(
    config: &Config,
    uplinks: &[UplinkPlan],
    rule_uses: &[RuleUse],
    family: Family,
    main_first: bool,
) -> Vec<Rule> {
    let base = config.routing.rule_priority;
    let ready: Vec<_> = uplinks
        .iter()
        .filter_map(|plan| {
            let side = plan.side(family)?;
            side.hop.map(|_| (plan, side.address))
        })
        .collect();
    // No uplink speaks IPv6: `ip -6 rule` is left as it was.
    if family == Family::V6 && ready.is_empty() {
        return Vec::new();
    }
    let main = |priority: u32| Rule {
        family,
        priority: base + priority,
        selector: Selector::All,
        table: MAIN_TABLE,
        suppress_prefixlength: Some(0),
    };
    let lookup = |priority: u32, selector: Selector, table: u32| Rule {
        family,
        priority,
        selector,
        table,
        suppress_prefixlength: None,
    };
    let mut rules = Vec::new();
    if main_first {
        rules.push(main(priority::MAIN_FIRST));
    }
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
    if !main_first {
        rules.push(main(priority::MAIN_SPECIFIC));
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
            Selector::From(IpNet::host(*address)),
            plan.table,
        ));
    }
    rules.extend(
        policy::router_rules(
            &config.rules,
            rule_uses,
            uplinks,
            base + priority::LOCAL_POLICY,
        )
        .into_iter()
        .filter(|rule| rule.family == family),
    );
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
/// uplinks of the best tier of `family`, for traffic the router itself originates.
fn main_default(uplinks: &[UplinkPlan], family: Family) -> Option<Route> {
    let active = active_tier(uplinks, family);
    let nexthops: Vec<_> = uplinks
        .iter()
        .filter(|u| u.takes_new_flows(family, active))
        .filter_map(|u| {
            let hop = u.side(family)?.hop?;
            Some(Nexthop {
                gateway: hop.via(),
                dev: u.interface.clone(),
                weight: u.weight,
            })
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
        dst: default_route(family),
        next,
    })
}
