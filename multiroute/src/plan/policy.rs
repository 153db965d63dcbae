//! Policy rules as the kernel holds them. LAN traffic is matched by the classifier,
//! once per new flow: the rules go into `MR_RULES` (protocol, ports, uplinks in
//! preference order — the datapath takes the first live one itself) and every
//! prefix into a source or destination trie whose value is the bitmap of the rules
//! the prefix belongs to. The router's own traffic never passes the classifier; it
//! gets `iif lo` routing rules into the table of the uplink each rule uses now.
use std::collections::BTreeMap;

use multiroute_ebpf::{MAX_RULE_UPLINKS, RuleSet};

use super::{
    model::{LocalMatch, Rule, Selector},
    uplink::UplinkPlan,
};
use crate::{
    config::{PolicyRule, families},
    net::{Family, IpNet},
};

/// The datapath's side of the rule set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Indexed like the config's rules: rule `i` is bit `i`.
    pub rules: Vec<multiroute_ebpf::PolicyRule>,
    pub set: RuleSet,
    /// Trie entries: every rule prefix, with the bits of all rules whose prefixes
    /// contain it, so the longest match alone answers. Each family goes into its
    /// own trie.
    pub src: BTreeMap<IpNet, u64>,
    pub dst: BTreeMap<IpNet, u64>,
}

/// One rule's state, for `status` and for bringing flows back when a preferred
/// uplink recovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleUse {
    pub name: String,
    /// The slot of the first listed uplink that carries traffic; `None`: all are
    /// dead and what the rule matches is balanced like any other traffic.
    pub using: Option<u32>,
    pub using_name: Option<String>,
}

/// The uplink called `name`.
pub(super) fn named<'a>(uplinks: &'a [UplinkPlan], name: &str) -> Option<&'a UplinkPlan> {
    uplinks.iter().find(|u| u.name == name)
}

/// The maps' contents for `rules`; `slot_of` gives each uplink name's slot.
pub fn datapath(rules: &[PolicyRule], slot_of: impl Fn(&str) -> Option<u32>) -> Policy {
    let mut policy = Policy::default();
    let mut src = Vec::new();
    let mut dst = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let bit = 1u64 << index;
        let mut entry = multiroute_ebpf::PolicyRule {
            proto: rule.proto.unwrap_or(0),
            ports: u8::from(rule.has_ports()),
            src_port_first: rule.src_port.map_or(0, |r| r.first),
            src_port_last: rule.src_port.map_or(u16::MAX, |r| r.last),
            dst_port_first: rule.dst_port.map_or(0, |r| r.first),
            dst_port_last: rule.dst_port.map_or(u16::MAX, |r| r.last),
            ..Default::default()
        };
        // Validation keeps the list within MAX_RULE_UPLINKS and every name known.
        let slots = rule
            .uplinks
            .iter()
            .filter_map(|name| slot_of(name))
            .map(|slot| slot as u8)
            .take(MAX_RULE_UPLINKS);
        for (position, slot) in slots.enumerate() {
            entry.uplinks[position] = slot;
            entry.uplink_count += 1;
        }
        policy.rules.push(entry);
        policy.set.present |= bit;
        if rule.src.is_empty() {
            policy.set.any_src |= bit;
        }
        if rule.dst.is_empty() {
            policy.set.any_dst |= bit;
        }
        src.extend(rule.src.iter().map(|net| (*net, bit)));
        dst.extend(rule.dst.iter().map(|net| (*net, bit)));
    }
    policy.src = fold_covering(&src);
    policy.dst = fold_covering(&dst);
    policy
}

/// Each prefix with the bits of every prefix that contains it (itself included):
/// an address's longest matching prefix then carries all rules it falls under.
fn fold_covering(entries: &[(IpNet, u64)]) -> BTreeMap<IpNet, u64> {
    let mut folded = BTreeMap::new();
    for (net, _) in entries {
        let bits = entries
            .iter()
            .filter(|(outer, _)| outer.covers(*net))
            .fold(0, |bits, (_, bit)| bits | bit);
        folded.insert(*net, bits);
    }
    folded
}

/// Which uplink each rule uses now: the first listed one that carries traffic.
pub fn uses(rules: &[PolicyRule], uplinks: &[UplinkPlan]) -> Vec<RuleUse> {
    rules
        .iter()
        .map(|rule| {
            let chosen = rule
                .uplinks
                .iter()
                .filter_map(|name| named(uplinks, name))
                .find(|u| u.carries(Family::V4));
            RuleUse {
                name: rule.name.clone(),
                using: chosen.map(|u| u.slot),
                using_name: chosen.map(|u| u.name.clone()),
            }
        })
        .collect()
}

/// The router's own traffic: `iif lo` rules, one per source × destination ×
/// protocol, into the table of the uplink the rule uses. Numbered over every
/// configured rule from `first_priority`, so a rule keeps its priorities while
/// others lapse; a rule whose uplinks are all dead has none (its traffic follows
/// the main multipath default).
pub fn router_rules(
    rules: &[PolicyRule],
    uses: &[RuleUse],
    uplinks: &[UplinkPlan],
    first_priority: u32,
) -> Vec<Rule> {
    let mut planned = Vec::new();
    let mut priority = first_priority;
    for (rule, used) in rules.iter().zip(uses) {
        let table = used
            .using
            .and_then(|slot| uplinks.iter().find(|u| u.slot == slot))
            .map(|u| u.table);
        let side = |nets: &[IpNet]| -> Vec<Option<IpNet>> {
            if nets.is_empty() {
                vec![None]
            } else {
                nets.iter().copied().map(Some).collect()
            }
        };
        for from in side(&rule.src) {
            for to in side(&rule.dst) {
                for proto in rule.protocols() {
                    for family in families(from, to).into_iter().filter(|_| table.is_some()) {
                        planned.push(Rule {
                            family,
                            priority,
                            selector: Selector::Local(LocalMatch {
                                from,
                                to,
                                proto,
                                sport: rule.src_port,
                                dport: rule.dst_port,
                            }),
                            table: table.unwrap_or_default(),
                            suppress_prefixlength: None,
                        });
                    }
                    priority += 1;
                }
            }
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        IpNet::V4(text.parse().unwrap())
    }

    #[test]
    fn the_longest_match_carries_every_rule_whose_prefix_contains_it() {
        let folded = fold_covering(&[
            (net("10.0.0.0/8"), 0b001),
            (net("10.1.0.0/16"), 0b010),
            (net("192.0.2.0/24"), 0b100),
            (net("10.1.2.0/24"), 0b001),
        ]);
        assert_eq!(folded[&net("10.0.0.0/8")], 0b001);
        assert_eq!(folded[&net("10.1.0.0/16")], 0b011);
        assert_eq!(folded[&net("10.1.2.0/24")], 0b011);
        assert_eq!(folded[&net("192.0.2.0/24")], 0b100);
    }
}
