//! multiroute's datapath: a TC classifier on the ingress of each LAN interface.
//!
//! It only marks packets. For each flow it picks an uplink once, from the Maglev ring
//! userspace writes, remembers the choice in an LRU flow table and sets the uplink's
//! fwmark inside the configured mask; `ip rule fwmark … lookup <uplink table>` does
//! the routing. All policy (weights, liveness, the ring itself) lives in userspace.
//! Whatever the program cannot parse or must not steer it passes untouched.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, map},
    maps::{
        Array, LruHashMap, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::TcContext,
};
use multiroute_ebpf::{
    AFFINITY_TABLE_SIZE, COUNTER_COUNT, Counter, FLOW_TABLE_SIZE, Flow, FlowKey, IPPROTO_ICMP,
    IPPROTO_TCP, IPPROTO_UDP, MAX_RULE_PREFIXES, MAX_RULE_UPLINKS, MAX_RULES, MAX_UPLINKS,
    PENDING_UPLINK, PolicyRule, RING_SIZE, RuleAddress, RuleSet, SlotName, Traffic, Uplink,
    affinity_key, balance, chosen_by, ring_slot,
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

/// [`multiroute_ebpf::MAP_LAYOUT`] of the maps pinned beside it; userspace only.
#[map(name = "MR_LAYOUT")]
static LAYOUT: Array<u32> = Array::pinned(1, 0);

#[map(name = "MR_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ICMP_ECHOREPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
/// Ethernet + VLAN + the largest IPv4 header + 8 bytes of L4: all we ever read.
const MAX_HEADER_BYTES: u32 = (ETH_HLEN + VLAN_HLEN + 60 + 8) as u32;

#[classifier]
pub fn multiroute(ctx: TcContext) -> i32 {
    match flow_key(&ctx) {
        Ok(key) => steer(&ctx, &key),
        Err(reason) => count(reason),
    }
    // Never drop, never short-circuit classifiers attached after us.
    TC_ACT_UNSPEC
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

/// Marks the packet with its flow's uplink, choosing and remembering one for a new flow.
#[inline(always)]
fn steer(ctx: &TcContext, key: &FlowKey) {
    let choice = match FLOWS.get_ptr_mut(key) {
        Some(flow) => match remembered_uplink(flow) {
            Some(found) => {
                count(Counter::FlowHit);
                found
            }
            None => {
                // SAFETY: `flow` points into the flow table's value for this key.
                if u32::from(unsafe { (*flow).uplink }) == PENDING_UPLINK {
                    return count(Counter::PassPending);
                }
                let Some(chosen) = rule_choice(key).or_else(|| hashed(ring_choice(key))) else {
                    return count(Counter::PassNoUplink);
                };
                // SAFETY: as above.
                unsafe {
                    (*flow).uplink = chosen.index as u16;
                    (*flow).chosen_by = chosen.chosen_by;
                    (*flow).rule = chosen.rule;
                }
                count(Counter::FlowMoved);
                chosen
            }
        },
        None => match rule_choice(key) {
            Some(chosen) => {
                remember(key, &chosen, Counter::FlowRule);
                chosen
            }
            None => match new_flow_choice(key) {
                Some(PENDING_UPLINK) => return remember_pending(key),
                choice => {
                    let Some(chosen) = hashed(choice) else {
                        return count(Counter::PassNoUplink);
                    };
                    remember(key, &chosen, Counter::FlowNew);
                    chosen
                }
            },
        },
    };
    set_mark(ctx, &choice.uplink);
    account(ctx, choice.index);
}

/// The uplink a known flow uses, unless that uplink has died since. Counts the
/// packet on the flow.
#[inline(always)]
fn remembered_uplink(flow: *mut Flow) -> Option<Choice> {
    // SAFETY: the pointer comes from a successful lookup in the flow table. The
    // count is statistics only: a flow's packets arrive on one receive queue, and the
    // bpf target offers no 64-bit fetch-add to core's atomics, so a rare lost
    // increment when two CPUs race is accepted.
    let (index, chosen_by, rule) = unsafe {
        (*flow).packets += 1;
        (u32::from((*flow).uplink), (*flow).chosen_by, (*flow).rule)
    };
    let (index, uplink) = live_uplink(index)?;
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
fn rule_choice(key: &FlowKey) -> Option<Choice> {
    let set = RULESET.get(0)?;
    if set.present == 0 {
        return None;
    }
    let src = RULE_SRC
        .get(&Key::new(32, key.src.to_ne_bytes()))
        .copied()
        .unwrap_or(0);
    let dst = RULE_DST
        .get(&Key::new(32, key.dst.to_ne_bytes()))
        .copied()
        .unwrap_or(0);
    let mut candidates = set.present & (src | set.any_src) & (dst | set.any_dst);
    for index in 0..MAX_RULES {
        if candidates == 0 {
            return None;
        }
        if candidates & 1 != 0
            && let Some(rule) = RULES.get(index)
            && rule.matches_ports(key)
        {
            return first_live(rule, index as u8);
        }
        candidates >>= 1;
    }
    None
}

/// The first of a rule's uplinks that is alive.
#[inline(always)]
fn first_live(rule: &PolicyRule, rule_index: u8) -> Option<Choice> {
    for position in 0..MAX_RULE_UPLINKS {
        if position >= usize::from(rule.uplink_count) {
            return None;
        }
        if let Some((index, uplink)) = live_uplink(u32::from(rule.uplinks[position])) {
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
fn hashed(choice: Option<u32>) -> Option<Choice> {
    let (index, uplink) = live_uplink(choice?)?;
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
fn new_flow_choice(key: &FlowKey) -> Option<u32> {
    let by = BALANCE.get(0).copied().unwrap_or(balance::CONNECTION);
    if by == balance::CONNECTION {
        return ring_choice(key);
    }
    let affine = affinity_key(key, by);
    // SAFETY: the pointer comes from a successful lookup; a u32 is read once.
    let remembered = AFFINITY.get_ptr(&affine).map(|index| unsafe { *index });
    if let Some(index) = remembered
        && live_uplink(index).is_some()
    {
        return Some(index);
    }
    let chosen = ring_choice(&affine)?;
    if chosen != PENDING_UPLINK && live_uplink(chosen).is_some() {
        let _ = AFFINITY.insert(&affine, &chosen, 0);
    }
    Some(chosen)
}

/// The ring slot's entry for the flow: an uplink index, `NO_UPLINK` or
/// [`PENDING_UPLINK`].
#[inline(always)]
fn ring_choice(key: &FlowKey) -> Option<u32> {
    RING.get(ring_slot(key)).copied()
}

/// The uplink at `index` if it is alive; `NO_UPLINK` and [`PENDING_UPLINK`] index
/// nothing.
#[inline(always)]
fn live_uplink(index: u32) -> Option<(u32, Uplink)> {
    let uplink = UPLINKS.get(index)?;
    (uplink.alive != 0).then_some((index, *uplink))
}

/// Remembers the flow's uplink and what chose it; counts `outcome`, or the failed
/// insert.
#[inline(always)]
fn remember(key: &FlowKey, choice: &Choice, outcome: Counter) {
    insert_flow(
        key,
        choice.index as u16,
        choice.chosen_by,
        choice.rule,
        outcome,
    );
}

/// Remembers a flow seen while multiroute takes over (see [`PENDING_UPLINK`]).
#[inline(always)]
fn remember_pending(key: &FlowKey) {
    insert_flow(
        key,
        PENDING_UPLINK as u16,
        chosen_by::HASH,
        0,
        Counter::PassPending,
    );
}

#[inline(always)]
fn insert_flow(key: &FlowKey, uplink: u16, chosen_by: u8, rule: u8, outcome: Counter) {
    let flow = Flow {
        uplink,
        chosen_by,
        rule,
        // SAFETY: helper without preconditions.
        created_s: (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32,
        packets: 1,
    };
    match FLOWS.insert(key, &flow, 0) {
        Ok(()) => count(outcome),
        Err(_) => count(Counter::FlowInsertFailed),
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
fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
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
    pull_headers(ctx);
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

/// Parses Ethernet (one optional VLAN tag) and IPv4 into the flow key.
#[inline(always)]
fn flow_key(ctx: &TcContext) -> Result<FlowKey, Counter> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = read_u16_be(ctx, 12)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = read_u16_be(ctx, ETH_HLEN + 2)?;
        l3 += VLAN_HLEN;
    }
    if ethertype != ETH_P_IP {
        return Err(Counter::PassNotIpv4);
    }
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
        fill_ports(ctx, l3 + ihl, &mut key)?;
    }
    Ok(key)
}

#[inline(always)]
fn fill_ports(ctx: &TcContext, l4: usize, key: &mut FlowKey) -> Result<(), Counter> {
    match key.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports = header::<[u16; 2]>(ctx, l4)?;
            // SAFETY: `header` checked the four port bytes lie inside the packet.
            let ports = unsafe { ports.read_unaligned() };
            key.src_port = ports[0];
            key.dst_port = ports[1];
        }
        IPPROTO_ICMP => {
            let icmp = header::<[u8; 8]>(ctx, l4)?;
            // SAFETY: `header` checked the eight ICMP header bytes lie inside the packet.
            let icmp = unsafe { icmp.read_unaligned() };
            if icmp[0] == ICMP_ECHO || icmp[0] == ICMP_ECHOREPLY {
                key.src_port = u16::from_ne_bytes([icmp[4], icmp[5]]);
            }
        }
        _ => {}
    }
    Ok(())
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
fn pull_headers(ctx: &TcContext) {
    let wanted = if ctx.len() < MAX_HEADER_BYTES {
        ctx.len()
    } else {
        MAX_HEADER_BYTES
    };
    let _ = ctx.pull_data(wanted);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
