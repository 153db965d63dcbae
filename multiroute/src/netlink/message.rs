//! Netlink messages to and from domain terms: a [`Route`] or [`Rule`] becomes the
//! message that adds it, a dumped message becomes a [`Route`] or [`Rule`] again (for
//! those multiroute makes), and the attributes the rest of the code asks about.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::{
    AddressFamily, IpProtocol,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol,
        RouteScope, RouteType,
    },
    rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange},
};

use super::{LOOPBACK, NetlinkError, PROTOCOL};
use crate::{
    config::PortRange,
    net::{Family, IpNet, Ipv4Net, Ipv6Net},
    plan::{LocalMatch, Nexthop, Observed, Route, RouteNext, Rule, Selector},
};

fn interface_name(observed: &Observed, index: u32) -> Option<String> {
    observed
        .iter()
        .find(|(_, iface)| iface.index == index)
        .map(|(name, _)| name.clone())
}

fn interface_index(observed: &Observed, dev: &str, route: &Route) -> Result<u32, NetlinkError> {
    observed
        .get(dev)
        .map(|iface| iface.index)
        .ok_or_else(|| NetlinkError::UnknownDevice {
            route: route.to_string(),
            dev: dev.to_owned(),
        })
}

pub fn route_table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

pub fn is_own_route(message: &RouteMessage) -> bool {
    message.header.protocol == RouteProtocol::Other(PROTOCOL)
}

pub fn is_own_rule(message: &RuleMessage) -> bool {
    message.attributes.iter().any(|attr| {
        matches!(
            attr,
            RuleAttribute::Protocol(RouteProtocol::Other(PROTOCOL))
        )
    })
}

pub fn rule_priority(message: &RuleMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RuleAttribute::Priority(priority) => Some(*priority),
            _ => None,
        })
        .unwrap_or(0)
}

pub(crate) fn set_table(message: &mut RouteMessage, table: u32) {
    message.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    message
        .attributes
        .retain(|attr| !matches!(attr, RouteAttribute::Table(_)));
    message.attributes.push(RouteAttribute::Table(table));
}

fn address(addr: IpAddr) -> RouteAddress {
    match addr {
        IpAddr::V4(addr) => RouteAddress::Inet(addr),
        IpAddr::V6(addr) => RouteAddress::Inet6(addr),
    }
}

fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn route_address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(addr) => Some(IpAddr::V4(*addr)),
        RouteAddress::Inet6(addr) => Some(IpAddr::V6(*addr)),
        _ => None,
    }
}

/// Builds the netlink message for one of multiroute's routes.
pub(crate) fn route_message(
    route: &Route,
    observed: &Observed,
) -> Result<RouteMessage, NetlinkError> {
    let mut message = RouteMessage::default();
    message.header.address_family = address_family(route.dst.family());
    message.header.destination_prefix_length = route.dst.prefix_len();
    message.header.protocol = RouteProtocol::Other(PROTOCOL);
    message.header.kind = RouteType::Unicast;
    if !route.dst.is_default() {
        message
            .attributes
            .push(RouteAttribute::Destination(address(route.dst.addr())));
    }
    match &route.next {
        RouteNext::Dev { dev, src } => {
            message.header.scope = RouteScope::Link;
            message
                .attributes
                .push(RouteAttribute::Oif(interface_index(observed, dev, route)?));
            if let Some(src) = src {
                message
                    .attributes
                    .push(RouteAttribute::PrefSource(address(*src)));
            }
        }
        RouteNext::Gateway { gateway, dev } => {
            message.header.scope = RouteScope::Universe;
            message
                .attributes
                .push(RouteAttribute::Gateway(address(*gateway)));
            message
                .attributes
                .push(RouteAttribute::Oif(interface_index(observed, dev, route)?));
        }
        RouteNext::Multipath(hops) => {
            message.header.scope = RouteScope::Universe;
            let hops = hops
                .iter()
                .map(|hop| {
                    let mut next = RouteNextHop::default();
                    // The kernel stores weight - 1 in rtnh_hops.
                    next.hops = (hop.weight.clamp(1, 256) - 1) as u8;
                    next.interface_index = interface_index(observed, &hop.dev, route)?;
                    next.attributes = hop
                        .gateway
                        .map(|gateway| RouteAttribute::Gateway(address(gateway)))
                        .into_iter()
                        .collect();
                    Ok(next)
                })
                .collect::<Result<Vec<_>, NetlinkError>>()?;
            message.attributes.push(RouteAttribute::MultiPath(hops));
        }
    }
    if route.metric() != 0 {
        message
            .attributes
            .push(RouteAttribute::Priority(route.metric()));
    }
    set_table(&mut message, route.table);
    Ok(message)
}

/// Clock ticks per second in `RTA_CACHEINFO` (the kernel's `USER_HZ`).
pub(crate) const USER_HZ: u64 = 100;

/// Lifetime left of a route that expires (RA-learned), in clock ticks; negative
/// once it has run out.
pub(crate) fn route_expires(route: &RouteMessage) -> Option<i32> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::CacheInfo(info) if info.expires != 0 => Some(info.expires as i32),
        _ => None,
    })
}

/// Whole seconds left of an expiring route that has not run out yet (`RTA_EXPIRES`
/// takes seconds).
pub fn route_expires_secs(route: &RouteMessage) -> Option<u32> {
    route_expires(route)
        .filter(|ticks| *ticks > 0)
        .map(|ticks| (ticks as u64).div_ceil(USER_HZ) as u32)
}

pub fn route_metric(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Priority(metric) => Some(*metric),
            _ => None,
        })
        .unwrap_or(0)
}

/// A route's destination prefix, whatever its type.
pub(crate) fn route_destination(message: &RouteMessage) -> Option<IpNet> {
    let family = match message.header.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    let dst = message.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Destination(addr) => route_address(addr),
        _ => None,
    });
    let prefix_len = message.header.destination_prefix_length;
    match (family, dst) {
        (Family::V4, Some(IpAddr::V4(addr))) => Some(IpNet::V4(Ipv4Net::new(addr, prefix_len))),
        (Family::V4, None) => Some(IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, prefix_len))),
        (Family::V6, Some(IpAddr::V6(addr))) => Some(IpNet::V6(Ipv6Net::new(addr, prefix_len))),
        (Family::V6, None) => Some(IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, prefix_len))),
        _ => None,
    }
}

/// Reads a kernel route back into domain terms; `None` for shapes multiroute never
/// makes (blackhole, local, broadcast, routes through unknown interfaces).
pub fn parse_route(message: &RouteMessage, observed: &Observed) -> Option<Route> {
    if message.header.kind != RouteType::Unicast {
        return None;
    }
    let dst = route_destination(message)?;
    let (mut gateway, mut oif, mut src, mut hops) = (None, None, None, None);
    for attr in &message.attributes {
        match attr {
            RouteAttribute::Gateway(addr) => gateway = route_address(addr),
            RouteAttribute::PrefSource(addr) => src = route_address(addr),
            RouteAttribute::Oif(index) => oif = interface_name(observed, *index),
            RouteAttribute::MultiPath(list) => hops = Some(list),
            _ => {}
        }
    }
    let next = match (hops, gateway, oif) {
        (Some(list), _, _) => RouteNext::Multipath(
            list.iter()
                .map(|hop| {
                    let gateway = hop.attributes.iter().find_map(|attr| match attr {
                        RouteAttribute::Gateway(addr) => route_address(addr),
                        _ => None,
                    });
                    Some(Nexthop {
                        gateway,
                        dev: interface_name(observed, hop.interface_index)?,
                        weight: u32::from(hop.hops) + 1,
                    })
                })
                .collect::<Option<Vec<_>>>()?,
        ),
        (None, Some(gateway), Some(dev)) => RouteNext::Gateway { gateway, dev },
        (None, None, Some(dev)) => RouteNext::Dev { dev, src },
        _ => return None,
    };
    Some(Route {
        table: route_table(message),
        dst,
        next,
    })
}

pub(crate) fn rule_message(rule: &Rule) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = address_family(rule.family);
    message.header.action = RuleAction::ToTable;
    message.header.table = u8::try_from(rule.table).unwrap_or(0);
    let attrs = &mut message.attributes;
    attrs.push(RuleAttribute::Priority(rule.priority));
    attrs.push(RuleAttribute::Table(rule.table));
    attrs.push(RuleAttribute::Protocol(RouteProtocol::Other(PROTOCOL)));
    let mut from = |net: IpNet, attrs: &mut Vec<RuleAttribute>| {
        message.header.src_len = net.prefix_len();
        attrs.push(RuleAttribute::Source(net.addr()));
    };
    match &rule.selector {
        Selector::All => {}
        Selector::From(net) => from(*net, attrs),
        Selector::To(net) => {
            message.header.dst_len = net.prefix_len();
            attrs.push(RuleAttribute::Destination(net.addr()));
        }
        Selector::Fwmark { mark, mask } => {
            attrs.push(RuleAttribute::FwMark(*mark));
            attrs.push(RuleAttribute::FwMask(*mask));
        }
        Selector::Local(matched) => {
            attrs.push(RuleAttribute::Iifname(LOOPBACK.into()));
            if let Some(net) = matched.from {
                from(net, attrs);
            }
            if let Some(net) = matched.to {
                message.header.dst_len = net.prefix_len();
                attrs.push(RuleAttribute::Destination(net.addr()));
            }
            if let Some(proto) = matched.proto {
                attrs.push(RuleAttribute::IpProtocol(IpProtocol::from(proto)));
            }
            let range = |r: PortRange| RulePortRange {
                start: r.first,
                end: r.last,
            };
            if let Some(sport) = matched.sport {
                attrs.push(RuleAttribute::SourcePortRange(range(sport)));
            }
            if let Some(dport) = matched.dport {
                attrs.push(RuleAttribute::DestinationPortRange(range(dport)));
            }
        }
    }
    if let Some(len) = rule.suppress_prefixlength {
        attrs.push(RuleAttribute::SuppressPrefixLen(u32::from(len)));
    }
    message
}

/// Reads a kernel rule back into domain terms.
pub fn parse_rule(message: &RuleMessage) -> Rule {
    let mut rule = Rule {
        family: match message.header.family {
            AddressFamily::Inet6 => Family::V6,
            _ => Family::V4,
        },
        priority: 0,
        selector: Selector::All,
        table: u32::from(message.header.table),
        suppress_prefixlength: None,
    };
    let (mut mark, mut mask) = (None, u32::MAX);
    let (mut from, mut to) = (None, None);
    let mut local = false;
    let mut matched = LocalMatch {
        from: None,
        to: None,
        proto: None,
        sport: None,
        dport: None,
    };
    let range = |r: &RulePortRange| PortRange {
        first: r.start,
        last: r.end,
    };
    for attr in &message.attributes {
        match attr {
            RuleAttribute::Priority(priority) => rule.priority = *priority,
            RuleAttribute::Table(table) => rule.table = *table,
            RuleAttribute::Source(addr) => {
                from = Some(net_of(*addr, message.header.src_len));
            }
            RuleAttribute::Destination(addr) => {
                to = Some(net_of(*addr, message.header.dst_len));
            }
            RuleAttribute::Iifname(name) => local = name == LOOPBACK,
            RuleAttribute::IpProtocol(proto) => matched.proto = Some(u8::from(*proto)),
            RuleAttribute::SourcePortRange(r) => matched.sport = Some(range(r)),
            RuleAttribute::DestinationPortRange(r) => matched.dport = Some(range(r)),
            RuleAttribute::FwMark(value) => mark = Some(*value),
            RuleAttribute::FwMask(value) => mask = *value,
            // The kernel reports "no suppression" as u32::MAX.
            RuleAttribute::SuppressPrefixLen(len) => {
                rule.suppress_prefixlength = u8::try_from(*len).ok()
            }
            _ => {}
        }
    }
    (matched.from, matched.to) = (from, to);
    rule.selector = match (mark, local, from, to) {
        (Some(mark), ..) => Selector::Fwmark { mark, mask },
        (None, true, ..) => Selector::Local(matched),
        (None, false, Some(net), _) => Selector::From(net),
        (None, false, None, Some(net)) => Selector::To(net),
        (None, false, None, None) => Selector::All,
    };
    rule
}

fn net_of(addr: IpAddr, prefix_len: u8) -> IpNet {
    match addr {
        IpAddr::V4(addr) => IpNet::V4(Ipv4Net::new(addr, prefix_len)),
        IpAddr::V6(addr) => IpNet::V6(Ipv6Net::new(addr, prefix_len)),
    }
}

/// An RA-style default for tests (here and in `observe`): a metric, and `ticks`
/// of lifetime left if it expires.
#[cfg(test)]
pub(crate) fn test_default_route(metric: u32, ticks: Option<i32>) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.attributes.push(RouteAttribute::Priority(metric));
    if let Some(ticks) = ticks {
        // struct rta_cacheinfo: eight u32, rta_expires the third.
        let mut raw = [0u8; 32];
        raw[8..12].copy_from_slice(&ticks.to_ne_bytes());
        let info = netlink_packet_route::route::RouteCacheInfo::parse(&raw)
            .expect("a whole rta_cacheinfo");
        route.attributes.push(RouteAttribute::CacheInfo(info));
    }
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_copy_keeps_the_whole_seconds_left_rounded_up() {
        assert_eq!(
            route_expires_secs(&test_default_route(1024, Some(2950))),
            Some(30)
        );
        assert_eq!(
            route_expires_secs(&test_default_route(1024, Some(-3))),
            None
        );
        assert_eq!(route_expires_secs(&test_default_route(0, None)), None);
    }
}
