//! `[[rule]]`: policy rules (mwan3 rules, pfSense per-rule gateway groups). A rule
//! matches on protocol, source and destination prefixes and port ranges, and names
//! uplinks in preference order: the first live one carries what it matches. The
//! first matching rule wins, in order; an uplink's `pin` and `pin_from` are
//! one-uplink rules placed before them.
use std::{fmt, str::FromStr};

use serde::Deserialize;

use crate::net::{Family, IpNet};

/// Rules over the whole config, `pin`/`pin_from` shorthands included: one bit each
/// in the datapath's rule bitmaps.
pub const MAX_RULES: usize = multiroute_ebpf::MAX_RULES as usize;
/// Prefixes over all rules, per side.
pub const MAX_RULE_PREFIXES: usize = multiroute_ebpf::MAX_RULE_PREFIXES as usize;
/// Routing rules the router's own traffic needs over all policy rules (one per
/// source × destination × protocol): the size of their priority band.
pub const MAX_ROUTER_RULES: usize = 600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// For `status` and `flows`: the `name` key, `rule[N]`, or `<uplink>.pin` /
    /// `<uplink>.pin_from` for the shorthands.
    pub name: String,
    /// IP protocol number; `None` for any.
    pub proto: Option<u8>,
    /// Empty: any source. IPv4 and IPv6 prefixes may mix: each matches its family.
    pub src: Vec<IpNet>,
    /// Empty: any destination.
    pub dst: Vec<IpNet>,
    pub src_port: Option<PortRange>,
    pub dst_port: Option<PortRange>,
    /// Uplink names, most preferred first.
    pub uplinks: Vec<String>,
}

/// The protocols a rule with ports but no `proto` matches: the ones with ports.
pub const PORT_PROTOCOLS: [u8; 2] = [multiroute_ebpf::IPPROTO_TCP, multiroute_ebpf::IPPROTO_UDP];

impl PolicyRule {
    /// Names ports: only TCP and UDP can match.
    pub fn has_ports(&self) -> bool {
        self.src_port.is_some() || self.dst_port.is_some()
    }

    /// The protocols the kernel's routing rules must name: ports need one.
    pub fn protocols(&self) -> Vec<Option<u8>> {
        match self.proto {
            Some(proto) => vec![Some(proto)],
            None if self.has_ports() => PORT_PROTOCOLS.iter().copied().map(Some).collect(),
            None => vec![None],
        }
    }

    /// How many routing rule priorities the router's own traffic needs for this
    /// rule: one per source × destination × protocol (a rule without prefixes
    /// has an IPv4 and an IPv6 rule at the same priority, in their own lists).
    pub fn router_rule_count(&self) -> usize {
        self.src.len().max(1) * self.dst.len().max(1) * self.protocols().len()
    }

    /// What it matches, in the words of the config (for `status`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(proto) = self.proto {
            parts.push(proto_name(proto));
        }
        let list = |nets: &[IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.src.is_empty() {
            parts.push(format!("from {}", list(&self.src)));
        }
        if let Some(range) = self.src_port {
            parts.push(format!("sport {range}"));
        }
        if !self.dst.is_empty() {
            parts.push(format!("to {}", list(&self.dst)));
        }
        if let Some(range) = self.dst_port {
            parts.push(format!("dport {range}"));
        }
        if parts.is_empty() {
            parts.push("all".into());
        }
        parts.join(" ")
    }
}

/// "tcp", "udp", "icmp", or the number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        multiroute_ebpf::IPPROTO_ICMP => "icmp".into(),
        multiroute_ebpf::IPPROTO_TCP => "tcp".into(),
        multiroute_ebpf::IPPROTO_UDP => "udp".into(),
        other => other.to_string(),
    }
}

/// An inclusive port range; one port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let port = |part: &str| {
            part.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!("{text:?} is not a port (1-65535) or a range such as \"5060-5061\"")
                })
        };
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => (port(text)?, port(text)?),
        };
        if first > last {
            return Err(format!("{text:?}: the range ends before it starts"));
        }
        Ok(Self { first, last })
    }
}

/// A TOML value that may be written as a number or a string (`dst_port = 5060` or
/// `"5060-5061"`, `proto = 17` or `"udp"`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum NumberOrText {
    Number(i64),
    Text(String),
}

impl NumberOrText {
    fn text(&self) -> String {
        match self {
            NumberOrText::Number(n) => n.to_string(),
            NumberOrText::Text(text) => text.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    name: Option<String>,
    proto: Option<NumberOrText>,
    #[serde(default)]
    src: Vec<String>,
    #[serde(default)]
    dst: Vec<String>,
    src_port: Option<NumberOrText>,
    dst_port: Option<NumberOrText>,
    uplinks: Vec<String>,
}

fn parse_proto(value: &NumberOrText) -> Result<u8, String> {
    let text = value.text();
    match text.as_str() {
        "tcp" => Ok(multiroute_ebpf::IPPROTO_TCP),
        "udp" => Ok(multiroute_ebpf::IPPROTO_UDP),
        "icmp" => Ok(multiroute_ebpf::IPPROTO_ICMP),
        number => number
            .parse::<u8>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                format!("{text:?} is not \"tcp\", \"udp\", \"icmp\" or a protocol number 1-255")
            }),
    }
}

/// Checks one `[[rule]]` (the `i`th); `known` are the uplink names. Errors are
/// `(key, problem)`.
pub(super) fn validate(
    i: usize,
    raw: RawRule,
    known: &[&str],
) -> Result<PolicyRule, (String, String)> {
    let key = |field: &str| format!("rule[{i}].{field}");
    let fail = |field: &str, problem: String| (key(field), problem);
    let proto = raw
        .proto
        .as_ref()
        .map(parse_proto)
        .transpose()
        .map_err(|p| fail("proto", p))?;
    let range = |field: &str, value: &Option<NumberOrText>| {
        value
            .as_ref()
            .map(|v| v.text().parse::<PortRange>())
            .transpose()
            .map_err(|p| fail(field, p))
    };
    let src_port = range("src_port", &raw.src_port)?;
    let dst_port = range("dst_port", &raw.dst_port)?;
    if (src_port.is_some() || dst_port.is_some())
        && proto.is_some_and(|p| !PORT_PROTOCOLS.contains(&p))
    {
        return Err(fail(
            "proto",
            "ports only exist for \"tcp\" and \"udp\"; drop the ports or the protocol".into(),
        ));
    }
    let prefixes = |field: &str, list: &[String]| {
        list.iter()
            .map(|text| parse_prefix(text).map_err(|problem| fail(field, problem)))
            .collect::<Result<Vec<_>, _>>()
    };
    let src = prefixes("src", &raw.src)?;
    let dst = prefixes("dst", &raw.dst)?;
    check_uplinks(&raw.uplinks, known).map_err(|p| fail("uplinks", p))?;
    let name = match raw.name {
        Some(name) if name.is_empty() || name.len() > 32 || name.contains(char::is_whitespace) => {
            return Err(fail(
                "name",
                format!("{name:?} must be 1-32 characters without spaces"),
            ));
        }
        Some(name) => name,
        None => format!("rule[{i}]"),
    };
    Ok(PolicyRule {
        name,
        proto,
        src,
        dst,
        src_port,
        dst_port,
        uplinks: raw.uplinks,
    })
}

/// A rule's uplinks: at least one, known, each once, no more than the datapath holds.
fn check_uplinks(uplinks: &[String], known: &[&str]) -> Result<(), String> {
    if uplinks.is_empty() {
        return Err("list at least one uplink, most preferred first".into());
    }
    if uplinks.len() > multiroute_ebpf::MAX_RULE_UPLINKS {
        return Err(format!(
            "{} uplinks listed; a rule takes at most {}",
            uplinks.len(),
            multiroute_ebpf::MAX_RULE_UPLINKS
        ));
    }
    for (n, name) in uplinks.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            return Err(format!(
                "no uplink named {name:?}; the uplinks are: {}",
                known.join(", ")
            ));
        }
        if uplinks[..n].contains(name) {
            return Err(format!("{name:?} is listed twice"));
        }
    }
    Ok(())
}

/// An IPv4 or IPv6 address or prefix, as rules and pins write them.
pub(super) fn parse_prefix(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .map_err(|problem| format!("{text:?} is not an address or prefix: {problem}"))
}

/// The family a routing rule for `from` and `to` belongs to: theirs, both when
/// neither is given, none when they disagree (such a pair matches nothing).
pub fn families(from: Option<IpNet>, to: Option<IpNet>) -> Vec<Family> {
    match (from.map(IpNet::family), to.map(IpNet::family)) {
        (None, None) => Family::ALL.to_vec(),
        (Some(family), None) | (None, Some(family)) => vec![family],
        (Some(a), Some(b)) if a == b => vec![a],
        _ => Vec::new(),
    }
}

/// `pin` (destinations) and `pin_from` (sources) of one uplink as rules.
pub(super) fn pin_rules(uplink: &str, pin: Vec<IpNet>, pin_from: Vec<IpNet>) -> Vec<PolicyRule> {
    let rule = |kind: &str, src: Vec<IpNet>, dst: Vec<IpNet>| PolicyRule {
        name: format!("{uplink}.{kind}"),
        proto: None,
        src,
        dst,
        src_port: None,
        dst_port: None,
        uplinks: vec![uplink.to_owned()],
    };
    let mut rules = Vec::new();
    if !pin.is_empty() {
        rules.push(rule("pin", Vec::new(), pin));
    }
    if !pin_from.is_empty() {
        rules.push(rule("pin_from", pin_from, Vec::new()));
    }
    rules
}

/// The whole rule set's limits: bits in the datapath, trie sizes, the priority
/// band of the router's own rules. Errors are `(key, problem)`.
pub(super) fn check_limits(rules: &[PolicyRule]) -> Result<(), (String, String)> {
    if rules.len() > MAX_RULES {
        return Err((
            "rule".into(),
            format!(
                "{} rules (pin and pin_from count as one rule per uplink); at most {MAX_RULES} are supported",
                rules.len()
            ),
        ));
    }
    for (side, count) in [
        ("src", rules.iter().map(|r| r.src.len()).sum::<usize>()),
        ("dst", rules.iter().map(|r| r.dst.len()).sum()),
    ] {
        if count > MAX_RULE_PREFIXES {
            return Err((
                format!("rule.{side}"),
                format!("{count} prefixes over all rules; at most {MAX_RULE_PREFIXES} fit"),
            ));
        }
    }
    let router_rules: usize = rules.iter().map(PolicyRule::router_rule_count).sum();
    if router_rules > MAX_ROUTER_RULES {
        return Err((
            "rule".into(),
            format!(
                "the rules need {router_rules} routing rules for the router's own traffic (one per source × destination × protocol); at most {MAX_ROUTER_RULES} fit in the rule priority range"
            ),
        ));
    }
    Ok(())
}
