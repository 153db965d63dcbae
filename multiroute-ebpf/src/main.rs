//! multiroute's datapath: a TC classifier on the ingress of each LAN interface.
//!
//! It only marks packets. For each flow it picks an uplink once, from the Maglev ring
//! userspace writes, remembers the choice in an LRU flow table and sets the uplink's
//! fwmark inside the configured mask; `ip rule fwmark … lookup <uplink table>` does
//! the routing. All policy (weights, liveness, the ring itself) lives in userspace.
//! Whatever the program cannot parse or must not steer it passes untouched.
//!
//! Packets of sessions conntrack has established take the fast path instead
//! (`fast`): rewritten and redirected to their uplink here, and their replies by
//! `multiroute_reply` on each uplink's ingress.
#![no_std]
#![no_main]

mod fast;

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, map, xdp},
    maps::{
        Array, LruHashMap, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{TcContext, XdpContext},
};
use multiroute_ebpf::{
    AFFINITY_TABLE_SIZE, COUNTER_COUNT, Counter, DIRECT_UPLINK, FAST_TABLE_SIZE, FLOW_TABLE_SIZE,
    FLOW6_TABLE_SIZE, FastFlow, Flow, FlowIdentity, FlowKey, FlowKey6, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, MAX_DIRECT_PREFIXES, MAX_RULE_PREFIXES,
    MAX_RULE_UPLINKS, MAX_RULES, MAX_UPLINKS, PENDING_UPLINK, PolicyRule, RING_SIZE, RuleAddress,
    RuleAddress6, RuleSet, SlotName, Traffic, Uplink, balance, bench, chosen_by, family, ring_slot,
};

#[map(name = "MR_FLOWS")]
static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(FLOW_TABLE_SIZE, 0);

#[map(name = "MR_RING")]
static RING: Array<u32> = Array::pinned(RING_SIZE, 0);

#[map(name = "MR_UPLINKS")]
static UPLINKS: Array<Uplink> = Array::pinned(MAX_UPLINKS, 0);

#[map(name = "MR_TRAFFIC")]
static TRAFFIC: PerCpuArray<Traffic> = PerCpuArray::pinned(MAX_UPLINKS, 0);

/// Which uplink owns each slot: written and read by userspace only.
#[map(name = "MR_SLOTS")]
static SLOTS: Array<SlotName> = Array::pinned(MAX_UPLINKS, 0);

/// `[balance] by = "addresses" | "source"`: the uplink each LAN host and server
/// (or LAN host) was given, so its next connections get the same one. Consulted
/// only for new flows.
#[map(name = "MR_AFFINITY")]
static AFFINITY: LruHashMap<FlowKey, u32> = LruHashMap::pinned(AFFINITY_TABLE_SIZE, 0);

/// One entry: `[balance] by` (see `multiroute_ebpf::balance`), written by userspace.
#[map(name = "MR_BALANCE")]
static BALANCE: Array<u32> = Array::pinned(1, 0);

/// Policy rules in file order (see `multiroute_ebpf::PolicyRule`), consulted only
/// for new flows and flows whose uplink died.
#[map(name = "MR_RULES")]
static RULES: Array<PolicyRule> = Array::pinned(MAX_RULES, 0);

#[map(name = "MR_RULESET")]
static RULESET: Array<RuleSet> = Array::pinned(1, 0);

/// Source prefix → bitmap of the rules whose sources it falls in (userspace folds
/// each prefix's covering prefixes in, so the longest match carries every rule).
#[map(name = "MR_RULE_SRC")]
static RULE_SRC: LpmTrie<RuleAddress, u64> = LpmTrie::pinned(MAX_RULE_PREFIXES, 0);

#[map(name = "MR_RULE_DST")]
static RULE_DST: LpmTrie<RuleAddress, u64> = LpmTrie::pinned(MAX_RULE_PREFIXES, 0);

/// Destinations the main table routes specifically (see [`DIRECT_UPLINK`]); the
/// value is unused. Consulted only for new flows.
#[map(name = "MR_DIRECT")]
static DIRECT: LpmTrie<RuleAddress, u8> = LpmTrie::pinned(MAX_DIRECT_PREFIXES, 0);

/// The benchmark programs' per-CPU state: the generator's sequence, the sink's
/// count. Not pinned: it lives with the benchmark.
#[map(name = "MR_BENCH")]
static BENCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// [`multiroute_ebpf::MAP_LAYOUT`] of the maps pinned beside it; userspace only.
#[map(name = "MR_LAYOUT")]
static LAYOUT: Array<u32> = Array::pinned(1, 0);

/// [`COUNTER_COUNT`] counters per address family (see `multiroute_ebpf::family`).
#[map(name = "MR_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT * family::COUNT, 0);

/// Established sessions the fast path forwards, by the LAN side's flow key
/// (see [`FastFlow`]); written by userspace from conntrack.
#[map(name = "MR_FAST")]
static FAST: LruHashMap<FlowKey, FastFlow> = LruHashMap::pinned(FAST_TABLE_SIZE, 0);

/// The same sessions by their replies' flow key, as they arrive on the uplink.
#[map(name = "MR_FAST_REPLY")]
static FAST_REPLY: LruHashMap<FlowKey, FastFlow> = LruHashMap::pinned(FAST_TABLE_SIZE, 0);

/// Packets the fast path forwarded per uplink (both directions), per CPU.
#[map(name = "MR_FAST_TRAFFIC")]
static FAST_TRAFFIC: PerCpuArray<u64> = PerCpuArray::pinned(MAX_UPLINKS, 0);

// IPv6 has its own flow, ring, affinity and rule-prefix maps: wider keys, and its
// own membership (an uplink's IPv6 can be dead while its IPv4 lives).
#[map(name = "MR_FLOWS6")]
static FLOWS6: LruHashMap<FlowKey6, Flow> = LruHashMap::pinned(FLOW6_TABLE_SIZE, 0);

#[map(name = "MR_RING6")]
static RING6: Array<u32> = Array::pinned(RING_SIZE, 0);

#[map(name = "MR_AFFINITY6")]
static AFFINITY6: LruHashMap<FlowKey6, u32> = LruHashMap::pinned(AFFINITY_TABLE_SIZE, 0);

#[map(name = "MR_RULE_SRC6")]
static RULE_SRC6: LpmTrie<RuleAddress6, u64> = LpmTrie::pinned(MAX_RULE_PREFIXES, 0);

#[map(name = "MR_RULE_DST6")]
static RULE_DST6: LpmTrie<RuleAddress6, u64> = LpmTrie::pinned(MAX_RULE_PREFIXES, 0);

#[map(name = "MR_DIRECT6")]
static DIRECT6: LpmTrie<RuleAddress6, u8> = LpmTrie::pinned(MAX_DIRECT_PREFIXES, 0);

/// What differs between the families: their maps, their liveness flag, how a key
/// meets the rule tries. Everything else in the steering is shared.
trait Family {
    type Key: FlowIdentity + 'static;
    const COUNTERS: u32;
    fn flows() -> &'static LruHashMap<Self::Key, Flow>;
    fn affinity() -> &'static LruHashMap<Self::Key, u32>;
    fn ring() -> &'static Array<u32>;
    fn carries(uplink: &Uplink) -> bool;
    /// The rule bitmaps of the key's source and destination prefixes.
    fn rule_prefixes(key: &Self::Key) -> (u64, u64);
    /// The main table routes the key's destination specifically.
    fn direct(key: &Self::Key) -> bool;
}

struct V4;
struct V6;

impl Family for V4 {
    type Key = FlowKey;
    const COUNTERS: u32 = family::IPV4 * COUNTER_COUNT;
    #[inline(always)]
    fn flows() -> &'static LruHashMap<FlowKey, Flow> {
        &FLOWS
    }
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<FlowKey, u32> {
        &AFFINITY
    }
    #[inline(always)]
    fn ring() -> &'static Array<u32> {
        &RING
    }
    #[inline(always)]
    fn carries(uplink: &Uplink) -> bool {
        uplink.carries != 0
    }
    #[inline(always)]
    fn rule_prefixes(key: &FlowKey) -> (u64, u64) {
        let bits = |trie: &LpmTrie<RuleAddress, u64>, address: u32| {
            trie.get(&Key::new(32, address.to_ne_bytes()))
                .copied()
                .unwrap_or(0)
        };
        (bits(&RULE_SRC, key.src), bits(&RULE_DST, key.dst))
    }
    #[inline(always)]
    fn direct(key: &FlowKey) -> bool {
        DIRECT.get(&Key::new(32, key.dst.to_ne_bytes())).is_some()
    }
}

impl Family for V6 {
    type Key = FlowKey6;
    const COUNTERS: u32 = family::IPV6 * COUNTER_COUNT;
    #[inline(always)]
    fn flows() -> &'static LruHashMap<FlowKey6, Flow> {
        &FLOWS6
    }
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<FlowKey6, u32> {
        &AFFINITY6
    }
    #[inline(always)]
    fn ring() -> &'static Array<u32> {
        &RING6
    }
    #[inline(always)]
    fn carries(uplink: &Uplink) -> bool {
        uplink.carries6 != 0
    }
    #[inline(always)]
    fn rule_prefixes(key: &FlowKey6) -> (u64, u64) {
        let bits = |trie: &LpmTrie<RuleAddress6, u64>, address: [u8; 16]| {
            trie.get(&Key::new(128, address)).copied().unwrap_or(0)
        };
        (
            bits(&RULE_SRC6, key.src_octets()),
            bits(&RULE_DST6, key.dst_octets()),
        )
    }
    #[inline(always)]
    fn direct(key: &FlowKey6) -> bool {
        DIRECT6.get(&Key::new(128, key.dst_octets())).is_some()
    }
}

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ICMP_ECHOREPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Router/neighbour solicitation and advertisement, redirect: link-local business.
const ICMPV6_NDP_FIRST: u8 = 133;
const ICMPV6_NDP_LAST: u8 = 137;
const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before the upper-layer header; a longer chain is
/// passed as malformed (no real traffic carries more than a few).
const MAX_EXTENSION_HEADERS: usize = 6;
/// Ethernet + VLAN + the largest IPv4 header + 8 bytes of L4: all we read of IPv4,
/// and what is pulled in at once when a header is missing.
const MAX_HEADER_BYTES: u32 = (ETH_HLEN + VLAN_HLEN + 60 + 8) as u32;

#[classifier]
pub fn multiroute(ctx: TcContext) -> i32 {
    match ethertype(&ctx) {
        Ok((ETH_P_IP, l3)) => match flow_key(&ctx, l3) {
            Ok(key) => {
                let hit = steer::<V4>(&ctx, &key);
                if let Some(slot) = hit
                    && l3 == ETH_HLEN
                    && let Some(verdict) = fast_out(&ctx, &key, slot)
                {
                    return verdict;
                }
            }
            Err(reason) => count::<V4>(reason),
        },
        Ok((ETH_P_IPV6, l3)) => match flow_key6(&ctx, l3) {
            Ok(key) => {
                steer::<V6>(&ctx, &key);
            }
            Err(reason) => count::<V6>(reason),
        },
        Ok(_) => count::<V4>(Counter::PassNotIp),
        Err(reason) => count::<V4>(reason),
    }
    // Never drop, never short-circuit classifiers attached after us.
    TC_ACT_UNSPEC
}

/// A LAN packet of a known flow on its uplink `slot`: the fast path, when its
/// session is bound to that uplink.
#[inline(always)]
fn fast_out(ctx: &TcContext, key: &FlowKey, slot: u32) -> Option<i32> {
    let flow = FAST.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from a successful lookup.
    if u32::from(unsafe { (*flow).slot }) != slot {
        return None;
    }
    let verdict = fast::forward(ctx, key, flow, fast::Side::Outbound)?;
    count::<V4>(Counter::FastOut);
    count_fast(slot);
    Some(verdict)
}

/// The fast path for replies, on the ingress of every uplink: a reply of a bound
/// session goes straight to its LAN host; everything else passes untouched.
#[classifier]
pub fn multiroute_reply(ctx: TcContext) -> i32 {
    if let Ok((ETH_P_IP, ETH_HLEN)) = ethertype(&ctx)
        && let Ok(key) = flow_key(&ctx, ETH_HLEN)
        && let Some(flow) = FAST_REPLY.get_ptr_mut(&key)
        && let Some(verdict) = fast::forward(&ctx, &key, flow, fast::Side::Reply)
    {
        count::<V4>(Counter::FastReply);
        // SAFETY: the pointer comes from a successful lookup.
        count_fast(u32::from(unsafe { (*flow).slot }));
        return verdict;
    }
    TC_ACT_UNSPEC
}

/// `cargo xtask bench`'s generator (XDP live frames, never attached): hands the
/// frame it is run with to the stack as if its interface had received it, to a
/// destination port of [`bench::FLOWS`] in turn from [`bench::FIRST_PORT`] (the
/// frame's UDP checksum is 0, so none needs fixing).
#[xdp]
pub fn multiroute_bench_gen(ctx: XdpContext) -> u32 {
    let port_at = ctx.data() + bench::DST_PORT_OFFSET;
    if port_at + 2 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(sequence) = BENCH.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot; the two port bytes were bounds-checked above.
    unsafe {
        let port = bench::FIRST_PORT + (*sequence % u64::from(bench::FLOWS)) as u16;
        *sequence += 1;
        (port_at as *mut u16).write_unaligned(port.to_be());
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

/// An empty classifier: the floor `cargo xtask bench` measures the real one against
/// (the cost of a TC program run itself). Never attached.
#[classifier]
pub fn multiroute_floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// An uplink chosen for a flow, and what chose it.
#[derive(Clone, Copy)]
struct Choice {
    index: u32,
    uplink: Uplink,
    chosen_by: u8,
    rule: u8,
}

/// Marks the packet with its flow's uplink, choosing and remembering one for a new
/// flow. Returns the uplink of a known flow that keeps it (what the fast path may
/// take), `None` otherwise.
#[inline(always)]
fn steer<F: Family>(ctx: &TcContext, key: &F::Key) -> Option<u32> {
    let mut hit = None;
    let choice = match F::flows().get_ptr_mut(key) {
        Some(flow) => match remembered_uplink::<F>(flow) {
            Some(found) => {
                count::<F>(Counter::FlowHit);
                hit = Some(found.index);
                found
            }
            None => {
                // SAFETY: `flow` points into the flow table's value for this key.
                match u32::from(unsafe { (*flow).uplink }) {
                    PENDING_UPLINK => return none(count::<F>(Counter::PassPending)),
                    DIRECT_UPLINK => return none(count::<F>(Counter::PassDirect)),
                    _ => {}
                }
                let Some(chosen) =
                    rule_choice::<F>(key).or_else(|| hashed::<F>(ring_choice::<F>(key)))
                else {
                    return none(count::<F>(Counter::PassNoUplink));
                };
                // SAFETY: as above.
                unsafe {
                    (*flow).uplink = chosen.index as u16;
                    (*flow).chosen_by = chosen.chosen_by;
                    (*flow).rule = chosen.rule;
                }
                count::<F>(Counter::FlowMoved);
                chosen
            }
        },
        None if F::direct(key) => return none(remember_direct::<F>(key)),
        None => match rule_choice::<F>(key) {
            Some(chosen) => {
                remember::<F>(key, &chosen, Counter::FlowRule);
                chosen
            }
            None => match new_flow_choice::<F>(key) {
                Some(PENDING_UPLINK) => return none(remember_pending::<F>(key)),
                choice => {
                    let Some(chosen) = hashed::<F>(choice) else {
                        return none(count::<F>(Counter::PassNoUplink));
                    };
                    remember::<F>(key, &chosen, Counter::FlowNew);
                    chosen
                }
            },
        },
    };
    set_mark(ctx, &choice.uplink);
    account(ctx, choice.index);
    hit
}

/// Nothing for the fast path, once `_done` has run.
#[inline(always)]
fn none(_done: ()) -> Option<u32> {
    None
}

/// The uplink a known flow uses, unless that uplink has died since. Counts the
/// packet on the flow.
#[inline(always)]
fn remembered_uplink<F: Family>(flow: *mut Flow) -> Option<Choice> {
    // SAFETY: the pointer comes from a successful lookup in the flow table. The
    // count is statistics only: a flow's packets arrive on one receive queue, and the
    // bpf target offers no 64-bit fetch-add to core's atomics, so a rare lost
    // increment when two CPUs race is accepted.
    let (index, chosen_by, rule) = unsafe {
        (*flow).packets += 1;
        (u32::from((*flow).uplink), (*flow).chosen_by, (*flow).rule)
    };
    let (index, uplink) = live_uplink::<F>(index)?;
    Some(Choice {
        index,
        uplink,
        chosen_by,
        rule,
    })
}

/// The first policy rule the flow matches, in order, and the first live uplink it
/// lists; `None` when no rule matches or the matching rule's uplinks are all dead
/// (the flow is then balanced like any other). Only new and moved flows get here.
#[inline(always)]
fn rule_choice<F: Family>(key: &F::Key) -> Option<Choice> {
    let set = RULESET.get(0)?;
    if set.present == 0 {
        return None;
    }
    let (src, dst) = F::rule_prefixes(key);
    let mut candidates = set.present & (src | set.any_src) & (dst | set.any_dst);
    for index in 0..MAX_RULES {
        if candidates == 0 {
            return None;
        }
        if candidates & 1 != 0
            && let Some(rule) = RULES.get(index)
            && rule.matches_ports(key)
        {
            return first_live::<F>(rule, index as u8);
        }
        candidates >>= 1;
    }
    None
}

/// The first of a rule's uplinks that is alive.
#[inline(always)]
fn first_live<F: Family>(rule: &PolicyRule, rule_index: u8) -> Option<Choice> {
    for position in 0..MAX_RULE_UPLINKS {
        if position >= usize::from(rule.uplink_count) {
            return None;
        }
        if let Some((index, uplink)) = live_uplink::<F>(u32::from(rule.uplinks[position])) {
            return Some(Choice {
                index,
                uplink,
                chosen_by: chosen_by::RULE,
                rule: rule_index,
            });
        }
    }
    None
}

/// A ring (or affinity) choice, if it names a live uplink.
#[inline(always)]
fn hashed<F: Family>(choice: Option<u32>) -> Option<Choice> {
    let (index, uplink) = live_uplink::<F>(choice?)?;
    Some(Choice {
        index,
        uplink,
        chosen_by: chosen_by::HASH,
        rule: 0,
    })
}

/// The uplink index (or `NO_UPLINK`, [`PENDING_UPLINK`]) for a flow the table does
/// not know. With `[balance] by` other than "connection", the flow's addresses (or
/// source) keep the uplink their earlier flows got while it lives; a new pair is
/// placed by its own hash, so weights hold across many hosts and servers.
#[inline(always)]
fn new_flow_choice<F: Family>(key: &F::Key) -> Option<u32> {
    let by = BALANCE.get(0).copied().unwrap_or(balance::CONNECTION);
    if by == balance::CONNECTION {
        return ring_choice::<F>(key);
    }
    let affine = key.affinity(by);
    // SAFETY: the pointer comes from a successful lookup; a u32 is read once.
    let remembered = F::affinity()
        .get_ptr(&affine)
        .map(|index| unsafe { *index });
    if let Some(index) = remembered
        && live_uplink::<F>(index).is_some()
    {
        return Some(index);
    }
    let chosen = ring_choice::<F>(&affine)?;
    if chosen != PENDING_UPLINK && live_uplink::<F>(chosen).is_some() {
        let _ = F::affinity().insert(&affine, &chosen, 0);
    }
    Some(chosen)
}

/// The ring slot's entry for the flow: an uplink index, `NO_UPLINK` or
/// [`PENDING_UPLINK`].
#[inline(always)]
fn ring_choice<F: Family>(key: &F::Key) -> Option<u32> {
    F::ring().get(ring_slot(key)).copied()
}

/// The uplink at `index` if it is alive; `NO_UPLINK` and [`PENDING_UPLINK`] index
/// nothing.
#[inline(always)]
fn live_uplink<F: Family>(index: u32) -> Option<(u32, Uplink)> {
    let uplink = UPLINKS.get(index)?;
    F::carries(uplink).then_some((index, *uplink))
}

/// Remembers the flow's uplink and what chose it; counts `outcome`, or the failed
/// insert.
#[inline(always)]
fn remember<F: Family>(key: &F::Key, choice: &Choice, outcome: Counter) {
    insert_flow::<F>(
        key,
        choice.index as u16,
        choice.chosen_by,
        choice.rule,
        outcome,
    );
}

/// Remembers a flow seen while multiroute takes over (see [`PENDING_UPLINK`]).
#[inline(always)]
fn remember_pending<F: Family>(key: &F::Key) {
    insert_flow::<F>(
        key,
        PENDING_UPLINK as u16,
        chosen_by::HASH,
        0,
        Counter::PassPending,
    );
}

/// Remembers a flow the main table routes (see [`DIRECT_UPLINK`]): its packets
/// pass unmarked without another trie lookup.
#[inline(always)]
fn remember_direct<F: Family>(key: &F::Key) {
    insert_flow::<F>(
        key,
        DIRECT_UPLINK as u16,
        chosen_by::HASH,
        0,
        Counter::PassDirect,
    );
}

#[inline(always)]
fn insert_flow<F: Family>(key: &F::Key, uplink: u16, chosen_by: u8, rule: u8, outcome: Counter) {
    let flow = Flow {
        uplink,
        chosen_by,
        rule,
        // SAFETY: helper without preconditions.
        created_s: (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32,
        packets: 1,
    };
    match F::flows().insert(key, &flow, 0) {
        Ok(()) => count::<F>(outcome),
        Err(_) => count::<F>(Counter::FlowInsertFailed),
    }
}

/// Replaces only the bits multiroute owns, so marks set by others survive.
#[inline(always)]
fn set_mark(ctx: &TcContext, uplink: &Uplink) {
    // SAFETY: the context pointer is the kernel's __sk_buff for this program run.
    let mark = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark };
    ctx.set_mark((mark & !uplink.mask) | uplink.mark);
}

#[inline(always)]
fn account(ctx: &TcContext, index: u32) {
    if let Some(traffic) = TRAFFIC.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe {
            (*traffic).packets += 1;
            (*traffic).bytes += u64::from(ctx.len());
        }
    }
}

#[inline(always)]
fn count_fast(slot: u32) {
    if let Some(value) = FAST_TRAFFIC.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn count<F: Family>(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(F::COUNTERS + counter as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *value += 1 };
    }
}

/// Bounds-checked pointer into the packet's linear data (direct packet access).
#[inline(always)]
fn header<T>(ctx: &TcContext, offset: usize) -> Result<*const T, Counter> {
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
fn read_u16_be(ctx: &TcContext, offset: usize) -> Result<u16, Counter> {
    // SAFETY: `header` checked the two bytes lie inside the packet.
    Ok(u16::from_be(unsafe {
        header::<u16>(ctx, offset)?.read_unaligned()
    }))
}

/// The ethertype behind Ethernet (and one optional VLAN tag), with the offset of
/// the network header.
#[inline(always)]
fn ethertype(ctx: &TcContext) -> Result<(u16, usize), Counter> {
    let ethertype = read_u16_be(ctx, 12)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Ok((read_u16_be(ctx, ETH_HLEN + 2)?, ETH_HLEN + VLAN_HLEN));
    }
    Ok((ethertype, ETH_HLEN))
}

/// Parses IPv4 at `l3` into the flow key.
#[inline(always)]
fn flow_key(ctx: &TcContext, l3: usize) -> Result<FlowKey, Counter> {
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
fn flow_key6(ctx: &TcContext, l3: usize) -> Result<FlowKey6, Counter> {
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
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH | NEXTHDR_DEST
    )
}

/// The ports of a TCP or UDP header at `l4` (the echo identifier of an ICMP or
/// ICMPv6 echo, in the source port), as on the wire; zero for other protocols.
#[inline(always)]
fn ports(ctx: &TcContext, l4: usize, proto: u8) -> Result<(u16, u16), Counter> {
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
fn is_unicast(first_octet: u8, dst: u32) -> bool {
    first_octet & 0xf0 != 0xe0 && dst != u32::MAX
}

/// Headers of a non-linear skb may sit outside the directly readable area; pull in
/// all we could read, only when a header is actually missing. Pulling is not free:
/// on a cloned skb (TCP keeps clones of what it sends) it copies the head, so it
/// must not happen for every bulk-data packet whose linear part already holds the
/// headers.
#[inline(always)]
fn pull_headers(ctx: &TcContext, needed: u32) {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
