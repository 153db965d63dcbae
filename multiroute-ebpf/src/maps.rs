//! The datapath's maps, pinned by name (userspace opens exactly these), and what
//! differs between the address families: their maps, their liveness flag, how a
//! key meets the rule tries.
use aya_ebpf::{
    macros::map,
    maps::{
        Array, LruHashMap, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
};
use multiroute_ebpf::{
    AFFINITY_TABLE_SIZE, COUNTER_COUNT, FAST_TABLE_SIZE, FAST6_TABLE_SIZE, FLOW_TABLE_SIZE,
    FLOW6_TABLE_SIZE, FastFlow, FastFlow6, Flow, FlowIdentity, FlowKey, FlowKey6,
    MAX_DIRECT_PREFIXES, MAX_RULE_PREFIXES, MAX_RULES, MAX_UPLINKS, OFFER_RING_BYTES, PolicyRule,
    RING_SIZE, RuleAddress, RuleAddress6, RuleSet, SlotName, Traffic, Uplink, family,
};

#[map(name = "MR_FLOWS")]
pub(crate) static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(FLOW_TABLE_SIZE, 0);

#[map(name = "MR_RING")]
pub(crate) static RING: Array<u32> = Array::pinned(RING_SIZE, 0);

#[map(name = "MR_UPLINKS")]
pub(crate) static UPLINKS: Array<Uplink> = Array::pinned(MAX_UPLINKS, 0);

#[map(name = "MR_TRAFFIC")]
pub(crate) static TRAFFIC: PerCpuArray<Traffic> = PerCpuArray::pinned(MAX_UPLINKS, 0);

/// Which uplink owns each slot: written and read by userspace only.
#[map(name = "MR_SLOTS")]
pub(crate) static SLOTS: Array<SlotName> = Array::pinned(MAX_UPLINKS, 0);

/// `[balance] by = "addresses" | "source"`: the uplink each LAN host and server
/// (or LAN host) was given, so its next connections get the same one. Consulted
/// only for new flows.
#[map(name = "MR_AFFINITY")]
pub(crate) static AFFINITY: LruHashMap<FlowKey, u32> = LruHashMap::pinned(AFFINITY_TABLE_SIZE, 0);

/// One entry: `[balance] by` (see `multiroute_ebpf::balance`), written by userspace.
#[map(name = "MR_BALANCE")]
pub(crate) static BALANCE: Array<u32> = Array::pinned(1, 0);

/// Policy rules in file order (see `multiroute_ebpf::PolicyRule`), consulted only
/// for new flows and flows whose uplink died.
#[map(name = "MR_RULES")]
pub(crate) static RULES: Array<PolicyRule> = Array::pinned(MAX_RULES, 0);

#[map(name = "MR_RULESET")]
pub(crate) static RULESET: Array<RuleSet> = Array::pinned(1, 0);

/// Source prefix → bitmap of the rules whose sources it falls in (userspace folds
/// each prefix's covering prefixes in, so the longest match carries every rule).
#[map(name = "MR_RULE_SRC")]
pub(crate) static RULE_SRC: LpmTrie<RuleAddress, u64> = LpmTrie::pinned(MAX_RULE_PREFIXES, 0);

#[map(name = "MR_RULE_DST")]
pub(crate) static RULE_DST: LpmTrie<RuleAddress, u64> = LpmTrie::pinned(MAX_RULE_PREFIXES, 0);

/// Destinations the main table routes specifically (see [`DIRECT_UPLINK`]); the
/// value is unused. Consulted only for new flows.
#[map(name = "MR_DIRECT")]
pub(crate) static DIRECT: LpmTrie<RuleAddress, u8> = LpmTrie::pinned(MAX_DIRECT_PREFIXES, 0);

/// [`multiroute_ebpf::MAP_LAYOUT`] of the maps pinned beside it; userspace only.
#[map(name = "MR_LAYOUT")]
pub(crate) static LAYOUT: Array<u32> = Array::pinned(1, 0);

/// [`COUNTER_COUNT`] counters per address family (see `multiroute_ebpf::family`).
#[map(name = "MR_COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::pinned(COUNTER_COUNT * family::COUNT, 0);

/// Established sessions the fast path forwards, by the LAN side's flow key
/// (see [`FastFlow`]); written by userspace from conntrack.
#[map(name = "MR_FAST")]
pub(crate) static FAST: LruHashMap<FlowKey, FastFlow> = LruHashMap::pinned(FAST_TABLE_SIZE, 0);

/// The same sessions by their replies' flow key, as they arrive on the uplink.
#[map(name = "MR_FAST_REPLY")]
pub(crate) static FAST_REPLY: LruHashMap<FlowKey, FastFlow> =
    LruHashMap::pinned(FAST_TABLE_SIZE, 0);

/// Flows worth the fast path (see `multiroute_ebpf::OFFER_AFTER`), by their LAN
/// side's key: userspace binds those conntrack holds established.
#[map(name = "MR_OFFERS")]
pub(crate) static OFFERS: RingBuf = RingBuf::pinned(OFFER_RING_BYTES, 0);

/// Packets the fast path forwarded per uplink (both directions), per CPU.
#[map(name = "MR_FAST_TRAFFIC")]
pub(crate) static FAST_TRAFFIC: PerCpuArray<u64> = PerCpuArray::pinned(MAX_UPLINKS, 0);

// IPv6 has its own flow, ring, affinity and rule-prefix maps: wider keys, and its
// own membership (an uplink's IPv6 can be dead while its IPv4 lives).
#[map(name = "MR_FLOWS6")]
pub(crate) static FLOWS6: LruHashMap<FlowKey6, Flow> = LruHashMap::pinned(FLOW6_TABLE_SIZE, 0);

#[map(name = "MR_RING6")]
pub(crate) static RING6: Array<u32> = Array::pinned(RING_SIZE, 0);

#[map(name = "MR_AFFINITY6")]
pub(crate) static AFFINITY6: LruHashMap<FlowKey6, u32> = LruHashMap::pinned(AFFINITY_TABLE_SIZE, 0);

#[map(name = "MR_FAST6")]
pub(crate) static FAST6: LruHashMap<FlowKey6, FastFlow6> = LruHashMap::pinned(FAST6_TABLE_SIZE, 0);

#[map(name = "MR_FAST6_REPLY")]
pub(crate) static FAST6_REPLY: LruHashMap<FlowKey6, FastFlow6> =
    LruHashMap::pinned(FAST6_TABLE_SIZE, 0);

#[map(name = "MR_RULE_SRC6")]
pub(crate) static RULE_SRC6: LpmTrie<RuleAddress6, u64> = LpmTrie::pinned(MAX_RULE_PREFIXES, 0);

#[map(name = "MR_RULE_DST6")]
pub(crate) static RULE_DST6: LpmTrie<RuleAddress6, u64> = LpmTrie::pinned(MAX_RULE_PREFIXES, 0);

#[map(name = "MR_DIRECT6")]
pub(crate) static DIRECT6: LpmTrie<RuleAddress6, u8> = LpmTrie::pinned(MAX_DIRECT_PREFIXES, 0);

/// What differs between the families: their maps, their liveness flag, how a key
/// meets the rule tries. Everything else in the steering is shared.
pub(crate) trait Family {
    type Key: FlowIdentity + 'static;
    const COUNTERS: u32;
    fn flows() -> &'static LruHashMap<Self::Key, Flow>;
    fn affinity() -> &'static LruHashMap<Self::Key, u32>;
    fn ring() -> &'static Array<u32>;
    /// The fast path's bindings by the LAN side's key, and by the replies'.
    fn fast() -> &'static LruHashMap<Self::Key, Binding<Self>>;
    fn fast_reply() -> &'static LruHashMap<Self::Key, Binding<Self>>;
    fn carries(uplink: &Uplink) -> bool;
    /// The rule bitmaps of the key's source and destination prefixes.
    fn rule_prefixes(key: &Self::Key) -> (u64, u64);
    /// The main table routes the key's destination specifically.
    fn direct(key: &Self::Key) -> bool;
}

/// A family's fast-path binding.
pub(crate) type Binding<F> = FastFlow<<<F as Family>::Key as FlowIdentity>::Addr>;

pub(crate) struct V4;
pub(crate) struct V6;

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
    fn fast() -> &'static LruHashMap<FlowKey, FastFlow> {
        &FAST
    }
    #[inline(always)]
    fn fast_reply() -> &'static LruHashMap<FlowKey, FastFlow> {
        &FAST_REPLY
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
    fn fast() -> &'static LruHashMap<FlowKey6, FastFlow6> {
        &FAST6
    }
    #[inline(always)]
    fn fast_reply() -> &'static LruHashMap<FlowKey6, FastFlow6> {
        &FAST6_REPLY
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
