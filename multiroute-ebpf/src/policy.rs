//! Policy rules as the datapath matches them: protocol and ports per rule, the
//! rule set's header, the prefix tries' key types.
use crate::{FlowIdentity, IPPROTO_TCP, IPPROTO_UDP, MAX_RULE_UPLINKS};

/// One policy rule as the datapath matches it. Addresses are matched through the
/// two prefix tries (their values are bitmaps of the rules each prefix belongs
/// to); protocol and ports here. Ports are in host order, inclusive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyRule {
    /// IP protocol, or 0 for any.
    pub proto: u8,
    /// Non-zero when the rule names ports: only TCP and UDP can match then.
    pub ports: u8,
    /// How many of `uplinks` are used.
    pub uplink_count: u8,
    pub pad: u8,
    pub src_port_first: u16,
    pub src_port_last: u16,
    pub dst_port_first: u16,
    pub dst_port_last: u16,
    /// Uplink slots in preference order: the first alive one is chosen.
    pub uplinks: [u8; MAX_RULE_UPLINKS],
}

impl PolicyRule {
    /// Protocol and ports match (addresses are matched by the tries).
    #[inline(always)]
    pub fn matches_ports(&self, key: &impl FlowIdentity) -> bool {
        let proto = key.proto();
        if self.proto != 0 && self.proto != proto {
            return false;
        }
        if self.ports == 0 {
            return true;
        }
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return false;
        }
        let (src, dst) = key.ports();
        (self.src_port_first..=self.src_port_last).contains(&src)
            && (self.dst_port_first..=self.dst_port_last).contains(&dst)
    }
}

/// The rule set's header (`MR_RULESET`, one entry): which rules exist, and which
/// of them match any source or any destination (they have no prefix in that trie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub present: u64,
    pub any_src: u64,
    pub any_dst: u64,
}

/// An IPv4 address as the prefix tries key it (with `prefix_len` in front).
pub type RuleAddress = [u8; 4];
/// An IPv6 address as the IPv6 prefix tries key it.
pub type RuleAddress6 = [u8; 16];
