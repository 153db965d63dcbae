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

mod bench;
mod ends;
mod fast;
mod maps;
mod parse;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_coarse_ns,
    macros::classifier,
    programs::TcContext,
};
use fast::FastFamily;
use maps::{
    BALANCE, COUNTERS, FAST_TRAFFIC, Family, OFFERS, RULES, RULESET, TRAFFIC, UPLINKS, V4, V6,
};
use multiroute_ebpf::{
    Counter, DIRECT_UPLINK, Flow, FlowIdentity, MAX_RULE_UPLINKS, MAX_RULES, OFFER_AFTER,
    PENDING_UPLINK, PolicyRule, Uplink, balance, chosen_by, is_offered, ring_slot,
};
use parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ethertype, flow_key, flow_key6};

#[classifier]
pub fn multiroute(ctx: TcContext) -> i32 {
    match ethertype(&ctx) {
        Ok((ETH_P_IP, l3)) => match flow_key(&ctx, l3) {
            Ok(key) => {
                let hit = steer::<V4>(&ctx, &key);
                if let Some((slot, flow)) = hit
                    && l3 == ETH_HLEN
                    && let Some(verdict) = fast_out::<V4>(&ctx, &key, slot, flow)
                {
                    return verdict;
                }
            }
            Err(reason) => count::<V4>(reason),
        },
        Ok((ETH_P_IPV6, l3)) => match flow_key6(&ctx, l3) {
            Ok(key) => {
                let hit = steer::<V6>(&ctx, &key);
                if let Some((slot, flow)) = hit
                    && l3 == ETH_HLEN
                    && let Some(verdict) = fast_out::<V6>(&ctx, &key, slot, flow)
                {
                    return verdict;
                }
            }
            Err(reason) => count::<V6>(reason),
        },
        Ok(_) => count::<V4>(Counter::PassNotIp),
        Err(reason) => count::<V4>(reason),
    }
    // Never drop, never short-circuit classifiers attached after us.
    TC_ACT_UNSPEC
}

/// A LAN packet of a known flow (`known`) on its uplink `slot`: the fast path,
/// when its session is bound to that uplink; an unbound flow that keeps going is
/// offered to userspace for binding. A flow's first [`OFFER_AFTER`] packets,
/// and every SYN, take the slow path.
#[inline(always)]
fn fast_out<F: FastFamily>(
    ctx: &TcContext,
    key: &F::Key,
    slot: u32,
    known: *mut Flow,
) -> Option<i32> {
    // SAFETY: `known` points into the flow table's value for this key.
    let packets = unsafe { &mut (*known).packets };
    if fast::opens_connection::<F>(ctx, key) {
        // A new connection on a reused port counts its own packets.
        *packets = 1;
        return None;
    }
    if *packets < OFFER_AFTER {
        // Not offered yet, so (nearly always) not bound: a short connection's
        // packets cost no fast-path lookup. A session bound from conntrack's
        // dump waits for its flow's count too.
        return None;
    }
    let Some(flow) = F::fast().get_ptr_mut(key) else {
        if is_offered(*packets) {
            // A full ring loses the offer; the flow is offered again later.
            // Userspace tells the families' keys apart by their length.
            let _ = OFFERS.output(key, 0);
        }
        return None;
    };
    // SAFETY: the pointer comes from a successful lookup.
    let (bound, inbound) = unsafe { (u32::from((*flow).slot), (*flow).inbound != 0) };
    // A port forward's replies leave through the uplink their connection arrived
    // on, while it carries; any other session only through its flow's uplink.
    let fits = if inbound {
        UPLINKS.get(bound).is_some_and(F::carries)
    } else {
        bound == slot
    };
    if !fits {
        if !inbound {
            // Its flow moved to another uplink: the binding is stale for good,
            // and the session may be offered and bound there anew.
            fast::end::<F>(key, flow, fast::Side::Outbound);
        }
        return None;
    }
    let verdict = fast::forward::<F>(ctx, key, flow, fast::Side::Outbound)?;
    count::<F>(Counter::FastOut);
    count_fast(bound);
    Some(verdict)
}

/// The fast path for replies, on the ingress of every uplink: a reply of a bound
/// session goes straight to its LAN host; everything else passes untouched.
#[classifier]
pub fn multiroute_reply(ctx: TcContext) -> i32 {
    let verdict = match ethertype(&ctx) {
        Ok((ETH_P_IP, ETH_HLEN)) => flow_key(&ctx, ETH_HLEN)
            .ok()
            .and_then(|key| fast_reply::<V4>(&ctx, &key)),
        Ok((ETH_P_IPV6, ETH_HLEN)) => flow_key6(&ctx, ETH_HLEN)
            .ok()
            .and_then(|key| fast_reply::<V6>(&ctx, &key)),
        _ => None,
    };
    verdict.unwrap_or(TC_ACT_UNSPEC)
}

/// A reply of a bound session, forwarded to its LAN host.
#[inline(always)]
fn fast_reply<F: FastFamily>(ctx: &TcContext, key: &F::Key) -> Option<i32> {
    let flow = F::fast_reply().get_ptr_mut(key)?;
    let verdict = fast::forward::<F>(ctx, key, flow, fast::Side::Reply)?;
    count::<F>(Counter::FastReply);
    // SAFETY: the pointer comes from a successful lookup.
    count_fast(u32::from(unsafe { (*flow).slot }));
    Some(verdict)
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
/// flow. Returns the uplink of a known flow that keeps it, with its entry (what the
/// fast path may take), `None` otherwise.
#[inline(always)]
fn steer<F: Family>(ctx: &TcContext, key: &F::Key) -> Option<(u32, *mut Flow)> {
    let mut hit = None;
    let choice = match F::flows().get_ptr_mut(key) {
        Some(flow) => match remembered_uplink::<F>(flow) {
            Some(found) => {
                count::<F>(Counter::FlowHit);
                hit = Some((found.index, flow));
                found
            }
            None => {
                // SAFETY: `flow` points into the flow table's value for this key.
                match u32::from(unsafe { (*flow).uplink }) {
                    PENDING_UPLINK => {
                        count::<F>(Counter::PassPending);
                        return None;
                    }
                    DIRECT_UPLINK => {
                        count::<F>(Counter::PassDirect);
                        return None;
                    }
                    _ => {}
                }
                let Some(chosen) =
                    rule_choice::<F>(key).or_else(|| hashed::<F>(ring_choice::<F>(key)))
                else {
                    count::<F>(Counter::PassNoUplink);
                    return None;
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
        None if F::direct(key) => {
            remember_direct::<F>(key);
            return None;
        }
        None => match rule_choice::<F>(key) {
            Some(chosen) => {
                remember::<F>(key, &chosen, Counter::FlowRule);
                chosen
            }
            None => match new_flow_choice::<F>(key) {
                Some(PENDING_UPLINK) => {
                    remember_pending::<F>(key);
                    return None;
                }
                choice => {
                    let Some(chosen) = hashed::<F>(choice) else {
                        count::<F>(Counter::PassNoUplink);
                        return None;
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
