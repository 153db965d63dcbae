//! Rule priority offsets inside `[rule_priority, rule_priority + 999]`, in the order
//! the kernel consults them. Per-uplink rules sit at `offset + slot`, and an
//! uplink's slot never changes while it exists, so one uplink coming or going never
//! renumbers another's rules.
use multiroute_ebpf::MAX_UPLINKS;

use crate::config::{MAX_ROUTER_RULES, RULE_PRIORITY_SPAN};

/// `lookup main suppress_prefixlength 0` ahead of the marks: only for a family
/// whose main table has more specific routes than the datapath's direct
/// prefixes hold (see `Plan::direct`), so those routes keep winning.
pub const MAIN_FIRST: u32 = 0;
/// `fwmark <mark>/<mask>`: the datapath's per-flow choice (policy rules for
/// LAN traffic included: the classifier matched them). First: a marked LAN
/// packet walks no other rule and does one table lookup, its uplink's. The
/// classifier marks no packet the main table routes specifically (LAN, VPN,
/// other local subnets: `Plan::direct`). An inbound reply's mark carries the
/// flag, so it matches none of these.
pub const FWMARK: u32 = 100;
/// `lookup main suppress_prefixlength 0`: for everything unmarked (the
/// router's own traffic, LAN traffic to direct destinations), specific main
/// routes win over every steering rule below.
pub const MAIN_SPECIFIC: u32 = 190;
/// `fwmark <mark | inbound flag>/<mask>`: replies to connections that arrived on
/// an uplink (port forwards), marked from conntrack (see `nft`).
pub const INBOUND: u32 = 200;
/// `from <uplink address>`: replies and router-originated traffic sourced from an
/// uplink's address leave through that uplink (the seed's NAT/DNAT symmetry).
pub const FROM_UPLINK: u32 = 300;
/// `iif lo …`: policy rules for the router's own traffic, numbered over every
/// configured rule. After the LAN's rules: a LAN packet never walks them.
pub const LOCAL_POLICY: u32 = 400;

// Every band holds what can be put in it, and the last one ends in the range.
const _: () = assert!(MAIN_FIRST < FWMARK);
const _: () = assert!(FWMARK + MAX_UPLINKS <= MAIN_SPECIFIC);
const _: () = assert!(MAIN_SPECIFIC < INBOUND);
const _: () = assert!(INBOUND + MAX_UPLINKS <= FROM_UPLINK);
const _: () = assert!(FROM_UPLINK + MAX_UPLINKS <= LOCAL_POLICY);
const _: () = assert!(LOCAL_POLICY + MAX_ROUTER_RULES as u32 <= RULE_PRIORITY_SPAN);
