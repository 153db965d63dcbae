//! Keeps the fast path's tables in step with conntrack, on a thread of its own
//! (blocking netlink, off the daemon's loop): a session conntrack establishes on
//! an uplink that carries is bound (and told to be liberal about TCP windows), one
//! that ends, closes or is deleted (`conntrack -D`, the failover flush) is unbound
//! at once, and every bound session that carried traffic gets its conntrack
//! timeout refreshed, since its packets no longer reach conntrack.
//!
//! When the daemon stops, every session goes back to the slow path (conntrack
//! still has them all, so none breaks) — nothing would follow conntrack without
//! it. The next `load` binds them again.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use multiroute_ebpf::IPPROTO_TCP;
use tracing::{debug, info, warn};

use crate::{
    apply::datapath::{
        Maps,
        fast::{FastTables, Route},
        monotonic_seconds,
    },
    net::Family,
    netlink::conntrack::{self, Direction, Established, Event, Events},
    observe::host::read_sysctl_u32,
    plan::{MAIN_TABLE, Plan},
};

/// How long one read of conntrack's events may wait: the stop flag and the
/// timeout refresh are looked at this often.
const WAIT: Duration = Duration::from_millis(500);
/// How often carried sessions get their conntrack timeout refreshed at most: a
/// third of the shortest timeout such a session has (UDP's), within these bounds.
const REFRESH_BOUNDS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));

/// The uplinks' IPv4 addresses that carry, and where their sessions go.
type Routes = BTreeMap<Ipv4Addr, Route>;

pub struct FastPath {
    routes: Arc<Mutex<Routes>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FastPath {
    /// Starts following conntrack for the datapath pinned at `pin_path`.
    pub fn start(pin_path: PathBuf, plan: &Plan) -> Self {
        let routes = Arc::new(Mutex::new(routes(plan)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (routes, stop) = (routes.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fast-path".into())
                .spawn(move || follow(&pin_path, &routes, &stop))
                .map_err(|err| warn!("fast path off: cannot start its thread: {err}"))
                .ok()
        };
        Self {
            routes,
            stop,
            thread,
        }
    }

    /// The uplinks of a new plan: sessions are bound only on those that carry.
    pub fn follow_plan(&self, plan: &Plan) {
        if let Ok(mut routes) = self.routes.lock() {
            *routes = self::routes(plan);
        }
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn routes(plan: &Plan) -> Routes {
    plan.uplinks
        .iter()
        .filter(|u| u.carries(Family::V4))
        .filter_map(|u| {
            let std::net::IpAddr::V4(address) = u.address(Family::V4)? else {
                return None;
            };
            let route = Route {
                slot: u.slot as u16,
                uplink_table: u.table,
                lan_table: MAIN_TABLE,
            };
            Some((address, route))
        })
        .collect()
}

/// Why the fast path cannot follow conntrack on this host, if it cannot: without
/// its events a deleted entry would stay bound.
pub fn unavailable() -> Option<&'static str> {
    match read_sysctl_u32("net.netfilter.nf_conntrack_events") {
        None => Some("the kernel has no conntrack (net.netfilter.nf_conntrack_events missing)"),
        Some(0) => Some("conntrack events are off (net.netfilter.nf_conntrack_events = 0)"),
        Some(_) => None,
    }
}

fn follow(pin_path: &std::path::Path, routes: &Mutex<Routes>, stop: &AtomicBool) {
    if let Some(why) = unavailable() {
        return warn!("fast path off, every session takes the slow path: {why}");
    }
    let mut tables = match Maps::open(pin_path) {
        Ok(maps) => maps.fast,
        Err(err) => return warn!("fast path off: {err}"),
    };
    let mut events = match Events::subscribe(WAIT) {
        Ok(events) => events,
        Err(err) => return warn!("fast path off: cannot follow conntrack: {err}"),
    };
    let route_of = |session: &Established| routes.lock().ok()?.get(&session.nat_address).copied();
    let mut synced = false;
    let mut refreshed = (Instant::now(), monotonic_seconds());
    while !stop.load(Ordering::Relaxed) {
        if !synced {
            synced = resync(&mut tables, &route_of);
        }
        match events.read() {
            Ok(events) => {
                for event in events {
                    apply(&mut tables, event, &route_of);
                }
            }
            // Events were lost: start over from what conntrack holds.
            Err(None) => synced = false,
            Err(Some(err)) => {
                warn!("following conntrack: {err}");
                std::thread::sleep(WAIT);
            }
        }
        if refreshed.0.elapsed() >= refresh_interval() {
            refresh_carried(&tables, refreshed.1);
            refreshed = (Instant::now(), monotonic_seconds());
        }
    }
    match tables.clear() {
        Ok(sessions) => info!(
            sessions,
            "fast path stopped: every session is on the slow path"
        ),
        Err(err) => warn!("emptying the fast path: {err}"),
    }
}

/// Binds what conntrack holds established now and unbinds the rest; `false` when
/// conntrack could not be read (tried again on the next round).
fn resync(tables: &mut FastTables, route_of: &impl Fn(&Established) -> Option<Route>) -> bool {
    let sessions = match conntrack::established() {
        Ok(sessions) => sessions,
        Err(err) => {
            warn!("reading conntrack for the fast path: {err}");
            return false;
        }
    };
    let live: std::collections::HashSet<_> = sessions.iter().map(|s| s.lan_side()).collect();
    for (key, ..) in tables.sessions() {
        if !live.contains(&key) {
            let _ = tables.unbind(&key);
        }
    }
    for session in sessions {
        apply(tables, Event::Established(session), route_of);
    }
    true
}

fn apply(tables: &mut FastTables, event: Event, route_of: &impl Fn(&Established) -> Option<Route>) {
    let result = match event {
        Event::Established(session) => match route_of(&session) {
            Some(route) => bind(tables, &session, route),
            // Not (or no longer) an uplink that carries: the slow path decides.
            None => tables.unbind(&session.original).map(drop),
        },
        Event::Ended { original } => tables.unbind(&original).map(drop),
    };
    if let Err(err) = result {
        debug!("fast path table: {err}");
    }
}

fn bind(
    tables: &mut FastTables,
    session: &Established,
    route: Route,
) -> Result<(), crate::apply::datapath::DatapathError> {
    // Every change we make to an entry comes back as an event: a bound session
    // is left alone, or each refresh would answer the last one's event.
    let lan_side = session.lan_side();
    if tables.is_bound(&lan_side) {
        return Ok(());
    }
    if lan_side.proto == IPPROTO_TCP {
        // Before its data skips conntrack: its window tracking must accept the
        // FIN that follows.
        let named = (
            lan_side,
            direction(session.inbound),
            timeout(lan_side.proto),
        );
        match conntrack::refresh(&[named]) {
            Ok(1) => {}
            Ok(_) => return Ok(()),
            Err(err) => {
                debug!("marking a session be-liberal: {err}");
                return Ok(());
            }
        }
    }
    tables.bind(session, route)
}

/// Refreshes conntrack's timeout of every session the fast path carried since
/// `since` (monotonic seconds).
fn refresh_carried(tables: &FastTables, since: u32) {
    let carried: Vec<_> = tables
        .sessions()
        .into_iter()
        .filter(|(_, seen, ..)| *seen >= since)
        .map(|(key, _, _, inbound)| (key, direction(inbound), timeout(key.proto)))
        .collect();
    if carried.is_empty() {
        return;
    }
    if let Err(err) = conntrack::refresh(&carried) {
        warn!("refreshing conntrack timeouts of fast-path sessions: {err}");
    }
}

const TCP_ESTABLISHED: (&str, u32) = (
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    432_000,
);
const UDP_STREAM: (&str, u32) = ("net.netfilter.nf_conntrack_udp_timeout_stream", 120);
/// What an answered but not yet assured UDP session gets.
const UDP_REPLIED: (&str, u32) = ("net.netfilter.nf_conntrack_udp_timeout", 30);

fn sysctl((key, default): (&str, u32)) -> u32 {
    read_sysctl_u32(key).unwrap_or(default)
}

/// How conntrack names a session by its LAN side: the original direction of a
/// LAN host's, the reply of a port forward.
fn direction(inbound: bool) -> Direction {
    if inbound {
        Direction::Reply
    } else {
        Direction::Original
    }
}

/// The timeout conntrack gives an established session of `proto` (its sysctls).
fn timeout(proto: u8) -> u32 {
    sysctl(if proto == IPPROTO_TCP {
        TCP_ESTABLISHED
    } else {
        UDP_STREAM
    })
}

fn refresh_interval() -> Duration {
    let shortest = sysctl(UDP_REPLIED).min(sysctl(UDP_STREAM));
    (Duration::from_secs(u64::from(shortest)) / 3).clamp(REFRESH_BOUNDS.0, REFRESH_BOUNDS.1)
}
