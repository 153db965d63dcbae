//! One stream of everything the daemon does: each transition, failover, budget
//! crossing, reload and repair is an [`Event`] of a stable JSON shape, kept in a
//! bounded history (`multiroute events`) and broadcast to followers (`events
//! --follow`) and hooks.
use std::{collections::VecDeque, time::SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Events kept for `multiroute events`.
pub const HISTORY: usize = 1000;

/// One thing that happened. Fields that do not apply are null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Numbered from 1 since `load` started.
    pub seq: u64,
    /// Unix seconds.
    pub time: f64,
    /// One of [`crate::config::EVENT_NAMES`].
    pub event: String,
    pub uplink: Option<String>,
    /// "ipv4" or "ipv6".
    pub family: Option<String>,
    pub previous: Option<String>,
    pub state: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// The uplink's address of the family, when it has one.
    pub address: Option<String>,
    /// The figures behind it: the probe target, its RTT and loss.
    #[serde(default)]
    pub target: Option<String>,
    pub rtt_ms: Option<f64>,
    pub loss_percent: Option<f64>,
    /// A failover's sessions that move with it (their conntrack entries flushed).
    #[serde(default)]
    pub sessions: Option<u64>,
}

impl Event {
    /// An event named `event` about nothing in particular (a reload, all down).
    pub fn new(event: &str, reason: impl Into<String>) -> Self {
        Self {
            seq: 0,
            time: 0.0,
            event: event.to_owned(),
            uplink: None,
            family: None,
            previous: None,
            state: None,
            reason: reason.into(),
            address: None,
            target: None,
            rtt_ms: None,
            loss_percent: None,
            sessions: None,
        }
    }

    /// The same, about `uplink`.
    pub fn about(event: &str, uplink: &str, reason: impl Into<String>) -> Self {
        Self {
            uplink: Some(uplink.to_owned()),
            ..Self::new(event, reason)
        }
    }
}

/// The history and the broadcast of events.
pub struct EventLog {
    recent: VecDeque<Event>,
    next: u64,
    sender: broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            recent: VecDeque::with_capacity(HISTORY),
            next: 1,
            sender: broadcast::channel(256).0,
        }
    }
}

impl EventLog {
    /// Numbers, stamps, keeps and broadcasts `event`.
    pub fn emit(&mut self, mut event: Event) {
        event.seq = self.next;
        self.next += 1;
        event.time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        if self.recent.len() == HISTORY {
            self.recent.pop_front();
        }
        self.recent.push_back(event.clone());
        // Nobody following is fine.
        let _ = self.sender.send(event);
    }

    pub fn recent(&self) -> Vec<Event> {
        self.recent.iter().cloned().collect()
    }

    /// A handle that subscribes followers and hooks.
    pub fn sender(&self) -> broadcast::Sender<Event> {
        self.sender.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_kept_within_the_history_and_broadcast() {
        let mut log = EventLog::default();
        let mut follower = log.sender().subscribe();
        log.emit(Event::about("down", "dsl", "probe 0"));
        let first = follower.try_recv().expect("broadcast");
        assert_eq!((first.seq, first.uplink.as_deref()), (1, Some("dsl")));
        for i in 1..HISTORY + 5 {
            log.emit(Event::about("down", "dsl", format!("probe {i}")));
        }
        let recent = log.recent();
        assert_eq!(recent.len(), HISTORY);
        assert_eq!(recent[0].seq, 6, "the oldest ones go");
        assert!(recent[0].time > 0.0);
        let json = serde_json::to_value(&recent[0]).unwrap();
        for field in [
            "seq", "time", "event", "uplink", "family", "previous", "state", "reason",
        ] {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
    }
}
