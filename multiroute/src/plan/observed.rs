//! What the host shows, as the plan reads it: each interface's state, addresses and
//! learned gateways, and the main table's specific destinations (`observe` reads
//! them from the kernel).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::net::{IpNet, Ipv4Net, Ipv6Net};

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
    /// Global IPv6 addresses (not link-local, not tentative), as for IPv4.
    pub addresses6: Vec<Ipv6Net>,
    /// Gateway of an IPv6 default route through this interface: usually the
    /// link-local router an RA announced.
    pub gateway6: Option<Ipv6Addr>,
    /// An IPv6 default route through this interface without a gateway.
    pub default_dev6: bool,
}

impl Interface {
    /// Whether `address` (of either family) is on the interface.
    pub fn has_address(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(address) => self.addresses.iter().any(|a| a.addr == address),
            IpAddr::V6(address) => self.addresses6.iter().any(|a| a.addr == address),
        }
    }
}

/// What the host has: its interfaces by name (the map it dereferences to), and
/// the destinations its main table routes specifically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    interfaces: BTreeMap<String, Interface>,
    /// Destinations of the main table's routes other than defaults, of any type
    /// (LAN and VPN subnets, static routes, blackholes), multiroute's own excluded.
    pub main_routes: BTreeSet<IpNet>,
    /// Time left of the soonest-expiring default a gateway could be learned from
    /// (an RA's router lifetime): the kernel announces no expiry, so the daemon
    /// looks again then.
    pub default_expiry: Option<std::time::Duration>,
}

impl Observed {
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::ops::Deref for Observed {
    type Target = BTreeMap<String, Interface>;
    fn deref(&self) -> &Self::Target {
        &self.interfaces
    }
}

impl std::ops::DerefMut for Observed {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.interfaces
    }
}

impl<const N: usize> From<[(String, Interface); N]> for Observed {
    fn from(interfaces: [(String, Interface); N]) -> Self {
        Self {
            interfaces: BTreeMap::from(interfaces),
            ..Self::default()
        }
    }
}
