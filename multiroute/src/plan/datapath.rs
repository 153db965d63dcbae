//! The datapath's side of the plan: its uplink table, the Maglev rings new flows
//! are placed by, the balance mode, and the destinations it leaves to the main
//! table.
use std::collections::BTreeSet;

use super::{
    maglev::{Member, build_ring},
    observed::Observed,
    policy::{self, Policy},
    uplink::{UplinkPlan, active_tier},
};
use crate::{
    config::{BalanceBy, Config},
    net::{Family, IpNet, PerFamily},
};

/// The datapath's side of the plan: what its maps hold and where it attaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatapathPlan {
    /// Contents of the datapath's uplink table, indexed by slot; free slots are
    /// all zero (not alive).
    pub uplinks: Vec<multiroute_ebpf::Uplink>,
    /// Per family, the uplinks that take its new flows, by weight.
    pub ring: PerFamily<Vec<u32>>,
    /// Ifindex of every LAN interface, by name, for the classifier.
    pub lan: Vec<(String, u32)>,
    /// Ifindex of every uplink interface, by name, for the fast path's reply
    /// program; empty with `fast_path = false`.
    pub fast_replies: Vec<(String, u32)>,
    /// `[balance] by`, as the datapath reads it (`multiroute_ebpf::balance`).
    pub balance_by: u32,
    /// Policy rules as the classifier matches them.
    pub policy: Policy,
    /// Destinations the classifier leaves unmarked, to the main table: its specific
    /// routes and the router's own addresses, of each family that fits the
    /// datapath (see [`direct`]).
    pub direct: BTreeSet<IpNet>,
}

pub(super) fn plan(
    config: &Config,
    observed: &Observed,
    uplinks: &[UplinkPlan],
    lan: Vec<(String, u32)>,
    direct: PerFamily<Option<BTreeSet<IpNet>>>,
) -> DatapathPlan {
    let fast_replies = uplinks
        .iter()
        .filter(|_| config.datapath.fast_path)
        .filter_map(|u| Some((u.interface.clone(), observed.get(&u.interface)?.index)))
        .collect();
    DatapathPlan {
        uplinks: uplink_entries(uplinks, config.routing.fwmark_mask),
        ring: PerFamily::from_fn(|family| ring(uplinks, family)),
        lan,
        fast_replies,
        balance_by: balance_by(config.balance.by),
        policy: policy::datapath(&config.rules, |name| {
            policy::named(uplinks, name).map(|u| u.slot)
        }),
        direct: direct.v4.into_iter().chain(direct.v6).flatten().collect(),
    }
}

/// The datapath's uplink table, indexed by slot; free slots are all zero (not
/// alive).
fn uplink_entries(uplinks: &[UplinkPlan], mask: u32) -> Vec<multiroute_ebpf::Uplink> {
    let used = uplinks.iter().map(|u| u.slot + 1).max().unwrap_or(0);
    let mut entries = vec![multiroute_ebpf::Uplink::default(); used as usize];
    for u in uplinks {
        entries[u.slot as usize] = multiroute_ebpf::Uplink {
            mark: u.mark,
            mask,
            carries: u32::from(u.carries(Family::V4)),
            carries6: u32::from(u.carries(Family::V6)),
        };
    }
    entries
}

/// `family`'s ring: the uplinks that take its new flows, by weight.
fn ring(uplinks: &[UplinkPlan], family: Family) -> Vec<u32> {
    let active = active_tier(uplinks, family);
    let members: Vec<_> = uplinks
        .iter()
        .filter(|u| u.takes_new_flows(family, active))
        .map(|u| Member {
            index: u.slot,
            name: &u.name,
            weight: u.weight,
        })
        .collect();
    build_ring(&members, multiroute_ebpf::RING_SIZE)
}

/// `[balance] by` as the datapath reads it (`multiroute_ebpf::balance`).
fn balance_by(by: BalanceBy) -> u32 {
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
        iface.addresses[family]
            .iter()
            .map(|a| IpNet::host(a.addr()))
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
