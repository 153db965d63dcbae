//! What the host shows, as the plan reads it: each interface's state, addresses and
//! learned gateways, and the main table's specific destinations (`observe` reads
//! them from the kernel).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use crate::net::{Family, IpNet, PerFamily};

/// What the host shows of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    /// Administratively up with carrier (IFF_UP and IFF_LOWER_UP).
    pub up: bool,
    /// Addresses with their prefix lengths, primary first; IPv6 only global ones
    /// (not link-local, not tentative).
    pub addresses: PerFamily<Vec<IpNet>>,
    /// Gateway of a default route through this interface, if the host has one
    /// (DHCP client, an RA's link-local router, PPP, the admin).
    pub gateway: PerFamily<Option<IpAddr>>,
    /// The far end of the primary IPv4 address on a point-to-point link (`inet A
    /// peer B/32`, as pppd and LTE modems in raw-IP mode configure it).
    pub peer: Option<Ipv4Addr>,
    /// A default route through this interface without a gateway (`default dev
    /// ppp0`): the link itself is the way out.
    pub default_dev: PerFamily<bool>,
    /// Who installed the default through this interface, as its route says.
    pub default_origin: PerFamily<Option<RouteOrigin>>,
}

/// Who installed a route, by its protocol: what `init` tells the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    /// `proto dhcp`: dhcpcd, systemd-networkd, NetworkManager.
    Dhcp,
    /// `proto ra`: the kernel, from router advertisements.
    RouterAdvertisement,
    /// Anything else: `ip route` by the admin or a script (udhcpc's, pppd's).
    Other,
}

impl Interface {
    /// Whether `address` (of either family) is on the interface.
    pub fn has_address(&self, address: IpAddr) -> bool {
        self.addresses[Family::of(address)]
            .iter()
            .any(|a| a.addr() == address)
    }
}

#[cfg(test)]
impl Interface {
    /// Up (or not) with one IPv4 address (for tests).
    pub fn with_ipv4(index: u32, up: bool, address: [u8; 4], prefix_len: u8) -> Self {
        let address = IpNet::V4(crate::net::Net::new(address.into(), prefix_len));
        Interface {
            index,
            up,
            addresses: PerFamily {
                v4: vec![address],
                v6: Vec::new(),
            },
            ..Interface::default()
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
