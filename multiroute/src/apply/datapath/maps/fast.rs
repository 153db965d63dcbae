//! The fast path's two tables as userspace writes them: a session conntrack has
//! established goes in by both of its directions, and out when conntrack ends it.
use std::path::Path;

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
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
}

impl FastTables {
    pub(super) fn open(pin_path: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            out: open_map(pin_path, map_names::FAST)?,
            reply: open_map(pin_path, map_names::FAST_REPLY)?,
            traffic: open_map(pin_path, map_names::FAST_TRAFFIC)?,
        })
    }

    /// Whether the session whose LAN side is `original` is bound.
    pub fn is_bound(&self, original: &FlowKey) -> bool {
        self.out.get(original, 0).is_ok()
    }

    /// Binds `session` to the fast path over `route`. A session already bound
    /// keeps its counters.
    pub fn bind(&mut self, session: &Established, route: Route) -> Result<(), DatapathError> {
        if self.is_bound(&session.original) {
            return Ok(());
        }
        let out = FastFlow {
            addr: session.reply.dst,
            port: session.reply.dst_port,
            slot: route.slot,
            table: route.uplink_table,
            ..FastFlow::default()
        };
        let reply = FastFlow {
            addr: session.original.src,
            port: session.original.src_port,
            slot: route.slot,
            table: route.lan_table,
            ..FastFlow::default()
        };
        // Replies first: by the time the LAN side is fast, its answers are too.
        self.reply
            .insert(&session.reply, &reply, 0)
            .map_err(map_error(map_names::FAST_REPLY))?;
        self.out
            .insert(&session.original, &out, 0)
            .map_err(map_error(map_names::FAST))
    }

    /// Sends the session back to the slow path; `false` when it was not bound.
    pub fn unbind(&mut self, original: &FlowKey) -> Result<bool, DatapathError> {
        let Ok(out) = self.out.get(original, 0) else {
            return Ok(false);
        };
        remove(&mut self.out, original, map_names::FAST)?;
        let reply = reply_key(original, &out);
        remove(&mut self.reply, &reply, map_names::FAST_REPLY)?;
        Ok(true)
    }

    /// Every bound session by its LAN side's key, with the time its last packet
    /// took the fast path (the later of both directions) and its packets.
    pub fn sessions(&self) -> Vec<(FlowKey, u32, u64)> {
        self.out
            .iter()
            .filter_map(Result::ok)
            .map(|(key, out)| {
                let reply = self
                    .reply
                    .get(&reply_key(&key, &out), 0)
                    .unwrap_or_default();
                (
                    key,
                    out.seen_s.max(reply.seen_s),
                    out.packets + reply.packets,
                )
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
            .get(&reply_key(original, &out), 0)
            .unwrap_or_default();
        Some(out.packets + reply.packets)
    }

    /// Sends every session back to the slow path (`fast_path = false`).
    pub fn clear(&mut self) -> Result<usize, DatapathError> {
        let keys: Vec<_> = self.out.keys().filter_map(Result::ok).collect();
        for key in &keys {
            self.unbind(key)?;
        }
        Ok(keys.len())
    }
}

/// The reply direction's key of a session bound as `out`: from the server to the
/// NAT address and port.
fn reply_key(original: &FlowKey, out: &FastFlow) -> FlowKey {
    FlowKey {
        src: original.dst,
        dst: out.addr,
        src_port: original.dst_port,
        dst_port: out.port,
        proto: original.proto,
        pad: [0; 3],
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
