//! One uplink as the plan sees it: whether each family can carry traffic now
//! (`Readiness`: link, address, next hop) and what it carries (alive, tier,
//! weight), with the per-family side that tables, rules and the main default are
//! built from.
use std::{collections::BTreeSet, net::IpAddr};

use super::observed::Interface;
use crate::{
    config::{Nat6, UplinkConfig},
    net::{Family, IpNet, PerFamily},
};

/// Where an uplink's traffic of one family goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Through a gateway on the link (Ethernet, DHCP, an IPv6 router).
    Via(IpAddr),
    /// Straight into a point-to-point link (PPPoE, LTE raw-IP, WireGuard, GRE):
    /// `default dev <if>`; the peer, when the address names one, is what the
    /// "gateway" probe target means.
    PointToPoint { peer: Option<IpAddr> },
}

impl Hop {
    /// The gateway in a `via`, if any.
    pub fn via(self) -> Option<IpAddr> {
        match self {
            Hop::Via(gateway) => Some(gateway),
            Hop::PointToPoint { .. } => None,
        }
    }

    /// What the "gateway" probe target stands for: the gateway, or the peer.
    pub fn probe_address(self) -> Option<IpAddr> {
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

/// Why an uplink cannot carry traffic of one family right now, or `Ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready {
        address: IpNet,
        gateway: Hop,
    },
    /// Down, or no carrier: the kernel cannot send through it.
    LinkDown,
    NoAddress,
    NoGateway {
        address: IpNet,
    },
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready { .. })
    }

    /// The uplink's own address of this family, with its prefix length.
    pub fn net(&self) -> Option<IpNet> {
        match self {
            Readiness::Ready { address, .. } | Readiness::NoGateway { address } => Some(*address),
            Readiness::LinkDown | Readiness::NoAddress => None,
        }
    }

    /// Where traffic goes next, when ready.
    pub fn hop(&self) -> Option<Hop> {
        match self {
            Readiness::Ready { gateway, .. } => Some(*gateway),
            _ => None,
        }
    }

    /// The state in a word or two (an uplink without IPv6 is normal).
    pub fn state(&self) -> &'static str {
        match self {
            Readiness::Ready { .. } => "ready",
            Readiness::LinkDown => "link down",
            Readiness::NoAddress => "no address",
            Readiness::NoGateway { .. } => "no gateway",
        }
    }

    /// Why the uplink cannot carry `family`'s traffic, in words an operator acts on.
    /// IPv6 is optional at most ISPs, so its problem is only named.
    pub fn problem(&self, family: Family) -> Option<String> {
        let text = match (self, family) {
            (Readiness::Ready { .. }, _) => return None,
            (_, Family::V6) => return Some(format!("IPv6: {}", self.state())),
            (Readiness::LinkDown, _) => "the interface is down or has no carrier",
            (Readiness::NoAddress, _) => {
                "the interface has no IPv4 address; it carries no traffic until it gets one"
            }
            (Readiness::NoGateway { .. }, _) => {
                "no gateway: set `gateway` in the config or give the interface a default route"
            }
        };
        Some(text.to_owned())
    }
}

#[cfg(test)]
impl Readiness {
    /// Ready at `address`/`prefix_len` via `gateway`, of either family (for tests).
    pub fn via(address: &str, prefix_len: u8, gateway: &str) -> Self {
        let address: IpAddr = address.parse().expect("a test address");
        let address = match address {
            IpAddr::V4(a) => IpNet::V4(crate::net::Net::new(a, prefix_len)),
            IpAddr::V6(a) => IpNet::V6(crate::net::Net::new(a, prefix_len)),
        };
        let gateway = Hop::Via(gateway.parse().expect("a test gateway"));
        Readiness::Ready { address, gateway }
    }
}

#[cfg(test)]
impl UplinkPlan {
    /// An IPv4-only uplink in `slot`, ready on 198.18.<slot>.2/24 (for tests).
    pub fn test(name: &str, slot: u32, alive: bool) -> Self {
        UplinkPlan {
            name: name.to_owned(),
            slot,
            interface: format!("wan{slot}"),
            table: 101 + slot,
            mark: 0x100 << slot,
            weight: 1,
            tier: 1,
            standby: false,
            readiness: PerFamily {
                v4: Readiness::via(&format!("198.18.{slot}.2"), 24, &format!("198.18.{slot}.1")),
                v6: Readiness::NoAddress,
            },
            alive: PerFamily {
                v4: alive,
                v6: false,
            },
            degraded: PerFamily::default(),
            passed_over: PerFamily::default(),
            exhausted: false,
            nat6: Nat6::default(),
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
    /// Judged per family: an ISP's IPv6 may be broken (or absent) while its IPv4
    /// works, and the other way round.
    pub readiness: PerFamily<Readiness>,
    /// Ready and not declared dead by that family's health checks.
    pub alive: PerFamily<bool>,
    /// Alive, but over a quality limit (loss, RTT).
    pub degraded: PerFamily<bool>,
    /// Degraded while a good uplink of its tier takes new flows: it takes none
    /// (its running sessions stay). With every uplink of the tier degraded, they
    /// all take new flows, as if healthy.
    pub passed_over: PerFamily<bool>,
    /// Its budget is used up and `at_quota` is "standby" or "stop": it is on
    /// [`EXHAUSTED_TIER`], below every other.
    pub exhausted: bool,
    /// How the LAN's IPv6 leaves through it.
    pub nat6: Nat6,
    /// Alive, but on a worse tier than the best live one with `failback = "move"`:
    /// its flows move to the best tier, as if it were dead, though it stays probed
    /// and ready to take over.
    pub standby: bool,
}

/// The tier of an uplink whose budget is used up: worse than any configured one,
/// so it carries traffic only while no other uplink is alive.
pub const EXHAUSTED_TIER: u32 = crate::config::MAX_TIER + 1;

/// What health checks concluded, by health name (see [`health_name`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub dead: BTreeSet<String>,
    /// Alive but over a quality limit.
    pub degraded: BTreeSet<String>,
    /// Uplinks (by name) whose data budget is used up.
    pub exhausted: BTreeSet<String>,
}

impl Verdicts {
    /// Only these dead, nothing degraded or exhausted.
    pub fn dead(dead: BTreeSet<String>) -> Self {
        Self {
            dead,
            ..Self::default()
        }
    }
}

/// An uplink side's health in a word: what `status` and the log say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Up,
    Degraded,
    Down,
}

impl Condition {
    pub fn of(alive: bool, degraded: bool) -> Self {
        match (alive, degraded) {
            (false, _) => Condition::Down,
            (true, true) => Condition::Degraded,
            (true, false) => Condition::Up,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Up => "up",
            Condition::Degraded => "degraded",
            Condition::Down => "down",
        }
    }
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
    /// May carry flows of `family`: alive and not standing by on a backup tier
    /// (standing by applies to both families). The datapath moves the flows of an
    /// uplink that does not.
    pub fn carries(&self, family: Family) -> bool {
        self.alive[family] && !self.standby
    }

    /// In `family`'s ring: carries its flows, is weighted and on the best live
    /// tier of that family (`active_tier`).
    pub fn takes_new_flows(&self, family: Family, active_tier: Option<u32>) -> bool {
        self.carries(family)
            && self.weight > 0
            && Some(self.tier) == active_tier
            && !self.passed_over[family]
    }

    /// Its `family` side's health in a word.
    pub fn condition(&self, family: Family) -> Condition {
        Condition::of(self.alive[family], self.degraded[family])
    }

    /// The address the uplink's traffic of `family` leaves from and where it goes
    /// next, when that family is ready.
    pub fn ready(&self, family: Family) -> Option<(IpAddr, Hop)> {
        let side = self.side(family)?;
        Some((side.address, side.hop?))
    }

    /// The uplink's own address of `family`, when it has one.
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        self.readiness[family].net().map(IpNet::addr)
    }
}

/// Whether each family of `uplink` can carry traffic, from what the host shows.
pub(super) fn readiness(uplink: &UplinkConfig, iface: &Interface) -> PerFamily<Readiness> {
    PerFamily::from_fn(|family| {
        if !iface.up {
            return Readiness::LinkDown;
        }
        let Some(&address) = iface.addresses[family].first() else {
            return Readiness::NoAddress;
        };
        // A point-to-point link is one with a peer (IPv4 only: pppd's `inet A peer
        // B/32`) or a default route without a gateway.
        let peer = iface.peer.map(IpAddr::V4).filter(|_| family == Family::V4);
        let point_to_point =
            (peer.is_some() || iface.default_dev[family]).then_some(Hop::PointToPoint { peer });
        let gateway = uplink.gateway[family].or(iface.gateway[family]);
        match gateway.map(Hop::Via).or(point_to_point) {
            Some(gateway) => Readiness::Ready { address, gateway },
            None => Readiness::NoGateway { address },
        }
    })
}

/// One family's view of an uplink, so tables, rules and the main default are
/// built by one piece of code for both.
#[derive(Debug, Clone, Copy)]
pub(super) struct Side {
    /// The uplink's address of the family and its connected network.
    pub(super) address: IpAddr,
    pub(super) connected: IpNet,
    /// `Some` when ready: where its traffic of this family goes next.
    pub(super) hop: Option<Hop>,
}

impl UplinkPlan {
    pub(super) fn side(&self, family: Family) -> Option<Side> {
        let readiness = &self.readiness[family];
        let address = readiness.net()?;
        let hop = readiness.hop();
        // A point-to-point link's connected network is its peer, as the kernel's own
        // route for `inet A peer B/32` says.
        let connected = match hop {
            Some(Hop::PointToPoint { peer: Some(peer) }) => IpNet::host(peer),
            _ => address.network(),
        };
        Some(Side {
            address: address.addr(),
            connected,
            hop,
        })
    }
}

/// The best (lowest) tier with a live, weighted uplink of `family`: the one new
/// flows of that family use (each family's uplinks live apart).
pub(super) fn active_tier(uplinks: &[UplinkPlan], family: Family) -> Option<u32> {
    uplinks
        .iter()
        .filter(|u| u.alive[family] && u.weight > 0)
        .map(|u| u.tier)
        .min()
}

/// Marks the degraded uplinks that a good one of their tier (weighted, carrying)
/// replaces for new flows.
pub(super) fn pass_over_degraded(uplinks: &mut [UplinkPlan]) {
    for family in Family::ALL {
        let good_tiers: BTreeSet<u32> = uplinks
            .iter()
            .filter(|u| u.carries(family) && u.weight > 0 && !u.degraded[family])
            .map(|u| u.tier)
            .collect();
        for uplink in uplinks.iter_mut() {
            uplink.passed_over[family] =
                uplink.degraded[family] && good_tiers.contains(&uplink.tier);
        }
    }
}
