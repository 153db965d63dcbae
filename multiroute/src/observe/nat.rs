//! Whether the host's own nftables ruleset source-NATs traffic leaving an uplink,
//! read from `nft -j list ruleset`: the NAT postrouting base chains, the rules in
//! them in order, `oifname` matches against a name, a wildcard (`"wan*"`), an
//! anonymous set, a named set (`@uplinks`) or their negation, and jumps, gotos and
//! `oifname` verdict maps into other chains. What it cannot follow it says so, rather
//! than tell the user to add a rule they may already have.
use std::collections::BTreeMap;

use serde_json::Value;

pub use crate::plan::host::Coverage;

/// Nested jumps followed at most; nft itself refuses loops.
const MAX_DEPTH: usize = 16;

type ChainKey = (String, String, String);

/// The parts of a ruleset the answer depends on.
pub struct Ruleset {
    /// Base chains hooked at NAT postrouting.
    nat_chains: Vec<ChainKey>,
    rules: BTreeMap<ChainKey, Vec<Vec<Value>>>,
    /// Named sets' string elements, by (family, table, name).
    sets: BTreeMap<ChainKey, Vec<String>>,
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_default().to_owned()
}

impl Ruleset {
    /// From `nft -j list ruleset`'s output.
    pub fn parse(json: &Value) -> Self {
        let mut ruleset = Ruleset {
            nat_chains: Vec::new(),
            rules: BTreeMap::new(),
            sets: BTreeMap::new(),
        };
        let objects = json["nftables"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for object in objects {
            if let Some(chain) = object.get("chain") {
                let key = (
                    text(chain, "family"),
                    text(chain, "table"),
                    text(chain, "name"),
                );
                if chain["type"] == "nat" && chain["hook"] == "postrouting" {
                    ruleset.nat_chains.push(key);
                }
            } else if let Some(rule) = object.get("rule") {
                let key = (
                    text(rule, "family"),
                    text(rule, "table"),
                    text(rule, "chain"),
                );
                let exprs = rule["expr"].as_array().cloned().unwrap_or_default();
                ruleset.rules.entry(key).or_default().push(exprs);
            } else if let Some(set) = object.get("set") {
                let key = (text(set, "family"), text(set, "table"), text(set, "name"));
                let elements = set["elem"]
                    .as_array()
                    .map(|elems| {
                        elems
                            .iter()
                            .filter_map(|e| e.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                ruleset.sets.insert(key, elements);
            }
        }
        ruleset
    }

    /// Whether packets leaving `interface` are source-NATed.
    pub fn coverage(&self, interface: &str) -> Coverage {
        any(self
            .nat_chains
            .iter()
            .map(|chain| self.chain(chain, interface, 0)))
    }

    fn chain(&self, chain: &ChainKey, interface: &str, depth: usize) -> Coverage {
        if depth > MAX_DEPTH {
            return Coverage::CannotTell;
        }
        let rules = self.rules.get(chain).map(Vec::as_slice).unwrap_or(&[]);
        any(rules
            .iter()
            .map(|rule| self.rule(chain, rule, interface, depth)))
    }

    /// One rule: its `oifname` conditions, then what it does.
    fn rule(&self, chain: &ChainKey, exprs: &[Value], interface: &str, depth: usize) -> Coverage {
        let (family, table, _) = chain;
        let jump = |target: &Value| {
            let target = (
                family.clone(),
                table.clone(),
                target.as_str().unwrap_or_default().to_owned(),
            );
            self.chain(&target, interface, depth + 1)
        };
        for expr in exprs {
            if let Some(matched) = expr.get("match") {
                if !is_oifname(&matched["left"]) {
                    continue;
                }
                let Some(names) = self.names(family, table, &matched["right"]) else {
                    return Coverage::CannotTell;
                };
                let hit = names.iter().any(|name| name_matches(name, interface));
                let wanted = match matched["op"].as_str() {
                    Some("==" | "in") => true,
                    Some("!=") => false,
                    _ => return Coverage::CannotTell,
                };
                if hit != wanted {
                    return Coverage::NotCovered;
                }
            } else if expr.get("masquerade").is_some() || expr.get("snat").is_some() {
                return Coverage::Covered;
            } else if let Some(verdict) = expr.get("jump").or_else(|| expr.get("goto")) {
                match jump(&verdict["target"]) {
                    Coverage::NotCovered => {}
                    other => return other,
                }
            } else if let Some(vmap) = expr.get("vmap") {
                if !is_oifname(&vmap["key"]) {
                    return Coverage::CannotTell;
                }
                let entries = vmap["data"]["set"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                for entry in entries {
                    let (Some(name), Some(verdict)) = (entry[0].as_str(), entry.get(1)) else {
                        return Coverage::CannotTell;
                    };
                    if !name_matches(name, interface) {
                        continue;
                    }
                    return match verdict.get("jump").or_else(|| verdict.get("goto")) {
                        Some(verdict) => jump(&verdict["target"]),
                        None => Coverage::NotCovered,
                    };
                }
                return Coverage::NotCovered;
            }
        }
        Coverage::NotCovered
    }

    /// The interface names a match's right-hand side lists; `None` for forms this
    /// reader does not follow.
    fn names(&self, family: &str, table: &str, right: &Value) -> Option<Vec<String>> {
        match right {
            Value::String(name) => match name.strip_prefix('@') {
                Some(set) => self
                    .sets
                    .get(&(family.to_owned(), table.to_owned(), set.to_owned()))
                    .cloned(),
                None => Some(vec![name.clone()]),
            },
            Value::Object(object) => object.get("set")?.as_array().map(|elems| {
                elems
                    .iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            }),
            _ => None,
        }
    }
}

/// Covered as soon as one answer is; otherwise "cannot tell" if any could not.
fn any(answers: impl Iterator<Item = Coverage>) -> Coverage {
    let mut unsure = false;
    for answer in answers {
        match answer {
            Coverage::Covered => return Coverage::Covered,
            Coverage::CannotTell => unsure = true,
            Coverage::NotCovered => {}
        }
    }
    if unsure {
        Coverage::CannotTell
    } else {
        Coverage::NotCovered
    }
}

fn is_oifname(left: &Value) -> bool {
    matches!(left["meta"]["key"].as_str(), Some("oifname"))
}

/// nft's interface wildcard: a trailing `*` matches any suffix.
fn name_matches(pattern: &str, interface: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => interface.starts_with(prefix),
        None => pattern == interface,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list ruleset` of a table with one NAT postrouting chain holding
    /// `rules` and a regular chain `natd` holding a bare masquerade.
    fn ruleset(rules: &[&str]) -> Ruleset {
        let mut objects = vec![
            r#"{"set": {"family": "ip", "name": "ups", "table": "nat", "type": "ifname", "elem": ["up-c"]}}"#.to_owned(),
            r#"{"chain": {"family": "ip", "table": "nat", "name": "natd"}}"#.to_owned(),
            r#"{"rule": {"family": "ip", "table": "nat", "chain": "natd", "expr": [{"masquerade": null}]}}"#.to_owned(),
            r#"{"chain": {"family": "ip", "table": "nat", "name": "post", "type": "nat", "hook": "postrouting", "prio": 100}}"#.to_owned(),
        ];
        objects.extend(rules.iter().map(|expr| {
            format!(
                r#"{{"rule": {{"family": "ip", "table": "nat", "chain": "post", "expr": {expr}}}}}"#
            )
        }));
        let json = format!(r#"{{"nftables": [{}]}}"#, objects.join(","));
        Ruleset::parse(&serde_json::from_str(&json).unwrap())
    }

    const ONE: &str = r#"[{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wan0"}}, {"masquerade": null}]"#;
    const ANONYMOUS_SET: &str = r#"[{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": {"set": ["up-a", "up-b"]}}}, {"masquerade": null}]"#;
    const NAMED_SET: &str = r#"[{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@ups"}}, {"masquerade": null}]"#;
    const WILDCARD: &str = r#"[{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wan*"}}, {"masquerade": null}]"#;
    const ALL_BUT_LAN: &str = r#"[{"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "lan0"}}, {"snat": {"addr": "192.0.2.1"}}]"#;
    const VMAP: &str = r#"[{"vmap": {"key": {"meta": {"key": "oifname"}}, "data": {"set": [["up-d", {"jump": {"target": "natd"}}]]}}}]"#;
    const UNKNOWN: &str = r#"[{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": {"concat": ["x"]}}}, {"masquerade": null}]"#;

    #[test]
    fn sets_wildcards_negations_and_verdict_maps_are_followed() {
        assert_eq!(ruleset(&[ONE]).coverage("wan0"), Coverage::Covered);
        assert_eq!(ruleset(&[ONE]).coverage("wan1"), Coverage::NotCovered);
        let sets = ruleset(&[ANONYMOUS_SET, NAMED_SET]);
        for covered in ["up-a", "up-b", "up-c"] {
            assert_eq!(sets.coverage(covered), Coverage::Covered, "{covered}");
        }
        assert_eq!(sets.coverage("up-x"), Coverage::NotCovered);
        assert_eq!(ruleset(&[WILDCARD]).coverage("wan7"), Coverage::Covered);
        assert_eq!(ruleset(&[ALL_BUT_LAN]).coverage("ppp0"), Coverage::Covered);
        assert_eq!(
            ruleset(&[ALL_BUT_LAN]).coverage("lan0"),
            Coverage::NotCovered
        );
        assert_eq!(ruleset(&[VMAP]).coverage("up-d"), Coverage::Covered);
        assert_eq!(ruleset(&[VMAP]).coverage("up-e"), Coverage::NotCovered);
    }

    #[test]
    fn a_bare_masquerade_outside_a_nat_hook_counts_for_nothing() {
        assert_eq!(ruleset(&[]).coverage("wan0"), Coverage::NotCovered);
    }

    #[test]
    fn what_it_cannot_read_it_says_so_unless_another_rule_covers() {
        assert_eq!(ruleset(&[UNKNOWN]).coverage("wan0"), Coverage::CannotTell);
        assert_eq!(ruleset(&[UNKNOWN, ONE]).coverage("wan0"), Coverage::Covered);
    }
}
