//! Reading the host, never changing it: its interfaces, their addresses and the
//! gateways of the default routes through them, and the main table's specific
//! destinations, as the plan takes them ([`Observed`]); whether its own nftables
//! ruleset source-NATs each uplink ([`nat`]).
pub mod host;
pub mod link;
pub mod nat;

use std::{
    cmp::Reverse,
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkFlags},
    route::{RouteMessage, RouteProtocol},
};

use crate::{
    net::{Family, IpNet, Ipv4Net, Ipv6Net},
    netlink::{
        Netlink, NetlinkError, USER_HZ, is_own_route, parse_route, route_destination,
        route_expires, route_metric, route_table,
    },
    plan::{Interface, MAIN_TABLE, Observed, RouteNext, RouteOrigin},
};

/// Interfaces with their addresses and the gateway of any default route
/// through them (in the main table, or saved away by multiroute in
/// `saved_table`), and the main table's specific destinations.
pub async fn host(nl: &Netlink, saved_table: u32) -> Result<Observed, NetlinkError> {
    let mut observed = interfaces(nl).await?;
    for msg in nl.addresses().await? {
        add_address(&mut observed, &msg);
    }
    let routes = nl.routes().await?;
    for route in &routes {
        if route_table(route) == MAIN_TABLE
            && !is_own_route(route)
            && let Some(dst) = route_destination(route).filter(|dst| !dst.is_default())
        {
            observed.main_routes.insert(dst);
        }
    }
    learn_gateways(&mut observed, &routes, saved_table);
    Ok(observed)
}

/// Every link by name, with whether it can send (up, with carrier).
async fn interfaces(nl: &Netlink) -> Result<Observed, NetlinkError> {
    let mut observed = Observed::new();
    for link in nl.links().await? {
        let name = link.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        });
        if let Some(name) = name {
            observed.insert(
                name,
                Interface {
                    index: link.header.index,
                    up: link
                        .header
                        .flags
                        .contains(LinkFlags::Up | LinkFlags::LowerUp),
                    ..Interface::default()
                },
            );
        }
    }
    Ok(observed)
}

/// One address onto its interface: a global IPv6 one, or an IPv4 one (with the
/// peer of a point-to-point link).
fn add_address(observed: &mut Observed, msg: &AddressMessage) {
    let local = msg.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Local(IpAddr::V4(addr)) => Some(*addr),
        _ => None,
    });
    // IFA_ADDRESS is the far end on a point-to-point link, the address itself
    // otherwise.
    let other_end = msg.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Address(IpAddr::V4(addr)) => Some(*addr),
        _ => None,
    });
    let Some(iface) = interface_mut(observed, msg.header.index) else {
        return;
    };
    if let Some(addr) = global_ipv6(msg) {
        iface
            .addresses
            .v6
            .push(IpNet::V6(Ipv6Net::new(addr, msg.header.prefix_len)));
    }
    if let Some(addr) = local.or(other_end) {
        if iface.addresses.v4.is_empty() {
            iface.peer = other_end.filter(|peer| Some(*peer) != local && local.is_some());
        }
        iface
            .addresses
            .v4
            .push(IpNet::V4(Ipv4Net::new(addr, msg.header.prefix_len)));
    }
}

/// Each interface's gateway per family, from the best-ranked foreign default
/// through it (see [`DefaultRank`]), its gateway-less defaults (point-to-point),
/// and when the soonest of those defaults runs out.
fn learn_gateways(observed: &mut Observed, routes: &[RouteMessage], saved_table: u32) {
    let mut gateways: BTreeMap<(String, Family), (DefaultRank, IpAddr)> = BTreeMap::new();
    for route in routes {
        let table = route_table(route);
        if is_own_route(route) || (table != MAIN_TABLE && table != saved_table) {
            continue;
        }
        let Some(parsed) = parse_route(route, observed).filter(|r| r.dst.is_default()) else {
            continue;
        };
        let Some(rank) = DefaultRank::of(route, table == saved_table) else {
            continue;
        };
        if let Some(left) = rank.expires_in() {
            observed.default_expiry = Some(observed.default_expiry.map_or(left, |d| d.min(left)));
        }
        let hops = match parsed.next {
            RouteNext::Gateway { gateway, dev } => vec![(Some(gateway), dev)],
            RouteNext::Multipath(hops) => hops.into_iter().map(|h| (h.gateway, h.dev)).collect(),
            RouteNext::Dev { dev, .. } => vec![(None, dev)],
        };
        let origin = match route.header.protocol {
            RouteProtocol::Dhcp => RouteOrigin::Dhcp,
            RouteProtocol::Ra => RouteOrigin::RouterAdvertisement,
            _ => RouteOrigin::Other,
        };
        let family = parsed.dst.family();
        for (gateway, dev) in hops {
            if let Some(iface) = observed.get_mut(&dev) {
                iface.default_origin[family].get_or_insert(origin);
            }
            match gateway {
                Some(gateway) => {
                    let best = gateways
                        .entry((dev, Family::of(gateway)))
                        .or_insert((rank, gateway));
                    if rank < best.0 {
                        *best = (rank, gateway);
                    }
                }
                None => {
                    if let Some(iface) = observed.get_mut(&dev) {
                        iface.default_dev[family] = true;
                    }
                }
            }
        }
    }
    for ((dev, family), (_, gateway)) in gateways {
        if let Some(iface) = observed.get_mut(&dev) {
            iface.gateway[family] = Some(gateway);
        }
    }
}

fn interface_mut(observed: &mut Observed, index: u32) -> Option<&mut Interface> {
    observed.values_mut().find(|iface| iface.index == index)
}

/// A global IPv6 address of an address message, unless it is still being checked
/// for duplicates (or failed that check): the kernel will not send from it yet.
fn global_ipv6(msg: &AddressMessage) -> Option<Ipv6Addr> {
    if msg.header.scope != AddressScope::Universe {
        return None;
    }
    let unusable = AddressFlags::Tentative | AddressFlags::Dadfailed;
    let flagged =
        msg.attributes.iter().any(
            |attr| matches!(attr, AddressAttribute::Flags(flags) if flags.intersects(unusable)),
        ) || msg
            .header
            .flags
            .intersects(AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed);
    if flagged {
        return None;
    }
    msg.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Address(IpAddr::V6(addr)) => Some(*addr),
        _ => None,
    })
}

/// How a foreign default route through an interface ranks as the source of its
/// gateway, best first: the one in the main table (a DHCP client's newest, before
/// multiroute parks it), the lowest metric (the kernel's choice), then the longest
/// lifetime (an ISP's new router before the old one's adverts run out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct DefaultRank {
    parked: bool,
    metric: u32,
    lifetime: Reverse<Lifetime>,
}

/// Ordered shortest first, so `Reverse` ranks permanent routes, then the longest-lived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Lifetime {
    Expiring(Duration),
    Permanent,
}

impl DefaultRank {
    /// `None` for a default whose lifetime has run out: the kernel no longer uses
    /// it, though it deletes it only at its next garbage collection (up to 30 s on).
    fn of(route: &RouteMessage, parked: bool) -> Option<Self> {
        let lifetime = match route_expires(route) {
            None => Lifetime::Permanent,
            Some(ticks) if ticks > 0 => {
                Lifetime::Expiring(Duration::from_millis(ticks as u64 * 1000 / USER_HZ))
            }
            Some(_) => return None,
        };
        Some(Self {
            parked,
            metric: route_metric(route),
            lifetime: Reverse(lifetime),
        })
    }

    fn expires_in(&self) -> Option<Duration> {
        match self.lifetime.0 {
            Lifetime::Expiring(left) => Some(left),
            Lifetime::Permanent => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_default_route as default_route;

    #[test]
    fn a_gateway_comes_from_the_main_table_then_the_lowest_metric_then_the_longest_lifetime() {
        let rank = |metric, ticks, parked| DefaultRank::of(&default_route(metric, ticks), parked);
        // An ISP's new router (refreshed: 29 s left) before its old one (8 s left).
        assert!(rank(1024, Some(2900), false) < rank(1024, Some(800), false));
        assert!(rank(1024, None, false) < rank(1024, Some(2900), false));
        assert!(rank(1002, None, false) < rank(1024, None, false));
        // A DHCP client's fresh default in main before the copy parked for it.
        assert!(rank(2000, Some(100), false) < rank(0, None, true));
        // Run out (negative ticks): the kernel no longer uses it.
        assert_eq!(rank(1024, Some(-5), false), None);
        assert_eq!(
            rank(1024, Some(2950), false).and_then(|r| r.expires_in()),
            Some(Duration::from_millis(29_500))
        );
        assert_eq!(rank(1024, None, false).and_then(|r| r.expires_in()), None);
    }
}
