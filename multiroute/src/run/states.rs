//! Each uplink's state as the daemon reports it — alive or not, since when, why,
//! how many transitions — as pure bookkeeping over successive plans: no clock is
//! read and nothing is logged here, so every rule is unit-tested.
use std::{collections::BTreeMap, time::SystemTime};

use super::health::Change;
use crate::plan::Plan;

#[derive(Debug, Clone, PartialEq)]
pub struct UplinkState {
    pub alive: bool,
    pub since: SystemTime,
    pub reason: String,
    /// Up/down transitions since `load` started.
    pub changes: u64,
}

/// An uplink that became alive or stopped being alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub uplink: String,
    pub alive: bool,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct States(BTreeMap<String, UplinkState>);

impl States {
    /// The states at start: alive as planned, dead ones presumed so from before
    /// a restart.
    pub fn start(plan: &Plan, now: SystemTime) -> Self {
        let states = plan
            .uplinks
            .iter()
            .map(|u| {
                let reason = match (u.readiness.problem(), u.alive) {
                    (Some(problem), _) => problem,
                    (None, true) => "started",
                    (None, false) => "found dead before this restart; back once its probes answer",
                };
                let state = UplinkState {
                    alive: u.alive,
                    since: now,
                    reason: reason.to_owned(),
                    changes: 0,
                };
                (u.name.clone(), state)
            })
            .collect();
        Self(states)
    }

    /// Follows the new plan; `change` is the probe verdict that led to it, if one
    /// did. Returns the uplinks whose liveness changed, with why; forgets uplinks
    /// the plan no longer has.
    pub fn follow(
        &mut self,
        plan: &Plan,
        change: Option<&Change>,
        now: SystemTime,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for uplink in &plan.uplinks {
            let reason = match uplink.readiness.problem() {
                Some(problem) => problem.to_owned(),
                None => match change {
                    Some(change) if change.uplink == uplink.name => change.reason.clone(),
                    _ if uplink.alive => "ready".to_owned(),
                    _ => "probes failing".to_owned(),
                },
            };
            let state = self
                .0
                .entry(uplink.name.clone())
                .or_insert_with(|| UplinkState {
                    alive: !uplink.alive,
                    since: now,
                    reason: String::new(),
                    changes: 0,
                });
            if state.alive == uplink.alive {
                continue;
            }
            state.alive = uplink.alive;
            state.since = now;
            state.changes += 1;
            state.reason.clone_from(&reason);
            transitions.push(Transition {
                uplink: uplink.name.clone(),
                alive: uplink.alive,
                reason,
            });
        }
        self.0.retain(|name, _| plan.uplink(name).is_some());
        transitions
    }

    pub fn get(&self, uplink: &str) -> Option<&UplinkState> {
        self.0.get(uplink)
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use super::*;
    use crate::{
        net::Ipv4Net,
        plan::{Hop, Readiness, UplinkPlan},
    };

    fn plan(uplinks: &[(&str, bool)]) -> Plan {
        let uplinks = uplinks
            .iter()
            .enumerate()
            .map(|(slot, &(name, alive))| UplinkPlan {
                name: name.to_owned(),
                slot: slot as u32,
                interface: format!("wan{slot}"),
                table: 101 + slot as u32,
                mark: 0x100 << slot,
                weight: 1,
                tier: 1,
                standby: false,
                readiness: Readiness::Ready {
                    address: Ipv4Net::new(Ipv4Addr::new(198, 18, slot as u8, 2), 24),
                    gateway: Hop::Via(Ipv4Addr::new(198, 18, slot as u8, 1)),
                },
                alive,
                readiness6: Readiness::NoAddress,
                alive6: false,
                nat6: Default::default(),
            })
            .collect();
        Plan {
            uplinks,
            routes: Vec::new(),
            rules: Vec::new(),
            main_default: None,
            main_default6: None,
            datapath_uplinks: Vec::new(),
            ring: Vec::new(),
            ring6: Vec::new(),
            lan: Vec::new(),
            inbound: Vec::new(),
            nat6: Vec::new(),
            balance_by: 0,
            policy: Default::default(),
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
            alive: false,
            reason: "198.51.100.9 missed 3 probes in a row".into(),
        };
        let transitions = states.follow(&plan(&[("dsl", false), ("lte", true)]), Some(&change), t1);
        assert_eq!(
            transitions,
            [Transition {
                uplink: "dsl".into(),
                alive: false,
                reason: change.reason.clone(),
            }]
        );
        let dsl = states.get("dsl").unwrap();
        assert_eq!((dsl.alive, dsl.since, dsl.changes), (false, t1, 1));
        assert_eq!(states.get("lte").unwrap().since, t0, "lte did not change");
        assert!(
            states
                .follow(&plan(&[("dsl", false), ("lte", true)]), None, t1)
                .is_empty()
        );
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
}
