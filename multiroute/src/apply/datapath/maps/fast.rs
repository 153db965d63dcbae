//! The fast path's two tables as userspace writes them: a session conntrack has
//! established goes in by both of its directions, and out when conntrack ends it;
//! and the offers the datapath makes of flows worth binding.
use std::{
    collections::HashSet,
    os::fd::{AsRawFd, RawFd},
    path::Path,
};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf};
use multiroute_ebpf::{FastFlow, FlowKey, map_names};

use crate::{
    apply::datapath::{
        error::{DatapathError, map_error},
        sys::open_map,
    },
    netlink::conntrack::Established,
};

/// Where a session's packets go on the fast path: the uplink's slot and table
/// for the LAN side's, `MAIN_TABLE` for its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub slot: u16,
    pub uplink_table: u32,
    pub lan_table: u32,
}

pub struct FastTables {
    out: HashMap<MapData, FlowKey, FastFlow>,
    reply: HashMap<MapData, FlowKey, FastFlow>,
    traffic: PerCpuArray<MapData, u64>,
    /// Both keys of every session bound (a superset: the datapath unbinds a
    /// closing one itself): conntrack's end of a session never bound, most of
    /// them, then costs no map lookup. Read from the table when first needed
    /// (a daemon that did not stop cleanly leaves sessions bound).
    bound: Option<HashSet<FlowKey>>,
}

impl FastTables {
    pub(super) fn open(pin_path: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            out: open_map(pin_path, map_names::FAST)?,
            reply: open_map(pin_path, map_names::FAST_REPLY)?,
            traffic: open_map(pin_path, map_names::FAST_TRAFFIC)?,
            bound: None,
        })
    }

    fn bound(&mut self) -> &mut HashSet<FlowKey> {
        self.bound.get_or_insert_with(|| {
            self.out
                .iter()
                .filter_map(Result::ok)
                .flat_map(|(key, flow)| [key, flow.reply_key(&key)])
                .collect()
        })
    }

    /// Whether the session whose LAN side sends `lan_side` is bound.
    pub fn is_bound(&self, lan_side: &FlowKey) -> bool {
        self.out.get(lan_side, 0).is_ok()
    }

    /// Binds `session` to the fast path over `route`. A session already bound
    /// keeps its counters.
    pub fn bind(&mut self, session: &Established, route: Route) -> Result<(), DatapathError> {
        let lan_side = session.lan_side();
        if self.is_bound(&lan_side) {
            return Ok(());
        }
        // The LAN side's packets leave from the uplink's address (the NAT, or the
        // address a port forward arrived at); the uplink side's reach the LAN host.
        let (wan_side, lan_host) = if session.inbound {
            (session.original, session.reply)
        } else {
            (session.reply, session.original)
        };
        let out = FastFlow {
            addr: wan_side.dst,
            port: wan_side.dst_port,
            slot: route.slot,
            table: route.uplink_table,
            inbound: u32::from(session.inbound),
            ..FastFlow::default()
        };
        let reply = FastFlow {
            addr: lan_host.src,
            port: lan_host.src_port,
            slot: route.slot,
            table: route.lan_table,
            inbound: u32::from(session.inbound),
            ..FastFlow::default()
        };
        // The uplink side first: by the time the LAN side is fast, its answers are
        // too.
        self.bound().extend([lan_side, wan_side]);
        self.reply
            .insert(&wan_side, &reply, 0)
            .map_err(map_error(map_names::FAST_REPLY))?;
        self.out
            .insert(&lan_side, &out, 0)
            .map_err(map_error(map_names::FAST))
    }

    /// Sends the session back to the slow path, named by either direction (the
    /// original of an outbound session is its LAN side, of a port forward its
    /// uplink side); `false` when it was not bound.
    pub fn unbind(&mut self, direction: &FlowKey) -> Result<bool, DatapathError> {
        if !self.bound().contains(direction) {
            return Ok(false);
        }
        let (lan_side, wan_side) = if let Ok(out) = self.out.get(direction, 0) {
            (*direction, out.reply_key(direction))
        } else if let Ok(reply) = self.reply.get(direction, 0) {
            (reply.lan_key(direction), *direction)
        } else {
            self.bound().remove(direction);
            return Ok(false);
        };
        let bound = self.bound();
        bound.remove(&lan_side);
        bound.remove(&wan_side);
        remove(&mut self.out, &lan_side, map_names::FAST)?;
        remove(&mut self.reply, &wan_side, map_names::FAST_REPLY)?;
        Ok(true)
    }

    /// Every bound session by its LAN side's key, with the time its last packet
    /// took the fast path (the later of both directions), its packets, and
    /// whether it is a port forward.
    pub fn sessions(&self) -> Vec<(FlowKey, u32, u64, bool)> {
        self.out
            .iter()
            .filter_map(Result::ok)
            .map(|(key, out)| {
                let reply = self.reply.get(&out.reply_key(&key), 0).unwrap_or_default();
                let seen = out.seen_s.max(reply.seen_s);
                (key, seen, out.packets + reply.packets, out.inbound != 0)
            })
            .collect()
    }

    /// Packets the fast path forwarded for uplink `slot`, both directions.
    pub fn packets(&self, slot: u32) -> Result<u64, DatapathError> {
        let per_cpu = self
            .traffic
            .get(&slot, 0)
            .map_err(map_error(map_names::FAST_TRAFFIC))?;
        Ok(per_cpu.iter().sum())
    }

    /// The packets the fast path forwarded of the session whose LAN side is
    /// `original` (both directions), if it is bound.
    pub fn session_packets(&self, original: &FlowKey) -> Option<u64> {
        let out = self.out.get(original, 0).ok()?;
        let reply = self
            .reply
            .get(&out.reply_key(original), 0)
            .unwrap_or_default();
        Some(out.packets + reply.packets)
    }

    /// Sends every session back to the slow path (the daemon stops, or
    /// `fast_path = false`).
    pub fn clear(&mut self) -> Result<usize, DatapathError> {
        let keys: Vec<_> = self.out.keys().filter_map(Result::ok).collect();
        for key in &keys {
            self.unbind(key)?;
        }
        Ok(keys.len())
    }
}

fn remove(
    map: &mut HashMap<MapData, FlowKey, FastFlow>,
    key: &FlowKey,
    name: &'static str,
) -> Result<(), DatapathError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(err) => Err(map_error(name)(err)),
    }
}

/// The flows the datapath offers for binding (`MR_OFFERS`): unbound ones that
/// keep going (see `multiroute_ebpf::OFFER_AFTER`), by their LAN side's key.
pub struct Offers {
    ring: RingBuf<MapData>,
}

impl Offers {
    pub fn open(pin_path: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            ring: open_map(pin_path, map_names::OFFERS)?,
        })
    }

    /// What was offered since the last call, each flow once.
    pub fn take(&mut self) -> Vec<FlowKey> {
        let mut keys = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<FlowKey>() {
                // SAFETY: the datapath writes whole `FlowKey`s (plain integers);
                // the read is unaligned-safe.
                let key = unsafe { item.as_ptr().cast::<FlowKey>().read_unaligned() };
                keys.push(key);
            }
        }
        keys.sort_unstable_by_key(|key| (key.src, key.dst, key.src_port, key.dst_port, key.proto));
        keys.dedup();
        keys
    }
}

impl AsRawFd for Offers {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
