//! The sessions the fast path may carry, as conntrack tells them: established (TCP)
//! or answered (UDP), with no helper, and either source-NATed by the router (a LAN
//! host's) or destination-NATed by it (a port forward, arrived on an uplink). Dumped once, then followed through conntrack's events, and kept
//! alive while the fast path carries them: its packets never reach conntrack, so
//! the timeout is refreshed from userspace and TCP window tracking is told to be
//! liberal (a FIN after fast-pathed data must not look out of window).
use std::{
    net::IpAddr,
    os::fd::{AsRawFd, BorrowedFd},
};

use multiroute_ebpf::{FlowIdentity, FlowKey, FlowKey6};
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterMessage, NetfilterMessageInner,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
        Protocol, TCPFlags, Tuple,
    },
};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::{
    entry::{Entry, IPPROTO_TCP, IPPROTO_UDP, Keyed},
    socket::{ConntrackError, Ctnetlink, ENOENT},
};
use crate::net::Family;

const IPS_SEEN_REPLY: u32 = 1 << 1;
const IPS_SRC_NAT: u32 = 1 << 4;
const IPS_DST_NAT: u32 = 1 << 5;
const TCP_CONNTRACK_ESTABLISHED: u8 = 3;
/// `IP_CT_TCP_FLAG_BE_LIBERAL`.
const TCP_BE_LIBERAL: u8 = 0x08;
/// Conntrack's multicast group of destroyed entries.
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
const ENOBUFS: i32 = 105;

/// A session the fast path may carry: its two directions as the datapath keys
/// them (`K`, of IPv4 or IPv6), and the uplink address it is NATed to (or
/// arrived at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established<K = FlowKey> {
    pub original: K,
    pub reply: K,
    /// The LAN host's own address for an IPv6 session conntrack does not NAT.
    pub nat_address: IpAddr,
    /// A port forward: it arrived on the uplink, its replies come from the LAN.
    pub inbound: bool,
    /// Conntrack NATs it. An IPv6 session it does not is routed as it is
    /// (`nat6 = "none"`) or prefix-translated outside conntrack (`"npt"`): the
    /// uplink its flow uses tells its addresses on the wire.
    pub nated: bool,
}

impl<K: Copy> Established<K> {
    /// The direction the LAN side sends, as the classifier keys it.
    pub fn lan_side(&self) -> K {
        if self.inbound {
            self.reply
        } else {
            self.original
        }
    }
}

/// A session's key of either family, as conntrack's events and the datapath's
/// offers name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKey {
    V4(FlowKey),
    V6(FlowKey6),
}

impl Entry {
    fn established<K: Keyed + FlowIdentity>(&self) -> Option<Established<K>> {
        let (snat, dnat) = (
            self.status & IPS_SRC_NAT != 0,
            self.status & IPS_DST_NAT != 0,
        );
        let original = K::from_tuple(&self.original)?;
        let ready = match original.proto() {
            IPPROTO_TCP => self.tcp_state == Some(TCP_CONNTRACK_ESTABLISHED),
            IPPROTO_UDP => self.status & IPS_SEEN_REPLY != 0,
            _ => false,
        };
        if !ready || self.helper {
            return None;
        }
        let reply = K::from_tuple(&self.reply)?;
        let nat_address = match (snat, dnat) {
            (true, false) => self.nat_address()?,
            // Arrived at the uplink's address, forwarded to the LAN host.
            (false, true) => original.destination(),
            (false, false) if K::FAMILY == Family::V6 => original.source(),
            _ => return None,
        };
        Some(Established {
            original,
            reply,
            nat_address,
            inbound: dnat,
            nated: snat || dnat,
        })
    }

    /// The key of the session a destroy event names, of whichever family.
    fn ended(&self) -> Option<SessionKey> {
        FlowKey::from_tuple(&self.original)
            .map(SessionKey::V4)
            .or_else(|| FlowKey6::from_tuple(&self.original).map(SessionKey::V6))
    }
}

/// Every session of `K`'s family the fast path may carry now. Blocking.
pub fn established<K: Keyed + FlowIdentity>() -> Result<Vec<Established<K>>, ConntrackError> {
    let mut sessions = Vec::new();
    Ctnetlink::open()?.dump(K::FAMILY, |entry| sessions.extend(entry.established()))?;
    Ok(sessions)
}

/// Conntrack's destroy events, of both families: a
/// session that ended or was deleted leaves the fast path at once. New and
/// changed entries are not followed: every new connection would cost the router
/// several events, and the datapath offers the flows worth binding instead.
pub struct Events {
    socket: Socket,
}

/// Datagrams one [`Events::read`] takes at most, so a flood of ends cannot keep
/// the caller from its other work.
const READ_BATCH: usize = 256;

impl Events {
    /// Subscribes, non-blocking: the caller polls the socket (see `AsRawFd`).
    pub fn subscribe() -> Result<Self, ConntrackError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        socket.bind_auto().map_err(ConntrackError::Socket)?;
        socket
            .add_membership(NFNLGRP_CONNTRACK_DESTROY)
            .map_err(ConntrackError::Socket)?;
        socket
            .set_non_blocking(true)
            .map_err(ConntrackError::Socket)?;
        Ok(Self { socket })
    }

    /// Lets only the events `filter` (a socket filter program) keeps reach this
    /// socket.
    pub fn filter(&self, filter: BorrowedFd) -> Result<(), ConntrackError> {
        let fd = filter.as_raw_fd();
        // SAFETY: setsockopt(2) on the socket this owns, reading one c_int.
        let result = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_BPF,
                (&raw const fd).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(ConntrackError::Socket(std::io::Error::last_os_error()))
        }
    }

    /// The events queued now (each a datagram of its own), up to [`READ_BATCH`]
    /// of them. Err(None) when the kernel dropped events (the reader fell
    /// behind): the caller then starts over from a dump.
    pub fn read(&mut self) -> Result<Vec<SessionKey>, Option<ConntrackError>> {
        let mut events = Vec::new();
        for _ in 0..READ_BATCH {
            let bytes = match self.socket.recv_from_full() {
                Ok((bytes, _)) => bytes,
                Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock) => break,
                Err(err) if err.raw_os_error() == Some(ENOBUFS) => return Err(None),
                Err(err) => return Err(Some(ConntrackError::Socket(err))),
            };
            events.extend(parse_events(&bytes));
        }
        Ok(events)
    }
}

/// The sessions the destroy events in one datagram end.
fn parse_events(bytes: &[u8]) -> Vec<SessionKey> {
    let mut events = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let Ok(message) = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[offset..]) else {
            break;
        };
        let length = message.header.length as usize;
        if let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(conntrack),
            ..
        }) = message.payload
        {
            events.extend(event(conntrack));
        }
        if length == 0 {
            break;
        }
        offset += length;
    }
    events
}

impl AsRawFd for Events {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// The session a destroy event ends (the socket hears no other kind).
fn event(message: ConntrackMessage) -> Option<SessionKey> {
    let ConntrackMessage::Delete(attributes) = message else {
        return None;
    };
    Entry::from_attributes(attributes).ended()
}

/// How a session is named to conntrack: by one of its directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Original,
    Reply,
}

/// A socket for the fast path's updates of conntrack entries, kept open: one is
/// sent for every TCP session bound and every carried session refreshed.
pub struct Updates {
    ct: Ctnetlink,
}

impl Updates {
    pub fn open() -> Result<Self, ConntrackError> {
        Ok(Self {
            ct: Ctnetlink::open()?,
        })
    }

    /// The session whose LAN side sends `lan_side`, if conntrack holds it and the
    /// fast path may carry it: looked up as the original direction (a LAN host's
    /// connection), then as the reply (a port forward's). Blocking.
    pub fn established<K: Keyed + FlowIdentity + PartialEq>(
        &mut self,
        lan_side: &K,
    ) -> Result<Option<Established<K>>, ConntrackError> {
        for named in [
            ConntrackAttribute::CtaTupleOrig(tuple(lan_side)),
            ConntrackAttribute::CtaTupleReply(tuple(lan_side)),
        ] {
            self.ct.send(
                NLM_F_REQUEST | NLM_F_ACK,
                K::FAMILY,
                ConntrackMessage::Get(vec![named]),
            )?;
            let mut found = None;
            let code = self.ct.receive(|message| {
                if let ConntrackMessage::New(attributes) = message {
                    found = Some(Entry::from_attributes(attributes));
                }
            })?;
            match (found, code) {
                (Some(entry), _) => {
                    return Ok(entry.established().filter(|s| s.lan_side() == *lan_side));
                }
                (None, None | Some(0) | Some(ENOENT)) => {}
                (None, Some(code)) => {
                    return Err(ConntrackError::Kernel {
                        what: "a conntrack lookup",
                        source: std::io::Error::from_raw_os_error(code),
                    });
                }
            }
        }
        Ok(None)
    }

    /// Sets the timeout of each session (named by `key` in `direction`) to
    /// `timeout_s` seconds, and marks TCP ones be-liberal: what conntrack would
    /// have done had it seen the fast-pathed packets. Returns how many were still
    /// there. Blocking.
    pub fn refresh<K: Keyed + FlowIdentity>(
        &mut self,
        sessions: &[(K, Direction, u32)],
    ) -> Result<usize, ConntrackError> {
        refresh(&mut self.ct, sessions)
    }
}

fn refresh<K: Keyed + FlowIdentity>(
    ct: &mut Ctnetlink,
    sessions: &[(K, Direction, u32)],
) -> Result<usize, ConntrackError> {
    let mut refreshed = 0;
    for (key, direction, timeout_s) in sessions {
        let named = match direction {
            Direction::Original => ConntrackAttribute::CtaTupleOrig(tuple(key)),
            Direction::Reply => ConntrackAttribute::CtaTupleReply(tuple(key)),
        };
        let mut attributes = vec![named, ConntrackAttribute::CtaTimeout(*timeout_s)];
        if key.proto() == IPPROTO_TCP {
            attributes.push(liberal());
        }
        ct.send(
            NLM_F_REQUEST | NLM_F_ACK,
            K::FAMILY,
            ConntrackMessage::New(attributes),
        )?;
        match ct.receive(drop)? {
            None | Some(0) => refreshed += 1,
            Some(ENOENT) => {}
            Some(code) => {
                return Err(ConntrackError::Kernel {
                    what: "a conntrack timeout refresh",
                    source: std::io::Error::from_raw_os_error(code),
                });
            }
        }
    }
    Ok(refreshed)
}

/// Be-liberal in both directions (flags, mask).
fn liberal() -> ConntrackAttribute {
    let flags = |side: fn(TCPFlags) -> ProtoInfoTCP| {
        TCPFlags::parse(&[TCP_BE_LIBERAL, TCP_BE_LIBERAL]).map(side)
    };
    let fields = [
        flags(ProtoInfoTCP::OriginalFlags),
        flags(ProtoInfoTCP::ReplyFlags),
    ];
    ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(fields.into_iter().flatten().collect())])
}

/// The conntrack tuple of a direction keyed as the datapath keys it.
fn tuple<K: Keyed + FlowIdentity>(key: &K) -> Vec<Tuple> {
    let (src_port, dst_port) = key.ports();
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(key.source()),
            IPTuple::DestinationAddress(key.destination()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(key.proto())),
            ProtoTuple::SourcePort(src_port),
            ProtoTuple::DestinationPort(dst_port),
        ]),
    ]
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use netlink_packet_netfilter::conntrack::Status;

    use super::*;

    const LAN_HOST: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn direction(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> FlowKey {
        FlowKey::new(src.octets(), sport, dst.octets(), dport, proto)
    }

    /// A LAN host's session to the server, masqueraded to the uplink's address
    /// and port 61000, with `status` bits and TCP `state`.
    fn entry(proto: u8, status: u32, state: Option<u8>, extra: Vec<ConntrackAttribute>) -> Entry {
        let original = direction(LAN_HOST, SERVER, 40000, 443, proto);
        let reply = direction(SERVER, UPLINK, 443, 61000, proto);
        let mut attributes = vec![
            ConntrackAttribute::CtaTupleOrig(tuple(&original)),
            ConntrackAttribute::CtaTupleReply(tuple(&reply)),
            ConntrackAttribute::CtaStatus(Status::from_bits_retain(status)),
        ];
        if let Some(state) = state {
            attributes.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(
                vec![ProtoInfoTCP::State(state)],
            )]));
        }
        attributes.extend(extra);
        Entry::from_attributes(attributes)
    }

    #[test]
    fn an_established_masqueraded_session_is_the_fast_paths() {
        let tcp = entry(
            IPPROTO_TCP,
            IPS_SRC_NAT,
            Some(TCP_CONNTRACK_ESTABLISHED),
            vec![],
        );
        let session: Established = tcp.established().expect("fit for the fast path");
        assert_eq!(session.nat_address, IpAddr::V4(UPLINK));
        assert_eq!(
            session.original,
            direction(LAN_HOST, SERVER, 40000, 443, IPPROTO_TCP)
        );
        assert_eq!(
            session.reply,
            direction(SERVER, UPLINK, 443, 61000, IPPROTO_TCP)
        );
        let udp = entry(IPPROTO_UDP, IPS_SRC_NAT | IPS_SEEN_REPLY, None, vec![]);
        assert!(udp.established::<FlowKey>().is_some(), "answered UDP");
        // A port forward: arrived at the uplink's address, its LAN side the reply.
        let arrived = entry(
            IPPROTO_TCP,
            IPS_DST_NAT,
            Some(TCP_CONNTRACK_ESTABLISHED),
            vec![],
        );
        let forward: Established = arrived.established().expect("a port forward is fit too");
        assert!(forward.inbound);
        assert_eq!(forward.lan_side(), forward.reply);
        assert_eq!(
            forward.nat_address,
            IpAddr::V4(SERVER),
            "its original's destination"
        );
    }

    #[test]
    fn opening_closing_helped_or_forwarded_sessions_stay_on_the_slow_path() {
        let syn_sent = entry(IPPROTO_TCP, IPS_SRC_NAT, Some(2), vec![]);
        let fin_wait = entry(IPPROTO_TCP, IPS_SRC_NAT, Some(4), vec![]);
        let unanswered = entry(IPPROTO_UDP, IPS_SRC_NAT, None, vec![]);
        let both_nats = entry(
            IPPROTO_TCP,
            IPS_SRC_NAT | IPS_DST_NAT,
            Some(TCP_CONNTRACK_ESTABLISHED),
            vec![],
        );
        // An IPv4 session conntrack does not NAT is the router's own, or routed.
        let not_nated = entry(IPPROTO_TCP, 0, Some(TCP_CONNTRACK_ESTABLISHED), vec![]);
        let helper = netlink_packet_core::DefaultNla::new(5, vec![0; 4]);
        let helped = entry(
            IPPROTO_TCP,
            IPS_SRC_NAT,
            Some(TCP_CONNTRACK_ESTABLISHED),
            vec![ConntrackAttribute::Other(helper)],
        );
        for (what, entry) in [
            ("SYN sent", syn_sent),
            ("FIN wait", fin_wait),
            ("unanswered UDP", unanswered),
            ("source and destination NAT", both_nats),
            ("not NATed", not_nated),
            ("with a helper", helped),
        ] {
            assert_eq!(entry.established::<FlowKey>(), None, "{what}");
        }
    }

    #[test]
    fn a_destroyed_entry_ends_its_session() {
        let tcp = entry(
            IPPROTO_TCP,
            IPS_SRC_NAT,
            Some(TCP_CONNTRACK_ESTABLISHED),
            vec![],
        );
        let attributes = vec![
            ConntrackAttribute::CtaTupleOrig(tcp.original.clone()),
            ConntrackAttribute::CtaTupleReply(tcp.reply.clone()),
        ];
        assert_eq!(
            event(ConntrackMessage::Delete(attributes)),
            Some(SessionKey::V4(direction(
                LAN_HOST,
                SERVER,
                40000,
                443,
                IPPROTO_TCP
            )))
        );
    }

    #[test]
    fn an_ipv6_session_masqueraded_by_nat66_is_keyed_and_ended_as_ipv6() {
        let v6 = |text: &str| text.parse::<Ipv6Addr>().expect("an address").octets();
        let key = |src, sport, dst, dport| {
            FlowKey6::wire(
                FlowKey6::words(v6(src)),
                u16::to_be(sport),
                FlowKey6::words(v6(dst)),
                u16::to_be(dport),
                IPPROTO_UDP,
            )
        };
        let original = key("fd00:64::2", 40000, "2001:db8:ff::10", 443);
        let reply = key("2001:db8:ff::10", 443, "2001:db8:18::2", 61000);
        let entry = Entry::from_attributes(vec![
            ConntrackAttribute::CtaTupleOrig(tuple(&original)),
            ConntrackAttribute::CtaTupleReply(tuple(&reply)),
            ConntrackAttribute::CtaStatus(Status::from_bits_retain(IPS_SRC_NAT | IPS_SEEN_REPLY)),
        ]);
        let session: Established<FlowKey6> = entry.established().expect("fit for the fast path");
        assert_eq!((session.original, session.reply), (original, reply));
        assert_eq!(
            session.nat_address,
            IpAddr::from(v6("2001:db8:18::2")),
            "NAT66's address"
        );
        assert_eq!(entry.established::<FlowKey>(), None, "not an IPv4 session");
        assert_eq!(entry.ended(), Some(SessionKey::V6(original)));
        assert!(session.nated);
        // Prefix translation happens outside conntrack: it sees the LAN host both
        // ways, and the session is the LAN host's own.
        let routed = Entry::from_attributes(vec![
            ConntrackAttribute::CtaTupleOrig(tuple(&original)),
            ConntrackAttribute::CtaTupleReply(tuple(&key(
                "2001:db8:ff::10",
                443,
                "fd00:64::2",
                40000,
            ))),
            ConntrackAttribute::CtaStatus(Status::from_bits_retain(IPS_SEEN_REPLY)),
        ]);
        let session: Established<FlowKey6> = routed.established().expect("fit too");
        assert!(!session.nated);
        assert_eq!(session.nat_address, IpAddr::from(v6("fd00:64::2")));
    }
}
