//! The datapath's maps, opened from their pins: the plan written into them (uplinks,
//! rings, policy rules, direct destinations, the balance mode) and read back for
//! `status`, `flows`, repair and tests. One file per kind of map below.
mod direct;
pub mod fast;
pub mod flows;
mod prefix_trie;
mod ring;
mod rules;

use std::{collections::BTreeSet, path::Path};

use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use multiroute_ebpf::{
    COUNTER_COUNT, Counter, FlowKey, FlowKey6, MAX_UPLINKS, PENDING_UPLINK, RING_SIZE, SlotName,
    Traffic, Uplink, map_names,
};
use tracing::info;

use super::{
    error::{DatapathError, map_error},
    sys::open_map,
};
use crate::{
    net::{Family, IpNet, PerFamily},
    plan::{Plan, health_name, slots::Slots},
};
use direct::{DirectChange, DirectTries};
use fast::FastPathMaps;
use flows::FlowTables;
pub use flows::Seeding;
use ring::Ring;
use rules::RuleMaps;

/// The datapath's maps, opened from their pins: the same view for the daemon that
/// loaded them, for `status`/`flows`, and for tests.
pub struct Maps {
    /// IPv4's flow and affinity tables.
    pub v4: FlowTables<FlowKey>,
    /// IPv6's.
    pub v6: FlowTables<FlowKey6>,
    ring: PerFamily<Ring>,
    uplinks: Array<MapData, Uplink>,
    traffic: PerCpuArray<MapData, Traffic>,
    counters: PerCpuArray<MapData, u64>,
    slots: Array<MapData, SlotName>,
    /// `[balance] by`, one entry.
    balance: Array<MapData, u32>,
    rules: RuleMaps,
    direct: DirectTries,
    /// The fast path's bound sessions.
    pub fast: FastPathMaps,
}

/// The slot assignment a loaded datapath holds; empty when nothing is pinned.
pub fn read_slots(pin_path: &Path) -> Result<Slots, DatapathError> {
    if !pin_path.join(map_names::SLOTS).exists() {
        return Ok(Slots::new());
    }
    let names: Array<MapData, SlotName> = open_map(pin_path, map_names::SLOTS)?;
    let mut slots = Slots::new();
    for slot in 0..MAX_UPLINKS {
        let name = names.get(&slot, 0).map_err(map_error(map_names::SLOTS))?;
        let len = name
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name.bytes.len());
        if let Ok(name) = std::str::from_utf8(&name.bytes[..len])
            && !name.is_empty()
        {
            slots.insert(name.to_owned(), slot);
        }
    }
    Ok(slots)
}

/// The health names (see `plan::health_name`) of each family the running datapath
/// holds as not carrying: dead by probes, not ready, or standing by on a backup
/// tier — the map does not tell those apart.
pub fn not_carrying(pin_path: &Path) -> Result<BTreeSet<String>, DatapathError> {
    let uplinks: Array<MapData, Uplink> = open_map(pin_path, map_names::UPLINKS)?;
    let mut held = BTreeSet::new();
    for (name, slot) in read_slots(pin_path)? {
        let uplink = uplinks
            .get(&slot, 0)
            .map_err(map_error(map_names::UPLINKS))?;
        let carries = PerFamily {
            v4: uplink.carries,
            v6: uplink.carries6,
        };
        for (family, carries) in carries.iter() {
            if *carries == 0 {
                held.insert(health_name(&name, family));
            }
        }
    }
    Ok(held)
}

/// What the plan wants in uplink slot `index`: all zero (not alive) when unused.
fn planned_uplink(plan: &Plan, index: u32) -> Uplink {
    plan.datapath
        .uplinks
        .get(index as usize)
        .copied()
        .unwrap_or_default()
}

fn slot_name(name: &str) -> SlotName {
    let mut bytes = [0; 16];
    // Config validation keeps names to 15 bytes, leaving the NUL.
    let len = name.len().min(15);
    bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    SlotName { bytes }
}

impl Maps {
    pub fn open(pin_path: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            v4: FlowTables::open(pin_path, map_names::FLOWS, map_names::AFFINITY)?,
            v6: FlowTables::open(pin_path, map_names::FLOWS6, map_names::AFFINITY6)?,
            ring: PerFamily {
                v4: Ring::open(pin_path, map_names::RING)?,
                v6: Ring::open(pin_path, map_names::RING6)?,
            },
            uplinks: open_map(pin_path, map_names::UPLINKS)?,
            traffic: open_map(pin_path, map_names::TRAFFIC)?,
            counters: open_map(pin_path, map_names::COUNTERS)?,
            slots: open_map(pin_path, map_names::SLOTS)?,
            balance: open_map(pin_path, map_names::BALANCE)?,
            rules: RuleMaps::open(pin_path)?,
            direct: DirectTries::open(pin_path)?,
            fast: FastPathMaps::open(pin_path)?,
        })
    }

    /// Writes the plan's uplinks and rings. Uplinks first: a ring slot must never
    /// point at an uplink the datapath does not know yet, and a dead uplink's flows
    /// move (and new flows stop landing on it) from that one write on.
    pub fn write_plan(&mut self, plan: &Plan) -> Result<(), DatapathError> {
        self.write_uplinks(plan)?;
        self.write_direct(&plan.datapath.direct)?;
        self.write_rings(&plan.datapath.ring)?;
        self.write_policy(&plan.datapath.policy)
    }

    /// The destinations the classifier leaves to the main table; when they
    /// changed, the flows that changed sides are forgotten (a steered flow into a
    /// new VPN route must not keep its uplink's mark, which now skips the main
    /// table). Returns how many.
    pub fn write_direct(&mut self, direct: &BTreeSet<IpNet>) -> Result<usize, DatapathError> {
        let held = self.direct.write(direct)?;
        let Some(change) = held.and_then(|held| DirectChange::between(&held, direct)) else {
            return Ok(0);
        };
        let moved = self.v4.settle_direct(&change)? + self.v6.settle_direct(&change)?;
        if moved > 0 {
            info!("{moved} flows classified afresh: the main table's specific routes changed");
        }
        Ok(moved)
    }

    /// The policy rules new flows are matched against (unchanged ones are not
    /// rewritten).
    pub fn write_policy(&mut self, policy: &crate::plan::Policy) -> Result<(), DatapathError> {
        self.rules.write(policy)
    }

    /// How new flows are grouped (`[balance] by`); read only for new flows, so a
    /// change moves no running flow.
    pub fn write_balance(&mut self, by: u32) -> Result<(), DatapathError> {
        self.balance
            .set(0, &by, 0)
            .map_err(map_error(map_names::BALANCE))
    }

    /// The uplink table and the slot owners. Unused slots are cleared so a removed
    /// uplink's flows are re-steered.
    pub fn write_uplinks(&mut self, plan: &Plan) -> Result<(), DatapathError> {
        self.write_balance(plan.datapath.balance_by)?;
        for index in 0..MAX_UPLINKS {
            self.set_uplink(index, planned_uplink(plan, index))?;
            let owner = plan
                .uplinks
                .iter()
                .find(|u| u.slot == index)
                .map(|u| slot_name(&u.name))
                .unwrap_or_default();
            self.slots
                .set(index, &owner, 0)
                .map_err(map_error(map_names::SLOTS))?;
        }
        Ok(())
    }

    /// Writes each family's ring (see [`Ring::write`]).
    pub fn write_rings(&mut self, rings: &PerFamily<Vec<u32>>) -> Result<(), DatapathError> {
        for (family, ring) in rings.iter() {
            self.ring[family].write(ring)?;
        }
        Ok(())
    }

    /// Every ring slot of both families points at no uplink yet: new flows are
    /// remembered as pending and pass unmarked (see [`PENDING_UPLINK`]) until the
    /// real rings are written.
    pub fn write_pending_rings(&mut self) -> Result<(), DatapathError> {
        self.write_rings(&PerFamily::from_fn(|_| {
            vec![PENDING_UPLINK; RING_SIZE as usize]
        }))
    }

    /// Where the kernel's uplink table and ring differ from the plan, in words;
    /// empty when they match. Reads the maps themselves, not what we believe we
    /// wrote.
    pub fn differences(&mut self, plan: &Plan) -> Result<Vec<String>, DatapathError> {
        let mut differences = Vec::new();
        let by = self.balance_by()?;
        let planned = plan.datapath.balance_by;
        if by != planned {
            differences.push(format!("balance mode {by} instead of {planned}"));
        }
        for index in 0..MAX_UPLINKS {
            let held = self
                .uplinks
                .get(&index, 0)
                .map_err(map_error(map_names::UPLINKS))?;
            if held != planned_uplink(plan, index) {
                differences.push(format!("uplink slot {index} holds {held:?}"));
            }
        }
        for family in Family::ALL {
            let wrong = self.ring[family].differing_slots(&plan.datapath.ring[family])?;
            if wrong > 0 {
                let family = family.name();
                differences.push(format!("{wrong} {family} ring slots differ from the plan"));
            }
        }
        differences.extend(self.rules.differences(&plan.datapath.policy)?);
        differences.extend(self.direct.differences(&plan.datapath.direct)?);
        Ok(differences)
    }

    pub fn set_uplink(&mut self, index: u32, uplink: Uplink) -> Result<(), DatapathError> {
        self.uplinks
            .set(index, &uplink, 0)
            .map_err(map_error(map_names::UPLINKS))
    }

    /// `[balance] by`, as the datapath reads it.
    pub fn balance_by(&self) -> Result<u32, DatapathError> {
        self.balance
            .get(&0, 0)
            .map_err(map_error(map_names::BALANCE))
    }

    /// How many tracked flows each uplink slot holds, in one walk of the table.
    pub fn flows_per_uplink(&self) -> std::collections::BTreeMap<u32, usize> {
        let mut counts = std::collections::BTreeMap::new();
        self.v4.count_per_uplink(&mut counts);
        self.v6.count_per_uplink(&mut counts);
        counts
    }

    /// Packets and bytes steered to uplink `index`, summed over CPUs.
    pub fn traffic(&self, index: u32) -> Result<Traffic, DatapathError> {
        let per_cpu: PerCpuValues<Traffic> = self
            .traffic
            .get(&index, 0)
            .map_err(map_error(map_names::TRAFFIC))?;
        Ok(per_cpu.iter().fold(Traffic::default(), |sum, t| Traffic {
            packets: sum.packets + t.packets,
            bytes: sum.bytes + t.bytes,
        }))
    }

    /// Every outcome counter of `family` (`multiroute_ebpf::family`), summed over
    /// CPUs.
    pub fn counters(&self, family: u32) -> Result<Vec<(Counter, u64)>, DatapathError> {
        (family * COUNTER_COUNT..)
            .zip(Counter::ALL)
            .map(|(index, counter)| {
                let per_cpu = self
                    .counters
                    .get(&index, 0)
                    .map_err(map_error(map_names::COUNTERS))?;
                Ok((counter, per_cpu.iter().sum()))
            })
            .collect()
    }
}
