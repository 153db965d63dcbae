//! The classifier's packet fixtures as tables, in the style of Katran's
//! `lib/testing/fixtures/`: each row names a packet, builds it, and says what the
//! classifier must do with it — steer it (and count it a new flow, or a hit of an
//! earlier row's flow) or pass it untouched (and count why). Malformed packets
//! are well-formed ones with one named field broken.
use std::net::{Ipv4Addr, Ipv6Addr};

use multiroute_ebpf::Counter;

use crate::datapath::{
    IPV6_PAYLOAD, PAD_OPTIONS, arp, fragment_header, icmp_echo, icmp6_echo, tcp, tcp6, udp, udp6,
    with_extension,
};

pub struct Fixture {
    pub description: &'static str,
    pub packet: Vec<u8>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Marked for an uplink and counted as `counter`; with `same_flow_as`, on the
    /// uplink that earlier row's flow took.
    Steered {
        counter: Counter,
        same_flow_as: Option<&'static str>,
    },
    /// Passed with its mark as it came, counted as `counter` (why).
    Untouched(Counter),
}

/// A new flow, steered by the ring.
pub const NEW: Expect = Expect::Steered {
    counter: Counter::FlowNew,
    same_flow_as: None,
};

const fn hit(of: &'static str) -> Expect {
    Expect::Steered {
        counter: Counter::FlowHit,
        same_flow_as: Some(of),
    }
}

fn row(description: &'static str, packet: Vec<u8>, expect: Expect) -> Fixture {
    Fixture {
        description,
        packet,
        expect,
    }
}

const ETH_HLEN: usize = 14;
/// Offsets inside an IPv4 header.
const IPV4_VERSION_IHL: usize = 0;
const IPV4_FRAGMENT: usize = 6;
/// Offsets inside an IPv6 header.
const IPV6_VERSION: usize = 0;
const IPV6_DESTINATION: usize = 24;

/// `frame` with byte `at` of its network header set to `value`.
fn with_ip_byte(frame: &[u8], at: usize, value: u8) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[ETH_HLEN + at] = value;
    frame
}

/// `frame` with an 802.1Q tag (VLAN 42) after its MAC addresses.
fn vlan_tagged(frame: &[u8]) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// `frame` (IPv4) as a non-first fragment: offset 16 × 8 bytes, no more to come.
fn later_ipv4_fragment(frame: &[u8]) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[ETH_HLEN + IPV4_FRAGMENT..ETH_HLEN + IPV4_FRAGMENT + 2]
        .copy_from_slice(&16u16.to_be_bytes());
    frame
}

/// `frame` (IPv6) sent to `destination` instead.
fn to_ipv6(frame: &[u8], destination: Ipv6Addr) -> Vec<u8> {
    let mut frame = frame.to_vec();
    let at = ETH_HLEN + IPV6_DESTINATION;
    frame[at..at + 16].copy_from_slice(&destination.octets());
    frame
}

fn cut(frame: &[u8], len: usize) -> Vec<u8> {
    frame[..len].to_vec()
}

/// Bytes that parse as nothing (their ethertype is 0xcd89).
fn garbage() -> Vec<u8> {
    (0..60u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// IPv4 from `client` to `server`, and what is not IP at all.
pub fn ipv4(client: Ipv4Addr, server: Ipv4Addr) -> Vec<Fixture> {
    let syn = tcp(client, 40000, server, 80);
    vec![
        row("TCP SYN", syn.clone(), NEW),
        row("UDP datagram", udp(client, 5353, server, 53), NEW),
        row("ICMP echo", icmp_echo(client, server, 77, 1), NEW),
        row("802.1Q-tagged TCP SYN", vlan_tagged(&syn), hit("TCP SYN")),
        row(
            "non-first IPv4 fragment",
            later_ipv4_fragment(&udp(client, 5000, server, 53)),
            NEW,
        ),
        row("ARP", arp(), Expect::Untouched(Counter::PassNotIp)),
        // The kernel's test-run refuses an untagged IPv4 frame shorter than an IP
        // header, so the cut-short header travels behind a VLAN tag.
        row(
            "IPv4 header cut short",
            cut(&vlan_tagged(&syn), 18 + 10),
            Expect::Untouched(Counter::PassMalformed),
        ),
        row(
            "IP version 6 in an IPv4 frame",
            with_ip_byte(&syn, IPV4_VERSION_IHL, 0x65),
            Expect::Untouched(Counter::PassMalformed),
        ),
        row(
            "IHL below 5",
            with_ip_byte(&syn, IPV4_VERSION_IHL, 0x43),
            Expect::Untouched(Counter::PassMalformed),
        ),
        row(
            "TCP ports cut off",
            cut(&syn, ETH_HLEN + 20 + 2),
            Expect::Untouched(Counter::PassMalformed),
        ),
        row(
            "IHL past the end of the frame",
            cut(&with_ip_byte(&syn, IPV4_VERSION_IHL, 0x4f), ETH_HLEN + 22),
            Expect::Untouched(Counter::PassMalformed),
        ),
        row("garbage", garbage(), Expect::Untouched(Counter::PassNotIp)),
        row(
            "multicast destination",
            udp(client, 5353, Ipv4Addr::new(224, 0, 0, 251), 5353),
            Expect::Untouched(Counter::PassNotUnicast),
        ),
        row(
            "limited broadcast",
            udp(client, 68, Ipv4Addr::BROADCAST, 67),
            Expect::Untouched(Counter::PassNotUnicast),
        ),
    ]
}

/// IPv6 from `client` to `server`: extension headers, fragments, echo, and what
/// is never routed by a default route or does not parse.
pub fn ipv6(client: Ipv6Addr, server: Ipv6Addr) -> Vec<Fixture> {
    let syn = tcp6(client, 40000, server, 443);
    let hop_by_hop = with_extension(&syn, 0, &PAD_OPTIONS);
    let datagram = udp6(client, 5000, server, 53);
    let mut neighbour_solicitation = icmp6_echo(client, server, 1, 1);
    neighbour_solicitation[IPV6_PAYLOAD] = 135;
    let seven_options = (0..7).fold(syn.clone(), |packet, _| {
        with_extension(&packet, 60, &PAD_OPTIONS)
    });
    let link_local: Ipv6Addr = "fe80::1".parse().expect("an address");
    let multicast: Ipv6Addr = "ff02::fb".parse().expect("an address");
    vec![
        row("TCP SYN", syn.clone(), NEW),
        row(
            "behind hop-by-hop options",
            hop_by_hop.clone(),
            hit("TCP SYN"),
        ),
        row(
            "behind hop-by-hop and destination options",
            with_extension(&hop_by_hop, 60, &PAD_OPTIONS),
            hit("TCP SYN"),
        ),
        // Every fragment of a datagram is keyed by addresses and protocol, so the
        // first (which has the ports) and the rest take one uplink.
        row(
            "first fragment",
            with_extension(&datagram, 44, &fragment_header(0, true)),
            NEW,
        ),
        row(
            "later fragment",
            with_extension(&datagram, 44, &fragment_header(16, false)),
            hit("first fragment"),
        ),
        row("ICMPv6 echo", icmp6_echo(client, server, 77, 1), NEW),
        row(
            "the next echo of one identifier",
            icmp6_echo(client, server, 77, 2),
            hit("ICMPv6 echo"),
        ),
        row("UDP datagram", datagram, NEW),
        row(
            "link-local destination",
            to_ipv6(&syn, link_local),
            Expect::Untouched(Counter::PassNotUnicast),
        ),
        row(
            "multicast destination",
            udp6(client, 5353, multicast, 5353),
            Expect::Untouched(Counter::PassNotUnicast),
        ),
        row(
            "neighbour solicitation to a global address",
            neighbour_solicitation,
            Expect::Untouched(Counter::PassNotUnicast),
        ),
        row(
            "seven extension headers",
            seven_options,
            Expect::Untouched(Counter::PassMalformed),
        ),
        row(
            "IP version 4 in an IPv6 frame",
            with_ip_byte(&syn, IPV6_VERSION, 0x40),
            Expect::Untouched(Counter::PassMalformed),
        ),
        row(
            "TCP ports cut off",
            cut(&syn, IPV6_PAYLOAD + 2),
            Expect::Untouched(Counter::PassMalformed),
        ),
        row(
            "extension header cut off",
            cut(&hop_by_hop, IPV6_PAYLOAD + 2),
            Expect::Untouched(Counter::PassMalformed),
        ),
    ]
}
