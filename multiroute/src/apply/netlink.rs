//! A typed layer over rtnetlink: the rest of the code reads and writes [`Route`]s and
//! [`Rule`]s, never netlink attributes. Everything multiroute adds carries
//! [`PROTOCOL`], which is how `unload` finds it again after a crash.
use std::{
    cmp::Reverse,
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use futures::{StreamExt as _, TryStreamExt};
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, IpProtocol, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressScope},
    link::{LinkAttribute, LinkFlags},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol,
        RouteScope, RouteType,
    },
    rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange},
};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::{
    config::PortRange,
    net::{Family, IpNet, Ipv4Net, Ipv6Net},
    plan::{
        Interface, LocalMatch, MAIN_TABLE, Nexthop, Observed, Route, RouteNext, Rule, Selector,
    },
};

/// Route/rule protocol number that marks multiroute's own entries (`ip route show
/// proto 77`). Unassigned in iproute2's rt_protos.
pub const PROTOCOL: u8 = 77;

/// The input interface of the router's own traffic in routing rules (`iif lo`).
const LOOPBACK: &str = "lo";

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("netlink: {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("route {route} names interface {dev:?}, which does not exist")]
    UnknownDevice { route: String, dev: String },
}

pub struct Netlink {
    handle: Handle,
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

impl Netlink {
    /// Opens a netlink socket in the current network namespace. Must be called inside a
    /// tokio runtime: the connection runs as a task on it.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Interfaces with their addresses and the gateway of any default route
    /// through them (in the main table, or saved away by multiroute in
    /// `saved_table`), and the main table's specific destinations.
    pub async fn observe(&self, saved_table: u32) -> Result<Observed, NetlinkError> {
        let mut observed = Observed::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.map_err(request("listing links"))? {
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
        let mut addresses = self.handle.address().get().execute();
        while let Some(msg) = addresses
            .try_next()
            .await
            .map_err(request("listing addresses"))?
        {
            let local = msg.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(IpAddr::V4(addr)) => Some(*addr),
                _ => None,
            });
            // IFA_ADDRESS is the far end on a point-to-point link, the address
            // itself otherwise.
            let other_end = msg.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V4(addr)) => Some(*addr),
                _ => None,
            });
            if let (Some(addr), Some(iface)) = (
                global_ipv6(&msg),
                interface_mut(&mut observed, msg.header.index),
            ) {
                iface
                    .addresses6
                    .push(Ipv6Net::new(addr, msg.header.prefix_len));
            }
            let address = local.or(other_end);
            if let (Some(addr), Some(iface)) =
                (address, interface_mut(&mut observed, msg.header.index))
            {
                if iface.addresses.is_empty() {
                    iface.peer = other_end.filter(|peer| Some(*peer) != local && local.is_some());
                }
                iface
                    .addresses
                    .push(Ipv4Net::new(addr, msg.header.prefix_len));
            }
        }
        // The best default through each interface, per family (see DefaultRank).
        let mut gateways: BTreeMap<(String, bool), (DefaultRank, IpAddr)> = BTreeMap::new();
        for route in self.routes().await? {
            let table = route_table(&route);
            if table == MAIN_TABLE
                && !is_own_route(&route)
                && let Some(dst) = route_destination(&route).filter(|dst| !dst.is_default())
            {
                observed.main_routes.insert(dst);
            }
            let Some(parsed) = parse_route(&route, &observed) else {
                continue;
            };
            if !parsed.dst.is_default()
                || is_own_route(&route)
                || (table != MAIN_TABLE && table != saved_table)
            {
                continue;
            }
            let Some(rank) = DefaultRank::of(&route, table == saved_table) else {
                continue;
            };
            if let Some(left) = rank.expires_in() {
                observed.default_expiry =
                    Some(observed.default_expiry.map_or(left, |d| d.min(left)));
            }
            let hops = match parsed.next {
                RouteNext::Gateway { gateway, dev } => vec![(Some(gateway), dev)],
                RouteNext::Multipath(hops) => {
                    hops.into_iter().map(|h| (h.gateway, h.dev)).collect()
                }
                RouteNext::Dev { dev, .. } => vec![(None, dev)],
            };
            for (gateway, dev) in hops {
                match gateway {
                    Some(gateway) => {
                        let best = gateways
                            .entry((dev, gateway.is_ipv6()))
                            .or_insert((rank, gateway));
                        if rank < best.0 {
                            *best = (rank, gateway);
                        }
                    }
                    None => {
                        if let Some(iface) = observed.get_mut(&dev) {
                            match parsed.dst.family() {
                                Family::V4 => iface.default_dev = true,
                                Family::V6 => iface.default_dev6 = true,
                            }
                        }
                    }
                }
            }
        }
        for ((dev, _), (_, gateway)) in gateways {
            if let Some(iface) = observed.get_mut(&dev) {
                match gateway {
                    IpAddr::V4(gateway) => iface.gateway = Some(gateway),
                    IpAddr::V6(gateway) => iface.gateway6 = Some(gateway),
                }
            }
        }
        Ok(observed)
    }

    /// Every route of every table, IPv4 and IPv6.
    pub async fn routes(&self) -> Result<Vec<RouteMessage>, NetlinkError> {
        let queries = [
            RouteMessageBuilder::<Ipv4Addr>::new().table_id(0).build(),
            RouteMessageBuilder::<Ipv6Addr>::new().table_id(0).build(),
        ];
        let mut routes = Vec::new();
        for query in queries {
            let mut dump = self.handle.route().get(query).execute();
            while let Some(route) = dump.try_next().await.map_err(request("listing routes"))? {
                routes.push(route);
            }
        }
        Ok(routes)
    }

    /// Every rule, IPv4 and IPv6.
    pub async fn rules(&self) -> Result<Vec<RuleMessage>, NetlinkError> {
        let mut rules = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let mut dump = self.handle.rule().get(version).execute();
            while let Some(rule) = dump.try_next().await.map_err(request("listing rules"))? {
                rules.push(rule);
            }
        }
        Ok(rules)
    }

    /// Adds `route`, replacing a route with the same destination and metric.
    pub async fn replace_route(
        &self,
        route: &Route,
        observed: &Observed,
    ) -> Result<(), NetlinkError> {
        let message = route_message(route, observed)?;
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(request(format!("adding route {route}")))
    }

    /// Adds a route exactly as another program left it (used to save and restore the
    /// main table's default); an identical route already there is fine. Without
    /// `NLM_F_EXCL`: defaults of equal metric through other interfaces (two DHCP
    /// uplinks at metric 0) are kept beside it, not refused as "exists".
    pub async fn add_raw_route(
        &self,
        mut message: RouteMessage,
        table: u32,
    ) -> Result<(), NetlinkError> {
        set_table(&mut message, table);
        let mut add = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(message));
        add.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
        let what = || format!("restoring a route into table {table}");
        let mut handle = self.handle.clone();
        let mut answers = handle.request(add).map_err(request(what()))?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(err) = answer.payload {
                if err.raw_code().abs() == EEXIST {
                    continue;
                }
                return Err(request(what())(rtnetlink::Error::NetlinkError(err)));
            }
        }
        Ok(())
    }

    /// Deletes a route; one already gone is fine.
    pub async fn delete_route(&self, message: RouteMessage) -> Result<(), NetlinkError> {
        match self.handle.route().del(message).execute().await {
            Err(err) if matches!(errno(&err), Some(ESRCH | ENOENT)) => Ok(()),
            other => other.map_err(request("deleting a route")),
        }
    }

    pub async fn add_rule(&self, rule: &Rule) -> Result<(), NetlinkError> {
        let mut request_ = self.handle.rule().add();
        *request_.message_mut() = rule_message(rule);
        match request_.execute().await {
            Err(err) if errno(&err) == Some(EEXIST) => Ok(()),
            other => other.map_err(request(format!("adding rule {rule}"))),
        }
    }

    /// Deletes a rule; one already gone is fine.
    pub async fn delete_rule(&self, message: RuleMessage) -> Result<(), NetlinkError> {
        match self.handle.rule().del(message).execute().await {
            Err(err) if matches!(errno(&err), Some(ESRCH | ENOENT)) => Ok(()),
            other => other.map_err(request("deleting a rule")),
        }
    }
}

fn interface_mut(observed: &mut Observed, index: u32) -> Option<&mut Interface> {
    observed.values_mut().find(|iface| iface.index == index)
}

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

fn set_table(message: &mut RouteMessage, table: u32) {
    message.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    message
        .attributes
        .retain(|attr| !matches!(attr, RouteAttribute::Table(_)));
    message.attributes.push(RouteAttribute::Table(table));
}

/// A global IPv6 address of an address message, unless it is still being checked
/// for duplicates (or failed that check): the kernel will not send from it yet.
fn global_ipv6(msg: &netlink_packet_route::address::AddressMessage) -> Option<Ipv6Addr> {
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
fn route_message(route: &Route, observed: &Observed) -> Result<RouteMessage, NetlinkError> {
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

/// Clock ticks per second in `RTA_CACHEINFO` (the kernel's `USER_HZ`).
const USER_HZ: u64 = 100;

/// Lifetime left of a route that expires (RA-learned), in clock ticks; negative
/// once it has run out.
fn route_expires(route: &RouteMessage) -> Option<i32> {
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
fn route_destination(message: &RouteMessage) -> Option<IpNet> {
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

fn rule_message(rule: &Rule) -> RuleMessage {
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

#[cfg(test)]
mod tests {
    use netlink_packet_route::route::RouteCacheInfo;

    use super::*;

    /// An RA-style default: a metric, and `ticks` of lifetime left if it expires.
    fn default_route(metric: u32, ticks: Option<i32>) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.attributes.push(RouteAttribute::Priority(metric));
        if let Some(ticks) = ticks {
            // struct rta_cacheinfo: eight u32, rta_expires the third.
            let mut raw = [0u8; 32];
            raw[8..12].copy_from_slice(&ticks.to_ne_bytes());
            let info = RouteCacheInfo::parse(&raw).expect("a whole rta_cacheinfo");
            route.attributes.push(RouteAttribute::CacheInfo(info));
        }
        route
    }

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

    #[test]
    fn a_parked_copy_keeps_the_whole_seconds_left_rounded_up() {
        assert_eq!(
            route_expires_secs(&default_route(1024, Some(2950))),
            Some(30)
        );
        assert_eq!(route_expires_secs(&default_route(1024, Some(-3))), None);
        assert_eq!(route_expires_secs(&default_route(0, None)), None);
    }
}
