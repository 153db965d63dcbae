//! The fast path: packets of sessions conntrack has established (bound by userspace
//! in `MR_FAST` / `MR_FAST_REPLY`) skip the routing decision and netfilter, as the
//! kernel's flowtable offload does. The NAT conntrack bound is applied here, the
//! TTL decremented, the checksums fixed, the next hop taken from the uplink's own
//! table (`bpf_fib_lookup` with `DIRECT | TBID`: no rule walk), and the packet
//! redirected to the egress device, whose qdiscs still apply.
//!
//! Anything unusual returns `None` and takes the slow path: fragments, IP options,
//! TTL ≤ 1, TCP SYN/FIN/RST (conntrack must see a session open and close; a FIN or
//! RST also ends the session's fast path, so the close's last ACK follows), a
//! packet larger than the egress MTU (the kernel then sends "fragmentation
//! needed"), an unresolved neighbour, VLAN tags, and every unbound session.
use aya_ebpf::{
    EbpfContext,
    bindings::{
        __sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_DIRECT, BPF_FIB_LOOKUP_TBID, bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    programs::TcContext,
};
use multiroute_ebpf::{FastFlow, FlowKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    maps::{FAST, FAST_REPLY},
    parse::{ETH_HLEN, header},
};

const AF_INET: u8 = 2;
/// Version 4, a 20-byte header: anything else carries options.
const IPV4_NO_OPTIONS: u8 = 0x45;
const IP_TTL: usize = 8;
const IP_CHECKSUM: usize = 10;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;
const TCP_FLAGS: usize = 13;
const TCP_CHECKSUM: usize = 16;
const UDP_CHECKSUM: usize = 6;
const TCP_FIN_RST: u8 = 0x05;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Which side of the session the packet is on: the LAN host's (its source becomes
/// the NAT address) or the reply's (its destination becomes the LAN host).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Outbound,
    Reply,
}

/// Forwards the untagged IPv4 packet `key` was read from, of the session bound in
/// `flow`; `None` leaves it to the slow path untouched.
#[inline(always)]
pub fn forward(ctx: &TcContext, key: &FlowKey, flow: *mut FastFlow, side: Side) -> Option<i32> {
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return None;
    }
    // The classifier has just parsed these headers: direct packet access, no copy.
    // SAFETY: `header` checked the 20 bytes lie inside the packet.
    let ip = unsafe { header::<[u8; 20]>(ctx, ETH_HLEN).ok()?.read_unaligned() };
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] != IPV4_NO_OPTIONS || fragment || ip[IP_TTL] <= 1 {
        return None;
    }
    let l4 = ETH_HLEN + 20;
    if key.proto == IPPROTO_TCP {
        // SAFETY: `header` checked the byte lies inside the packet.
        let flags = unsafe { header::<u8>(ctx, l4 + TCP_FLAGS).ok()?.read_unaligned() };
        if flags & TCP_FIN_RST != 0 {
            // The close is conntrack's to see, to its last ACK: the session leaves
            // the fast path now, not when userspace hears of it.
            end(key, flow, side);
            return None;
        }
        if flags & TCP_SYN != 0 {
            return None;
        }
    }
    // SAFETY: `flow` points into a fast-path table's value for this key.
    let bound = unsafe { *flow };
    let (src, dst) = match side {
        Side::Outbound => (bound.addr, key.dst),
        Side::Reply => (key.src, bound.addr),
    };
    let next = next_hop(ctx, key, src, dst, bound.table)?;
    rewrite(ctx, key, &bound, side)?;
    // The TTL and the protocol share one 16-bit word of the header checksum.
    let old = u16::from_be_bytes([ip[IP_TTL], ip[9]]);
    let new = u16::from_be_bytes([ip[IP_TTL] - 1, ip[9]]);
    ctx.l3_csum_replace(
        ETH_HLEN + IP_CHECKSUM,
        u64::from(old.to_be()),
        u64::from(new.to_be()),
        2,
    )
    .ok()?;
    ctx.store(ETH_HLEN + IP_TTL, &(ip[IP_TTL] - 1), 0).ok()?;
    ctx.store(0, &next.dmac, 0).ok()?;
    ctx.store(6, &next.smac, 0).ok()?;
    // SAFETY: as above; statistics, a rare lost increment is accepted.
    unsafe {
        (*flow).seen_s = (bpf_ktime_get_coarse_ns() / 1_000_000_000) as u32;
        (*flow).packets += 1;
    }
    // SAFETY: helper without preconditions.
    Some(unsafe { bpf_redirect(next.ifindex, 0) } as i32)
}

/// Whether the LAN packet `key` was read from opens a TCP connection (a SYN
/// without ACK): on a reused client port, the flow's count starts again there.
#[inline(always)]
pub fn opens_connection(ctx: &TcContext, key: &FlowKey) -> bool {
    if key.proto != IPPROTO_TCP {
        return false;
    }
    // SAFETY: `header` checks each read lies inside the packet.
    let version_ihl = unsafe { header::<u8>(ctx, ETH_HLEN).map(|p| p.read_unaligned()) };
    if version_ihl != Ok(IPV4_NO_OPTIONS) {
        return false;
    }
    // SAFETY: as above.
    let flags = unsafe { header::<u8>(ctx, ETH_HLEN + 20 + TCP_FLAGS).map(|p| p.read_unaligned()) };
    flags.is_ok_and(|flags| flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
}

/// Unbinds the session `key` (of `side`) belongs to, both directions, as
/// userspace's `FastTables::unbind` does.
#[inline(always)]
fn end(key: &FlowKey, flow: *mut FastFlow, side: Side) {
    // SAFETY: `flow` points into a fast-path table's value for this key.
    let bound = unsafe { *flow };
    let other = match side {
        Side::Outbound => bound.reply_key(key),
        Side::Reply => bound.lan_key(key),
    };
    let (own, theirs) = match side {
        Side::Outbound => (&FAST, &FAST_REPLY),
        Side::Reply => (&FAST_REPLY, &FAST),
    };
    let _ = own.remove(key);
    let _ = theirs.remove(&other);
}

/// Where the packet goes next: the egress device and the MACs.
struct NextHop {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// The route to `dst` in `table` alone, and its resolved neighbour. Leaves
/// `tot_len` 0 so the kernel checks the packet (or each GSO segment) against the
/// egress MTU itself.
#[inline(always)]
fn next_hop(ctx: &TcContext, key: &FlowKey, src: u32, dst: u32, table: u32) -> Option<NextHop> {
    // SAFETY: all-zero is a valid `bpf_fib_lookup` (plain integers and unions).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = key.proto;
    params.sport = key.src_port;
    params.dport = key.dst_port;
    // SAFETY: the context pointer is the kernel's __sk_buff for this program run.
    params.ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    params.__bindgen_anon_5.tbid = table;
    // SAFETY: `params` is a live, correctly sized `bpf_fib_lookup`.
    let found = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID,
        )
    };
    if found != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    // SAFETY: on success the kernel filled in the MACs.
    let macs = unsafe { params.__bindgen_anon_6.__bindgen_anon_2 };
    Some(NextHop {
        ifindex: params.ifindex,
        smac: macs.smac,
        dmac: macs.dmac,
    })
}

/// The NAT conntrack bound: the source (outbound) or destination (replies) address
/// and port, with the IP and TCP/UDP checksums updated for them.
#[inline(always)]
fn rewrite(ctx: &TcContext, key: &FlowKey, bound: &FastFlow, side: Side) -> Option<()> {
    let l4 = ETH_HLEN + 20;
    let (old_addr, old_port, addr_at, port_at) = match side {
        Side::Outbound => (key.src, key.src_port, IP_SRC, l4),
        Side::Reply => (key.dst, key.dst_port, IP_DST, l4 + 2),
    };
    let (checksum, mangled) = if key.proto == IPPROTO_TCP {
        (l4 + TCP_CHECKSUM, 0)
    } else {
        // A UDP checksum of 0 means none, and must stay so.
        (l4 + UDP_CHECKSUM, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let (old_addr, new_addr) = (u64::from(old_addr), u64::from(bound.addr));
    ctx.l4_csum_replace(
        checksum,
        old_addr,
        new_addr,
        u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
    )
    .ok()?;
    ctx.l4_csum_replace(
        checksum,
        u64::from(old_port),
        u64::from(bound.port),
        mangled | 2,
    )
    .ok()?;
    ctx.l3_csum_replace(ETH_HLEN + IP_CHECKSUM, old_addr, new_addr, 4)
        .ok()?;
    ctx.store(ETH_HLEN + addr_at, &bound.addr, 0).ok()?;
    ctx.store(port_at, &bound.port, 0).ok()
}
