//! The datapath's side of the plan: its uplink table, the Maglev rings new flows
//! are placed by, the balance mode, and the destinations it leaves to the main
//! table.
use std::{collections::BTreeSet, net::IpAddr};

use super::{
    maglev::{Member, build_ring},
    observed::Observed,
    uplink::{UplinkPlan, active_tier},
};
use crate::{
    config::BalanceBy,
    net::{Family, IpNet},
};

/// The datapath's uplink table, indexed by slot; free slots are all zero (not
/// alive).
pub(super) fn uplink_entries(uplinks: &[UplinkPlan], mask: u32) -> Vec<multiroute_ebpf::Uplink> {
    let used = uplinks.iter().map(|u| u.slot + 1).max().unwrap_or(0);
    let mut entries = vec![multiroute_ebpf::Uplink::default(); used as usize];
    for u in uplinks {
        entries[u.slot as usize] = multiroute_ebpf::Uplink {
            mark: u.mark,
            mask,
            alive: u32::from(u.carries_in(Family::V4)),
            alive6: u32::from(u.carries_in(Family::V6)),
        };
    }
    entries
}

/// `family`'s ring: the uplinks that take its new flows, by weight.
pub(super) fn ring(uplinks: &[UplinkPlan], family: Family) -> Vec<u32> {
    let active = active_tier(uplinks, family);
    let members: Vec<_> = uplinks
        .iter()
        .filter(|u| u.takes_new_flows_in(family, active))
        .map(|u| Member {
            index: u.slot,
            name: &u.name,
            weight: u.weight,
        })
        .collect();
    build_ring(&members, multiroute_ebpf::RING_SIZE)
}

/// `[balance] by` as the datapath reads it (`multiroute_ebpf::balance`).
pub(super) fn balance_by(by: BalanceBy) -> u32 {
    match by {
        BalanceBy::Connection => multiroute_ebpf::balance::CONNECTION,
        BalanceBy::Addresses => multiroute_ebpf::balance::ADDRESSES,
        BalanceBy::Source => multiroute_ebpf::balance::SOURCE,
    }
}

/// What the classifier leaves to the main table, of `family`: the destinations of
/// the main table's specific routes, and the router's own addresses (the local
/// table routes them first anyway; unmarked they are not counted as an uplink's).
/// `None` when they are more than the datapath holds: the main table is then
/// consulted before the marks instead.
pub(super) fn direct(observed: &Observed, family: Family) -> Option<BTreeSet<IpNet>> {
    let own = observed.values().flat_map(|iface| {
        let v4 = iface.addresses.iter().map(|a| IpAddr::V4(a.addr));
        let v6 = iface.addresses6.iter().map(|a| IpAddr::V6(a.addr));
        v4.chain(v6).map(IpNet::host)
    });
    let direct: BTreeSet<IpNet> = observed
        .main_routes
        .iter()
        .copied()
        .chain(own)
        .filter(|net| net.family() == family)
        .collect();
    (direct.len() <= multiroute_ebpf::MAX_DIRECT_PREFIXES as usize).then_some(direct)
}
