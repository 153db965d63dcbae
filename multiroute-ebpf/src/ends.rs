//! The filter on the daemon's conntrack destroy-event socket: of the sessions
//! conntrack ends, only those the fast path carries reach the daemon. Every
//! short connection ends with an event once anyone listens, and queueing it,
//! waking the daemon and parsing it cost a router more than the kernel's
//! building it (see BENCHMARKS.md, suite 5). What this cannot read reaches the
//! daemon as before.
use aya_ebpf::{macros::socket_filter, programs::SkBuffContext};
use multiroute_ebpf::{Counter, FlowIdentity, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    count,
    maps::{Family, V4, V6},
};

/// `nlmsghdr` and ctnetlink's `nfgenmsg` before the first attribute.
const MESSAGE_TYPE: usize = 4;
const MESSAGE_FAMILY: usize = 16;
const FIRST_ATTRIBUTE: usize = 20;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE`.
const CT_DELETE: u16 = (1 << 8) | 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// An attribute's type without the nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_HDRLEN: usize = 4;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// How conntrack reports a family's addresses.
trait Reported: Family {
    /// `CTA_IP_V4_SRC` or `CTA_IP_V6_SRC`; the destination's is the next type.
    const SOURCE: u16;
}

impl Reported for V4 {
    const SOURCE: u16 = 1;
}

impl Reported for V6 {
    const SOURCE: u16 = 3;
}

#[socket_filter]
pub fn multiroute_ends(ctx: SkBuffContext) -> i64 {
    let family = ctx.load::<u8>(MESSAGE_FAMILY).unwrap_or(0);
    let bound = match ctx.load::<u16>(MESSAGE_TYPE) {
        Ok(CT_DELETE) if family == AF_INET => judge::<V4>(&ctx),
        Ok(CT_DELETE) if family == AF_INET6 => judge::<V6>(&ctx),
        _ => None,
    };
    match bound {
        Some(false) => 0,
        // Bound, or not an end this reads: the daemon decides.
        _ => i64::from(ctx.len()),
    }
}

/// Whether the end names a session the fast path binds (counted), `None` when
/// the message is not laid out as conntrack has always written it.
#[inline(always)]
fn judge<F: Reported>(ctx: &SkBuffContext) -> Option<bool> {
    let bound = match original::<F>(ctx)? {
        Some(key) => F::fast().get_ptr(&key).is_some() || F::fast_reply().get_ptr(&key).is_some(),
        // Neither TCP nor UDP: never bound.
        None => false,
    };
    count::<F>(if bound {
        Counter::EndBound
    } else {
        Counter::EndUnbound
    });
    Some(bound)
}

/// The session's original direction as a flow key (`Some(None)` for a protocol
/// the fast path never binds). Conntrack writes the tuple first: its addresses,
/// then its protocol and ports.
#[inline(always)]
fn original<F: Reported>(ctx: &SkBuffContext) -> Option<Option<F::Key>> {
    let tuple = nested(ctx, FIRST_ATTRIBUTE, CTA_TUPLE_ORIG)?;
    let size = size_of::<<F::Key as FlowIdentity>::Addr>();
    let address = NLA_HDRLEN + size;
    let ips = NLA_HDRLEN + 2 * address;
    let src = leaf(ctx, tuple, CTA_TUPLE_IP, ips)?;
    let dst = src + address;
    let src_addr = ctx.load(leaf(ctx, src, F::SOURCE, address)?).ok()?;
    let dst_addr = ctx.load(leaf(ctx, dst, F::SOURCE + 1, address)?).ok()?;
    let proto = nested(ctx, tuple + ips, CTA_TUPLE_PROTO)?;
    let number: u8 = ctx
        .load(leaf(ctx, proto, CTA_PROTO_NUM, NLA_HDRLEN + 1)?)
        .ok()?;
    if number != IPPROTO_TCP && number != IPPROTO_UDP {
        return Some(None);
    }
    // Attributes are 4-aligned: the protocol number's takes 8 bytes, a port's too.
    let ports = proto + 8;
    let src_port: u16 = ctx
        .load(leaf(ctx, ports, CTA_PROTO_SRC_PORT, NLA_HDRLEN + 2)?)
        .ok()?;
    let dst_port: u16 = ctx
        .load(leaf(ctx, ports + 8, CTA_PROTO_DST_PORT, NLA_HDRLEN + 2)?)
        .ok()?;
    Some(Some(F::Key::wire(
        src_addr, src_port, dst_addr, dst_port, number,
    )))
}

/// The offset of the first attribute inside the nest at `at`, if it is a `kind`.
#[inline(always)]
fn nested(ctx: &SkBuffContext, at: usize, kind: u16) -> Option<usize> {
    let [_, found] = ctx.load::<[u16; 2]>(at).ok()?;
    (found & NLA_TYPE_MASK == kind).then_some(at + NLA_HDRLEN)
}

/// The offset of the payload of the attribute at `at`, if it is a `kind` of
/// `length` bytes (its header included).
#[inline(always)]
fn leaf(ctx: &SkBuffContext, at: usize, kind: u16, length: usize) -> Option<usize> {
    let [found_length, found] = ctx.load::<[u16; 2]>(at).ok()?;
    (found & NLA_TYPE_MASK == kind && usize::from(found_length) == length)
        .then_some(at + NLA_HDRLEN)
}
