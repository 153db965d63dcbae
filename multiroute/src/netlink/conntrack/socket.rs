//! The ctnetlink socket: one request at a time, its replies read to the end.
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::ConntrackMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::entry::Entry;
use crate::net::Family;

pub(super) const ENOENT: i32 = 2;

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

fn proto_family(family: Family) -> NetfilterProtoFamily {
    match family {
        Family::V4 => NetfilterProtoFamily::IPv4,
        Family::V6 => NetfilterProtoFamily::IPv6,
    }
}

pub(super) struct Ctnetlink {
    socket: Socket,
    sequence: u32,
}

impl Ctnetlink {
    pub(super) fn open() -> Result<Self, ConntrackError> {
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
    pub(super) fn send(
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
    pub(super) fn receive(
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
    pub(super) fn dump(
        &mut self,
        family: Family,
        mut each: impl FnMut(Entry),
    ) -> Result<(), ConntrackError> {
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
