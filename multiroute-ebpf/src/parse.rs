//! Reading a packet's headers: the ethertype behind Ethernet and one VLAN tag, the
//! flow key of IPv4 and IPv6 (walking the extension headers), and the bounds
//! checks the verifier follows. Whatever cannot be parsed is a [`Counter`] saying
//! why, and the packet passes untouched.
use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use multiroute_ebpf::{
    Counter, FlowKey, FlowKey6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const VLAN_HLEN: usize = 4;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86DD;
pub(crate) const ETH_P_8021Q: u16 = 0x8100;
pub(crate) const ETH_P_8021AD: u16 = 0x88A8;
pub(crate) const ICMP_ECHOREPLY: u8 = 0;
pub(crate) const ICMP_ECHO: u8 = 8;
pub(crate) const ICMPV6_ECHO_REQUEST: u8 = 128;
pub(crate) const ICMPV6_ECHO_REPLY: u8 = 129;
/// Router/neighbour solicitation and advertisement, redirect: link-local business.
pub(crate) const ICMPV6_NDP_FIRST: u8 = 133;
pub(crate) const ICMPV6_NDP_LAST: u8 = 137;
pub(crate) const IPV6_HLEN: usize = 40;
pub(crate) const NEXTHDR_HOP: u8 = 0;
pub(crate) const NEXTHDR_ROUTING: u8 = 43;
pub(crate) const NEXTHDR_FRAGMENT: u8 = 44;
pub(crate) const NEXTHDR_AUTH: u8 = 51;
pub(crate) const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before the upper-layer header; a longer chain is
/// passed as malformed (no real traffic carries more than a few).
pub(crate) const MAX_EXTENSION_HEADERS: usize = 6;
/// Ethernet + VLAN + the largest IPv4 header + 8 bytes of L4: all we read of IPv4,
/// and what is pulled in at once when a header is missing.
pub(crate) const MAX_HEADER_BYTES: u32 = (ETH_HLEN + VLAN_HLEN + 60 + 8) as u32;

/// Bounds-checked pointer into the packet's linear data (direct packet access).
#[inline(always)]
pub(crate) fn header<T>(ctx: &TcContext, offset: usize) -> Result<*const T, Counter> {
    // Each return checks the very pointer it returns: that is what the verifier
    // follows.
    let start = ctx.data() + offset;
    if start + size_of::<T>() <= ctx.data_end() {
        return Ok(start as *const T);
    }
    if (offset + size_of::<T>()) as u32 > ctx.len() {
        return Err(Counter::PassMalformed);
    }
    pull_headers(ctx, (offset + size_of::<T>()) as u32);
    let start = ctx.data() + offset;
    if start + size_of::<T>() > ctx.data_end() {
        return Err(Counter::PassMalformed);
    }
    Ok(start as *const T)
}

#[inline(always)]
pub(crate) fn read_u16_be(ctx: &TcContext, offset: usize) -> Result<u16, Counter> {
    // SAFETY: `header` checked the two bytes lie inside the packet.
    Ok(u16::from_be(unsafe {
        header::<u16>(ctx, offset)?.read_unaligned()
    }))
}

/// The ethertype behind Ethernet (and one optional VLAN tag), with the offset of
/// the network header.
#[inline(always)]
pub(crate) fn ethertype(ctx: &TcContext) -> Result<(u16, usize), Counter> {
    let ethertype = read_u16_be(ctx, 12)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Ok((read_u16_be(ctx, ETH_HLEN + 2)?, ETH_HLEN + VLAN_HLEN));
    }
    Ok((ethertype, ETH_HLEN))
}

/// Parses IPv4 at `l3` into the flow key.
#[inline(always)]
pub(crate) fn flow_key(ctx: &TcContext, l3: usize) -> Result<FlowKey, Counter> {
    let ip = header::<[u8; 20]>(ctx, l3)?;
    // SAFETY: `header` checked 20 bytes at `l3` lie inside the packet.
    let ip = unsafe { ip.read_unaligned() };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 {
        return Err(Counter::PassMalformed);
    }
    let src = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
    if !is_unicast(ip[16], dst) {
        return Err(Counter::PassNotUnicast);
    }
    let mut key = FlowKey {
        src,
        dst,
        proto: ip[9],
        ..FlowKey::default()
    };
    // Fragments carry no (or not all) ports: key them by addresses, as the kernel's
    // own multipath hash does.
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if !fragment {
        (key.src_port, key.dst_port) = ports(ctx, l3 + ihl, key.proto)?;
    }
    Ok(key)
}

/// Parses IPv6 at `l3` into the flow key, walking the extension headers to the
/// upper-layer protocol.
#[inline(always)]
pub(crate) fn flow_key6(ctx: &TcContext, l3: usize) -> Result<FlowKey6, Counter> {
    let ip = header::<[u8; IPV6_HLEN]>(ctx, l3)?;
    // SAFETY: `header` checked the fixed header lies inside the packet.
    let ip = unsafe { ip.read_unaligned() };
    if ip[0] >> 4 != 6 {
        return Err(Counter::PassMalformed);
    }
    // Multicast (ff00::/8) and link-local (fe80::/10) never leave by a default route.
    if ip[24] == 0xff || (ip[24] == 0xfe && ip[25] & 0xc0 == 0x80) {
        return Err(Counter::PassNotUnicast);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    let mut key = FlowKey6 {
        src: FlowKey6::words(src),
        dst: FlowKey6::words(dst),
        ..FlowKey6::default()
    };
    let mut next = ip[6];
    let mut offset = l3 + IPV6_HLEN;
    let mut fragment = false;
    let mut walked = 0;
    while is_extension(next) {
        if walked == MAX_EXTENSION_HEADERS {
            return Err(Counter::PassMalformed);
        }
        walked += 1;
        let ext = header::<[u8; 4]>(ctx, offset)?;
        // SAFETY: `header` checked the four bytes lie inside the packet.
        let ext = unsafe { ext.read_unaligned() };
        let length = match next {
            // Offset or more-fragments set: a fragment of a larger datagram. All
            // of its fragments are keyed by addresses, as IPv4's are, so they
            // take one uplink.
            NEXTHDR_FRAGMENT => {
                fragment |= u16::from_be_bytes([ext[2], ext[3]]) & 0xfff9 != 0;
                8
            }
            NEXTHDR_AUTH => (usize::from(ext[1]) + 2) * 4,
            _ => (usize::from(ext[1]) + 1) * 8,
        };
        next = ext[0];
        offset += length;
    }
    key.proto = next;
    if next == IPPROTO_ICMPV6 {
        let icmp = header::<[u8; 1]>(ctx, offset)?;
        // SAFETY: `header` checked the type byte lies inside the packet.
        let kind = unsafe { icmp.read_unaligned() }[0];
        if (ICMPV6_NDP_FIRST..=ICMPV6_NDP_LAST).contains(&kind) {
            return Err(Counter::PassNotUnicast);
        }
    }
    if !fragment {
        (key.src_port, key.dst_port) = ports(ctx, offset, next)?;
    }
    Ok(key)
}

/// IPv6 extension headers the classifier steps over (ESP ends the walk: what
/// follows is encrypted, so such a flow is keyed by addresses).
#[inline(always)]
pub(crate) fn is_extension(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH | NEXTHDR_DEST
    )
}

/// The ports of a TCP or UDP header at `l4` (the echo identifier of an ICMP or
/// ICMPv6 echo, in the source port), as on the wire; zero for other protocols.
#[inline(always)]
pub(crate) fn ports(ctx: &TcContext, l4: usize, proto: u8) -> Result<(u16, u16), Counter> {
    let echo = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports = header::<[u16; 2]>(ctx, l4)?;
            // SAFETY: `header` checked the four port bytes lie inside the packet.
            let ports = unsafe { ports.read_unaligned() };
            return Ok((ports[0], ports[1]));
        }
        IPPROTO_ICMP => [ICMP_ECHO, ICMP_ECHOREPLY],
        IPPROTO_ICMPV6 => [ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY],
        _ => return Ok((0, 0)),
    };
    let icmp = header::<[u8; 8]>(ctx, l4)?;
    // SAFETY: `header` checked the eight ICMP header bytes lie inside the packet.
    let icmp = unsafe { icmp.read_unaligned() };
    if icmp[0] == echo[0] || icmp[0] == echo[1] {
        return Ok((u16::from_ne_bytes([icmp[4], icmp[5]]), 0));
    }
    Ok((0, 0))
}

/// Multicast (224/4) and limited broadcast never follow a default route.
#[inline(always)]
pub(crate) fn is_unicast(first_octet: u8, dst: u32) -> bool {
    first_octet & 0xf0 != 0xe0 && dst != u32::MAX
}

/// Headers of a non-linear skb may sit outside the directly readable area; pull in
/// all we could read, only when a header is actually missing. Pulling is not free:
/// on a cloned skb (TCP keeps clones of what it sends) it copies the head, so it
/// must not happen for every bulk-data packet whose linear part already holds the
/// headers.
#[inline(always)]
pub(crate) fn pull_headers(ctx: &TcContext, needed: u32) {
    let wanted = if needed < MAX_HEADER_BYTES {
        MAX_HEADER_BYTES
    } else {
        needed
    };
    let _ = ctx.pull_data(if ctx.len() < wanted {
        ctx.len()
    } else {
        wanted
    });
}
