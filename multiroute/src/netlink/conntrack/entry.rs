//! A conntrack entry as the rest reads it: its two directions keyed as the datapath
//! keys flows, its NAT, mark and state.
use std::net::IpAddr;

use multiroute_ebpf::{FlowKey, FlowKey6};
use netlink_packet_core::Nla;
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
};

use crate::net::Family;

/// `CTA_HELP`: the entry's conntrack helper.
const CTA_HELP: u16 = 5;
/// `CTA_PROTO_ICMP_ID`: the echo identifier, which the datapath keys ICMP flows by.
const CTA_PROTO_ICMP_ID: u16 = 4;
const IPPROTO_ICMP: u8 = 1;
pub(super) const IPPROTO_TCP: u8 = 6;
pub(super) const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// An entry's two directions, its mark and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) original: Vec<Tuple>,
    pub(super) reply: Vec<Tuple>,
    original_src: Option<IpAddr>,
    reply_dst: Option<IpAddr>,
    pub(super) mark: u32,
    /// `IPS_*` bits.
    pub(super) status: u32,
    /// TCP's conntrack state (`TCP_CONNTRACK_*`), for TCP entries.
    pub(super) tcp_state: Option<u8>,
    /// A conntrack helper (FTP, SIP, …) follows it.
    pub(super) helper: bool,
}

impl Entry {
    pub(super) fn from_attributes(attributes: Vec<ConntrackAttribute>) -> Self {
        let mut entry = Entry {
            original: Vec::new(),
            reply: Vec::new(),
            original_src: None,
            reply_dst: None,
            mark: 0,
            status: 0,
            tcp_state: None,
            helper: false,
        };
        for attribute in attributes {
            match attribute {
                ConntrackAttribute::CtaTupleOrig(tuple) => {
                    entry.original_src = address(&tuple, true);
                    entry.original = tuple;
                }
                ConntrackAttribute::CtaTupleReply(tuple) => {
                    entry.reply_dst = address(&tuple, false);
                    entry.reply = tuple;
                }
                ConntrackAttribute::CtaMark(mark) => entry.mark = mark,
                ConntrackAttribute::CtaStatus(status) => entry.status = status.bits(),
                ConntrackAttribute::CtaProtoInfo(info) => entry.tcp_state = tcp_state(&info),
                ConntrackAttribute::Other(nla) if nla.kind() == CTA_HELP => entry.helper = true,
                _ => {}
            }
        }
        entry
    }

    /// Source-NATed to `address`: replies come back to it, though the connection
    /// started elsewhere (a LAN host, or the router from another address).
    pub(super) fn nated_to(&self, address: IpAddr) -> bool {
        self.reply_dst == Some(address) && self.original_src != Some(address)
    }

    /// The address the connection is source-NATed to, if it is.
    pub(super) fn nat_address(&self) -> Option<IpAddr> {
        self.reply_dst.filter(|&reply| self.nated_to(reply))
    }
}

/// One direction as the datapath keys it: addresses and ports as on the wire, the
/// ICMP echo identifier in `src_port`, no ports for other protocols.
pub(super) fn tuple_key(tuple: &[Tuple]) -> Option<FlowKey> {
    let (Some(IpAddr::V4(src)), Some(IpAddr::V4(dst))) =
        (address(tuple, true), address(tuple, false))
    else {
        return None;
    };
    let (proto, src_port, dst_port) = tuple_ports(tuple, IPPROTO_ICMP);
    Some(FlowKey::wire(
        u32::from_ne_bytes(src.octets()),
        src_port,
        u32::from_ne_bytes(dst.octets()),
        dst_port,
        proto,
    ))
}

/// [`tuple_key`] for an IPv6 direction.
fn tuple_key6(tuple: &[Tuple]) -> Option<FlowKey6> {
    let (Some(IpAddr::V6(src)), Some(IpAddr::V6(dst))) =
        (address(tuple, true), address(tuple, false))
    else {
        return None;
    };
    let (proto, src_port, dst_port) = tuple_ports(tuple, IPPROTO_ICMPV6);
    Some(FlowKey6 {
        src: FlowKey6::words(src.octets()),
        dst: FlowKey6::words(dst.octets()),
        src_port,
        dst_port,
        proto,
        pad: [0; 3],
    })
}

/// Protocol and ports of a direction as the datapath keys them (wire order; the
/// echo identifier of `icmp`, the family's ICMP, in the source port).
fn tuple_ports(tuple: &[Tuple], icmp: u8) -> (u8, u16, u16) {
    let (mut proto, mut src_port, mut dst_port) = (0, 0, 0);
    for part in tuple {
        let Tuple::Proto(protos) = part else { continue };
        for field in protos {
            match field {
                ProtoTuple::Protocol(p) => proto = u8::from(*p),
                ProtoTuple::SourcePort(port) => src_port = port.to_be(),
                ProtoTuple::DestinationPort(port) => dst_port = port.to_be(),
                ProtoTuple::Other(nla) if nla.kind() == CTA_PROTO_ICMP_ID => {
                    let mut id = [0; 2];
                    if nla.value_len() == id.len() {
                        nla.emit_value(&mut id);
                        src_port = u16::from_ne_bytes(id);
                    }
                }
                _ => {}
            }
        }
    }
    if !matches!(proto, IPPROTO_TCP | IPPROTO_UDP) && proto != icmp {
        (src_port, dst_port) = (0, 0);
    }
    (proto, src_port, dst_port)
}

/// A running session (keyed as the datapath keys its family) and the address
/// conntrack source-NATs it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatedSession<K> {
    pub key: K,
    pub nated_to: IpAddr,
}

/// How a family's flows are keyed from a conntrack direction: the datapath's key
/// type and its family.
pub trait Keyed: Sized {
    const FAMILY: Family;
    fn from_tuple(tuple: &[Tuple]) -> Option<Self>;
    fn source(&self) -> IpAddr;
    fn destination(&self) -> IpAddr;
}

impl Keyed for FlowKey {
    const FAMILY: Family = Family::V4;
    fn from_tuple(tuple: &[Tuple]) -> Option<Self> {
        tuple_key(tuple)
    }
    fn source(&self) -> IpAddr {
        self.src_octets().into()
    }
    fn destination(&self) -> IpAddr {
        self.dst_octets().into()
    }
}

impl Keyed for FlowKey6 {
    const FAMILY: Family = Family::V6;
    fn from_tuple(tuple: &[Tuple]) -> Option<Self> {
        tuple_key6(tuple)
    }
    fn source(&self) -> IpAddr {
        self.src_octets().into()
    }
    fn destination(&self) -> IpAddr {
        self.dst_octets().into()
    }
}

fn address(tuple: &[Tuple], source: bool) -> Option<IpAddr> {
    tuple.iter().find_map(|part| match part {
        Tuple::Ip(ips) => ips.iter().find_map(|ip| match (ip, source) {
            (IPTuple::SourceAddress(a), true) | (IPTuple::DestinationAddress(a), false) => Some(*a),
            _ => None,
        }),
        _ => None,
    })
}

fn tcp_state(info: &[ProtoInfo]) -> Option<u8> {
    info.iter().find_map(|part| match part {
        ProtoInfo::TCP(fields) => fields.iter().find_map(|field| match field {
            ProtoInfoTCP::State(state) => Some(*state),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn tuple(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<Tuple> {
        vec![Tuple::Ip(vec![
            IPTuple::SourceAddress(src.into()),
            IPTuple::DestinationAddress(dst.into()),
        ])]
    }

    const LAN_HOST: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const OTHER_UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

    fn entry(original: (Ipv4Addr, Ipv4Addr), reply: (Ipv4Addr, Ipv4Addr)) -> Entry {
        Entry::from_attributes(vec![
            ConntrackAttribute::CtaTupleOrig(tuple(original.0, original.1)),
            ConntrackAttribute::CtaTupleReply(tuple(reply.0, reply.1)),
            ConntrackAttribute::CtaMark(0),
        ])
    }

    #[test]
    fn a_masqueraded_session_is_keyed_as_the_datapath_keys_it() {
        let mut original = tuple(LAN_HOST, SERVER);
        original.push(Tuple::Proto(vec![
            ProtoTuple::Protocol(6.into()),
            ProtoTuple::SourcePort(40_000),
            ProtoTuple::DestinationPort(443),
        ]));
        let session = Entry::from_attributes(vec![
            ConntrackAttribute::CtaTupleOrig(original),
            ConntrackAttribute::CtaTupleReply(tuple(SERVER, UPLINK)),
        ]);
        assert_eq!(session.nat_address(), Some(UPLINK.into()));
        let key = tuple_key(&session.original).expect("a key");
        assert_eq!(key.src_octets(), LAN_HOST.octets());
        assert_eq!(key.dst_octets(), SERVER.octets());
        assert_eq!((key.proto, key.ports()), (6, (40_000, 443)));
        let routers_own = entry((UPLINK, SERVER), (SERVER, UPLINK));
        assert_eq!(routers_own.nat_address(), None);
    }

    #[test]
    fn only_connections_masqueraded_to_the_address_are_chosen() {
        let masqueraded = entry((LAN_HOST, SERVER), (SERVER, UPLINK));
        assert!(masqueraded.nated_to(UPLINK.into()));
        assert!(
            !masqueraded.nated_to(OTHER_UPLINK.into()),
            "another uplink's"
        );
        let routers_own = entry((UPLINK, SERVER), (SERVER, UPLINK));
        assert!(
            !routers_own.nated_to(UPLINK.into()),
            "not NATed: the router's own"
        );
        let inbound = entry((SERVER, UPLINK), (LAN_HOST, SERVER));
        assert!(
            !inbound.nated_to(UPLINK.into()),
            "port-forwarded in, not NATed out"
        );
    }

    #[test]
    fn an_ipv6_session_masqueraded_by_nat66_is_chosen_by_its_ipv6_address() {
        let v6 = |text: &str| IpAddr::V6(text.parse().unwrap());
        let (host, server, uplink) = (
            v6("fd00:64::2"),
            v6("2001:db8:ff::10"),
            v6("2001:db8:18::2"),
        );
        let tuple6 = |src, dst| {
            vec![Tuple::Ip(vec![
                IPTuple::SourceAddress(src),
                IPTuple::DestinationAddress(dst),
            ])]
        };
        let session = Entry::from_attributes(vec![
            ConntrackAttribute::CtaTupleOrig(tuple6(host, server)),
            ConntrackAttribute::CtaTupleReply(tuple6(server, uplink)),
        ]);
        assert!(session.nated_to(uplink));
        assert!(!session.nated_to(v6("2001:db8:18:1::2")));
        assert_eq!(session.nat_address(), Some(uplink));
        assert_eq!(tuple_key(&session.original), None, "not an IPv4 key");
        let key = tuple_key6(&session.original).expect("an IPv6 key");
        assert_eq!(
            key.src_octets(),
            "fd00:64::2".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
    }
}
