//! The fast path's rewrites through BPF_PROG_TEST_RUN, run inside a namespace that
//! has the uplink's table, the LAN's route and their neighbours (the programs look
//! next hops up in the namespace they run in). Each packet's output is parsed:
//! addresses and ports rewritten to the NAT conntrack bound (masquerade, NAT66),
//! the TTL or hop limit one less, the checksums valid, the MACs of the next hop.
//! Every slow-path case passes without a redirect. Each case runs for IPv4 and
//! IPv6.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

use etherparse::{IpHeaders, NetSlice, SlicedPacket, TransportSlice};
use multiroute::apply::datapath::{
    fast::{Bindable, FastTables, Route},
    maps::flows::FlowTables,
};
use multiroute::netlink::conntrack::{Established, SessionKey};
use multiroute_ebpf::{Flow, FlowKey, FlowKey6, IPPROTO_TCP, IPPROTO_UDP, RING_SIZE, Uplink};
use multiroute_tests::{
    datapath::{LoadedDatapath, Program},
    require_root, run, test_name,
};

const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const LAN_HOST_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
const LAN_PORT: u16 = 40000;
const NAT_PORT: u16 = 61000;
const TABLE: u32 = 101;
const TC_ACT_REDIRECT: i32 = 7;
const TC_ACT_UNSPEC: i32 = -1;

/// The session's addresses in one family: the LAN host's, the server's, the
/// uplink's (its NAT) and the uplink's gateway.
struct Ends {
    lan_host: IpAddr,
    server: IpAddr,
    uplink: IpAddr,
    gateway: IpAddr,
}

/// What differs between the families here: the addresses, the key type, the
/// tables.
trait Family {
    type Key: Bindable + Sync;
    const ENDS: Ends;
    const COUNTERS: u32;
    fn key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> Self::Key;
    fn flows(dp: &mut LoadedDatapath) -> &mut FlowTables<Self::Key>;
    fn fast(dp: &mut LoadedDatapath) -> &mut FastTables<Self::Key>;
}

struct V4;
struct V6;

fn v4(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(ip) => ip.octets(),
        IpAddr::V6(_) => panic!("{ip} is not IPv4"),
    }
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(ip) => ip.octets(),
        IpAddr::V4(_) => panic!("{ip} is not IPv6"),
    }
}

impl Family for V4 {
    type Key = FlowKey;
    const ENDS: Ends = Ends {
        lan_host: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)),
        server: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
        uplink: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
        gateway: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
    };
    const COUNTERS: u32 = multiroute_ebpf::family::IPV4;
    fn key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
        FlowKey::new(v4(src), sport, v4(dst), dport, proto)
    }
    fn flows(dp: &mut LoadedDatapath) -> &mut FlowTables<FlowKey> {
        &mut dp.maps.v4
    }
    fn fast(dp: &mut LoadedDatapath) -> &mut FastTables<FlowKey> {
        &mut dp.maps.fast.v4
    }
}

impl Family for V6 {
    type Key = FlowKey6;
    const ENDS: Ends = Ends {
        lan_host: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 2)),
        server: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10)),
        uplink: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2)),
        gateway: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1)),
    };
    const COUNTERS: u32 = multiroute_ebpf::family::IPV6;
    fn key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey6 {
        use multiroute_ebpf::FlowIdentity as _;
        FlowKey6::wire(
            FlowKey6::words(v6(src)),
            sport.to_be(),
            FlowKey6::words(v6(dst)),
            dport.to_be(),
            proto,
        )
    }
    fn flows(dp: &mut LoadedDatapath) -> &mut FlowTables<FlowKey6> {
        &mut dp.maps.v6
    }
    fn fast(dp: &mut LoadedDatapath) -> &mut FastTables<FlowKey6> {
        &mut dp.maps.fast.v6
    }
}

/// A namespace with a LAN (`lan0`, 100.64.0.1/24 and fd00:64::1/64, the host's
/// neighbour entries) and an uplink (`wan0`, 198.18.0.2/24 and
/// 2001:db8:18::2/64, table 101's defaults via the gateway, whose neighbour
/// entries are there too); removed on drop.
struct Router {
    name: String,
}

impl Router {
    fn new(test: &str) -> Router {
        let name = format!("mrfp{}x{}", std::process::id() % 100_000, test.len());
        let router = Router { name };
        let ip = |args: &str| {
            let mut full = vec!["-n", router.name.as_str()];
            full.extend(args.split(' '));
            run("ip", &full).expect("setting up the namespace");
        };
        run("ip", &["netns", "add", &router.name]).expect("ip netns add");
        ip("link add lan0 type veth peer name lanpeer");
        ip("link add wan0 type veth peer name wanpeer");
        for dev in ["lo", "lan0", "lanpeer", "wan0", "wanpeer"] {
            ip(&format!("link set {dev} up"));
        }
        ip("addr add 100.64.0.1/24 dev lan0");
        ip("addr add 198.18.0.2/24 dev wan0");
        ip("addr add fd00:64::1/64 dev lan0 nodad");
        ip("addr add 2001:db8:18::2/64 dev wan0 nodad");
        for ends in [V4::ENDS, V6::ENDS] {
            let (gateway, host) = (ends.gateway, ends.lan_host);
            ip(&format!(
                "route add default via {gateway} dev wan0 table {TABLE}"
            ));
            ip(&format!(
                "neigh replace {gateway} lladdr 02:00:00:00:01:01 dev wan0 nud permanent"
            ));
            ip(&format!(
                "neigh replace {host} lladdr 02:00:00:00:02:02 dev lan0 nud permanent"
            ));
        }
        for forwarding in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            run(
                "ip",
                &["netns", "exec", &router.name, "sysctl", "-qw", forwarding],
            )
            .expect("forwarding on");
        }
        router
    }

    fn ifindex(&self, dev: &str) -> u32 {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "cat",
                &format!("/sys/class/net/{dev}/ifindex"),
            ],
        )
        .expect("an ifindex");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a number")
    }

    fn mac(&self, dev: &str) -> [u8; 6] {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "cat",
                &format!("/sys/class/net/{dev}/address"),
            ],
        )
        .expect("a MAC");
        let text = String::from_utf8_lossy(&out.stdout);
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect();
        bytes.try_into().expect("six bytes")
    }

    /// Runs `work` on a thread inside the namespace.
    fn inside<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(format!("/run/netns/{}", self.name))
                        .expect("the namespace");
                    // SAFETY: setns on this thread with a namespace fd we hold open.
                    assert_eq!(
                        unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                        0
                    );
                    work()
                })
                .join()
                .expect("the thread inside the namespace")
        })
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Uplink slot 0 carries; the session of `proto` is known to the classifier on
/// it and bound both ways, NATed to the uplink's address and `NAT_PORT`; its
/// original direction.
fn bind<F: Family>(dp: &mut LoadedDatapath, proto: u8) -> F::Key {
    // Counted as offered: the fast path takes none of a flow's first
    // `OFFER_AFTER` packets.
    let original = known::<F>(dp, proto, multiroute_ebpf::OFFER_AFTER);
    let e = F::ENDS;
    let session = Established {
        original,
        reply: F::key(e.server, 443, e.uplink, NAT_PORT, proto),
        nat_address: e.uplink,
        inbound: false,
        nated: true,
    };
    F::fast(dp).bind(&session, ROUTE).unwrap();
    original
}

/// Uplink slot 0 carries (both families), and the classifier knows the LAN
/// host's flow of `proto` on it, at `packets` (not bound); its key.
fn known<F: Family>(dp: &mut LoadedDatapath, proto: u8, packets: u64) -> F::Key {
    dp.maps
        .set_uplink(
            0,
            Uplink {
                mark: 0x100,
                mask: 0xff00,
                carries: 1,
                carries6: 1,
            },
        )
        .unwrap();
    let ring = vec![0; RING_SIZE as usize];
    dp.maps
        .write_rings(&multiroute::net::PerFamily::from_fn(|_| ring.clone()))
        .unwrap();
    let e = F::ENDS;
    let original = F::key(e.lan_host, LAN_PORT, e.server, 443, proto);
    let flow = Flow {
        packets,
        ..Flow::default()
    };
    F::flows(dp).insert(&original, &flow).unwrap();
    original
}

/// Every binding's way: uplink slot 0 and its table, the LAN through main.
const ROUTE: Route = Route {
    slot: 0,
    uplink_table: TABLE,
    lan_table: 254,
};

/// The network header of a packet from `src` to `dst` in their family.
fn ip_header(proto: u8, src: IpAddr, dst: IpAddr) -> IpHeaders {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => IpHeaders::Ipv4(
            etherparse::Ipv4Header::new(0, 64, proto.into(), src.octets(), dst.octets())
                .expect("an IPv4 header"),
            Default::default(),
        ),
        _ => IpHeaders::Ipv6(
            etherparse::Ipv6Header {
                next_header: proto.into(),
                hop_limit: 64,
                source: v6(src),
                destination: v6(dst),
                ..Default::default()
            },
            Default::default(),
        ),
    }
}

/// Sets the TTL or hop limit.
fn hops(ip: &mut IpHeaders, hops: u8) {
    match ip {
        IpHeaders::Ipv4(ip, _) => ip.time_to_live = hops,
        IpHeaders::Ipv6(ip, _) => ip.hop_limit = hops,
    }
}

/// Makes the packet a first fragment.
fn first_fragment(ip: &mut IpHeaders) {
    match ip {
        IpHeaders::Ipv4(ip, _) => ip.more_fragments = true,
        IpHeaders::Ipv6(ip, extensions) => {
            extensions.fragment = Some(etherparse::Ipv6FragmentHeader::new(
                ip.next_header,
                etherparse::IpFragOffset::ZERO,
                true,
                7,
            ));
        }
    }
}

/// A packet of the session in `F`'s family with 100 bytes of payload, built
/// field by field; `edit` changes the headers.
fn packet<F: Family>(
    proto: u8,
    outbound: bool,
    edit: impl FnOnce(&mut IpHeaders, &mut etherparse::TcpHeader),
) -> Vec<u8> {
    packet_sized::<F>(proto, outbound, 100, edit)
}

fn packet_sized<F: Family>(
    proto: u8,
    outbound: bool,
    payload: usize,
    edit: impl FnOnce(&mut IpHeaders, &mut etherparse::TcpHeader),
) -> Vec<u8> {
    let e = F::ENDS;
    let (src, sport, dst, dport) = if outbound {
        (e.lan_host, LAN_PORT, e.server, 443)
    } else {
        (e.server, 443, e.uplink, NAT_PORT)
    };
    let mut ip = ip_header(proto, src, dst);
    let mut tcp = etherparse::TcpHeader::new(sport, dport, 1000, 65535);
    tcp.ack = true;
    tcp.psh = true;
    tcp.acknowledgment_number = 2000;
    edit(&mut ip, &mut tcp);
    let payload = vec![0x5a; payload];
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8]);
    let mut out = Vec::new();
    if proto == IPPROTO_TCP {
        builder
            .ip(ip)
            .tcp_header(tcp)
            .write(&mut out, &payload)
            .unwrap();
    } else {
        builder
            .ip(ip)
            .udp(sport, dport)
            .write(&mut out, &payload)
            .unwrap();
    }
    out
}

/// A rewritten frame as parsed, its checksums checked on the way.
struct Parsed {
    dmac: [u8; 6],
    smac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    hops: u8,
    ports: (u16, u16),
}

fn parse(frame: &[u8]) -> Parsed {
    let sliced = SlicedPacket::from_ethernet(frame).expect("a parsable frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &sliced.link else {
        panic!("not Ethernet");
    };
    let (src, dst, hops, l4): (IpAddr, IpAddr, u8, &[u8]) = match &sliced.net {
        Some(NetSlice::Ipv4(ipv4)) => {
            let header = ipv4.header().to_header();
            assert_eq!(
                header.header_checksum,
                header.calc_header_checksum(),
                "IP checksum"
            );
            (
                header.source.into(),
                header.destination.into(),
                header.time_to_live,
                ipv4.payload().payload,
            )
        }
        Some(NetSlice::Ipv6(ipv6)) => {
            let header = ipv6.header().to_header();
            (
                header.source.into(),
                header.destination.into(),
                header.hop_limit,
                ipv6.payload().payload,
            )
        }
        _ => panic!("not IP"),
    };
    let proto = match &sliced.transport {
        Some(TransportSlice::Tcp(_)) => IPPROTO_TCP,
        Some(TransportSlice::Udp(_)) => IPPROTO_UDP,
        _ => panic!("not TCP or UDP"),
    };
    assert!(
        checksum_holds(src, dst, proto, l4),
        "the {proto} checksum of {l4:02x?}"
    );
    let ports = (
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    );
    Parsed {
        dmac: eth.destination(),
        smac: eth.source(),
        src,
        dst,
        hops,
        ports,
    }
}

/// Whether the TCP or UDP segment `l4` (its checksum included) sums to all
/// ones with its pseudo-header: the checksum is right for the addresses.
fn checksum_holds(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> bool {
    let mut bytes = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [&s.octets()[..], &d.octets(), &[0, proto]].concat(),
        _ => [&v6(src)[..], &v6(dst), &[0, 0, 0, proto]].concat(),
    };
    bytes.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    bytes.extend_from_slice(l4);
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// The fast path's two counters of `F`'s family: (outbound, replies).
fn fast_counters<F: Family>(dp: &LoadedDatapath) -> (u64, u64) {
    let counters: std::collections::HashMap<_, _> = dp
        .maps
        .counters(F::COUNTERS)
        .expect("reading the counters")
        .into_iter()
        .collect();
    let count = |counter| counters.get(&counter).copied().unwrap_or(0);
    (
        count(multiroute_ebpf::Counter::FastOut),
        count(multiroute_ebpf::Counter::FastReply),
    )
}

#[test]
fn fast_path_rewrites_both_ways_and_leaves_the_unusual_to_the_slow_path() {
    if !require_root!() {
        return;
    }
    let router = Router::new(test_name!());
    rewrites_both_ways::<V4>(&router, "v4");
    rewrites_both_ways::<V6>(&router, "v6");
}

fn rewrites_both_ways<F: Family>(router: &Router, family: &str) {
    let (lan0, wan0) = (router.ifindex("lan0"), router.ifindex("wan0"));
    let (lan_mac, wan_mac) = (router.mac("lan0"), router.mac("wan0"));
    let e = F::ENDS;
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let what = format!("{family} proto {proto}");
        let mut dp = LoadedDatapath::load(&format!("{}-{family}-{proto}", test_name!())).unwrap();
        bind::<F>(&mut dp, proto);
        router.inside(|| {
            // Outbound: the source becomes the NAT, out of wan0 to the gateway.
            let frame = packet::<F>(proto, true, |_, _| {});
            let (verdict, out) = dp.run_on(Program::Classifier, &frame, lan0).unwrap();
            assert_eq!(
                verdict.return_code, TC_ACT_REDIRECT,
                "{what}: outbound redirected"
            );
            let out = parse(&out);
            assert_eq!(
                (out.dmac, out.smac),
                (GATEWAY_MAC, wan_mac),
                "{what}: the gateway's MAC, from wan0's"
            );
            assert_eq!((out.src, out.dst), (e.uplink, e.server), "{what}");
            assert_eq!(out.ports, (NAT_PORT, 443), "{what}");
            assert_eq!(out.hops, 63, "{what}");
            // Replies: the destination becomes the LAN host, out of lan0 to it.
            let frame = packet::<F>(proto, false, |_, _| {});
            let (verdict, out) = dp.run_on(Program::Reply, &frame, wan0).unwrap();
            assert_eq!(
                verdict.return_code, TC_ACT_REDIRECT,
                "{what}: reply redirected"
            );
            let out = parse(&out);
            assert_eq!((out.dmac, out.smac), (LAN_HOST_MAC, lan_mac), "{what}");
            assert_eq!((out.src, out.dst), (e.server, e.lan_host), "{what}");
            assert_eq!(out.ports, (443, LAN_PORT), "{what}");
            assert_eq!(out.hops, 63, "{what}");
        });
        assert_eq!(fast_counters::<F>(&dp), (1, 1), "{what}: one each way");
        assert_eq!(
            dp.maps.fast.packets(0).unwrap(),
            2,
            "{what}: counted on the uplink"
        );
    }
}

#[test]
fn unusual_packets_of_a_bound_session_take_the_slow_path() {
    if !require_root!() {
        return;
    }
    let router = Router::new(test_name!());
    unusual_packets::<V4>(&router, "v4");
    unusual_packets::<V6>(&router, "v6");
}

fn unusual_packets<F: Family>(router: &Router, family: &str) {
    let (lan0, router_wan0) = (router.ifindex("lan0"), router.ifindex("wan0"));
    let mut dp = LoadedDatapath::load(&format!("{}-{family}", test_name!())).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "SYN",
            packet::<F>(IPPROTO_TCP, true, |_, tcp| tcp.syn = true),
        ),
        (
            "FIN",
            packet::<F>(IPPROTO_TCP, true, |_, tcp| tcp.fin = true),
        ),
        (
            "RST",
            packet::<F>(IPPROTO_TCP, true, |_, tcp| tcp.rst = true),
        ),
        (
            "one hop left",
            packet::<F>(IPPROTO_TCP, true, |ip, _| hops(ip, 1)),
        ),
        (
            "a first fragment",
            packet::<F>(IPPROTO_TCP, true, |ip, _| first_fragment(ip)),
        ),
        (
            "another session",
            packet::<F>(IPPROTO_TCP, true, |_, tcp| tcp.source_port = LAN_PORT + 1),
        ),
    ];
    cases.push(match F::COUNTERS {
        multiroute_ebpf::family::IPV4 => (
            "IP options",
            packet::<F>(IPPROTO_TCP, true, |ip, _| {
                if let IpHeaders::Ipv4(ip, _) = ip {
                    ip.options = [1, 1, 1, 0].as_slice().try_into().expect("options");
                }
            }),
        ),
        _ => (
            "an extension header",
            packet::<F>(IPPROTO_TCP, true, |ip, _| {
                if let IpHeaders::Ipv6(_, extensions) = ip {
                    extensions.destination_options = Some(
                        etherparse::Ipv6RawExtHeader::new_raw(IPPROTO_TCP.into(), &[0; 6])
                            .expect("an extension header"),
                    );
                }
            }),
        ),
    });
    let e = F::ENDS;
    router.inside(|| {
        let original = F::key(e.lan_host, LAN_PORT, e.server, 443, IPPROTO_TCP);
        for (what, frame) in &cases {
            // Bound afresh for each case: a FIN or RST unbinds it.
            bind::<F>(&mut dp, IPPROTO_TCP);
            let (verdict, out) = dp.run_on(Program::Classifier, frame, lan0).unwrap();
            assert_eq!(
                verdict.return_code, TC_ACT_UNSPEC,
                "{family} {what}: the slow path"
            );
            assert_eq!(&out, frame, "{family} {what}: not rewritten");
            let closes = matches!(*what, "FIN" | "RST");
            assert_eq!(
                F::fast(&mut dp).is_bound(&original),
                !closes,
                "{family} {what}: a close ends the fast path, nothing else does"
            );
        }
        // A flow's first packets take the slow path, bound or not.
        bind::<F>(&mut dp, IPPROTO_TCP);
        F::flows(&mut dp)
            .insert(&original, &Flow::default())
            .unwrap();
        let frame = packet::<F>(IPPROTO_TCP, true, |_, _| {});
        let (verdict, out) = dp.run_on(Program::Classifier, &frame, lan0).unwrap();
        assert_eq!(
            (verdict.return_code, out == frame),
            (TC_ACT_UNSPEC, true),
            "{family}: a flow's first packet: the slow path, untouched"
        );
        // The reply side's FIN ends it too, both ways.
        bind::<F>(&mut dp, IPPROTO_TCP);
        let reply_fin = packet::<F>(IPPROTO_TCP, false, |_, tcp| tcp.fin = true);
        let (verdict, _) = dp.run_on(Program::Reply, &reply_fin, router_wan0).unwrap();
        assert_eq!(
            verdict.return_code, TC_ACT_UNSPEC,
            "{family}: a reply's FIN: the slow path"
        );
        assert!(
            !F::fast(&mut dp).is_bound(&original),
            "{family}: a reply's FIN unbinds both ways"
        );
        bind::<F>(&mut dp, IPPROTO_TCP);
        // Larger than wan0's MTU: the kernel must send "fragmentation needed"
        // (IPv6's minimum MTU is 1280: the frame grows past it instead).
        run("ip", &["link", "set", "wan0", "mtu", "1280"]).unwrap();
        let big = packet_sized::<F>(IPPROTO_TCP, true, 1300, |_, _| {});
        let (verdict, out) = dp.run_on(Program::Classifier, &big, lan0).unwrap();
        assert_eq!(
            verdict.return_code, TC_ACT_UNSPEC,
            "{family}: over the MTU: the slow path"
        );
        assert_eq!(out, big);
        run("ip", &["link", "set", "wan0", "mtu", "1500"]).unwrap();
    });
    assert_eq!(
        fast_counters::<F>(&dp).0,
        0,
        "{family}: none took the fast path"
    );
}

#[test]
fn a_port_forward_takes_the_fast_path_both_ways() {
    if !require_root!() {
        return;
    }
    let router = Router::new(test_name!());
    port_forward::<V4>(&router, "v4");
    port_forward::<V6>(&router, "v6");
}

fn port_forward<F: Family>(router: &Router, family: &str) {
    let (lan0, wan0) = (router.ifindex("lan0"), router.ifindex("wan0"));
    let wan_mac = router.mac("wan0");
    let mut dp = LoadedDatapath::load(&format!("{}-{family}", test_name!())).unwrap();
    bind::<F>(&mut dp, IPPROTO_TCP);
    // A connection from the server to the uplink's port 8080, forwarded to the LAN
    // host's port 80: conntrack's original is the arrival, its reply the LAN's.
    let (external, internal, remote) = (8080, 80, 5555);
    let e = F::ENDS;
    let forward = Established {
        original: F::key(e.server, remote, e.uplink, external, IPPROTO_TCP),
        reply: F::key(e.lan_host, internal, e.server, remote, IPPROTO_TCP),
        nat_address: e.uplink,
        inbound: true,
        nated: true,
    };
    F::fast(&mut dp).bind(&forward, ROUTE).unwrap();
    // The LAN side's flow is known to the classifier, hashed wherever.
    let counted = Flow {
        packets: multiroute_ebpf::OFFER_AFTER,
        ..Flow::default()
    };
    F::flows(&mut dp).insert(&forward.reply, &counted).unwrap();
    let frame = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16| {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8])
            .ip(ip_header(IPPROTO_TCP, src, dst))
            .tcp(sport, dport, 1000, 65535)
            .ack(2000)
            .write(&mut out, &[0x5a; 100])
            .unwrap();
        out
    };
    router.inside(|| {
        // Arriving on the uplink: to the LAN host's port.
        let arriving = frame(e.server, remote, e.uplink, external);
        let (verdict, out) = dp.run_on(Program::Reply, &arriving, wan0).unwrap();
        assert_eq!(
            verdict.return_code, TC_ACT_REDIRECT,
            "{family}: arrival redirected"
        );
        let out = parse(&out);
        assert_eq!(out.dmac, LAN_HOST_MAC, "{family}");
        assert_eq!(out.dst, e.lan_host, "{family}");
        assert_eq!(out.ports, (remote, internal), "{family}");
        // The LAN host's answer: from the uplink's address and the external port,
        // out of the uplink it arrived on.
        let answer = frame(e.lan_host, internal, e.server, remote);
        let (verdict, out) = dp.run_on(Program::Classifier, &answer, lan0).unwrap();
        assert_eq!(
            verdict.return_code, TC_ACT_REDIRECT,
            "{family}: answer redirected"
        );
        let out = parse(&out);
        assert_eq!((out.dmac, out.smac), (GATEWAY_MAC, wan_mac), "{family}");
        assert_eq!(out.src, e.uplink, "{family}");
        assert_eq!(out.ports, (external, remote), "{family}");
    });
    assert_eq!(fast_counters::<F>(&dp), (1, 1), "{family}: one each way");
    // Ended by conntrack (named by its original direction): both ways unbound.
    assert!(F::fast(&mut dp).unbind(&forward.original).unwrap());
    assert!(!F::fast(&mut dp).is_bound(&forward.reply));
}

#[test]
fn an_unbound_flow_that_keeps_going_is_offered_for_binding() {
    if !require_root!() {
        return;
    }
    let router = Router::new(test_name!());
    offered::<V4>(&router, "v4", SessionKey::V4);
    offered::<V6>(&router, "v6", SessionKey::V6);
}

fn offered<F: Family>(router: &Router, family: &str, named: fn(F::Key) -> SessionKey) {
    let lan0 = router.ifindex("lan0");
    let mut dp = LoadedDatapath::load(&format!("{}-{family}", test_name!())).unwrap();
    let original = known::<F>(&mut dp, IPPROTO_TCP, 0);
    let mut offers = multiroute::apply::datapath::fast::Offers::open(&dp.pin_path()).unwrap();
    let data = packet::<F>(IPPROTO_TCP, true, |_, _| {});
    let syn = packet::<F>(IPPROTO_TCP, true, |_, tcp| {
        tcp.syn = true;
        tcp.ack = false;
    });
    let mut offered_at = Vec::new();
    router.inside(|| {
        // 40 packets of one connection, then a new one on the same port (a SYN
        // first) with 10 more.
        let frames = std::iter::repeat_n(&data, 40)
            .chain(std::iter::once(&syn))
            .chain(std::iter::repeat_n(&data, 10));
        for (n, frame) in (1..).zip(frames) {
            let (verdict, _) = dp.run_on(Program::Classifier, frame, lan0).unwrap();
            assert_ne!(
                verdict.return_code, TC_ACT_REDIRECT,
                "{family} unbound: the slow path"
            );
            let offered = offers.take();
            if !offered.is_empty() {
                assert_eq!(offered, [named(original)], "{family}: the LAN side's key");
                offered_at.push(n);
            }
        }
    });
    // A short connection (a request and its answer) is never offered, nor one
    // that reuses the port of a longer one.
    assert_eq!(
        offered_at,
        [8, 16, 32, 48],
        "{family}: the 8th packet, then powers of two; the new connection's 8th"
    );
}

#[test]
fn only_the_ends_of_bound_sessions_pass_the_destroy_event_filter() {
    if !require_root!() {
        return;
    }
    let router = Router::new(test_name!());
    ends::<V4>(&router, "v4", SessionKey::V4);
    ends::<V6>(&router, "v6", SessionKey::V6);
}

/// Real conntrack entries made and deleted in the namespace: the filter on the
/// destroy-event socket lets through the ends of the bound sessions (outbound,
/// by the LAN side; a port forward, by its arrival) and none of the others.
fn ends<F: Family>(router: &Router, family: &str, named: fn(F::Key) -> SessionKey) {
    let mut dp = LoadedDatapath::load(&format!("{}-{family}", test_name!())).unwrap();
    let bound = bind::<F>(&mut dp, IPPROTO_TCP);
    let e = F::ENDS;
    let forward = Established {
        original: F::key(e.server, 5555, e.uplink, 8080, IPPROTO_TCP),
        reply: F::key(e.lan_host, 80, e.server, 5555, IPPROTO_TCP),
        nat_address: e.uplink,
        inbound: true,
        nated: true,
    };
    F::fast(&mut dp).bind(&forward, ROUTE).unwrap();
    let filter = dp.datapath.ends_filter().unwrap();
    let (lan, server, uplink) = (
        e.lan_host.to_string(),
        e.server.to_string(),
        e.uplink.to_string(),
    );
    // conntrack takes the family from the addresses.
    let icmp = match e.lan_host {
        IpAddr::V4(_) => [
            "icmp",
            "--icmp-type",
            "8",
            "--icmp-code",
            "0",
            "--icmp-id",
            "77",
        ],
        IpAddr::V6(_) => [
            "icmpv6",
            "--icmpv6-type",
            "128",
            "--icmpv6-code",
            "0",
            "--icmpv6-id",
            "77",
        ],
    };
    let tcp = |src: &str, sport: &str, dst: &str, dport: &str| -> Vec<String> {
        [
            "-p", "tcp", "-s", src, "-d", dst, "--sport", sport, "--dport", dport,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let entries: Vec<Vec<String>> = vec![
        // The bound session and the port forward.
        tcp(&lan, &LAN_PORT.to_string(), &server, "443"),
        tcp(&server, "5555", &uplink, "8080"),
        // Another LAN port's session, a UDP one and a ping: never bound.
        tcp(&lan, &(LAN_PORT + 1).to_string(), &server, "443"),
        [
            "-p", "udp", "-s", &lan, "-d", &server, "--sport", "5353", "--dport", "53",
        ]
        .map(str::to_owned)
        .to_vec(),
        ["-p", icmp[0], "-s", &lan, "-d", &server]
            .into_iter()
            .chain(icmp[1..].iter().copied())
            .map(str::to_owned)
            .collect(),
    ];
    let conntrack = |verb: &str, entry: &[String], extra: &[&str]| {
        let mut args = vec!["netns", "exec", &router.name, "conntrack", verb];
        args.extend(entry.iter().map(String::as_str));
        args.extend(extra);
        run("ip", &args)
            .unwrap_or_else(|err| panic!("{family}: conntrack {verb} {entry:?}: {err}"));
    };
    let ended = router.inside(|| {
        let mut events = multiroute::netlink::conntrack::Events::subscribe().unwrap();
        events.filter(std::os::fd::AsFd::as_fd(&filter)).unwrap();
        for entry in &entries {
            let tcp_state: &[&str] = if entry[1] == "tcp" {
                &["--state", "ESTABLISHED"]
            } else {
                &[]
            };
            conntrack("-I", entry, &[tcp_state, &["-t", "120"]].concat());
        }
        for entry in &entries {
            conntrack("-D", entry, &[]);
        }
        // Every end is sent as the entry is deleted; a quiet half second after
        // the last is all of them.
        let mut ended = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            let mut poll = libc::pollfd {
                fd: events.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on the socket this thread holds, 500 ms at most.
            if unsafe { libc::poll(&mut poll, 1, 500) } <= 0 {
                break;
            }
            ended.extend(events.read().unwrap());
        }
        ended
    });
    assert_eq!(
        ended,
        [named(bound), named(forward.original)],
        "{family}: the ends of the two bound sessions, in order, and no other"
    );
    let counters: std::collections::HashMap<_, _> =
        dp.maps.counters(F::COUNTERS).unwrap().into_iter().collect();
    let count = |counter| counters.get(&counter).copied().unwrap_or(0);
    assert_eq!(
        (
            count(multiroute_ebpf::Counter::EndBound),
            count(multiroute_ebpf::Counter::EndUnbound)
        ),
        (2, 3),
        "{family}: counted"
    );
}
