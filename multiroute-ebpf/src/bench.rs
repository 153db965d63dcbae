//! `cargo xtask bench`'s generator and sink (suite 4, forwarding at saturation),
//! shipped in the same object as the datapath and never attached by multiroute.
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use multiroute_ebpf::bench;

/// The benchmark programs' per-CPU state: the generator's sequence, the sink's
/// count. Not pinned: it lives with the benchmark.
#[map(name = "MR_BENCH")]
static BENCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The frame's headers as first built (see `bench::FRAME_MAP`), set by the bench.
#[map(name = "MR_BENCH_FRAME")]
static FRAME: Array<[u8; bench::HEADERS6]> = Array::with_max_entries(1, 0);

const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];

/// `cargo xtask bench`'s generator (XDP live frames, never attached): hands the
/// frame it is run with, its headers restored, to the stack as if its interface
/// had received it, to a destination port of [`bench::FLOWS`] in turn from
/// [`bench::FIRST_PORT`]. An IPv4 frame's UDP checksum is 0 (none); an IPv6
/// frame must have one, which is fixed for the port.
#[xdp]
pub fn multiroute_bench_gen(ctx: XdpContext) -> u32 {
    let Some(headers) = FRAME.get_ptr(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the map's value is HEADERS6 bytes.
    let ethertype = unsafe { [(*headers)[12], (*headers)[13]] };
    let restored = if ethertype == ETH_P_IPV6 {
        restore::<{ bench::HEADERS6 }, { bench::DST_PORT_OFFSET6 }>(&ctx, headers.cast())
    } else {
        restore::<{ bench::HEADERS }, { bench::DST_PORT_OFFSET }>(&ctx, headers.cast())
    };
    match restored {
        Some(()) => xdp_action::XDP_PASS,
        None => xdp_action::XDP_ABORTED,
    }
}

/// Writes the first `LEN` bytes of `headers` over the frame and its flow's
/// destination port at `PORT_AT`, the UDP checksum (two bytes later) fixed for
/// the port unless it is 0.
#[inline(always)]
fn restore<const LEN: usize, const PORT_AT: usize>(
    ctx: &XdpContext,
    headers: *const u8,
) -> Option<()> {
    // One read of `data`: the verifier knows the bounds of this value only.
    let data = ctx.data();
    if data + LEN > ctx.data_end() {
        return None;
    }
    let sequence = BENCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; the headers' bytes were bounds-checked above, and
    // the map holds at least LEN.
    unsafe {
        // Word by word: a plain copy would become a memcpy call the verifier
        // cannot follow into the packet.
        let to = data as *mut u8;
        let words = LEN / 8 * 8;
        for at in (0..words).step_by(8) {
            let word = headers.add(at).cast::<u64>().read_unaligned();
            to.add(at).cast::<u64>().write_unaligned(word);
        }
        // The rest (LEN is even) two bytes at a time.
        for at in (words..LEN).step_by(2) {
            let half = headers.add(at).cast::<u16>().read_unaligned();
            to.add(at).cast::<u16>().write_unaligned(half);
        }
        let port = bench::FIRST_PORT + (*sequence % u64::from(bench::FLOWS)) as u16;
        *sequence += 1;
        (to.add(PORT_AT) as *mut u16).write_unaligned(port.to_be());
        let checksum = to.add(PORT_AT + 4) as *mut u16;
        let old = checksum.read_unaligned();
        if old != 0 {
            checksum.write_unaligned(with_port(old, bench::FIRST_PORT, port));
        }
    }
    Some(())
}

/// A UDP checksum (wire order) computed with destination port `from`, for port
/// `to` instead (RFC 1624's incremental update).
#[inline(always)]
fn with_port(checksum: u16, from: u16, to: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!from.to_be()) + u32::from(to.to_be());
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    match !(sum as u16) {
        0 => 0xffff,
        folded => folded,
    }
}

/// `cargo xtask bench`'s sink beyond the ISPs (TC ingress: a veth peer with XDP
/// would convert every skb): counts and drops the generator's frames (their
/// first payload byte is [`bench::MARK`]), passes the rest.
#[classifier]
pub fn multiroute_bench_drop(ctx: TcContext) -> i32 {
    let payload = match ctx.load::<[u8; 2]>(12) {
        Ok(ETH_P_IPV6) => bench::PAYLOAD_OFFSET6,
        _ => bench::PAYLOAD_OFFSET,
    };
    match ctx.load::<u8>(payload) {
        Ok(bench::MARK) => {}
        _ => return TC_ACT_UNSPEC,
    }
    if let Some(count) = BENCH.get_ptr_mut(bench::DROPPED) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *count += 1 };
    }
    TC_ACT_SHOT
}
