//! Each uplink's state as the daemon reports it — up, degraded or down, since
//! when, why, how many transitions — as pure bookkeeping over successive plans: no clock is
//! read and nothing is logged here, so every rule is unit-tested. An uplink's IPv6
//! side, once it has one, is followed apart under its health name
//! (`<uplink>/ipv6`), so its transitions are told and logged like the uplink's.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use super::health::Change;
use crate::{
    net::Family,
    plan::{Condition, Plan, Readiness, UplinkPlan, health_name},
};

#[derive(Debug, Clone, PartialEq)]
pub struct UplinkState {
    pub condition: Condition,
    pub since: SystemTime,
    pub reason: String,
    /// Transitions between up, degraded and down since `load` started.
    pub changes: u64,
}

/// An uplink side whose condition changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub uplink: String,
    /// What it was: `None` for a side seen for the first time.
    pub previous: Option<Condition>,
    pub condition: Condition,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct States(BTreeMap<String, UplinkState>);

/// One side followed: its name, its condition, and why it cannot carry traffic
/// when that is the host's doing (no address, link down, …).
struct FamilyState {
    name: String,
    condition: Condition,
    problem: Option<String>,
}

/// The uplink's IPv4 side, and its IPv6 side when it has (or had, in `known`) one.
fn sides(uplink: &UplinkPlan, known: &BTreeMap<String, UplinkState>) -> Vec<FamilyState> {
    Family::ALL
        .into_iter()
        .filter(|&family| {
            family == Family::V4
                || uplink.readiness[family] != Readiness::NoAddress
                || known.contains_key(&health_name(&uplink.name, family))
        })
        .map(|family| FamilyState {
            name: health_name(&uplink.name, family),
            condition: uplink.condition(family),
            problem: uplink.readiness[family].problem(family),
        })
        .collect()
}

impl States {
    /// The states at start: alive as planned, dead ones presumed so from before
    /// a restart.
    pub fn start(plan: &Plan, now: SystemTime) -> Self {
        let none = BTreeMap::new();
        let states = plan
            .uplinks
            .iter()
            .flat_map(|u| sides(u, &none))
            .map(|side| {
                let reason = match (side.problem, side.condition) {
                    (Some(problem), _) => problem,
                    (None, Condition::Down) => {
                        "found dead before this restart; back once its probes answer".to_owned()
                    }
                    (None, _) => "started".to_owned(),
                };
                let state = UplinkState {
                    condition: side.condition,
                    since: now,
                    reason,
                    changes: 0,
                };
                (side.name, state)
            })
            .collect();
        Self(states)
    }

    /// Follows the new plan; `change` is the probe verdict that led to it, if one
    /// did. Returns the uplinks whose condition changed, with why; forgets uplinks
    /// the plan no longer has.
    pub fn follow(
        &mut self,
        plan: &Plan,
        change: Option<&Change>,
        now: SystemTime,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let mut followed = BTreeSet::new();
        let all: Vec<_> = plan
            .uplinks
            .iter()
            .flat_map(|u| sides(u, &self.0))
            .collect();
        for side in all {
            let reason = match side.problem {
                Some(problem) => problem,
                None => match change {
                    Some(change) if change.uplink == side.name => change.reason.clone(),
                    _ if side.condition == Condition::Down => "probes failing".to_owned(),
                    _ => "ready".to_owned(),
                },
            };
            followed.insert(side.name.clone());
            let new = !self.0.contains_key(&side.name);
            let state = self
                .0
                .entry(side.name.clone())
                .or_insert_with(|| UplinkState {
                    // New: a transition from what it is not, so it is told.
                    condition: match side.condition {
                        Condition::Down => Condition::Up,
                        _ => Condition::Down,
                    },
                    since: now,
                    reason: String::new(),
                    changes: 0,
                });
            if state.condition == side.condition {
                continue;
            }
            let previous = (!new).then_some(state.condition);
            state.condition = side.condition;
            state.since = now;
            state.changes += 1;
            state.reason.clone_from(&reason);
            transitions.push(Transition {
                uplink: side.name,
                previous,
                condition: side.condition,
                reason,
            });
        }
        self.0.retain(|name, _| followed.contains(name));
        transitions
    }

    pub fn get(&self, uplink: &str) -> Option<&UplinkState> {
        self.0.get(uplink)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plan::{Readiness, UplinkPlan};

    fn plan(uplinks: &[(&str, bool)]) -> Plan {
        let uplinks = uplinks
            .iter()
            .enumerate()
            .map(|(slot, &(name, alive))| UplinkPlan::test(name, slot as u32, alive))
            .collect();
        Plan {
            uplinks,
            routing: Default::default(),
            datapath: Default::default(),
            firewall: Default::default(),
            rule_uses: Vec::new(),
        }
    }

    #[test]
    fn a_probe_verdict_is_the_reason_and_unchanged_uplinks_stay_quiet() {
        let t0 = SystemTime::UNIX_EPOCH;
        let t1 = t0 + Duration::from_secs(5);
        let mut states = States::start(&plan(&[("dsl", true), ("lte", true)]), t0);
        let change = Change {
            uplink: "dsl".into(),
            condition: Condition::Down,
            reason: "198.51.100.9 missed 3 probes in a row".into(),
        };
        let transitions = states.follow(&plan(&[("dsl", false), ("lte", true)]), Some(&change), t1);
        assert_eq!(
            transitions,
            [Transition {
                uplink: "dsl".into(),
                previous: Some(Condition::Up),
                condition: Condition::Down,
                reason: change.reason.clone(),
            }]
        );
        let dsl = states.get("dsl").unwrap();
        assert_eq!(
            (dsl.condition, dsl.since, dsl.changes),
            (Condition::Down, t1, 1)
        );
        assert_eq!(states.get("lte").unwrap().since, t0, "lte did not change");
        assert!(
            states
                .follow(&plan(&[("dsl", false), ("lte", true)]), None, t1)
                .is_empty()
        );
    }

    #[test]
    fn degraded_is_a_state_of_its_own() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut states = States::start(&plan(&[("dsl", true)]), t0);
        let mut degraded = plan(&[("dsl", true)]);
        degraded.uplinks[0].degraded.v4 = true;
        let change = Change {
            uplink: "dsl".into(),
            condition: Condition::Degraded,
            reason: "192.0.2.1: loss 30 % > 20 % over 20 probes".into(),
        };
        let transitions = states.follow(&degraded, Some(&change), t0);
        assert_eq!(transitions[0].condition, Condition::Degraded);
        assert_eq!(transitions[0].reason, change.reason);
        let back = states.follow(&plan(&[("dsl", true)]), None, t0);
        assert_eq!(back[0].condition, Condition::Up);
        assert_eq!(states.get("dsl").unwrap().changes, 2);
    }

    #[test]
    fn a_presumed_dead_uplink_says_so_and_removed_uplinks_are_forgotten() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut states = States::start(&plan(&[("dsl", false), ("lte", true)]), t0);
        assert!(
            states
                .get("dsl")
                .unwrap()
                .reason
                .contains("before this restart")
        );
        let back = states.follow(&plan(&[("dsl", true)]), None, t0);
        assert_eq!(back[0].reason, "ready");
        assert!(states.get("lte").is_none());
    }

    #[test]
    fn an_ipv6_side_is_followed_apart_from_its_uplink() {
        let (t0, t1) = (
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_secs(5),
        );
        let dual = |alive6: bool| {
            let mut plan = plan(&[("dsl", true)]);
            plan.uplinks[0].readiness.v6 = Readiness::via("2001:db8::2", 64, "fe80::1");
            plan.uplinks[0].alive.v6 = alive6;
            plan
        };
        let mut states = States::start(&dual(true), t0);
        assert_eq!(states.get("dsl/ipv6").unwrap().condition, Condition::Up);
        let change = Change {
            uplink: "dsl/ipv6".into(),
            condition: Condition::Down,
            reason: "fe80::1 missed 3 probes in a row".into(),
        };
        assert_eq!(
            states.follow(&dual(false), Some(&change), t1),
            [Transition {
                uplink: "dsl/ipv6".into(),
                previous: Some(Condition::Up),
                condition: Condition::Down,
                reason: change.reason.clone(),
            }]
        );
        assert_eq!(
            states.get("dsl").unwrap().condition,
            Condition::Up,
            "its IPv4 is untouched"
        );
        // An uplink that has no IPv6 has no IPv6 side to tell about.
        assert!(
            States::start(&plan(&[("lte", true)]), t0)
                .get("lte/ipv6")
                .is_none()
        );
    }
}
