//! The fast path's tables as userspace writes them: a session conntrack has
//! established goes in by both of its directions, and out when conntrack ends it
//! (one pair of tables per family); and the offers the datapath makes of flows
//! worth binding.
use std::{
    collections::HashSet,
    hash::Hash,
    os::fd::{AsRawFd, RawFd},
    path::Path,
};

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
};
use multiroute_ebpf::{FastFlow, FlowIdentity, FlowKey, FlowKey6, map_names};

use crate::{
    apply::datapath::{
        error::{DatapathError, map_error},
        sys::open_map,
    },
    netlink::conntrack::{Established, Keyed, SessionKey},
};

/// Where a session's packets go on the fast path: the uplink's slot and table
/// for the LAN side's, `MAIN_TABLE` for its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub slot: u16,
    pub uplink_table: u32,
    pub lan_table: u32,
}

/// A family's flow key as the fast path binds it, and its tables' names.
pub trait Bindable: FlowIdentity + Keyed + Pod + Eq + Hash + std::fmt::Debug {
    /// The tables by the LAN side's key and by the replies'.
    const TABLES: (&'static str, &'static str);
    /// This family's tables of the pair.
    fn tables(fast: &mut FastPathMaps) -> &mut FastTables<Self>;
}

impl Bindable for FlowKey {
    const TABLES: (&'static str, &'static str) = (map_names::FAST, map_names::FAST_REPLY);
    fn tables(fast: &mut FastPathMaps) -> &mut FastTables<Self> {
        &mut fast.v4
    }
}

impl Bindable for FlowKey6 {
    const TABLES: (&'static str, &'static str) = (map_names::FAST6, map_names::FAST6_REPLY);
    fn tables(fast: &mut FastPathMaps) -> &mut FastTables<Self> {
        &mut fast.v6
    }
}

/// A family's binding, as its tables hold it.
type Binding<K> = FastFlow<<K as FlowIdentity>::Addr>;

/// The fast path's maps: both families' tables and the packets per uplink.
pub struct FastPathMaps {
    pub v4: FastTables<FlowKey>,
    pub v6: FastTables<FlowKey6>,
    traffic: PerCpuArray<MapData, u64>,
}

impl FastPathMaps {
    pub(super) fn open(pin_path: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            v4: FastTables::open(pin_path)?,
            v6: FastTables::open(pin_path)?,
            traffic: open_map(pin_path, map_names::FAST_TRAFFIC)?,
        })
    }

    /// Packets the fast path forwarded for uplink `slot`, both directions and
    /// families.
    pub fn packets(&self, slot: u32) -> Result<u64, DatapathError> {
        let per_cpu = self
            .traffic
            .get(&slot, 0)
            .map_err(map_error(map_names::FAST_TRAFFIC))?;
        Ok(per_cpu.iter().sum())
    }

    /// Sends every session of both families back to the slow path (the daemon
    /// stops, or `fast_path = false`).
    pub fn clear(&mut self) -> Result<usize, DatapathError> {
        Ok(self.v4.clear()? + self.v6.clear()?)
    }
}

/// One family's pair of tables.
pub struct FastTables<K: Bindable> {
    out: HashMap<MapData, K, Binding<K>>,
    reply: HashMap<MapData, K, Binding<K>>,
    /// Both keys of every session bound (a superset: the datapath unbinds a
    /// closing one itself): conntrack's end of a session never bound, most of
    /// them, then costs no map lookup. Read from the table when first needed
    /// (a daemon that did not stop cleanly leaves sessions bound).
    bound: Option<HashSet<K>>,
}

impl<K: Bindable> FastTables<K> {
    fn open(pin_path: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            out: open_map(pin_path, K::TABLES.0)?,
            reply: open_map(pin_path, K::TABLES.1)?,
            bound: None,
        })
    }

    fn bound(&mut self) -> &mut HashSet<K> {
        self.bound.get_or_insert_with(|| {
            self.out
                .iter()
                .filter_map(Result::ok)
                .flat_map(|(key, flow)| [key, flow.reply_key(&key)])
                .collect()
        })
    }

    /// Whether the session whose LAN side sends `lan_side` is bound.
    pub fn is_bound(&self, lan_side: &K) -> bool {
        self.out.get(lan_side, 0).is_ok()
    }

    /// Binds `session` to the fast path over `route`. A session already bound
    /// keeps its counters.
    pub fn bind(&mut self, session: &Established<K>, route: Route) -> Result<(), DatapathError> {
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
            addr: wan_side.dst(),
            port: wan_side.wire_ports().1,
            slot: route.slot,
            table: route.uplink_table,
            inbound: u32::from(session.inbound),
            ..FastFlow::default()
        };
        let reply = FastFlow {
            addr: lan_host.src(),
            port: lan_host.wire_ports().0,
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
            .map_err(map_error(K::TABLES.1))?;
        self.out
            .insert(&lan_side, &out, 0)
            .map_err(map_error(K::TABLES.0))
    }

    /// Sends the session back to the slow path, named by either direction (the
    /// original of an outbound session is its LAN side, of a port forward its
    /// uplink side); `false` when it was not bound.
    pub fn unbind(&mut self, direction: &K) -> Result<bool, DatapathError> {
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
        remove(&mut self.out, &lan_side, K::TABLES.0)?;
        remove(&mut self.reply, &wan_side, K::TABLES.1)?;
        Ok(true)
    }

    /// Every bound session by its LAN side's key, with the time its last packet
    /// took the fast path (the later of both directions), its packets, and
    /// whether it is a port forward.
    pub fn sessions(&self) -> Vec<(K, u32, u64, bool)> {
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

    /// The packets the fast path forwarded of the session whose LAN side is
    /// `original` (both directions), if it is bound.
    pub fn session_packets(&self, original: &K) -> Option<u64> {
        let out = self.out.get(original, 0).ok()?;
        let reply = self
            .reply
            .get(&out.reply_key(original), 0)
            .unwrap_or_default();
        Some(out.packets + reply.packets)
    }

    /// Sends every session of the family back to the slow path.
    pub fn clear(&mut self) -> Result<usize, DatapathError> {
        let keys: Vec<_> = self.out.keys().filter_map(Result::ok).collect();
        for key in &keys {
            self.unbind(key)?;
        }
        Ok(keys.len())
    }
}

fn remove<K: Bindable>(
    map: &mut HashMap<MapData, K, Binding<K>>,
    key: &K,
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

    /// What was offered since the last call, each flow once; the families'
    /// keys are told apart by their length.
    pub fn take(&mut self) -> Vec<SessionKey> {
        let (mut keys, mut seen) = (Vec::new(), HashSet::new());
        while let Some(item) = self.ring.next() {
            // SAFETY: the datapath writes whole keys (plain integers); the reads
            // are unaligned-safe.
            let key = match item.len() {
                n if n == size_of::<FlowKey>() => {
                    SessionKey::V4(unsafe { item.as_ptr().cast::<FlowKey>().read_unaligned() })
                }
                n if n == size_of::<FlowKey6>() => {
                    SessionKey::V6(unsafe { item.as_ptr().cast::<FlowKey6>().read_unaligned() })
                }
                _ => continue,
            };
            if seen.insert(key) {
                keys.push(key);
            }
        }
        keys
    }
}

impl AsRawFd for Offers {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
