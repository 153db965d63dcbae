//! Selective conntrack flush over netlink (ctnetlink). When an uplink dies, the
//! connections masqueraded to its address cannot live on elsewhere: their NAT binding
//! names the dead address. Deleting exactly those entries lets the next packet of each
//! flow, now steered to a live uplink, be NATed afresh (UDP and QUIC carry on; TCP
//! peers reset and reconnect). Every other entry, on healthy uplinks, is untouched:
//! never a global flush.
//!
//! The same dump tells which uplink each running session is NATed to: what
//! [`nated_sessions`] gives the datapath to seed its flow table with when multiroute
//! takes over a router that already forwards traffic.
//!
//! Flushes are per family: an uplink whose IPv6 dies loses exactly the IPv6
//! sessions NATed to its IPv6 address (NAT66), its IPv4 ones live on.
mod sessions;

use std::net::IpAddr;

use crate::net::Family;
pub use sessions::{Established, Event, Events, established, refresh};

use multiroute_ebpf::{FlowKey, FlowKey6};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

const ENOENT: i32 = 2;
/// `CTA_HELP`: the entry's conntrack helper.
const CTA_HELP: u16 = 5;
/// `CTA_PROTO_ICMP_ID`: the echo identifier, which the datapath keys ICMP flows by.
const CTA_PROTO_ICMP_ID: u16 = 4;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("conntrack netlink: malformed reply: {0}")]
    Decode(String),
    #[error("conntrack netlink: the kernel refused {what}: {source}")]
    Kernel {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// An entry's two directions, its mark and state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    original: Vec<Tuple>,
    reply: Vec<Tuple>,
    original_src: Option<IpAddr>,
    reply_dst: Option<IpAddr>,
    mark: u32,
    /// `IPS_*` bits.
    status: u32,
    /// TCP's conntrack state (`TCP_CONNTRACK_*`), for TCP entries.
    tcp_state: Option<u8>,
    /// A conntrack helper (FTP, SIP, …) follows it.
    helper: bool,
}

impl Entry {
    fn from_attributes(attributes: Vec<ConntrackAttribute>) -> Self {
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
    fn nated_to(&self, address: IpAddr) -> bool {
        self.reply_dst == Some(address) && self.original_src != Some(address)
    }

    /// The address the connection is source-NATed to, if it is.
    fn nat_address(&self) -> Option<IpAddr> {
        self.reply_dst.filter(|&reply| self.nated_to(reply))
    }
}

/// One direction as the datapath keys it: addresses and ports as on the wire, the
/// ICMP echo identifier in `src_port`, no ports for other protocols.
fn tuple_key(tuple: &[Tuple]) -> Option<FlowKey> {
    let (Some(IpAddr::V4(src)), Some(IpAddr::V4(dst))) =
        (address(tuple, true), address(tuple, false))
    else {
        return None;
    };
    let (proto, src_port, dst_port) = tuple_ports(tuple, IPPROTO_ICMP);
    Some(FlowKey {
        src: u32::from_ne_bytes(src.octets()),
        dst: u32::from_ne_bytes(dst.octets()),
        src_port,
        dst_port,
        proto,
        pad: [0; 3],
    })
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
    fn destination(&self) -> IpAddr;
}

impl Keyed for FlowKey {
    const FAMILY: Family = Family::V4;
    fn from_tuple(tuple: &[Tuple]) -> Option<Self> {
        tuple_key(tuple)
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

fn proto_family(family: Family) -> NetfilterProtoFamily {
    match family {
        Family::V4 => NetfilterProtoFamily::IPv4,
        Family::V6 => NetfilterProtoFamily::IPv6,
    }
}

struct Ctnetlink {
    socket: Socket,
    sequence: u32,
}

impl Ctnetlink {
    fn open() -> Result<Self, ConntrackError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        socket.bind_auto().map_err(ConntrackError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(ConntrackError::Socket)?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends a request about entries of `family` (the kernel reads tuples, and
    /// filters dumps, by it).
    fn send(
        &mut self,
        flags: u16,
        family: Family,
        message: ConntrackMessage,
    ) -> Result<(), ConntrackError> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(proto_family(family), 0, 0),
                message,
            )),
        );
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket
            .send(&buffer, 0)
            .map(drop)
            .map_err(ConntrackError::Socket)
    }

    /// Reads replies to the last request until it is done; `each` sees every
    /// conntrack message. Returns the kernel's error code, if it sent one.
    fn receive(
        &mut self,
        mut each: impl FnMut(ConntrackMessage),
    ) -> Result<Option<i32>, ConntrackError> {
        loop {
            let (bytes, _) = self
                .socket
                .recv_from_full()
                .map_err(ConntrackError::Socket)?;
            let mut offset = 0;
            while offset < bytes.len() {
                let message = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[offset..])
                    .map_err(|err| ConntrackError::Decode(err.to_string()))?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(None),
                    NetlinkPayload::Error(error) => return Ok(error.code.map(|c| c.get().abs())),
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(conntrack),
                        ..
                    }) => each(conntrack),
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

impl Ctnetlink {
    /// Every conntrack entry of `family`, one at a time.
    fn dump(&mut self, family: Family, mut each: impl FnMut(Entry)) -> Result<(), ConntrackError> {
        self.send(
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            ConntrackMessage::Get(Vec::new()),
        )?;
        let dumped = self.receive(|message| {
            if let ConntrackMessage::New(attributes) = message {
                each(Entry::from_attributes(attributes));
            }
        })?;
        match dumped.filter(|&c| c != 0) {
            Some(code) => Err(ConntrackError::Kernel {
                what: "the conntrack dump",
                source: std::io::Error::from_raw_os_error(code),
            }),
            None => Ok(()),
        }
    }
}

/// Every session of `K`'s family conntrack source-NATs, with the address it is
/// NATed to. Blocking: run it off the async runtime's thread.
pub fn nated_sessions<K: Keyed>() -> Result<Vec<NatedSession<K>>, ConntrackError> {
    let mut sessions = Vec::new();
    Ctnetlink::open()?.dump(K::FAMILY, |entry| {
        if let (Some(nated_to), Some(key)) = (entry.nat_address(), K::from_tuple(&entry.original)) {
            sessions.push(NatedSession { key, nated_to });
        }
    })?;
    Ok(sessions)
}

/// Connections of `K`'s family that arrived on an uplink (the inbound flag in
/// their conntrack mark): the key of their reply direction, as the datapath sees
/// the LAN host's answers, with the conntrack mark. Blocking.
pub fn inbound_replies<K: Keyed>(flag: u32) -> Result<Vec<(K, u32)>, ConntrackError> {
    let mut replies = Vec::new();
    Ctnetlink::open()?.dump(K::FAMILY, |entry| {
        if entry.mark & flag != 0
            && let Some(key) = K::from_tuple(&entry.reply)
        {
            replies.push((key, entry.mark));
        }
    })?;
    Ok(replies)
}

/// Deletes every conntrack entry source-NATed to `address` (of its family);
/// returns how many. Blocking: run it off the async runtime's thread.
pub fn flush_nated_to(address: IpAddr) -> Result<usize, ConntrackError> {
    delete_where(Family::of(address), |entry| entry.nated_to(address))
}

/// Deletes the conntrack entries of these flows (keyed as the datapath keys them),
/// so their next packet is NATed afresh for the uplink they were moved to.
/// Returns how many. Blocking.
pub fn flush_flows<K: Keyed + Eq + std::hash::Hash>(
    keys: &std::collections::HashSet<K>,
) -> Result<usize, ConntrackError> {
    delete_where(K::FAMILY, |entry| {
        K::from_tuple(&entry.original).is_some_and(|key| keys.contains(&key))
    })
}

fn delete_where(
    family: Family,
    doomed_if: impl Fn(&Entry) -> bool,
) -> Result<usize, ConntrackError> {
    let mut ct = Ctnetlink::open()?;
    let mut doomed = Vec::new();
    ct.dump(family, |entry| {
        if doomed_if(&entry) {
            doomed.push(entry.original);
        }
    })?;
    let mut deleted = 0;
    for original in doomed {
        ct.send(
            NLM_F_REQUEST | NLM_F_ACK,
            family,
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(original)]),
        )?;
        match ct.receive(drop)? {
            None | Some(0) => deleted += 1,
            // Gone meanwhile (timed out, or closed): nothing to do.
            Some(ENOENT) => {}
            Some(code) => {
                return Err(ConntrackError::Kernel {
                    what: "a conntrack delete",
                    source: std::io::Error::from_raw_os_error(code),
                });
            }
        }
    }
    Ok(deleted)
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
