//! Why a packet (or a session's end) went the way it did: one per-CPU counter
//! each, per address family.

/// Why a packet (or a session's end) went the way it did: one per-CPU counter each.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Known flow, its uplink alive: remembered mark applied.
    FlowHit = 0,
    /// New flow, uplink chosen from the ring and remembered.
    FlowNew = 1,
    /// Known flow whose uplink died: moved to a live one.
    FlowMoved = 2,
    /// Neither IPv4 nor IPv6 (ARP, LLDP, …): passed untouched.
    PassNotIp = 3,
    /// Too short or malformed to parse: passed untouched.
    PassMalformed = 4,
    /// Multicast, broadcast or link-local destination, or IPv6 neighbour
    /// discovery: never routed by a default route.
    PassNotUnicast = 5,
    /// No uplink alive and weighted: passed unmarked so the main table decides.
    PassNoUplink = 6,
    /// The flow table refused an insert; the packet was still marked.
    FlowInsertFailed = 7,
    /// A flow whose uplink userspace has not resolved yet (see [`PENDING_UPLINK`]):
    /// passed unmarked.
    PassPending = 8,
    /// New (or moved) flow whose uplink a policy rule chose.
    FlowRule = 9,
    /// A flow to a destination the main table routes specifically (see
    /// [`DIRECT_UPLINK`]): passed unmarked.
    PassDirect = 10,
    /// A LAN packet of an established session, rewritten and sent out of its
    /// uplink by the fast path (see [`FastFlow`]).
    FastOut = 11,
    /// A reply arriving on an uplink, rewritten and sent to the LAN host by the
    /// fast path.
    FastReply = 12,
    /// A session conntrack ended that the fast path carried: its destroy event
    /// went to the daemon, which unbinds it (see `multiroute_ends`).
    EndBound = 13,
    /// A session conntrack ended that was never bound: its destroy event was
    /// dropped before the daemon's socket.
    EndUnbound = 14,
}

pub const COUNTER_COUNT: u32 = 15;

/// The address families the datapath counts apart: `MR_COUNTERS` holds
/// [`COUNTER_COUNT`] counters per family, IPv4's first. Packets that are neither
/// (`pass_not_ip`) count under IPv4.
pub mod family {
    pub const IPV4: u32 = 0;
    pub const IPV6: u32 = 1;
    pub const COUNT: u32 = 2;
    pub const NAMES: [&str; COUNT as usize] = ["ipv4", "ipv6"];
}

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::FlowHit,
        Counter::FlowNew,
        Counter::FlowMoved,
        Counter::PassNotIp,
        Counter::PassMalformed,
        Counter::PassNotUnicast,
        Counter::PassNoUplink,
        Counter::FlowInsertFailed,
        Counter::PassPending,
        Counter::FlowRule,
        Counter::PassDirect,
        Counter::FastOut,
        Counter::FastReply,
        Counter::EndBound,
        Counter::EndUnbound,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::FlowHit => "flow_hit",
            Counter::FlowNew => "flow_new",
            Counter::FlowMoved => "flow_moved",
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassNotUnicast => "pass_not_unicast",
            Counter::PassNoUplink => "pass_no_uplink",
            Counter::FlowInsertFailed => "flow_insert_failed",
            Counter::PassPending => "pass_pending",
            Counter::FlowRule => "flow_rule",
            Counter::PassDirect => "pass_direct",
            Counter::FastOut => "fast_out",
            Counter::FastReply => "fast_reply",
            Counter::EndBound => "end_bound",
            Counter::EndUnbound => "end_unbound",
        }
    }
}
