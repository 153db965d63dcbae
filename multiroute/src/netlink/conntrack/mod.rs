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
mod entry;
mod sessions;
mod socket;

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage};

use crate::net::Family;
use entry::Entry;
pub use entry::{Keyed, NatedSession};
pub use sessions::{Direction, Established, Events, SessionKey, Updates, established};
pub use socket::ConntrackError;
use socket::{Ctnetlink, ENOENT};

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
