//! The contract between the datapath and userspace: map names, `#[repr(C)]` key and
//! value layouts, and the flow hash. Both sides compile this file, so a layout change
//! cannot reach one side only.
#![no_std]

mod counters;
mod policy;

pub use counters::{COUNTER_COUNT, Counter, family};
pub use policy::{PolicyRule, RuleAddress, RuleAddress6, RuleSet};

/// Uplinks the datapath can address. Bounded so every array map has a fixed size.
pub const MAX_UPLINKS: u32 = 64;

/// Slots in the Maglev lookup table. Prime, as Maglev's permutations require; large
/// enough that weights are honoured to well under a tenth of a percent.
pub const RING_SIZE: u32 = 65_537;

/// A ring slot or flow that points at no uplink (all uplinks dead or drained).
/// Sentinels fit in 16 bits: a flow stores its uplink as a `u16`.
pub const NO_UPLINK: u32 = 0xffff;

/// A ring slot or flow whose uplink is not chosen by the datapath yet. While
/// multiroute takes over a router that already forwards traffic, every ring slot
/// holds this: a flow seen then is remembered as pending and passes unmarked, so it
/// keeps following the host's routing (and the NAT binding conntrack gave it) until
/// userspace resolves it to the uplink conntrack says it is NATed to. No packet of
/// such a flow ever leaves through another uplink than its NAT binding's.
pub const PENDING_UPLINK: u32 = 0xfffe;

/// A flow to a destination the main table routes specifically (a LAN or VPN
/// subnet, a static route, the router's own address): it passes unmarked and the
/// main table routes it, which lets the `fwmark` rules come before the main
/// table's lookup, so a steered packet walks no rule meant for other traffic.
pub const DIRECT_UPLINK: u32 = 0xfffd;

/// Default capacity of the flow table; userspace may resize it at load time.
pub const FLOW_TABLE_SIZE: u32 = 262_144;

/// Default capacity of the IPv6 flow table. A separate table, because one key
/// wide enough for IPv6 would cost every IPv4 flow 28 bytes more: a million IPv4
/// flows would no longer fit in 100 MiB. At 120 bytes an entry (bucket included),
/// 32 768 IPv6 flows take 3.75 MiB and keep the maps of a million IPv4 flows under
/// that line too. An LRU table: a running flow it evicts is placed by the same ring
/// on its next packet, so it keeps its uplink unless the ring changed meanwhile.
/// Userspace may resize it at load time.
pub const FLOW6_TABLE_SIZE: u32 = 32_768;

/// Capacity of the affinity table (`[balance] by = "addresses" | "source"`): one
/// entry per LAN host and server, or per LAN host.
pub const AFFINITY_TABLE_SIZE: u32 = 65_536;

/// `[balance] by`, as the datapath reads it from `MR_BALANCE`.
pub mod balance {
    /// Each connection (5-tuple) chooses on its own.
    pub const CONNECTION: u32 = 0;
    /// Connections between one LAN host and one server share an uplink.
    pub const ADDRESSES: u32 = 1;
    /// Connections of one LAN host share an uplink.
    pub const SOURCE: u32 = 2;
}

/// Policy rules (`[[rule]]`, and `pin`/`pin_from` as one-uplink rules) the
/// datapath matches new flows against, in order: one bit each in a `u64`.
pub const MAX_RULES: u32 = 64;
/// Uplinks one rule may list, in preference order.
pub const MAX_RULE_UPLINKS: usize = 8;
/// Prefixes over all rules, per side (sources, destinations).
pub const MAX_RULE_PREFIXES: u32 = 4096;

/// Prefixes of the main table's specific routes (and the router's addresses) the
/// datapath leaves to the main table, per family (see [`DIRECT_UPLINK`]).
pub const MAX_DIRECT_PREFIXES: u32 = 4096;

/// What chose a flow's uplink (`Flow::chosen_by`).
pub mod chosen_by {
    /// The ring (or the affinity of `[balance] by`).
    pub const HASH: u8 = 0;
    /// A policy rule; `Flow::rule` says which.
    pub const RULE: u8 = 1;
    /// Seeded from conntrack when multiroute took over a running router.
    pub const CONNTRACK: u8 = 2;
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// The layout of the pinned maps (their keys, values and meanings). A `load` adopts
/// a running datapath's maps only with the same layout; a release that changes one
/// bumps this. Maps pinned before `MR_LAYOUT` existed have layout 1.
/// Layout 2: IPv6 (`Uplink::alive6`, the IPv6 maps, counters per family).
/// Layout 3: direct destinations (`MR_DIRECT`, `MR_DIRECT6`, the `pass_direct`
/// counter).
/// Layout 4: the fast path (`MR_FAST`, `MR_FAST_REPLY`, `MR_FAST_TRAFFIC`, two
/// counters more).
/// Layout 5: the IPv6 fast path (`MR_FAST6`, `MR_FAST6_REPLY`; IPv6 flow keys
/// in `MR_OFFERS` beside IPv4's, told apart by their length).
pub const MAP_LAYOUT: u32 = 5;

/// Older layouts a `load` upgrades in place, keeping the flow table: their maps
/// are layout 5's but for the counters (fewer per family before layout 4:
/// recreated, they restart from zero) and the maps added since (created).
pub const UPGRADABLE_LAYOUTS: [u32; 3] = [2, 3, 4];

/// Pin and map names, shared so userspace opens exactly what the program declares.
pub mod map_names {
    pub const FLOWS: &str = "MR_FLOWS";
    pub const RING: &str = "MR_RING";
    pub const UPLINKS: &str = "MR_UPLINKS";
    pub const TRAFFIC: &str = "MR_TRAFFIC";
    pub const COUNTERS: &str = "MR_COUNTERS";
    pub const SLOTS: &str = "MR_SLOTS";
    pub const AFFINITY: &str = "MR_AFFINITY";
    pub const BALANCE: &str = "MR_BALANCE";
    pub const RULES: &str = "MR_RULES";
    pub const RULESET: &str = "MR_RULESET";
    pub const RULE_SRC: &str = "MR_RULE_SRC";
    pub const RULE_DST: &str = "MR_RULE_DST";
    pub const LAYOUT: &str = "MR_LAYOUT";
    pub const FLOWS6: &str = "MR_FLOWS6";
    pub const RING6: &str = "MR_RING6";
    pub const AFFINITY6: &str = "MR_AFFINITY6";
    pub const RULE_SRC6: &str = "MR_RULE_SRC6";
    pub const RULE_DST6: &str = "MR_RULE_DST6";
    pub const DIRECT: &str = "MR_DIRECT";
    pub const DIRECT6: &str = "MR_DIRECT6";
    pub const FAST: &str = "MR_FAST";
    pub const FAST_REPLY: &str = "MR_FAST_REPLY";
    pub const FAST_TRAFFIC: &str = "MR_FAST_TRAFFIC";
    pub const FAST6: &str = "MR_FAST6";
    pub const FAST6_REPLY: &str = "MR_FAST6_REPLY";
    pub const OFFERS: &str = "MR_OFFERS";
}

/// Name of the classifier function inside the object file.
pub const PROGRAM_NAME: &str = "multiroute";
/// The fast path for replies, on the ingress of each uplink interface.
pub const REPLY_PROGRAM_NAME: &str = "multiroute_reply";
/// The filter on the daemon's conntrack destroy-event socket: only the ends of
/// sessions the fast path carries reach it.
pub const ENDS_PROGRAM_NAME: &str = "multiroute_ends";
/// What the benchmark's XDP generator and sink share with it (never attached by
/// multiroute itself).
pub mod bench {
    pub const GEN_PROGRAM: &str = "multiroute_bench_gen";
    pub const DROP_PROGRAM: &str = "multiroute_bench_drop";
    pub const MAP: &str = "MR_BENCH";
    /// The generator's frame headers (Ethernet, IPv4 or IPv6, UDP): written over
    /// every frame before it is sent, since live frames are recycled with
    /// whatever the router's rewrites (NAT, TTL, MACs) left in them. The map
    /// holds [`HEADERS6`] bytes; an IPv4 frame uses the first [`HEADERS`].
    pub const FRAME_MAP: &str = "MR_BENCH_FRAME";
    pub const HEADERS: usize = PAYLOAD_OFFSET;
    pub const HEADERS6: usize = PAYLOAD_OFFSET6;
    /// Index in `MR_BENCH` of the sink's count.
    pub const DROPPED: u32 = 1;
    /// The generator's flows: destination ports `FIRST_PORT..FIRST_PORT + FLOWS`.
    pub const FIRST_PORT: u16 = 9000;
    pub const FLOWS: u16 = 64;
    /// Where the UDP destination port sits in an untagged IPv4 frame without
    /// options.
    pub const DST_PORT_OFFSET: usize = 14 + 20 + 2;
    /// The generator's frames carry [`MARK`] as their first payload byte here.
    pub const PAYLOAD_OFFSET: usize = 14 + 20 + 8;
    /// The same in an IPv6 frame.
    pub const DST_PORT_OFFSET6: usize = 14 + 40 + 2;
    pub const PAYLOAD_OFFSET6: usize = 14 + 40 + 8;
    pub const MARK: u8 = 0xf1;
}

/// The empty classifier benchmarks use as their floor.
pub const FLOOR_PROGRAM_NAME: &str = "multiroute_floor";

/// Flow identity. Addresses and ports are stored as they appear on the wire (network
/// byte order) so the hot path copies them without swapping. Fragments and protocols
/// without ports have zero ports; ICMP echo carries its identifier in `src_port`,
/// as conntrack does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

impl FlowKey {
    /// The key of a flow from `src`:`src_port` to `dst`:`dst_port` (octets as on
    /// the wire, ports in host order).
    pub const fn new(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16, proto: u8) -> Self {
        Self::wire(
            u32::from_ne_bytes(src),
            src_port.to_be(),
            u32::from_ne_bytes(dst),
            dst_port.to_be(),
            proto,
        )
    }

    /// The key of fields already in wire order (another key's, a binding's).
    pub const fn wire(src: u32, src_port: u16, dst: u32, dst_port: u16, proto: u8) -> Self {
        Self {
            src,
            dst,
            src_port,
            dst_port,
            proto,
            pad: [0; 3],
        }
    }

    /// Source address octets, as on the wire.
    pub fn src_octets(&self) -> [u8; 4] {
        self.src.to_ne_bytes()
    }
    pub fn dst_octets(&self) -> [u8; 4] {
        self.dst.to_ne_bytes()
    }
    /// Ports in host order (the ICMP echo identifier for ICMP).
    pub fn ports(&self) -> (u16, u16) {
        (u16::from_be(self.src_port), u16::from_be(self.dst_port))
    }
}

/// An IPv6 flow's identity, as [`FlowKey`] is an IPv4 one: addresses as four
/// words each in wire order, ports likewise (the ICMPv6 echo identifier in
/// `src_port`); fragments are keyed by addresses and upper-layer protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

impl FlowKey6 {
    /// Address octets, as on the wire.
    pub fn src_octets(&self) -> [u8; 16] {
        words_to_octets(self.src)
    }
    pub fn dst_octets(&self) -> [u8; 16] {
        words_to_octets(self.dst)
    }
    /// Builds the words of a key from an address's octets.
    pub fn words(octets: [u8; 16]) -> [u32; 4] {
        let word = |i: usize| {
            u32::from_ne_bytes([
                octets[i * 4],
                octets[i * 4 + 1],
                octets[i * 4 + 2],
                octets[i * 4 + 3],
            ])
        };
        [word(0), word(1), word(2), word(3)]
    }
}

fn words_to_octets(words: [u32; 4]) -> [u8; 16] {
    let mut octets = [0; 16];
    for (i, word) in words.iter().enumerate() {
        octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    octets
}

/// What the datapath needs of a flow key of either family.
pub trait FlowIdentity: Copy {
    /// An address of the family, in wire order.
    type Addr: Address;
    /// The key of fields already in wire order.
    fn wire(src: Self::Addr, src_port: u16, dst: Self::Addr, dst_port: u16, proto: u8) -> Self;
    fn src(&self) -> Self::Addr;
    fn dst(&self) -> Self::Addr;
    /// Ports in wire order.
    fn wire_ports(&self) -> (u16, u16);
    fn proto(&self) -> u8;
    /// Ports in host order (the ICMP echo identifier for ICMP).
    fn ports(&self) -> (u16, u16);
    /// The flow hash that indexes the ring.
    fn hash(&self) -> u32;
    /// The key a new flow's uplink is chosen and remembered by under `by` (see
    /// [`balance`]): its two addresses, or its source address.
    fn affinity(&self, by: u32) -> Self;
}

impl FlowIdentity for FlowKey {
    type Addr = u32;
    #[inline(always)]
    fn wire(src: u32, src_port: u16, dst: u32, dst_port: u16, proto: u8) -> Self {
        FlowKey::wire(src, src_port, dst, dst_port, proto)
    }
    #[inline(always)]
    fn src(&self) -> u32 {
        self.src
    }
    #[inline(always)]
    fn dst(&self) -> u32 {
        self.dst
    }
    #[inline(always)]
    fn wire_ports(&self) -> (u16, u16) {
        (self.src_port, self.dst_port)
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn ports(&self) -> (u16, u16) {
        FlowKey::ports(self)
    }
    #[inline(always)]
    fn hash(&self) -> u32 {
        mix(self.src, self.dst, self.src_port, self.dst_port, self.proto)
    }
    #[inline(always)]
    fn affinity(&self, by: u32) -> Self {
        FlowKey {
            src: self.src,
            dst: if by == balance::SOURCE { 0 } else { self.dst },
            ..FlowKey::default()
        }
    }
}

impl FlowIdentity for FlowKey6 {
    type Addr = [u32; 4];
    #[inline(always)]
    fn wire(src: [u32; 4], src_port: u16, dst: [u32; 4], dst_port: u16, proto: u8) -> Self {
        FlowKey6 {
            src,
            dst,
            src_port,
            dst_port,
            proto,
            pad: [0; 3],
        }
    }
    #[inline(always)]
    fn src(&self) -> [u32; 4] {
        self.src
    }
    #[inline(always)]
    fn dst(&self) -> [u32; 4] {
        self.dst
    }
    #[inline(always)]
    fn wire_ports(&self) -> (u16, u16) {
        (self.src_port, self.dst_port)
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn ports(&self) -> (u16, u16) {
        (u16::from_be(self.src_port), u16::from_be(self.dst_port))
    }
    /// Each address folded to 32 bits (rotations keep a difference in any word
    /// from cancelling one in another), then IPv4's mix.
    #[inline(always)]
    fn hash(&self) -> u32 {
        let fold =
            |w: [u32; 4]| w[0] ^ w[1].rotate_left(8) ^ w[2].rotate_left(16) ^ w[3].rotate_left(24);
        mix(
            fold(self.src),
            fold(self.dst),
            self.src_port,
            self.dst_port,
            self.proto,
        )
    }
    #[inline(always)]
    fn affinity(&self, by: u32) -> Self {
        FlowKey6 {
            src: self.src,
            dst: if by == balance::SOURCE {
                [0; 4]
            } else {
                self.dst
            },
            ..FlowKey6::default()
        }
    }
}

/// What the flow table remembers about a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Index into the uplink table (or [`PENDING_UPLINK`], [`DIRECT_UPLINK`]).
    pub uplink: u16,
    /// What chose the uplink: one of [`chosen_by`].
    pub chosen_by: u8,
    /// The rule's index when a rule chose it.
    pub rule: u8,
    /// CLOCK_MONOTONIC second the flow was first seen: 16 bytes per flow instead of
    /// 24 keep a million flows under 100 MiB of kernel memory.
    pub created_s: u32,
    /// Packets of the flow the classifier has seen (LAN → uplink direction).
    pub packets: u64,
}

impl Flow {
    /// The uplink index, as the uplink table and the ring index uplinks.
    pub fn uplink_index(&self) -> u32 {
        u32::from(self.uplink)
    }
}

/// The uplink name that owns a slot of the uplink table, NUL-padded; all zero for a
/// free slot. The datapath never reads it: it is kept next to the other maps so a
/// restarted daemon finds which uplink each slot (mark, table, flows) belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotName {
    pub bytes: [u8; 16],
}

/// One uplink as the datapath sees it. `mark` already sits inside `mask`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uplink {
    pub mark: u32,
    pub mask: u32,
    /// Non-zero while the uplink may carry IPv4 traffic: alive and not standing
    /// by on a backup tier. Flows on an uplink that does not are re-steered
    /// through the ring on their next packet.
    pub carries: u32,
    /// The same for IPv6: an ISP's IPv6 can be broken while its IPv4 works.
    pub carries6: u32,
}

/// Capacity of each fast-path table (`MR_FAST`, `MR_FAST_REPLY`): sessions
/// conntrack has established and userspace bound — only those that keep going,
/// far fewer than the flows. An LRU: a session pushed out goes back to the slow
/// path, which is always correct, and is offered again. Sized (112 bytes an
/// entry, 0.9 MiB each) so a million IPv4 flows keep every map under 100 MiB:
/// the flow table takes 96 of them.
pub const FAST_TABLE_SIZE: u32 = 8_192;
/// The same for IPv6 (`MR_FAST6`, `MR_FAST6_REPLY`; 144 bytes an entry): fewer,
/// as its flow table is smaller (see [`FLOW6_TABLE_SIZE`]).
pub const FAST6_TABLE_SIZE: u32 = 2_048;
/// An unbound flow is offered to the fast path at its `OFFER_AFTER`th LAN
/// packet, then at every power of two: a short connection (a request and its
/// answer) never costs a binding, and one that keeps going is asked about again
/// until conntrack holds it established.
pub const OFFER_AFTER: u64 = 8;
/// Bytes of the ring the offers (flow keys) go through to userspace.
pub const OFFER_RING_BYTES: u32 = 64 * 1024;

/// Whether a flow at its `packets`th packet is offered (see [`OFFER_AFTER`]).
#[inline(always)]
pub const fn is_offered(packets: u64) -> bool {
    packets >= OFFER_AFTER && packets & (packets - 1) == 0
}

/// An address as a fast-path binding holds it (wire order), and the padding that
/// keeps the binding's `packets` 8-aligned with no implicit hole.
pub trait Address: Copy + Default + PartialEq + Eq + core::fmt::Debug + 'static {
    type Pad: Copy + Default + PartialEq + Eq + core::fmt::Debug;
}

impl Address for u32 {
    type Pad = u32;
}

impl Address for [u32; 4] {
    type Pad = ();
}

/// An established session as the fast path forwards it, written by userspace from
/// conntrack's entry: `MR_FAST` (`MR_FAST6`) is keyed by the LAN side's flow key
/// (as the classifier reads it), `MR_FAST_REPLY` (`MR_FAST6_REPLY`) by the
/// reply's as it arrives on the uplink. The packet's source (outbound) or
/// destination (replies) becomes `addr`:`port` — the NAT conntrack bound — and
/// the next hop comes from route table `table` without the rule walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastFlow<A: Address = u32> {
    /// Network byte order, as on the wire.
    pub addr: A,
    pub port: u16,
    /// The uplink slot (outbound: forwarded only while its flow uses it and it
    /// carries; replies: counted on it).
    pub slot: u16,
    pub table: u32,
    /// When the fast path last forwarded a packet (coarse monotonic seconds):
    /// userspace refreshes conntrack's timeout from it.
    pub seen_s: u32,
    /// Non-zero for a connection that arrived on the uplink (a port forward): its
    /// LAN side's packets are the replies, which follow the arrival uplink
    /// whatever the classifier hashed them to.
    pub inbound: u32,
    pub pad: A::Pad,
    pub packets: u64,
}

/// IPv6's binding (NAT66).
pub type FastFlow6 = FastFlow<[u32; 4]>;

impl<A: Address> FastFlow<A> {
    /// The other direction's key of a session one of whose directions is `key`,
    /// bound as `self` (`key` being the LAN side): from `key`'s destination to the
    /// address the binding rewrites to.
    #[inline(always)]
    pub fn reply_key<K: FlowIdentity<Addr = A>>(&self, key: &K) -> K {
        K::wire(
            key.dst(),
            key.wire_ports().1,
            self.addr,
            self.port,
            key.proto(),
        )
    }

    /// The LAN side's key of a session whose uplink side is `wan_side`, bound as
    /// `self` (the reply binding): from the LAN host to where the uplink side came
    /// from.
    #[inline(always)]
    pub fn lan_key<K: FlowIdentity<Addr = A>>(&self, wan_side: &K) -> K {
        K::wire(
            self.addr,
            self.port,
            wan_side.src(),
            wan_side.wire_ports().0,
            wan_side.proto(),
        )
    }
}

/// Per-uplink, per-CPU traffic the datapath steered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// The flow hash that indexes the ring. Deterministic (no per-boot seed) so a flow's
/// choice can be predicted and tested from userspace; a 64-bit multiply-xorshift mix
/// is cheap in BPF and spreads sequential ports and addresses evenly.
#[inline(always)]
fn mix(src: u32, dst: u32, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    let a = ((src as u64) << 32) | dst as u64;
    let b = ((src_port as u64) << 32) | ((dst_port as u64) << 16) | proto as u64;
    let mut h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b;
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    h as u32
}

/// The ring slot a flow of either family falls in.
#[inline(always)]
pub fn ring_slot(key: &impl FlowIdentity) -> u32 {
    key.hash() % RING_SIZE
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] plain integers with explicit padding fields.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKey6 {}
    unsafe impl aya::Pod for super::PolicyRule {}
    unsafe impl aya::Pod for super::RuleSet {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::Uplink {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::SlotName {}
    // `Address` is implemented for `u32` and `[u32; 4]` only, with pads that
    // leave no implicit padding.
    unsafe impl<A: super::Address> aya::Pod for super::FastFlow<A> {}
}
