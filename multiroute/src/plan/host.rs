//! Host settings a multi-WAN router depends on, outside routes and rules: IPv4
//! forwarding, reverse-path filtering and link-down routes on the uplinks, source
//! NAT, and nobody else's rules in multiroute's priority range. [`assess`] is
//! pure: `observe::host` reads the facts, `load` applies the sysctl changes
//! (`apply::sysctl`), `check` only reports.
use std::collections::BTreeMap;

use crate::config::Config;

/// Whether the host's own NAT covers traffic leaving one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// A masquerade or snat rule applies to packets leaving it.
    Covered,
    /// No rule can apply to it.
    NotCovered,
    /// The ruleset uses something this reader does not follow.
    CannotTell,
}

/// What the host looks like, as far as [`assess`] cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub ip_forward: Option<u8>,
    pub rp_filter_all: Option<u8>,
    /// `rp_filter` of each uplink interface.
    pub rp_filter: BTreeMap<String, u8>,
    /// `ignore_routes_with_linkdown` of each uplink interface.
    pub ignore_linkdown: BTreeMap<String, u8>,
    /// Whether the host's nftables ruleset source-NATs each uplink interface;
    /// `None` when nft could not be run.
    pub snat: Option<BTreeMap<String, Coverage>>,
    /// Rules multiroute did not add inside its priority range: (priority, the rule
    /// in `ip rule` syntax).
    pub foreign_rules: Vec<(u32, String)>,
}

/// A sysctl `load` sets, and `unload` puts back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlChange {
    pub key: String,
    pub from: u8,
    pub to: u8,
    pub why: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    pub changes: Vec<SysctlChange>,
    /// Things that will not work as the user expects, with the fix.
    pub warnings: Vec<String>,
    /// Things that stop `load`, with the fix.
    pub conflicts: Vec<String>,
}

pub fn assess(config: &Config, facts: &HostFacts) -> Assessment {
    let mut assessment = Assessment::default();
    if let Some(from @ 0) = facts.ip_forward {
        assessment.changes.push(SysctlChange {
            key: "net.ipv4.ip_forward".into(),
            from,
            to: 1,
            why: "the LAN's traffic is forwarded to the uplinks",
        });
    }
    let all = facts.rp_filter_all.unwrap_or(0);
    for uplink in &config.uplinks {
        let Some(&own) = facts.rp_filter.get(&uplink.interface) else {
            continue;
        };
        // The kernel applies the larger of `all` and the interface's value; 1 is
        // strict, which drops replies whenever the main multipath default would
        // have sent the request out another uplink.
        if own.max(all) == 1 {
            assessment.changes.push(SysctlChange {
                key: format!("net.ipv4.conf.{}.rp_filter", uplink.interface),
                from: own,
                to: 2,
                why: "strict reverse-path filtering drops replies on a multi-WAN router; loose keeps spoofing protection",
            });
        }
    }
    for uplink in &config.uplinks {
        if let Some(&from @ 0) = facts.ignore_linkdown.get(&uplink.interface) {
            assessment.changes.push(SysctlChange {
                key: linkdown_key(&uplink.interface),
                from,
                to: 1,
                why: "while no daemon runs (a stop before the next load), the kernel itself skips an uplink that lost carrier and its marked traffic falls through to the live uplinks",
            });
        }
    }
    match &facts.snat {
        Some(coverage) => {
            for uplink in &config.uplinks {
                match coverage.get(&uplink.interface) {
                    Some(Coverage::Covered) => {}
                    Some(Coverage::CannotTell) => assessment.warnings.push(format!(
                        "cannot tell from the nftables ruleset whether traffic leaving {} (uplink {}) is source-NATed (it uses constructs multiroute does not follow); make sure it is masqueraded",
                        uplink.interface, uplink.name
                    )),
                    Some(Coverage::NotCovered) | None => assessment.warnings.push(format!(
                        "nothing source-NATs traffic leaving {} (uplink {}): the ISP drops the LAN's private addresses; add `nft add table ip nat; nft add chain ip nat postrouting {{ type nat hook postrouting priority 100 \\; }}; nft add rule ip nat postrouting oifname \"{}\" masquerade`",
                        uplink.interface, uplink.name, uplink.interface
                    )),
                }
            }
        }
        None => assessment
            .warnings
            .push("cannot run `nft -j list ruleset` to check source NAT; install nftables".into()),
    }
    for (priority, rule) in &facts.foreign_rules {
        assessment.conflicts.push(format!(
            "rule `{rule}` sits in multiroute's priority range {}..={}: delete it (`ip rule del pref {priority}`) or move `routing.rule_priority`",
            config.routing.rule_priority,
            config.routing.rule_priority + crate::config::RULE_PRIORITY_SPAN - 1
        ));
    }
    assessment
}

/// The sysctl that makes the kernel skip routes through a link without carrier.
pub fn linkdown_key(interface: &str) -> String {
    format!("net.ipv4.conf.{interface}.ignore_routes_with_linkdown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            "lan = [\"lan0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"wan0\"\n[[uplink]]\nname = \"b\"\ninterface = \"ppp0\"\n",
            Path::new("test.toml"),
        )
        .unwrap()
    }

    fn healthy() -> HostFacts {
        HostFacts {
            ip_forward: Some(1),
            rp_filter_all: Some(0),
            rp_filter: BTreeMap::from([("wan0".into(), 0), ("ppp0".into(), 2)]),
            ignore_linkdown: BTreeMap::from([("wan0".into(), 1), ("ppp0".into(), 1)]),
            snat: Some(BTreeMap::from([
                ("wan0".into(), Coverage::Covered),
                ("ppp0".into(), Coverage::Covered),
            ])),
            foreign_rules: Vec::new(),
        }
    }

    #[test]
    fn a_healthy_host_needs_nothing() {
        assert_eq!(assess(&config(), &healthy()), Assessment::default());
    }

    #[test]
    fn forwarding_and_strict_rp_filter_are_adjusted() {
        let facts = HostFacts {
            ip_forward: Some(0),
            rp_filter_all: Some(1),
            ignore_linkdown: BTreeMap::from([("wan0".into(), 1), ("ppp0".into(), 0)]),
            ..healthy()
        };
        let keys: Vec<_> = assess(&config(), &facts)
            .changes
            .into_iter()
            .map(|c| (c.key, c.from, c.to))
            .collect();
        assert_eq!(
            keys,
            [
                ("net.ipv4.ip_forward".to_owned(), 0, 1),
                // all=1 makes wan0 strict; ppp0's own 2 already wins.
                ("net.ipv4.conf.wan0.rp_filter".to_owned(), 0, 2),
                (
                    "net.ipv4.conf.ppp0.ignore_routes_with_linkdown".to_owned(),
                    0,
                    1
                ),
            ]
        );
    }

    #[test]
    fn a_missing_masquerade_is_named_with_its_fix() {
        let facts = HostFacts {
            snat: Some(BTreeMap::from([
                ("wan0".into(), Coverage::NotCovered),
                ("ppp0".into(), Coverage::CannotTell),
            ])),
            ..healthy()
        };
        let warnings = assess(&config(), &facts).warnings;
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("oifname \"wan0\" masquerade"),
            "{}",
            warnings[0]
        );
        assert!(warnings[1].starts_with("cannot tell"), "{}", warnings[1]);
    }

    #[test]
    fn foreign_rules_in_the_range_are_conflicts() {
        let facts = HostFacts {
            foreign_rules: vec![(10005, "pref 10005 from 192.0.2.9 lookup main".into())],
            ..healthy()
        };
        let conflicts = assess(&config(), &facts).conflicts;
        assert_eq!(conflicts.len(), 1);
        assert!(conflicts[0].contains("10000..=10999"), "{}", conflicts[0]);
        assert!(
            conflicts[0].contains("`ip rule del pref 10005`"),
            "{}",
            conflicts[0]
        );
    }
}
