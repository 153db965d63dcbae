//! Keeps the fast path's tables in step with conntrack, on a thread of its own
//! (blocking netlink, off the daemon's loop): a flow the datapath offers (one that
//! keeps going) is looked up in conntrack and bound when it is established on an
//! uplink that carries (and told to be liberal about TCP windows) — NATed to
//! that uplink's address, or, for IPv6 that conntrack does not NAT, on the
//! uplink its flow uses, with that uplink's prefix translation; one that ends
//! or is deleted (`conntrack -D`, the failover flush) is unbound at once; and
//! every bound session that carried traffic gets its conntrack timeout refreshed,
//! since its packets no longer reach conntrack. Short connections are never
//! bound, and their ends never reach this thread: the socket's filter
//! (`multiroute_ends`) lets through only those of bound sessions.
//!
//! When the daemon stops, every session goes back to the slow path (conntrack
//! still has them all, so none breaks) — nothing would follow conntrack without
//! it. The next `load` binds them again.
use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::ProgramFd;
use multiroute_ebpf::{FlowKey, FlowKey6, IPPROTO_TCP};
use tracing::{debug, info, warn};

use crate::{
    apply::datapath::{
        Maps,
        fast::{Bindable, FastPathMaps, Offers, Route},
        maps::flows::FlowTables,
        monotonic_seconds,
    },
    config::Nat6,
    net::{Family, Ipv6Net},
    netlink::conntrack::{self, Direction, Established, Events, SessionKey, Updates},
    observe::host::read_sysctl_u32,
    plan::{MAIN_TABLE, Plan, nft::Translation},
};

/// How long one wait for conntrack's events or the datapath's offers may last:
/// the stop flag and the timeout refresh are looked at this often.
const WAIT: Duration = Duration::from_millis(500);
/// How often carried sessions get their conntrack timeout refreshed at most: a
/// third of the shortest timeout such a session has (UDP's), within these bounds.
const REFRESH_BOUNDS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));

/// Where the sessions of the uplinks that carry go: by the address conntrack
/// NATs them to (of each family), and by uplink slot for IPv6 that leaves
/// without conntrack's NAT.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Routes {
    nated: BTreeMap<IpAddr, Route>,
    stateless: BTreeMap<u16, (Route, Stateless)>,
}

/// How an uplink's IPv6 leaves when conntrack does not NAT it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stateless {
    /// Routed, the LAN's addresses as they are (`nat6 = "none"`).
    AsIs,
    /// The LAN prefix mapped onto the uplink's (`nat6 = "npt"`).
    Prefix { lan: Ipv6Net, outside: Ipv6Net },
}

impl Stateless {
    /// The LAN host's address on the wire, `None` when it is not the LAN's.
    fn map(self, host: Ipv6Addr) -> Option<Ipv6Addr> {
        match self {
            Stateless::AsIs => Some(host),
            Stateless::Prefix { lan, outside } => lan.translate(host, outside),
        }
    }
}

/// The routes of the newest plan, until the thread takes them: it copies
/// nothing while no plan comes.
type NewRoutes = Mutex<Option<Routes>>;

pub struct FastPath {
    routes: Arc<NewRoutes>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FastPath {
    /// Starts following conntrack for the datapath pinned at `pin_path`, its
    /// destroy events passed through `filter` (see `Datapath::ends_filter`).
    pub fn start(pin_path: PathBuf, plan: &Plan, filter: Option<ProgramFd>) -> Self {
        let routes = Arc::new(Mutex::new(Some(routes(plan))));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (routes, stop) = (routes.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fast-path".into())
                .spawn(move || follow(&pin_path, &routes, &stop, filter))
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
            *routes = Some(self::routes(plan));
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
    let mut routes = Routes::default();
    for u in &plan.uplinks {
        let route = Route {
            slot: u.slot as u16,
            uplink_table: u.table,
            lan_table: MAIN_TABLE,
        };
        for family in [Family::V4, Family::V6] {
            if u.carries(family)
                && let Some(address) = u.address(family)
            {
                routes.nated.insert(address, route);
            }
        }
        let prefix = || {
            plan.firewall
                .nat6
                .iter()
                .find_map(|nat| match nat.translation {
                    Translation::Prefix { lan, outside } if nat.interface == u.interface => {
                        Some(Stateless::Prefix { lan, outside })
                    }
                    _ => None,
                })
        };
        let stateless = match u.nat6 {
            Nat6::None => Some(Stateless::AsIs),
            Nat6::Npt { .. } => prefix(),
            Nat6::Masquerade => None,
        };
        if u.carries(Family::V6)
            && let Some(stateless) = stateless
        {
            routes.stateless.insert(route.slot, (route, stateless));
        }
    }
    routes
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

fn follow(
    pin_path: &std::path::Path,
    routes: &NewRoutes,
    stop: &AtomicBool,
    filter: Option<ProgramFd>,
) {
    if let Some(why) = unavailable() {
        return warn!("fast path off, every session takes the slow path: {why}");
    }
    let (tables, flows6, mut offers) = match (Maps::open(pin_path), Offers::open(pin_path)) {
        (Ok(maps), Ok(offers)) => (maps.fast, maps.v6, offers),
        (Err(err), _) | (_, Err(err)) => return warn!("fast path off: {err}"),
    };
    let (mut events, updates) = match (Events::subscribe(), Updates::open()) {
        (Ok(events), Ok(updates)) => (events, updates),
        (Err(err), _) | (_, Err(err)) => {
            return warn!("fast path off: cannot follow conntrack: {err}");
        }
    };
    if let Some(filter) = filter
        && let Err(err) = events.filter(filter.as_fd())
    {
        warn!("the ends of every session reach the fast path's thread: {err}");
    }
    let mut follower = Follower {
        tables,
        flows6,
        routes,
        seen: Routes::default(),
        updates,
        timeouts: Timeouts::read(),
    };
    let mut synced = false;
    let mut refreshed = (Instant::now(), monotonic_seconds());
    while !stop.load(Ordering::Relaxed) {
        if !follower.follow_routes() {
            synced = false;
        }
        if !synced {
            synced = follower.resync::<FlowKey>() & follower.resync::<FlowKey6>();
        }
        let (ended, offered) = readable(&events, &offers);
        if offered {
            for key in offers.take() {
                match key {
                    SessionKey::V4(key) => follower.offered(&key),
                    SessionKey::V6(key) => follower.offered(&key),
                }
            }
        }
        if ended {
            match events.read() {
                Ok(ends) => {
                    for key in ends {
                        follower.ended(key);
                    }
                }
                // Events were lost: start over from what conntrack holds.
                Err(None) => synced = false,
                Err(Some(err)) => {
                    warn!("following conntrack: {err}");
                    std::thread::sleep(WAIT);
                }
            }
        }
        if refreshed.0.elapsed() >= follower.timeouts.refresh_every {
            follower.refresh_carried::<FlowKey>(refreshed.1);
            follower.refresh_carried::<FlowKey6>(refreshed.1);
            refreshed = (Instant::now(), monotonic_seconds());
            // A changed sysctl counts from the next round on.
            follower.timeouts = Timeouts::read();
        }
    }
    match follower.tables.clear() {
        Ok(sessions) => info!(
            sessions,
            "fast path stopped: every session is on the slow path"
        ),
        Err(err) => warn!("emptying the fast path: {err}"),
    }
}

/// Waits at most [`WAIT`] for conntrack's events or the datapath's offers:
/// (events readable, offers readable).
fn readable(events: &Events, offers: &Offers) -> (bool, bool) {
    let mut fds = [events.as_raw_fd(), offers.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: poll(2) on two valid descriptors this thread owns, for WAIT at most.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, WAIT.as_millis() as libc::c_int) };
    if ready <= 0 {
        return (false, false);
    }
    let is_ready = |fd: &libc::pollfd| fd.revents & (libc::POLLIN | libc::POLLERR) != 0;
    (is_ready(&fds[0]), is_ready(&fds[1]))
}

/// The thread's state: the tables it writes, the IPv6 flow table (which uplink
/// a session conntrack does not NAT uses), the uplinks sessions may be bound to
/// (the daemon's, and the copy the bindings follow), its socket for conntrack
/// updates, and conntrack's timeouts.
struct Follower<'a> {
    tables: FastPathMaps,
    flows6: FlowTables<FlowKey6>,
    routes: &'a NewRoutes,
    seen: Routes,
    updates: Updates,
    timeouts: Timeouts,
}

/// What the thread does differently per family: where a session conntrack does
/// not NAT goes.
trait Followed: Bindable {
    /// The session as its packets look on the wire, and its route; `None` for
    /// IPv4, which leaves only by conntrack's NAT here.
    fn stateless(
        follower: &Follower,
        session: &Established<Self>,
    ) -> Option<(Established<Self>, Route)>;
}

impl Followed for FlowKey {
    fn stateless(_: &Follower, _: &Established<Self>) -> Option<(Established<Self>, Route)> {
        None
    }
}

impl Followed for FlowKey6 {
    fn stateless(
        follower: &Follower,
        session: &Established<Self>,
    ) -> Option<(Established<Self>, Route)> {
        let lan_side = session.lan_side();
        let uplink = follower.flows6.get(&lan_side)?.uplink;
        let (route, stateless) = *follower.seen.stateless.get(&uplink)?;
        let mapped = stateless.map(Ipv6Addr::from(lan_side.src_octets()))?;
        // Its replies arrive addressed to the mapped address.
        let mut reply = session.reply;
        reply.dst = FlowKey6::words(mapped.octets());
        let wire = Established {
            reply,
            nat_address: mapped.into(),
            ..*session
        };
        Some((wire, route))
    }
}

impl Follower<'_> {
    fn route_of<K>(&self, session: &Established<K>) -> Option<Route> {
        self.seen.nated.get(&session.nat_address).copied()
    }

    /// Takes the routes of a new plan; `false` when they changed (an uplink
    /// began or stopped carrying, an address or prefix changed), since what
    /// conntrack holds must be bound anew: a session offered while its uplink
    /// did not carry yet was left unbound. IPv6 bound with a prefix translation
    /// that changed goes back to the slow path first.
    fn follow_routes(&mut self) -> bool {
        let Some(now) = self.routes.lock().ok().and_then(|mut routes| routes.take()) else {
            return true;
        };
        if now == self.seen {
            return true;
        }
        let renumbered = !self.seen.stateless.is_empty() && now.stateless != self.seen.stateless;
        self.seen = now;
        if renumbered && let Err(err) = self.tables.v6.clear() {
            warn!("emptying the IPv6 fast path: {err}");
        }
        false
    }

    /// Binds what conntrack holds established of `K`'s family now and unbinds
    /// the rest; `false` when conntrack could not be read (tried again on the
    /// next round).
    fn resync<K: Followed>(&mut self) -> bool {
        let sessions = match conntrack::established::<K>() {
            Ok(sessions) => sessions,
            Err(err) => {
                warn!("reading conntrack for the fast path: {err}");
                return false;
            }
        };
        let live: HashSet<K> = sessions.iter().map(Established::lan_side).collect();
        let tables = K::tables(&mut self.tables);
        for (key, ..) in tables.sessions() {
            if !live.contains(&key) {
                let _ = tables.unbind(&key);
            }
        }
        for session in sessions {
            self.established(&session);
        }
        true
    }

    /// Binds the session of a flow the datapath offered, if conntrack holds it
    /// established on an uplink that carries.
    fn offered<K: Followed>(&mut self, lan_side: &K) {
        if K::tables(&mut self.tables).is_bound(lan_side) {
            return;
        }
        match self.updates.established(lan_side) {
            Ok(Some(session)) => self.established(&session),
            Ok(None) => {}
            Err(err) => debug!("looking up an offered flow in conntrack: {err}"),
        }
    }

    /// A session conntrack holds established: bound when its uplink carries,
    /// else back to the slow path, which decides.
    fn established<K: Followed>(&mut self, session: &Established<K>) {
        let bound = if session.nated {
            self.route_of(session).map(|route| (*session, route))
        } else {
            K::stateless(self, session)
        };
        let result = match bound {
            Some((session, route)) => self.bind(&session, route),
            None => K::tables(&mut self.tables)
                .unbind(&session.original)
                .map(drop),
        };
        if let Err(err) = result {
            debug!("fast path table: {err}");
        }
    }

    /// A session conntrack destroyed: back to the slow path.
    fn ended(&mut self, original: SessionKey) {
        let result = match original {
            SessionKey::V4(key) => self.tables.v4.unbind(&key),
            SessionKey::V6(key) => self.tables.v6.unbind(&key),
        };
        if let Err(err) = result {
            debug!("fast path table: {err}");
        }
    }

    fn bind<K: Bindable>(
        &mut self,
        session: &Established<K>,
        route: Route,
    ) -> Result<(), crate::apply::datapath::DatapathError> {
        // A bound session offered again, or read again from a dump, is left alone.
        let lan_side = session.lan_side();
        if K::tables(&mut self.tables).is_bound(&lan_side) {
            return Ok(());
        }
        K::tables(&mut self.tables).bind(session, route)?;
        // Conntrack is told after the binding exists: an entry it destroyed before
        // sent the daemon no end (`multiroute_ends` keeps back those of unbound
        // sessions), and this update is what finds it gone. It also marks TCP
        // be-liberal, so the window tracking accepts the FIN after fast data.
        let named = (
            lan_side,
            direction(session.inbound),
            self.timeouts.of(lan_side.proto()),
        );
        match self.updates.refresh(&[named]) {
            Ok(1) => Ok(()),
            result => {
                if let Err(err) = result {
                    debug!("telling conntrack of a binding: {err}");
                }
                K::tables(&mut self.tables).unbind(&lan_side).map(drop)
            }
        }
    }

    /// Refreshes conntrack's timeout of every session of `K`'s family the fast
    /// path carried since `since` (monotonic seconds).
    fn refresh_carried<K: Bindable>(&mut self, since: u32) {
        let timeouts = self.timeouts;
        let carried: Vec<_> = K::tables(&mut self.tables)
            .sessions()
            .into_iter()
            .filter(|(_, seen, ..)| *seen >= since)
            .map(|(key, _, _, inbound)| (key, direction(inbound), timeouts.of(key.proto())))
            .collect();
        if carried.is_empty() {
            return;
        }
        if let Err(err) = self.updates.refresh(&carried) {
            warn!("refreshing conntrack timeouts of fast-path sessions: {err}");
        }
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

/// Conntrack's timeouts for established sessions (its sysctls), and how often
/// carried sessions are refreshed: a third of the shortest UDP one, bounded.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    tcp: u32,
    udp: u32,
    refresh_every: Duration,
}

impl Timeouts {
    fn read() -> Self {
        let udp = sysctl(UDP_STREAM);
        let shortest = sysctl(UDP_REPLIED).min(udp);
        let refresh_every = (Duration::from_secs(u64::from(shortest)) / 3)
            .clamp(REFRESH_BOUNDS.0, REFRESH_BOUNDS.1);
        Timeouts {
            tcp: sysctl(TCP_ESTABLISHED),
            udp,
            refresh_every,
        }
    }

    /// The timeout of an established session of `proto`.
    fn of(self, proto: u8) -> u32 {
        if proto == IPPROTO_TCP {
            self.tcp
        } else {
            self.udp
        }
    }
}
