//! One uplink as the plan sees it: whether each family can carry traffic now
//! (`Readiness`: link, address, next hop) and what it carries (alive, tier,
//! weight), with the per-family side that tables, rules and the main default are
//! built from.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::observed::Interface;
use crate::{
    config::{Nat6, UplinkConfig},
    net::{Address, Family, IpNet},
};

/// Where an uplink's traffic of one family goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop<A = Ipv4Addr> {
    /// Through a gateway on the link (Ethernet, DHCP, an IPv6 router).
    Via(A),
    /// Straight into a point-to-point link (PPPoE, LTE raw-IP, WireGuard, GRE):
    /// `default dev <if>`; the peer, when the address names one, is what the
    /// "gateway" probe target means.
    PointToPoint { peer: Option<A> },
}

impl<A: Copy> Hop<A> {
    /// The gateway in a `via`, if any.
    pub fn via(self) -> Option<A> {
        match self {
            Hop::Via(gateway) => Some(gateway),
            Hop::PointToPoint { .. } => None,
        }
    }

    /// What the "gateway" probe target stands for: the gateway, or the peer.
    pub fn probe_address(self) -> Option<A> {
        match self {
            Hop::Via(gateway) => Some(gateway),
            Hop::PointToPoint { peer } => peer,
        }
    }
}

impl<A: std::fmt::Display> std::fmt::Display for Hop<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hop::Via(gateway) => write!(f, "{gateway}"),
            Hop::PointToPoint { peer: Some(peer) } => write!(f, "point-to-point, peer {peer}"),
            Hop::PointToPoint { peer: None } => f.write_str("point-to-point"),
        }
    }
}

/// Why an uplink cannot carry traffic of one family right now, or `Ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness<A = Ipv4Addr> {
    Ready {
        address: crate::net::Net<A>,
        gateway: Hop<A>,
    },
    /// Down, or no carrier: the kernel cannot send through it.
    LinkDown,
    NoAddress,
    NoGateway {
        address: crate::net::Net<A>,
    },
}

impl<A: Copy> Readiness<A> {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready { .. })
    }

    /// The uplink's own address of this family, when it has one.
    pub fn address(&self) -> Option<A> {
        match self {
            Readiness::Ready { address, .. } | Readiness::NoGateway { address } => {
                Some(address.addr)
            }
            Readiness::LinkDown | Readiness::NoAddress => None,
        }
    }
}

impl Readiness<Ipv6Addr> {
    /// The uplink's IPv6 state in a word or two (an uplink without IPv6 is normal).
    pub fn state(&self) -> &'static str {
        match self {
            Readiness::Ready { .. } => "ready",
            Readiness::LinkDown => "link down",
            Readiness::NoAddress => "no address",
            Readiness::NoGateway { .. } => "no gateway",
        }
    }
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
    /// The same for IPv6, judged apart: an ISP's IPv6 may be broken (or absent)
    /// while its IPv4 works, and the other way round.
    pub readiness6: Readiness<Ipv6Addr>,
    pub alive6: bool,
    /// How the LAN's IPv6 leaves through it.
    pub nat6: Nat6,
    /// Alive, but on a worse tier than the best live one with `failback = "move"`:
    /// its flows move to the best tier, as if it were dead, though it stays probed
    /// and ready to take over.
    pub standby: bool,
}

/// How health checks name an uplink's side of `family`: its IPv4 by the uplink's
/// own name, its IPv6 as `<uplink>/ipv6` — probed and judged apart, so a broken
/// IPv6 at one ISP moves only IPv6 flows. Uplink names have no '/', so the IPv6
/// name never names an uplink.
pub fn health_name(uplink: &str, family: Family) -> String {
    match family {
        Family::V4 => uplink.to_owned(),
        Family::V6 => format!("{uplink}/ipv6"),
    }
}

impl UplinkPlan {
    /// May carry IPv4 flows (see [`UplinkPlan::carries_in`]).
    pub fn carries(&self) -> bool {
        self.carries_in(Family::V4)
    }

    /// In the IPv4 ring (see [`UplinkPlan::takes_new_flows_in`]).
    pub fn takes_new_flows(&self, active_tier: Option<u32>) -> bool {
        self.takes_new_flows_in(Family::V4, active_tier)
    }

    /// Alive for `family` (ready, and not declared dead by that family's probes).
    pub fn alive_in(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.alive,
            Family::V6 => self.alive6,
        }
    }

    /// May carry flows of `family`: alive and not standing by on a backup tier
    /// (standing by applies to both families). The datapath moves the flows of an
    /// uplink that does not.
    pub fn carries_in(&self, family: Family) -> bool {
        self.alive_in(family) && !self.standby
    }

    /// In `family`'s ring: carries its flows, is weighted and on the best live
    /// tier of that family (`active_tier`).
    pub fn takes_new_flows_in(&self, family: Family, active_tier: Option<u32>) -> bool {
        self.carries_in(family) && self.weight > 0 && Some(self.tier) == active_tier
    }

    /// The uplink's own IPv4 address, when it has one.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.readiness.address()
    }

    /// The address the uplink's traffic of `family` leaves from and where it goes
    /// next, when that family is ready.
    pub fn ready_in(&self, family: Family) -> Option<(IpAddr, Hop<IpAddr>)> {
        let side = self.side(family)?;
        Some((side.address, side.hop?))
    }

    /// The uplink's own address of `family`, when it has one.
    pub fn address_in(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.readiness.address().map(IpAddr::V4),
            Family::V6 => self.readiness6.address().map(IpAddr::V6),
        }
    }
}

pub(super) fn readiness(uplink: &UplinkConfig, iface: &Interface) -> Readiness {
    let point_to_point = (iface.peer.is_some() || iface.default_dev)
        .then_some(Hop::PointToPoint { peer: iface.peer });
    family_readiness(
        iface.up,
        iface.addresses.first(),
        uplink.gateway.or(iface.gateway),
        point_to_point,
    )
}

pub(super) fn readiness6(uplink: &UplinkConfig, iface: &Interface) -> Readiness<Ipv6Addr> {
    let point_to_point = iface
        .default_dev6
        .then_some(Hop::PointToPoint { peer: None });
    family_readiness(
        iface.up,
        iface.addresses6.first(),
        uplink.gateway6.or(iface.gateway6),
        point_to_point,
    )
}

fn family_readiness<A: Address>(
    up: bool,
    address: Option<&crate::net::Net<A>>,
    gateway: Option<A>,
    point_to_point: Option<Hop<A>>,
) -> Readiness<A> {
    if !up {
        return Readiness::LinkDown;
    }
    let Some(&address) = address else {
        return Readiness::NoAddress;
    };
    match gateway.map(Hop::Via).or(point_to_point) {
        Some(gateway) => Readiness::Ready { address, gateway },
        None => Readiness::NoGateway { address },
    }
}

/// One family's view of an uplink, so tables, rules and the main default are
/// built by one piece of code for both.
#[derive(Debug, Clone, Copy)]
pub(super) struct Side {
    /// The uplink's address of the family and its connected network.
    pub(super) address: IpAddr,
    pub(super) connected: IpNet,
    /// `Some` when ready: where its traffic of this family goes next.
    pub(super) hop: Option<Hop<IpAddr>>,
}

impl UplinkPlan {
    pub(super) fn side(&self, family: Family) -> Option<Side> {
        match family {
            Family::V4 => side(&self.readiness),
            Family::V6 => side(&self.readiness6),
        }
    }
}

fn side<A: Address + Into<IpAddr>>(readiness: &Readiness<A>) -> Option<Side>
where
    IpNet: From<crate::net::Net<A>>,
{
    let (address, hop) = match *readiness {
        Readiness::Ready { address, gateway } => (address, Some(gateway)),
        Readiness::NoGateway { address } => (address, None),
        Readiness::LinkDown | Readiness::NoAddress => return None,
    };
    // A point-to-point link's connected network is its peer, as the kernel's own
    // route for `inet A peer B/32` says.
    let connected = match hop {
        Some(Hop::PointToPoint { peer: Some(peer) }) => crate::net::Net::host(peer),
        _ => address.network(),
    };
    let hop = hop.map(|hop| match hop {
        Hop::Via(gateway) => Hop::Via(gateway.into()),
        Hop::PointToPoint { peer } => Hop::PointToPoint {
            peer: peer.map(Into::into),
        },
    });
    Some(Side {
        address: address.addr.into(),
        connected: connected.into(),
        hop,
    })
}

/// The best (lowest) tier with a live, weighted uplink of `family`: the one new
/// flows of that family use (each family's uplinks live apart).
pub(super) fn active_tier(uplinks: &[UplinkPlan], family: Family) -> Option<u32> {
    uplinks
        .iter()
        .filter(|u| u.alive_in(family) && u.weight > 0)
        .map(|u| u.tier)
        .min()
}
