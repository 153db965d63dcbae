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
static FRAME: Array<[u8; bench::HEADERS]> = Array::with_max_entries(1, 0);

/// `cargo xtask bench`'s generator (XDP live frames, never attached): hands the
/// frame it is run with, its headers restored, to the stack as if its interface
/// had received it, to a destination port of [`bench::FLOWS`] in turn from
/// [`bench::FIRST_PORT`] (the frame's UDP checksum is 0, so none needs fixing).
#[xdp]
pub fn multiroute_bench_gen(ctx: XdpContext) -> u32 {
    // One read of `data`: the verifier knows the bounds of this value only.
    let data = ctx.data();
    if data + bench::HEADERS > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let (Some(sequence), Some(headers)) = (BENCH.get_ptr_mut(0), FRAME.get_ptr(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot; the headers' bytes were bounds-checked above.
    unsafe {
        // Word by word: a plain copy would become a memcpy call the verifier
        // cannot follow into the packet.
        let (from, to) = (headers.cast::<u8>(), data as *mut u8);
        for at in (0..bench::HEADERS - 2).step_by(8) {
            let word = from.add(at).cast::<u64>().read_unaligned();
            to.add(at).cast::<u64>().write_unaligned(word);
        }
        let last = from.add(bench::HEADERS - 2).cast::<u16>().read_unaligned();
        to.add(bench::HEADERS - 2)
            .cast::<u16>()
            .write_unaligned(last);
        let port = bench::FIRST_PORT + (*sequence % u64::from(bench::FLOWS)) as u16;
        *sequence += 1;
        ((data + bench::DST_PORT_OFFSET) as *mut u16).write_unaligned(port.to_be());
    }
    xdp_action::XDP_PASS
}

/// `cargo xtask bench`'s sink beyond the ISPs (TC ingress: a veth peer with XDP
/// would convert every skb): counts and drops the generator's frames (their
/// first payload byte is [`bench::MARK`]), passes the rest.
#[classifier]
pub fn multiroute_bench_drop(ctx: TcContext) -> i32 {
    match ctx.load::<u8>(bench::PAYLOAD_OFFSET) {
        Ok(bench::MARK) => {}
        _ => return TC_ACT_UNSPEC,
    }
    if let Some(count) = BENCH.get_ptr_mut(bench::DROPPED) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *count += 1 };
    }
    TC_ACT_SHOT
}
