//! The fast path's rewrites through BPF_PROG_TEST_RUN, run inside a namespace that
//! has the uplink's table, the LAN's route and their neighbours (the programs look
//! next hops up in the namespace they run in). Each packet's output is parsed:
//! addresses and ports rewritten to the NAT conntrack bound, the TTL one less,
//! the checksums valid, the MACs of the next hop. Every slow-path case passes
//! without a redirect.
use std::{net::Ipv4Addr, os::fd::AsRawFd};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use multiroute_ebpf::{Flow, FlowKey, IPPROTO_TCP, IPPROTO_UDP, RING_SIZE, Uplink};
use multiroute_tests::{
    datapath::{LoadedDatapath, Program},
    require_root, run, test_name,
};

const LAN_HOST: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const LAN_HOST_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
const LAN_PORT: u16 = 40000;
const NAT_PORT: u16 = 61000;
const TABLE: u32 = 101;
const TC_ACT_REDIRECT: i32 = 7;
const TC_ACT_UNSPEC: i32 = -1;

/// A namespace with a LAN (`lan0`, 100.64.0.1/24, the host's neighbour entry) and
/// an uplink (`wan0`, 198.18.0.2/24, table 101's default via the gateway, whose
/// neighbour entry is there too); removed on drop.
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
        ip(&format!(
            "route add default via {GATEWAY} dev wan0 table {TABLE}"
        ));
        ip(&format!(
            "neigh replace {GATEWAY} lladdr 02:00:00:00:01:01 dev wan0 nud permanent"
        ));
        ip(&format!(
            "neigh replace {LAN_HOST} lladdr 02:00:00:00:02:02 dev lan0 nud permanent"
        ));
        run(
            "ip",
            &[
                "netns",
                "exec",
                &router.name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )
        .expect("forwarding on");
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

fn key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(src.octets(), sport, dst.octets(), dport, proto)
}

/// Uplink slot 0 carries; the session of `proto` is known to the classifier on
/// it and bound both ways, NATed to the uplink's address and `NAT_PORT`.
fn bind(dp: &mut LoadedDatapath, proto: u8) {
    let original = known(dp, proto);
    let session = multiroute::netlink::conntrack::Established {
        original,
        reply: key(SERVER, 443, UPLINK, NAT_PORT, proto),
        nat_address: UPLINK,
        inbound: false,
    };
    dp.maps.fast.bind(&session, ROUTE).unwrap();
}

/// Uplink slot 0 carries, and the classifier knows the LAN host's flow of
/// `proto` on it (not bound); its key.
fn known(dp: &mut LoadedDatapath, proto: u8) -> FlowKey {
    dp.maps
        .set_uplink(
            0,
            Uplink {
                mark: 0x100,
                mask: 0xff00,
                carries: 1,
                carries6: 0,
            },
        )
        .unwrap();
    let ring = vec![0; RING_SIZE as usize];
    dp.maps
        .write_rings(&multiroute::net::PerFamily::from_fn(|_| ring.clone()))
        .unwrap();
    let original = key(LAN_HOST, LAN_PORT, SERVER, 443, proto);
    dp.maps.v4.insert(&original, &Flow::default()).unwrap();
    original
}

/// Every binding's way: uplink slot 0 and its table, the LAN through main.
const ROUTE: multiroute::apply::datapath::fast::Route = multiroute::apply::datapath::fast::Route {
    slot: 0,
    uplink_table: TABLE,
    lan_table: 254,
};

/// A packet of the session, built field by field; `edit` changes the headers.
fn packet(
    proto: u8,
    outbound: bool,
    edit: impl FnOnce(&mut etherparse::Ipv4Header, &mut etherparse::TcpHeader),
) -> Vec<u8> {
    let (src, sport, dst, dport) = if outbound {
        (LAN_HOST, LAN_PORT, SERVER, 443)
    } else {
        (SERVER, 443, UPLINK, NAT_PORT)
    };
    let mut ip = etherparse::Ipv4Header::new(0, 64, proto.into(), src.octets(), dst.octets())
        .expect("an IPv4 header");
    let mut tcp = etherparse::TcpHeader::new(sport, dport, 1000, 65535);
    tcp.ack = true;
    tcp.psh = true;
    tcp.acknowledgment_number = 2000;
    edit(&mut ip, &mut tcp);
    let payload = [0x5a; 100];
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8]);
    let mut out = Vec::new();
    if proto == IPPROTO_TCP {
        let b = builder
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp_header(tcp);
        b.write(&mut out, &payload).unwrap();
    } else {
        let b = builder
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .udp(sport, dport);
        b.write(&mut out, &payload).unwrap();
    }
    out
}

/// Parses a rewritten frame: (destination MAC, source MAC, IP header, source and
/// destination port), checking both checksums on the way.
fn parse(frame: &[u8]) -> ([u8; 6], [u8; 6], etherparse::Ipv4Header, u16, u16) {
    let sliced = SlicedPacket::from_ethernet(frame).expect("a parsable frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &sliced.link else {
        panic!("not Ethernet");
    };
    let Some(NetSlice::Ipv4(ipv4)) = &sliced.net else {
        panic!("not IPv4");
    };
    let header = ipv4.header().to_header();
    assert_eq!(
        header.header_checksum,
        header.calc_header_checksum(),
        "IP checksum"
    );
    let (sport, dport) = match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let checksum = tcp
                .to_header()
                .calc_checksum_ipv4(&header, tcp.payload())
                .expect("a TCP checksum");
            assert_eq!(tcp.checksum(), checksum, "TCP checksum");
            (tcp.source_port(), tcp.destination_port())
        }
        Some(TransportSlice::Udp(udp)) => {
            let checksum = udp
                .to_header()
                .calc_checksum_ipv4(&header, udp.payload())
                .expect("a UDP checksum");
            assert_eq!(udp.checksum(), checksum, "UDP checksum");
            (udp.source_port(), udp.destination_port())
        }
        _ => panic!("not TCP or UDP"),
    };
    (eth.destination(), eth.source(), header, sport, dport)
}

/// The fast path's two counters: (outbound, replies).
fn fast_counters(dp: &LoadedDatapath) -> (u64, u64) {
    let counters: std::collections::HashMap<_, _> = dp
        .maps
        .counters(multiroute_ebpf::family::IPV4)
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
    let (lan0, wan0) = (router.ifindex("lan0"), router.ifindex("wan0"));
    let (lan_mac, wan_mac) = (router.mac("lan0"), router.mac("wan0"));
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let mut dp = LoadedDatapath::load(&format!("{}-{proto}", test_name!())).unwrap();
        bind(&mut dp, proto);
        router.inside(|| {
            // Outbound: the source becomes the NAT, out of wan0 to the gateway.
            let (verdict, out) = dp
                .run_on(Program::Classifier, &packet(proto, true, |_, _| {}), lan0)
                .unwrap();
            assert_eq!(
                verdict.return_code, TC_ACT_REDIRECT,
                "proto {proto}: outbound redirected"
            );
            let (dmac, smac, ip, sport, dport) = parse(&out);
            assert_eq!(
                (dmac, smac),
                (GATEWAY_MAC, wan_mac),
                "the gateway's MAC, from wan0's"
            );
            assert_eq!(Ipv4Addr::from(ip.source), UPLINK);
            assert_eq!(Ipv4Addr::from(ip.destination), SERVER);
            assert_eq!((sport, dport), (NAT_PORT, 443));
            assert_eq!(ip.time_to_live, 63);
            // Replies: the destination becomes the LAN host, out of lan0 to it.
            let (verdict, out) = dp
                .run_on(Program::Reply, &packet(proto, false, |_, _| {}), wan0)
                .unwrap();
            assert_eq!(
                verdict.return_code, TC_ACT_REDIRECT,
                "proto {proto}: reply redirected"
            );
            let (dmac, smac, ip, sport, dport) = parse(&out);
            assert_eq!((dmac, smac), (LAN_HOST_MAC, lan_mac));
            assert_eq!(Ipv4Addr::from(ip.source), SERVER);
            assert_eq!(Ipv4Addr::from(ip.destination), LAN_HOST);
            assert_eq!((sport, dport), (443, LAN_PORT));
            assert_eq!(ip.time_to_live, 63);
        });
        assert_eq!(fast_counters(&dp), (1, 1), "one each way");
        assert_eq!(dp.maps.fast.packets(0).unwrap(), 2, "counted on the uplink");
    }
}

#[test]
fn unusual_packets_of_a_bound_session_take_the_slow_path() {
    if !require_root!() {
        return;
    }
    let router = Router::new(test_name!());
    let (lan0, router_wan0) = (router.ifindex("lan0"), router.ifindex("wan0"));
    let mut dp = LoadedDatapath::load(test_name!()).unwrap();
    let fragment = |ip: &mut etherparse::Ipv4Header, _: &mut etherparse::TcpHeader| {
        ip.more_fragments = true;
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("SYN", packet(IPPROTO_TCP, true, |_, tcp| tcp.syn = true)),
        ("FIN", packet(IPPROTO_TCP, true, |_, tcp| tcp.fin = true)),
        ("RST", packet(IPPROTO_TCP, true, |_, tcp| tcp.rst = true)),
        (
            "TTL 1",
            packet(IPPROTO_TCP, true, |ip, _| ip.time_to_live = 1),
        ),
        ("a first fragment", packet(IPPROTO_TCP, true, fragment)),
        (
            "IP options",
            packet(IPPROTO_TCP, true, |ip, _| {
                ip.options = [1, 1, 1, 0].as_slice().try_into().expect("options");
            }),
        ),
        (
            "another session",
            packet(IPPROTO_TCP, true, |_, tcp| tcp.source_port = LAN_PORT + 1),
        ),
    ];
    router.inside(|| {
        let original = key(LAN_HOST, LAN_PORT, SERVER, 443, IPPROTO_TCP);
        for (what, frame) in &cases {
            // Bound afresh for each case: a FIN or RST unbinds it.
            bind(&mut dp, IPPROTO_TCP);
            let (verdict, out) = dp.run_on(Program::Classifier, frame, lan0).unwrap();
            assert_eq!(verdict.return_code, TC_ACT_UNSPEC, "{what}: the slow path");
            assert_eq!(&out, frame, "{what}: not rewritten");
            let closes = matches!(*what, "FIN" | "RST");
            assert_eq!(
                dp.maps.fast.is_bound(&original),
                !closes,
                "{what}: a close ends the fast path, nothing else does"
            );
        }
        // The reply side's FIN ends it too, both ways.
        bind(&mut dp, IPPROTO_TCP);
        let reply_fin = packet(IPPROTO_TCP, false, |_, tcp| tcp.fin = true);
        let (verdict, _) = dp.run_on(Program::Reply, &reply_fin, router_wan0).unwrap();
        assert_eq!(
            verdict.return_code, TC_ACT_UNSPEC,
            "a reply's FIN: the slow path"
        );
        assert!(
            !dp.maps.fast.is_bound(&original),
            "a reply's FIN unbinds both ways"
        );
        bind(&mut dp, IPPROTO_TCP);
        // Larger than wan0's MTU: the kernel must send "fragmentation needed".
        run("ip", &["link", "set", "wan0", "mtu", "120"]).unwrap();
        let frame = packet(IPPROTO_TCP, true, |_, _| {});
        let (verdict, out) = dp.run_on(Program::Classifier, &frame, lan0).unwrap();
        assert_eq!(
            verdict.return_code, TC_ACT_UNSPEC,
            "over the MTU: the slow path"
        );
        assert_eq!(out, frame);
    });
    assert_eq!(fast_counters(&dp).0, 0, "none took the fast path");
}

#[test]
fn a_port_forward_takes_the_fast_path_both_ways() {
    if !require_root!() {
        return;
    }
    let router = Router::new(test_name!());
    let (lan0, wan0) = (router.ifindex("lan0"), router.ifindex("wan0"));
    let wan_mac = router.mac("wan0");
    let mut dp = LoadedDatapath::load(test_name!()).unwrap();
    bind(&mut dp, IPPROTO_TCP);
    // A connection from the server to the uplink's port 8080, forwarded to the LAN
    // host's port 80: conntrack's original is the arrival, its reply the LAN's.
    let (external, internal, remote) = (8080, 80, 5555);
    let forward = multiroute::netlink::conntrack::Established {
        original: key(SERVER, remote, UPLINK, external, IPPROTO_TCP),
        reply: key(LAN_HOST, internal, SERVER, remote, IPPROTO_TCP),
        nat_address: UPLINK,
        inbound: true,
    };
    dp.maps.fast.bind(&forward, ROUTE).unwrap();
    // The LAN side's flow is known to the classifier, hashed wherever.
    dp.maps.v4.insert(&forward.reply, &Flow::default()).unwrap();
    let frame = |src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16| {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8])
            .ipv4(src.octets(), dst.octets(), 64)
            .tcp(sport, dport, 1000, 65535)
            .ack(2000);
        let mut out = Vec::new();
        builder.write(&mut out, &[0x5a; 100]).unwrap();
        out
    };
    router.inside(|| {
        // Arriving on the uplink: to the LAN host's port.
        let arriving = frame(SERVER, remote, UPLINK, external);
        let (verdict, out) = dp.run_on(Program::Reply, &arriving, wan0).unwrap();
        assert_eq!(verdict.return_code, TC_ACT_REDIRECT, "arrival redirected");
        let (dmac, _, ip, sport, dport) = parse(&out);
        assert_eq!(dmac, LAN_HOST_MAC);
        assert_eq!(Ipv4Addr::from(ip.destination), LAN_HOST);
        assert_eq!((sport, dport), (remote, internal));
        // The LAN host's answer: from the uplink's address and the external port,
        // out of the uplink it arrived on.
        let answer = frame(LAN_HOST, internal, SERVER, remote);
        let (verdict, out) = dp.run_on(Program::Classifier, &answer, lan0).unwrap();
        assert_eq!(verdict.return_code, TC_ACT_REDIRECT, "answer redirected");
        let (dmac, smac, ip, sport, dport) = parse(&out);
        assert_eq!((dmac, smac), (GATEWAY_MAC, wan_mac));
        assert_eq!(Ipv4Addr::from(ip.source), UPLINK);
        assert_eq!((sport, dport), (external, remote));
    });
    assert_eq!(fast_counters(&dp), (1, 1), "one each way");
    // Ended by conntrack (named by its original direction): both ways unbound.
    assert!(dp.maps.fast.unbind(&forward.original).unwrap());
    assert!(!dp.maps.fast.is_bound(&forward.reply));
}

#[test]
fn an_unbound_flow_that_keeps_going_is_offered_for_binding() {
    if !require_root!() {
        return;
    }
    let router = Router::new(test_name!());
    let lan0 = router.ifindex("lan0");
    let mut dp = LoadedDatapath::load(test_name!()).unwrap();
    let original = known(&mut dp, IPPROTO_TCP);
    let mut offers = multiroute::apply::datapath::fast::Offers::open(&dp.pin_path()).unwrap();
    let data = packet(IPPROTO_TCP, true, |_, _| {});
    let syn = packet(IPPROTO_TCP, true, |_, tcp| {
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
                "unbound: the slow path"
            );
            let offered = offers.take();
            if !offered.is_empty() {
                assert_eq!(offered, [original], "the LAN side's key");
                offered_at.push(n);
            }
        }
    });
    // A short connection (a request and its answer) is never offered, nor one
    // that reuses the port of a longer one.
    assert_eq!(
        offered_at,
        [8, 16, 32, 48],
        "the 8th packet, then powers of two; the new connection's 8th"
    );
}
