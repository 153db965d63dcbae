//! One address family's flow table and affinity table as userspace reads and
//! writes them: listing, seeding from conntrack, the pending flows of a takeover,
//! moving a policy rule's flows. IPv4 and IPv6 have one each, with their own key
//! type; everything here is written once for both.
use std::{
    collections::{BTreeMap, HashSet},
    hash::Hash,
    net::IpAddr,
    path::Path,
};

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError},
};
use multiroute_ebpf::{DIRECT_UPLINK, Flow, FlowIdentity, PENDING_UPLINK, balance, chosen_by};

use super::direct::DirectChange;
use crate::{
    apply::datapath::{
        error::{DatapathError, map_error},
        sys::{monotonic_seconds, open_map},
    },
    netlink::conntrack::{Keyed, NatedSession},
};

/// What [`FlowTables::seed`] does with a flow the table already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeding {
    /// Keeps the datapath's choice (taking over: the flows it placed are new).
    FillGaps,
    /// Puts the flow where its NAT binding is (an address arrived: conntrack is
    /// the truth about sessions that ran elsewhere).
    Replace,
}

pub struct FlowTables<K> {
    flows: HashMap<MapData, K, Flow>,
    affinity: HashMap<MapData, K, u32>,
    flows_name: &'static str,
    affinity_name: &'static str,
}

impl<K: Pod + FlowIdentity + Eq + Hash> FlowTables<K> {
    pub(super) fn open(
        pin_path: &Path,
        flows_name: &'static str,
        affinity_name: &'static str,
    ) -> Result<Self, DatapathError> {
        Ok(Self {
            flows: open_map(pin_path, flows_name)?,
            affinity: open_map(pin_path, affinity_name)?,
            flows_name,
            affinity_name,
        })
    }

    /// Every tracked flow. Entries the LRU evicts while we iterate are skipped.
    pub fn all(&self) -> Vec<(K, Flow)> {
        self.flows.iter().filter_map(Result::ok).collect()
    }

    pub fn get(&self, key: &K) -> Option<Flow> {
        self.flows.get(key, 0).ok()
    }

    /// Remembers a flow, as the datapath would (benchmarks pre-fill the table).
    pub fn insert(&mut self, key: &K, flow: &Flow) -> Result<(), DatapathError> {
        self.flows
            .insert(key, flow, 0)
            .map_err(map_error(self.flows_name))
    }

    /// Forgets a flow: its next packet is a new flow.
    pub fn forget(&mut self, key: &K) -> Result<(), DatapathError> {
        match self.flows.remove(key) {
            // Evicted or gone meanwhile.
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(map_error(self.flows_name)(err)),
        }
    }

    /// Flows the datapath remembered as pending: seen while taking over, not
    /// resolved from conntrack yet.
    pub fn pending(&self) -> Vec<K> {
        self.all()
            .into_iter()
            .filter(|(_, flow)| flow.uplink_index() == PENDING_UPLINK)
            .map(|(key, _)| key)
            .collect()
    }

    /// Forgets the flows `change` put on the other side of the direct set (a
    /// steered flow whose destination the main table now routes, a direct one
    /// whose route went away): their next packet is classified afresh. Returns
    /// how many.
    pub fn settle_direct(&mut self, change: &DirectChange) -> Result<usize, DatapathError>
    where
        K: Keyed,
    {
        let moved: Vec<K> = self
            .all()
            .into_iter()
            .filter(|(key, flow)| {
                change.moves(key.destination(), flow.uplink_index() == DIRECT_UPLINK)
            })
            .map(|(key, _)| key)
            .collect();
        for key in &moved {
            self.forget(key)?;
        }
        Ok(moved.len())
    }

    /// Adds each flow's uplink slot to `counts`.
    pub fn count_per_uplink(&self, counts: &mut BTreeMap<u32, usize>) {
        for (_, flow) in self.flows.iter().filter_map(Result::ok) {
            *counts.entry(flow.uplink_index()).or_default() += 1;
        }
    }

    /// Remembers each session conntrack NATs to an uplink's address on that
    /// uplink (with [`Seeding::FillGaps`], only where the datapath has not chosen
    /// one yet): the flow table then agrees with the NAT binding, so no packet of
    /// the session leaves through another uplink. `by` is `[balance] by`. Returns
    /// how many flows it wrote.
    pub fn seed(
        &mut self,
        sessions: &[NatedSession<K>],
        slot_of: &BTreeMap<IpAddr, u32>,
        seeding: Seeding,
        by: u32,
    ) -> Result<usize, DatapathError> {
        let now = monotonic_seconds();
        let mut written = 0;
        for session in sessions {
            let Some(&slot) = slot_of.get(&session.nated_to) else {
                continue;
            };
            let packets = match self.get(&session.key) {
                Some(flow) if flow.uplink_index() == slot => continue,
                Some(flow)
                    if seeding == Seeding::FillGaps && flow.uplink_index() != PENDING_UPLINK =>
                {
                    continue;
                }
                Some(flow) => flow.packets,
                None => 0,
            };
            let flow = Flow {
                uplink: slot as u16,
                chosen_by: chosen_by::CONNTRACK,
                rule: 0,
                created_s: now,
                packets,
            };
            self.insert(&session.key, &flow)?;
            written += 1;
            // Later connections of the same host (and server) follow the running
            // ones, as the datapath would have grouped them.
            if by != balance::CONNECTION {
                let affine = session.key.affinity(by);
                if self.affinity.get(&affine, 0).is_err() {
                    self.affinity
                        .insert(&affine, &slot, 0)
                        .map_err(map_error(self.affinity_name))?;
                }
            }
        }
        Ok(written)
    }

    /// Points the flows each rule (by index) chose at that rule's uplink (a slot),
    /// where they are elsewhere. Returns the flows it moved.
    pub fn move_rule_flows(
        &mut self,
        rule_uplinks: &BTreeMap<u8, u32>,
    ) -> Result<HashSet<K>, DatapathError> {
        let mut moved = HashSet::new();
        for (key, mut flow) in self.all() {
            if flow.chosen_by != chosen_by::RULE {
                continue;
            }
            let Some(&slot) = rule_uplinks.get(&flow.rule) else {
                continue;
            };
            if flow.uplink_index() != slot {
                flow.uplink = slot as u16;
                self.insert(&key, &flow)?;
                moved.insert(key);
            }
        }
        Ok(moved)
    }
}
