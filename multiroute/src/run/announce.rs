//! What a move from one plan to the next tells the event stream: each side's
//! transition (with the figures behind it), the failover or failback it makes,
//! every uplink failing or one coming back, the HA pair's standby and active, and
//! an uplink's address or gateway changing.
use super::{Daemon, events::Event, health, states::Transition};
use crate::{
    apply::Flushed,
    net::Family,
    plan::{Condition, Plan, UplinkPlan},
};

/// "dsl/ipv6" → ("dsl", IPv6).
fn side_of(name: &str) -> (&str, Family) {
    match name.split_once('/') {
        Some((uplink, _)) => (uplink, Family::V6),
        None => (name, Family::V4),
    }
}

fn family_name(family: Family) -> String {
    match family {
        Family::V4 => "ipv4".into(),
        Family::V6 => "ipv6".into(),
    }
}

/// The uplinks that take `family`'s new flows in `plan`, by name.
fn taking(plan: &Plan, family: Family) -> String {
    let active = plan.active_tier();
    let names: Vec<&str> = plan
        .uplinks
        .iter()
        .filter(|u| u.takes_new_flows(family, active))
        .map(|u| u.name.as_str())
        .collect();
    if names.is_empty() {
        "none (failing open)".into()
    } else {
        names.join(", ")
    }
}

impl Daemon {
    /// Emits what moving from `old` to the plan in force did.
    pub(super) fn announce(&mut self, old: &Plan, transitions: &[Transition], flushed: &[Flushed]) {
        for transition in transitions {
            self.announce_transition(transition, flushed);
        }
        match (old.fail_open(), self.plan.fail_open()) {
            (false, true) => self.events.emit(Event::new(
                "all_down",
                "every uplink is down: failing open, the LAN follows the main table's original default",
            )),
            (true, false) => self.events.emit(Event::new(
                "restored",
                format!("an uplink carries again: {}", taking(&self.plan, Family::V4)),
            )),
            _ => {}
        }
        match (old.ha_backup(), self.plan.ha_backup()) {
            (false, true) => self.events.emit(Event::new(
                "standby",
                "no uplink has its address (a VRRP peer holds them)",
            )),
            (true, false) => self
                .events
                .emit(Event::new("active", "uplink addresses arrived")),
            _ => {}
        }
        let moved: Vec<Event> = self
            .plan
            .uplinks
            .iter()
            .filter_map(|now| Some((old.uplink(&now.name)?, now)))
            .flat_map(|(before, now)| {
                Family::ALL
                    .into_iter()
                    .filter_map(move |f| address_changed(before, now, f))
            })
            .collect();
        for event in moved {
            self.events.emit(event);
        }
    }

    fn announce_transition(&mut self, t: &Transition, flushed: &[Flushed]) {
        let (name, family) = side_of(&t.uplink);
        let probes = self.health.report(&t.uplink);
        let (rtt_ms, loss_percent) = health::best(&probes);
        // The target the figures are about: the best answering one, or the first.
        let target = probes
            .iter()
            .find(|p| p.up && p.rtt_ms.is_some() && p.rtt_ms == rtt_ms)
            .or(probes.first())
            .map(|p| p.target.to_string());
        let address = self
            .plan
            .uplink(name)
            .and_then(|u| u.address(family))
            .map(|a| a.to_string());
        let event = Event {
            family: Some(family_name(family)),
            previous: t.previous.map(|p| p.as_str().to_owned()),
            state: Some(t.condition.as_str().to_owned()),
            address,
            rtt_ms,
            loss_percent,
            target,
            ..Event::about(t.condition.as_str(), name, t.reason.clone())
        };
        self.events.emit(event.clone());
        let follow_up = match (t.previous, t.condition) {
            (Some(Condition::Up | Condition::Degraded), Condition::Down) => {
                // Its sessions whose conntrack entries were flushed so they move.
                let moved: usize = flushed
                    .iter()
                    .filter(|f| f.uplink == name && Family::of(f.address) == family)
                    .map(|f| f.entries)
                    .sum();
                let reason = format!(
                    "its flows move to: {}; {moved} sessions NATed to it were flushed so they move too",
                    taking(&self.plan, family)
                );
                ("failover", reason, Some(moved as u64))
            }
            (Some(Condition::Down), Condition::Up | Condition::Degraded) => (
                "failback",
                "it takes new flows again; flows elsewhere stay where they are".to_owned(),
                None,
            ),
            _ => return,
        };
        let (event_name, reason, sessions) = follow_up;
        self.events.emit(Event {
            event: event_name.to_owned(),
            reason,
            sessions,
            ..event
        });
    }
}

/// An uplink's address or next hop of `family` changing, between two ready ones.
fn address_changed(before: &UplinkPlan, now: &UplinkPlan, family: Family) -> Option<Event> {
    let (was, is) = (before.ready(family)?, now.ready(family)?);
    if was == is {
        return None;
    }
    let show =
        |(address, hop): (std::net::IpAddr, crate::plan::Hop)| format!("{address} via {hop}");
    Some(Event {
        family: Some(family_name(family)),
        address: Some(is.0.to_string()),
        ..Event::about(
            "address_changed",
            &now.name,
            format!("{} → {}", show(was), show(is)),
        )
    })
}
