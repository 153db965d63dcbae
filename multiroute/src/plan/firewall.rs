//! The firewall's side of the plan, in multiroute's own nftables table: the
//! conntrack marks of inbound symmetry and the NAT of the LAN's IPv6.
use super::{
    nft,
    observed::Observed,
    uplink::{Readiness, UplinkPlan},
};
use crate::{
    config::{Config, Nat6},
    net::Ipv6Net,
};

/// The firewall's side of the plan: what multiroute's nftables table holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallPlan {
    /// The conntrack marks of inbound symmetry, per ready uplink.
    pub inbound: Vec<nft::InboundMark>,
    /// NAT for the LAN's IPv6, per uplink whose IPv6 is ready and translated.
    pub nat6: Vec<nft::Nat66>,
}

pub(super) fn plan(config: &Config, observed: &Observed, uplinks: &[UplinkPlan]) -> FirewallPlan {
    FirewallPlan {
        inbound: inbound_marks(config, uplinks),
        nat6: nat66(config, observed, uplinks),
    }
}

impl FirewallPlan {
    /// Nothing to hold: multiroute's table need not exist.
    pub fn is_empty(&self) -> bool {
        self.inbound.is_empty() && self.nat6.is_empty()
    }
}

/// The conntrack mark of connections arriving on each ready uplink.
fn inbound_marks(config: &Config, uplinks: &[UplinkPlan]) -> Vec<nft::InboundMark> {
    uplinks
        .iter()
        .filter(|u| u.readiness.v4.is_ready())
        .map(|u| nft::InboundMark {
            interface: u.interface.clone(),
            mark: u.mark | config.numbering().inbound_flag(),
        })
        .collect()
}

/// The NAT for the LAN's IPv6 on every uplink whose IPv6 is ready and translated.
fn nat66(config: &Config, observed: &Observed, uplinks: &[UplinkPlan]) -> Vec<nft::Nat66> {
    let lan = config
        .lan
        .iter()
        .filter_map(|name| observed.get(name)?.addresses.v6.first()?.v6())
        .map(|address| address.network())
        .next();
    uplinks
        .iter()
        .filter_map(|u| uplink_nat66(u, lan))
        .collect()
}

/// The IPv6 NAT of one uplink, when its IPv6 is ready and translated. `lan` is
/// the LAN's IPv6 prefix (the first LAN interface's), which prefix translation
/// maps; without one there is nothing to map.
fn uplink_nat66(uplink: &UplinkPlan, lan: Option<Ipv6Net>) -> Option<nft::Nat66> {
    let address = match uplink.readiness.v6 {
        Readiness::Ready { address, .. } => address.v6()?,
        _ => return None,
    };
    let translation = match uplink.nat6 {
        Nat6::None => return None,
        Nat6::Masquerade => nft::Translation::Masquerade,
        // Learned: the uplink's own prefix (its address's network). The LAN side
        // is taken at the same length, so the mapping is 1:1 both ways.
        Nat6::Npt { prefix } => {
            let outside = prefix.unwrap_or(address.network());
            let lan = Ipv6Net::new(lan?.addr, outside.prefix_len).network();
            nft::Translation::Prefix { lan, outside }
        }
    };
    Some(nft::Nat66 {
        interface: uplink.interface.clone(),
        translation,
    })
}
