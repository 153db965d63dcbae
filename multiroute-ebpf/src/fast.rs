//! The fast path: packets of sessions conntrack has established (bound by userspace
//! in `MR_FAST` / `MR_FAST_REPLY`, IPv6's in `MR_FAST6` / `MR_FAST6_REPLY`) skip
//! the routing decision and netfilter, as the kernel's flowtable offload does. The
//! NAT conntrack bound (masquerade, NAT66) is applied here, the TTL or hop limit
//! decremented, the checksums fixed, the next hop taken from the uplink's own
//! table (`bpf_fib_lookup` with `DIRECT | TBID`: no rule walk), and the packet
//! redirected to the egress device, whose qdiscs still apply.
//!
//! Anything unusual returns `None` and takes the slow path: fragments, IP options,
//! IPv6 extension headers, TTL or hop limit ≤ 1, TCP SYN/FIN/RST (conntrack must see a session open and close; a FIN or
//! RST also ends the session's fast path, so the close's last ACK follows), a
//! packet larger than the egress MTU (the kernel then sends "fragmentation
//! needed"), an unresolved neighbour, VLAN tags, and every unbound session.
use aya_ebpf::{
    EbpfContext,
    bindings::{
        __sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_DIRECT, BPF_FIB_LOOKUP_TBID, bpf_fib_lookup,
    },
    helpers::{bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    programs::TcContext,
};
use multiroute_ebpf::{FlowIdentity, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    maps::{Binding, Family, V4, V6},
    parse::{ETH_HLEN, IPV6_HLEN, header},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Version 4, a 20-byte header: anything else carries options.
const IPV4_NO_OPTIONS: u8 = 0x45;
const IP_TTL: usize = 8;
const IP_CHECKSUM: usize = 10;
const IPV6_NEXT_HEADER: usize = 6;
const IPV6_HOP_LIMIT: usize = 7;
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

/// What the fast path does differently per family: which headers it forwards,
/// how the hop count and the addresses' checksums change, the route lookup.
pub(crate) trait FastFamily: Family {
    /// The network header's length when the fast path forwards the packet: no
    /// IPv4 options, no IPv6 extension headers.
    const HEADER: usize;
    /// Where the source and destination addresses sit in that header.
    const SRC: usize;
    const DST: usize;
    /// The packet's hop count (TTL, hop limit) if the fast path may forward it:
    /// a plain header of `proto`, not a fragment, with more than one hop left.
    fn forwardable(ctx: &TcContext, proto: u8) -> Option<u8>;
    /// Writes `hops - 1`, and fixes the header checksum if there is one.
    fn decrement(ctx: &TcContext, hops: u8, proto: u8) -> Option<()>;
    /// Updates the header's and the TCP/UDP checksum (at `checksum`, with `flags`)
    /// for an address changed from `old` to `new`.
    fn readdress(
        ctx: &TcContext,
        checksum: usize,
        flags: u64,
        old: Addr<Self>,
        new: Addr<Self>,
    ) -> Option<()>;
    /// Fills in the family and the addresses of a route lookup.
    fn route(params: &mut bpf_fib_lookup, src: Addr<Self>, dst: Addr<Self>);
}

/// A family's address as its keys hold it.
pub(crate) type Addr<F> = <<F as Family>::Key as FlowIdentity>::Addr;

impl FastFamily for V4 {
    const HEADER: usize = 20;
    const SRC: usize = 12;
    const DST: usize = 16;
    #[inline(always)]
    fn forwardable(ctx: &TcContext, _proto: u8) -> Option<u8> {
        // SAFETY: `header` checked the bytes lie inside the packet.
        let ip = unsafe { header::<[u8; 20]>(ctx, ETH_HLEN).ok()?.read_unaligned() };
        let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
        (ip[0] == IPV4_NO_OPTIONS && !fragment && ip[IP_TTL] > 1).then_some(ip[IP_TTL])
    }
    #[inline(always)]
    fn decrement(ctx: &TcContext, hops: u8, proto: u8) -> Option<()> {
        // The TTL and the protocol share one 16-bit word of the header checksum.
        let old = u16::from_be_bytes([hops, proto]);
        let new = u16::from_be_bytes([hops - 1, proto]);
        ctx.l3_csum_replace(
            ETH_HLEN + IP_CHECKSUM,
            u64::from(old.to_be()),
            u64::from(new.to_be()),
            2,
        )
        .ok()?;
        ctx.store(ETH_HLEN + IP_TTL, &(hops - 1), 0).ok()
    }
    #[inline(always)]
    fn readdress(ctx: &TcContext, checksum: usize, flags: u64, old: u32, new: u32) -> Option<()> {
        let (old, new) = (u64::from(old), u64::from(new));
        ctx.l4_csum_replace(checksum, old, new, u64::from(BPF_F_PSEUDO_HDR) | flags | 4)
            .ok()?;
        ctx.l3_csum_replace(ETH_HLEN + IP_CHECKSUM, old, new, 4)
            .ok()
    }
    #[inline(always)]
    fn route(params: &mut bpf_fib_lookup, src: u32, dst: u32) {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = src;
        params.__bindgen_anon_4.ipv4_dst = dst;
    }
}

impl FastFamily for V6 {
    const HEADER: usize = IPV6_HLEN;
    const SRC: usize = 8;
    const DST: usize = 24;
    #[inline(always)]
    fn forwardable(ctx: &TcContext, proto: u8) -> Option<u8> {
        // SAFETY: `header` checked the bytes lie inside the packet.
        let ip = unsafe { header::<[u8; 8]>(ctx, ETH_HLEN).ok()?.read_unaligned() };
        // TCP or UDP right behind the fixed header: no extension headers, so no
        // fragment either.
        (ip[IPV6_NEXT_HEADER] == proto && ip[IPV6_HOP_LIMIT] > 1).then_some(ip[IPV6_HOP_LIMIT])
    }
    #[inline(always)]
    fn decrement(ctx: &TcContext, hops: u8, _proto: u8) -> Option<()> {
        ctx.store(ETH_HLEN + IPV6_HOP_LIMIT, &(hops - 1), 0).ok()
    }
    #[inline(always)]
    fn readdress(
        ctx: &TcContext,
        checksum: usize,
        flags: u64,
        mut old: [u32; 4],
        mut new: [u32; 4],
    ) -> Option<()> {
        // No header checksum; the pseudo-header's change goes in as one
        // difference. (A CHECKSUM_COMPLETE skb's csum goes stale, which only a
        // local receiver reads: the packet is redirected out.)
        // SAFETY: both are 16 bytes on this program's stack.
        let diff = unsafe { bpf_csum_diff(old.as_mut_ptr(), 16, new.as_mut_ptr(), 16, 0) };
        if diff < 0 {
            return None;
        }
        ctx.l4_csum_replace(
            checksum,
            0,
            diff as u64,
            u64::from(BPF_F_PSEUDO_HDR) | flags,
        )
        .ok()
    }
    #[inline(always)]
    fn route(params: &mut bpf_fib_lookup, src: [u32; 4], dst: [u32; 4]) {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = src;
        params.__bindgen_anon_4.ipv6_dst = dst;
    }
}

/// Forwards the untagged packet `key` was read from, of the session bound in
/// `flow`; `None` leaves it to the slow path untouched.
#[inline(always)]
pub fn forward<F: FastFamily>(
    ctx: &TcContext,
    key: &F::Key,
    flow: *mut Binding<F>,
    side: Side,
) -> Option<i32> {
    let proto = key.proto();
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let hops = F::forwardable(ctx, proto)?;
    let l4 = ETH_HLEN + F::HEADER;
    if proto == IPPROTO_TCP {
        // SAFETY: `header` checked the byte lies inside the packet.
        let flags = unsafe { header::<u8>(ctx, l4 + TCP_FLAGS).ok()?.read_unaligned() };
        if flags & TCP_FIN_RST != 0 {
            // The close is conntrack's to see, to its last ACK: the session leaves
            // the fast path now, not when userspace hears of it.
            end::<F>(key, flow, side);
            return None;
        }
        if flags & TCP_SYN != 0 {
            return None;
        }
    }
    // SAFETY: `flow` points into a fast-path table's value for this key.
    let bound = unsafe { *flow };
    let (src, dst) = match side {
        Side::Outbound => (bound.addr, key.dst()),
        Side::Reply => (key.src(), bound.addr),
    };
    let next = next_hop::<F>(ctx, key, src, dst, bound.table)?;
    rewrite::<F>(ctx, key, &bound, side)?;
    F::decrement(ctx, hops, proto)?;
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
pub fn opens_connection<F: FastFamily>(ctx: &TcContext, key: &F::Key) -> bool {
    if key.proto() != IPPROTO_TCP || F::forwardable(ctx, IPPROTO_TCP).is_none() {
        return false;
    }
    // SAFETY: `header` checks the read lies inside the packet.
    let flags =
        unsafe { header::<u8>(ctx, ETH_HLEN + F::HEADER + TCP_FLAGS).map(|p| p.read_unaligned()) };
    flags.is_ok_and(|flags| flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
}

/// Unbinds the session `key` (of `side`) belongs to, both directions, as
/// userspace's `FastTables::unbind` does.
#[inline(always)]
pub fn end<F: FastFamily>(key: &F::Key, flow: *mut Binding<F>, side: Side) {
    // SAFETY: `flow` points into a fast-path table's value for this key.
    let bound = unsafe { *flow };
    let (own, theirs, other) = match side {
        Side::Outbound => (F::fast(), F::fast_reply(), bound.reply_key(key)),
        Side::Reply => (F::fast_reply(), F::fast(), bound.lan_key(key)),
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
fn next_hop<F: FastFamily>(
    ctx: &TcContext,
    key: &F::Key,
    src: Addr<F>,
    dst: Addr<F>,
    table: u32,
) -> Option<NextHop> {
    // SAFETY: all-zero is a valid `bpf_fib_lookup` (plain integers and unions).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    F::route(&mut params, src, dst);
    params.l4_protocol = key.proto();
    (params.sport, params.dport) = key.wire_ports();
    // SAFETY: the context pointer is the kernel's __sk_buff for this program run.
    params.ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
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
/// and port, with the checksums updated for them.
#[inline(always)]
fn rewrite<F: FastFamily>(
    ctx: &TcContext,
    key: &F::Key,
    bound: &Binding<F>,
    side: Side,
) -> Option<()> {
    let l4 = ETH_HLEN + F::HEADER;
    let (src, dst) = key.wire_ports();
    let (old_addr, old_port, addr_at, port_at) = match side {
        Side::Outbound => (key.src(), src, F::SRC, l4),
        Side::Reply => (key.dst(), dst, F::DST, l4 + 2),
    };
    let (checksum, mangled) = if key.proto() == IPPROTO_TCP {
        (l4 + TCP_CHECKSUM, 0)
    } else {
        // A UDP checksum of 0 means none, and must stay so.
        (l4 + UDP_CHECKSUM, u64::from(BPF_F_MARK_MANGLED_0))
    };
    F::readdress(ctx, checksum, mangled, old_addr, bound.addr)?;
    ctx.l4_csum_replace(
        checksum,
        u64::from(old_port),
        u64::from(bound.port),
        mangled | 2,
    )
    .ok()?;
    ctx.store(ETH_HLEN + addr_at, &bound.addr, 0).ok()?;
    ctx.store(port_at, &bound.port, 0).ok()
}
