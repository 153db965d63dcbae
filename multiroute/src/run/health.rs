//! What the probes say about each uplink, as pure bookkeeping: per target a
//! `down`/`up` hysteresis over consecutive results, the last RTT and the loss over a
//! window. An uplink is alive while any of its targets is. No clock is read here: the
//! caller passes results in, which keeps every rule unit-testable.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::config::Target;

/// Probe results kept per target for the loss figure.
pub const LOSS_WINDOW: usize = 20;

/// One target's record.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    target: Target,
    up: bool,
    ok_streak: u32,
    fail_streak: u32,
    /// Newest last; `None` is a lost probe.
    recent: VecDeque<Option<Duration>>,
}

impl Record {
    /// Targets start up: an uplink is trusted until probes prove otherwise, so a
    /// restart never blackholes a working line while the first probes are in flight.
    fn new(target: Target) -> Self {
        Self {
            target,
            up: true,
            ok_streak: 0,
            fail_streak: 0,
            recent: VecDeque::with_capacity(LOSS_WINDOW),
        }
    }

    fn record(&mut self, rtt: Option<Duration>, thresholds: Thresholds) {
        if self.recent.len() == LOSS_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(rtt);
        if rtt.is_some() {
            self.ok_streak += 1;
            self.fail_streak = 0;
            if !self.up && self.ok_streak >= thresholds.up {
                self.up = true;
            }
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            if self.up && self.fail_streak >= thresholds.down {
                self.up = false;
            }
        }
    }

    fn last_rtt(&self) -> Option<Duration> {
        self.recent.iter().rev().find_map(|r| *r)
    }

    fn loss_percent(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        let lost = self.recent.iter().filter(|r| r.is_none()).count();
        100.0 * lost as f64 / self.recent.len() as f64
    }
}

/// `[health] down` and `up`: consecutive results that flip a target's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub down: u32,
    pub up: u32,
}

/// What changed when a result was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub uplink: String,
    pub alive: bool,
    /// Human reason: which target, how many probes, last RTT and loss.
    pub reason: String,
}

/// A target as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    pub target: Target,
    pub up: bool,
    pub rtt_ms: Option<f64>,
    pub loss_percent: f64,
}

/// Probe-level health of every uplink that is being probed.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthBook {
    thresholds: Thresholds,
    uplinks: BTreeMap<String, Vec<Record>>,
}

impl HealthBook {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            uplinks: BTreeMap::new(),
        }
    }

    /// Declares which targets each uplink is probed at now. An uplink whose targets
    /// are unchanged keeps its record; new or changed ones start fresh (up); uplinks
    /// no longer listed are forgotten.
    pub fn track(&mut self, wanted: &BTreeMap<String, Vec<Target>>) {
        self.uplinks.retain(|name, _| wanted.contains_key(name));
        for (name, addresses) in wanted {
            let same = self.uplinks.get(name).is_some_and(|targets| {
                targets
                    .iter()
                    .map(|t| t.target)
                    .eq(addresses.iter().copied())
            });
            if !same {
                self.uplinks.insert(
                    name.clone(),
                    addresses.iter().copied().map(Record::new).collect(),
                );
            }
        }
    }

    /// Marks every target of these uplinks down, so each needs `up` answers in a
    /// row before it carries new flows again: a restarted daemon keeps the
    /// verdicts of the one before instead of trusting an uplink that was dead.
    pub fn presume_down(&mut self, uplinks: &BTreeSet<String>) {
        for name in uplinks {
            for target in self.uplinks.get_mut(name).into_iter().flatten() {
                target.up = false;
                target.ok_streak = 0;
            }
        }
    }

    /// Records one probe result (`None`: lost). Returns the uplink's change of
    /// state, if this result caused one.
    pub fn record(
        &mut self,
        uplink: &str,
        target: Target,
        rtt: Option<Duration>,
    ) -> Option<Change> {
        let thresholds = self.thresholds;
        let targets = self.uplinks.get_mut(uplink)?;
        let was_alive = targets.iter().any(|t| t.up);
        let probed = targets.iter().position(|t| t.target == target)?;
        targets[probed].record(rtt, thresholds);
        let alive = targets.iter().any(|t| t.up);
        (alive != was_alive).then(|| Change {
            uplink: uplink.to_owned(),
            alive,
            reason: describe(&targets[probed], alive, thresholds),
        })
    }

    /// Uplinks whose every target is down.
    pub fn dead(&self) -> BTreeSet<String> {
        self.uplinks
            .iter()
            .filter(|(_, targets)| !targets.iter().any(|t| t.up))
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn report(&self, uplink: &str) -> Vec<TargetReport> {
        self.uplinks
            .get(uplink)
            .map(|targets| {
                targets
                    .iter()
                    .map(|t| TargetReport {
                        target: t.target,
                        up: t.up,
                        rtt_ms: t.last_rtt().map(|d| d.as_secs_f64() * 1000.0),
                        loss_percent: t.loss_percent(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn describe(target: &Record, alive: bool, thresholds: Thresholds) -> String {
    let loss = target.loss_percent();
    if alive {
        let rtt = target
            .last_rtt()
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into());
        format!(
            "{} answered {} probes in a row (rtt {rtt}, loss {loss:.0}% over the last {})",
            target.target,
            thresholds.up,
            target.recent.len()
        )
    } else {
        format!(
            "{} missed {} probes in a row (loss {loss:.0}% over the last {}); no other target answers",
            target.target,
            thresholds.down,
            target.recent.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    const A: Target = Target::Icmp(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    const B: Target = Target::Tcp(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        443,
    ));
    const RTT: Option<Duration> = Some(Duration::from_millis(3));

    fn book(targets: &[Target]) -> HealthBook {
        let mut book = HealthBook::new(Thresholds { down: 3, up: 2 });
        book.track(&BTreeMap::from([("dsl".to_owned(), targets.to_vec())]));
        book
    }

    #[test]
    fn an_uplink_presumed_down_needs_up_answers_to_return() {
        let mut book = book(&[A, B]);
        book.presume_down(&BTreeSet::from(["dsl".to_owned()]));
        assert_eq!(book.dead(), BTreeSet::from(["dsl".to_owned()]));
        assert_eq!(book.record("dsl", A, RTT), None);
        let up = book
            .record("dsl", A, RTT)
            .expect("two answers bring it back");
        assert!(up.alive);
        assert!(book.dead().is_empty());
    }

    #[test]
    fn down_after_consecutive_losses_up_after_consecutive_answers() {
        let mut book = book(&[A]);
        assert_eq!(book.record("dsl", A, None), None);
        assert_eq!(book.record("dsl", A, None), None);
        let down = book.record("dsl", A, None).expect("third loss flips it");
        assert!(!down.alive);
        assert!(down.reason.contains("missed 3 probes"), "{}", down.reason);
        assert_eq!(book.dead(), BTreeSet::from(["dsl".to_owned()]));
        assert_eq!(book.record("dsl", A, RTT), None);
        let up = book
            .record("dsl", A, RTT)
            .expect("second answer flips it back");
        assert!(up.alive);
        assert!(up.reason.contains("rtt 3.0 ms"), "{}", up.reason);
        assert!(book.dead().is_empty());
    }

    #[test]
    fn alternating_loss_never_flips_the_state() {
        let mut book = book(&[A]);
        for i in 0..100 {
            let rtt = if i % 2 == 0 { None } else { RTT };
            assert_eq!(book.record("dsl", A, rtt), None, "probe {i}");
        }
        assert!(book.dead().is_empty());
        assert_eq!(book.report("dsl")[0].loss_percent, 50.0);
    }

    #[test]
    fn alive_while_any_target_answers() {
        let mut book = book(&[A, B]);
        for _ in 0..5 {
            assert_eq!(book.record("dsl", A, None), None);
            assert_eq!(book.record("dsl", B, RTT), None);
        }
        assert!(book.dead().is_empty());
        assert_eq!(book.record("dsl", B, None), None);
        assert_eq!(book.record("dsl", B, None), None);
        assert!(!book.record("dsl", B, None).expect("last target down").alive);
    }

    #[test]
    fn retracking_keeps_unchanged_uplinks_and_resets_changed_ones() {
        let mut book = book(&[A]);
        for _ in 0..3 {
            book.record("dsl", A, None);
        }
        book.track(&BTreeMap::from([("dsl".to_owned(), vec![A])]));
        assert_eq!(book.dead().len(), 1, "same targets: the record stays");
        book.track(&BTreeMap::from([("dsl".to_owned(), vec![B])]));
        assert!(book.dead().is_empty(), "a new target starts up");
        book.track(&BTreeMap::new());
        assert_eq!(book.record("dsl", B, None), None, "forgotten uplink");
    }

    #[test]
    fn loss_window_is_bounded() {
        let mut book = book(&[A]);
        for _ in 0..LOSS_WINDOW {
            book.record("dsl", A, None);
        }
        for _ in 0..LOSS_WINDOW / 2 {
            book.record("dsl", A, RTT);
        }
        let report = &book.report("dsl")[0];
        assert_eq!(report.loss_percent, 50.0);
        assert_eq!(report.rtt_ms, Some(3.0));
        assert!(report.up);
    }
}
