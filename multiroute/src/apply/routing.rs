//! Brings the kernel's routes and rules to the plan, idempotently: what multiroute
//! owns (protocol [`crate::netlink::PROTOCOL`]) and the plan does not want is removed, what is
//! missing is added, nothing else is touched. Multiroute's multipath default goes
//! into the main table at [`MAIN_DEFAULT_METRIC`], ahead of the defaults other
//! programs keep there (RA, DHCP clients), which stay where their owner refreshes
//! and expires them; only a default that would collide with it (same metric) is
//! parked in table `table_base` meanwhile, so the kernel itself remembers it
//! across a crash.
use std::collections::BTreeSet;

use netlink_packet_route::{AddressFamily, route::RouteMessage};
use tracing::{debug, info};

use crate::netlink::{
    Netlink, NetlinkError, is_own_route, is_own_rule, parse_route, parse_rule, route_expires_secs,
    route_metric, route_table, rule_priority,
};
use crate::{
    config::{Config, RULE_PRIORITY_SPAN},
    net::Family,
    plan::{MAIN_DEFAULT_METRIC, MAIN_TABLE, Observed, RoutingPlan, Rule},
};

/// Tables multiroute may own: the saved-default table and one per possible uplink.
fn own_tables(config: &Config) -> std::ops::RangeInclusive<u32> {
    let base = config.routing.table_base;
    base..=base + multiroute_ebpf::MAX_UPLINKS
}

fn own_priorities(config: &Config) -> std::ops::Range<u32> {
    let base = config.routing.rule_priority;
    base..base + RULE_PRIORITY_SPAN
}

/// Tables, rules and the main default. Returns how many of the tables' routes and
/// rules had to be added or removed.
pub async fn apply(
    nl: &Netlink,
    config: &Config,
    plan: &RoutingPlan,
    observed: &Observed,
) -> Result<usize, NetlinkError> {
    let changed = sync_tables(nl, config, plan, observed).await?
        + sync_rules(nl, config, &plan.rules).await?;
    sync_main_default(nl, config, plan, observed).await?;
    Ok(changed)
}

/// The main table's defaults, per family: multiroute's weighted multipath route
/// while the plan has one (the original parked in table `table_base`), the
/// original otherwise.
pub async fn sync_main_default(
    nl: &Netlink,
    config: &Config,
    plan: &RoutingPlan,
    observed: &Observed,
) -> Result<(), NetlinkError> {
    // One dump serves both families: what one family's steps write, the other's
    // do not read.
    let routes = nl.routes().await?;
    for (family, wanted) in plan.main_default.iter() {
        match wanted {
            Some(route) => {
                park_main_defaults(nl, config, family, &routes).await?;
                nl.replace_route(route, observed).await?;
                // Parking touched no own route, and the replace only the one at
                // its metric: the dump still shows the stale ones.
                remove_own_defaults(nl, family, &routes, |metric| metric != route.metric()).await?;
            }
            None => {
                restore_main_defaults(nl, config, family, &routes).await?;
            }
        }
    }
    Ok(())
}

/// Removes every rule and route multiroute owns and puts the main default back.
pub async fn remove(nl: &Netlink, config: &Config) -> Result<usize, NetlinkError> {
    let mut removed = 0;
    for message in nl.rules().await? {
        if is_own_rule(&message) && own_priorities(config).contains(&rule_priority(&message)) {
            nl.delete_rule(message).await?;
            removed += 1;
        }
    }
    for message in nl.routes().await? {
        let table = route_table(&message);
        if is_own_route(&message) && (table == MAIN_TABLE || own_tables(config).contains(&table)) {
            nl.delete_route(message).await?;
            removed += 1;
        }
    }
    let routes = nl.routes().await?;
    for family in Family::ALL {
        removed += restore_main_defaults(nl, config, family, &routes).await?;
    }
    Ok(removed)
}

/// The per-uplink tables. Adds (replaces) what is missing before removing what is
/// stale, so a table's default never disappears while it changes gateway. A stale
/// route the replace already overwrote is gone by then, which the delete takes as
/// success. Returns how many routes had to be added or removed.
pub async fn sync_tables(
    nl: &Netlink,
    config: &Config,
    plan: &RoutingPlan,
    observed: &Observed,
) -> Result<usize, NetlinkError> {
    let wanted: BTreeSet<_> = plan.routes.iter().collect();
    let mut present = BTreeSet::new();
    let mut stale = Vec::new();
    for message in nl.routes().await? {
        let table = route_table(&message);
        if !is_own_route(&message)
            || table == config.numbering().saved_default_table()
            || !own_tables(config).contains(&table)
        {
            continue;
        }
        match parse_route(&message, observed) {
            Some(route) if wanted.contains(&route) => {
                present.insert(route);
            }
            _ => stale.push(message),
        }
    }
    let mut changed = 0;
    for route in wanted {
        if !present.contains(route) {
            debug!(%route, "adding route");
            nl.replace_route(route, observed).await?;
            changed += 1;
        }
    }
    for message in stale {
        debug!(table = route_table(&message), "removing stale route");
        nl.delete_route(message).await?;
        changed += 1;
    }
    Ok(changed)
}

/// Brings multiroute's rules to `rules`. Adds what is missing before removing what
/// is stale: a rule that changes (a new address, a new priority) never leaves a
/// gap in which its traffic would fall through to another uplink.
pub async fn sync_rules(
    nl: &Netlink,
    config: &Config,
    rules: &[Rule],
) -> Result<usize, NetlinkError> {
    let wanted: BTreeSet<_> = rules.iter().collect();
    let mut present = BTreeSet::new();
    let mut stale = Vec::new();
    for message in nl.rules().await? {
        if !is_own_rule(&message) || !own_priorities(config).contains(&rule_priority(&message)) {
            continue;
        }
        let rule = parse_rule(&message);
        if wanted.contains(&rule) {
            present.insert(rule);
        } else {
            stale.push((rule, message));
        }
    }
    let mut changed = 0;
    for rule in wanted {
        if !present.contains(rule) {
            debug!(%rule, "adding rule");
            nl.add_rule(rule).await?;
            changed += 1;
        }
    }
    for (rule, message) in stale {
        debug!(%rule, "removing stale rule");
        nl.delete_rule(message).await?;
        changed += 1;
    }
    Ok(changed)
}

/// A default route of `family` (`ip route` and `ip -6 route` defaults are apart).
fn is_default(message: &RouteMessage, family: Family) -> bool {
    let of_family = match family {
        Family::V4 => message.header.address_family == AddressFamily::Inet,
        Family::V6 => message.header.address_family == AddressFamily::Inet6,
    };
    of_family && message.header.destination_prefix_length == 0
}

/// Moves the main table's foreign default routes that multiroute's would replace
/// (of its metric or below) into the saved table. Copy first, delete second: a
/// crash in between leaves both, and the restore is idempotent. A new default
/// through an interface (a DHCP renew, a PPP reconnect) replaces the one saved for
/// that interface, so the saved table always holds the latest gateway.
async fn park_main_defaults(
    nl: &Netlink,
    config: &Config,
    family: Family,
    routes: &[RouteMessage],
) -> Result<(), NetlinkError> {
    let saved = config.numbering().saved_default_table();
    for message in routes {
        if route_table(message) == MAIN_TABLE
            && is_default(message, family)
            && !is_own_route(message)
            && route_metric(message) <= MAIN_DEFAULT_METRIC
        {
            info!(
                "parking the main table's {} default route in table {saved}",
                family.name()
            );
            for old in routes {
                if route_table(old) == saved
                    && is_default(old, family)
                    && route_oif(old).is_some()
                    && route_oif(old) == route_oif(message)
                {
                    nl.delete_route(old.clone()).await?;
                }
            }
            nl.add_raw_route(scrub(message), saved).await?;
            nl.delete_route(message.clone()).await?;
        }
    }
    Ok(())
}

fn route_oif(message: &RouteMessage) -> Option<u32> {
    message.attributes.iter().find_map(|attr| match attr {
        netlink_packet_route::route::RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

/// Deletes multiroute's own main-table defaults of `family` in `routes` whose
/// metric `stale` picks (all of them, or one a previous release left at another
/// metric).
async fn remove_own_defaults(
    nl: &Netlink,
    family: Family,
    routes: &[RouteMessage],
    stale: impl Fn(u32) -> bool,
) -> Result<(), NetlinkError> {
    for message in routes {
        if route_table(message) == MAIN_TABLE
            && is_default(message, family)
            && is_own_route(message)
            && stale(route_metric(message))
        {
            nl.delete_route(message.clone()).await?;
        }
    }
    Ok(())
}

/// Puts parked default routes back into the main table after removing multiroute's.
async fn restore_main_defaults(
    nl: &Netlink,
    config: &Config,
    family: Family,
    routes: &[RouteMessage],
) -> Result<usize, NetlinkError> {
    remove_own_defaults(nl, family, routes, |_| true).await?;
    let mut restored = 0;
    for message in routes {
        if route_table(message) == config.numbering().saved_default_table()
            && is_default(message, family)
        {
            info!(
                "restoring the main table's original {} default route",
                family.name()
            );
            nl.add_raw_route(scrub(message), MAIN_TABLE).await?;
            nl.delete_route(message.clone()).await?;
            restored += 1;
        }
    }
    Ok(restored)
}

/// A dumped route reduced to what defines it, so it can be added again elsewhere.
/// An expiring route (RA-learned) keeps the lifetime it has left: a copy must not
/// outlive what the kernel would have honoured.
fn scrub(message: &RouteMessage) -> RouteMessage {
    use netlink_packet_route::route::RouteAttribute as A;
    let mut copy = message.clone();
    let expires = route_expires_secs(message);
    copy.header.flags = Default::default();
    copy.attributes.retain(|attr| {
        matches!(
            attr,
            A::Destination(_)
                | A::Gateway(_)
                | A::Oif(_)
                | A::PrefSource(_)
                | A::Priority(_)
                | A::MultiPath(_)
                | A::Metrics(_)
        )
    });
    if let Some(A::MultiPath(hops)) = copy
        .attributes
        .iter_mut()
        .find(|a| matches!(a, A::MultiPath(_)))
    {
        for hop in hops {
            hop.flags = Default::default();
        }
    }
    copy.attributes.extend(expires.map(A::Expires));
    copy
}
