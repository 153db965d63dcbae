//! What the probes say about each uplink, as pure bookkeeping. Per target: a
//! `down`/`up` hysteresis over consecutive results (alive or dead), and the loss
//! and mean RTT over its last `window` probes against the quality limits (good or
//! degraded, with hysteresis and a minimum time in each). An uplink is alive while
//! `targets_needed` of its targets are, degraded while fewer than that many are
//! also good. No clock is read here: the caller passes results and the time in,
//! which keeps every rule unit-testable.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Quality, Target},
    plan::{Condition, Verdicts},
};

mod target;
#[cfg(test)]
mod tests;

pub use target::{Cadence, Outcome};
use target::{Limits, Record};

/// `[health] down` and `up`: consecutive results that flip a target's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub down: u32,
    pub up: u32,
}

/// What one uplink side is probed at and held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub targets: Vec<Target>,
    pub quality: Quality,
}

/// What changed when a result was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub uplink: String,
    pub condition: Condition,
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
    /// Mean RTT of the answered probes in the window.
    #[serde(default)]
    pub mean_rtt_ms: Option<f64>,
    /// The quality limit it is over, if any.
    #[serde(default)]
    pub degraded: Option<String>,
}

/// The best of an uplink side's targets: the lowest last RTT of those up, and
/// the lowest loss.
pub fn best(probes: &[TargetReport]) -> (Option<f64>, Option<f64>) {
    let rtt = probes
        .iter()
        .filter(|p| p.up)
        .filter_map(|p| p.rtt_ms)
        .reduce(f64::min);
    let loss = probes.iter().map(|p| p.loss_percent).reduce(f64::min);
    (rtt, loss)
}

#[derive(Debug, Clone, PartialEq)]
struct Side {
    limits: Limits,
    targets: Vec<Record>,
}

impl Side {
    fn needed(&self) -> usize {
        (self.limits.quality.targets_needed as usize).clamp(1, self.targets.len().max(1))
    }

    fn condition(&self) -> Condition {
        let needed = self.needed();
        if self.targets.iter().filter(|t| t.up).count() < needed {
            Condition::Down
        } else if self.targets.iter().filter(|t| t.good()).count() < needed {
            Condition::Degraded
        } else {
            Condition::Up
        }
    }

    /// Why it is in `condition`, after `probed` gave a result.
    fn describe(&self, probed: &Record, condition: Condition, cadence: Cadence) -> String {
        let (needed, of) = (self.needed(), self.targets.len());
        let quorum = if of > 1 {
            let up = self.targets.iter().filter(|t| t.good()).count();
            format!("; {up} of {of} targets good, {needed} needed")
        } else {
            String::new()
        };
        let loss = probed.loss_percent();
        let n = probed.recent.len();
        match condition {
            Condition::Down if cadence == Cadence::Burst => format!(
                "{} missed {} probes in a row, sent at once because the line sent packets and received none{quorum}",
                probed.target, probed.fail_streak
            ),
            Condition::Down => format!(
                "{} missed {} probes in a row (loss {loss:.0}% over the last {n}){quorum}",
                probed.target, probed.fail_streak
            ),
            Condition::Degraded => {
                let over = self.targets.iter().find_map(|t| t.over.as_ref());
                let target = self.targets.iter().find(|t| t.over.is_some());
                match (over, target) {
                    (Some(over), Some(t)) => format!("{}: {over}{quorum}", t.target),
                    _ => format!("too few targets within the limits{quorum}"),
                }
            }
            Condition::Up => {
                let rtt = probed
                    .mean_rtt_ms()
                    .map(|ms| format!("{ms:.1} ms"))
                    .unwrap_or_else(|| "-".into());
                format!(
                    "{} answers (mean rtt {rtt}, loss {loss:.0}% over the last {n}){quorum}",
                    probed.target
                )
            }
        }
    }
}

/// Probe-level health of every uplink side that is being probed.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthBook {
    thresholds: Thresholds,
    uplinks: BTreeMap<String, Side>,
}

impl HealthBook {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            uplinks: BTreeMap::new(),
        }
    }

    /// Declares what each uplink side is probed at now. A side whose targets are
    /// unchanged keeps its record (under its new limits); new or changed ones start
    /// fresh (up); sides no longer listed are forgotten.
    pub fn track(&mut self, wanted: &BTreeMap<String, Watch>) {
        self.uplinks.retain(|name, _| wanted.contains_key(name));
        for (name, watch) in wanted {
            let limits = Limits {
                down: self.thresholds.down,
                up: self.thresholds.up,
                quality: watch.quality,
            };
            match self.uplinks.get_mut(name) {
                Some(side)
                    if side
                        .targets
                        .iter()
                        .map(|t| t.target)
                        .eq(watch.targets.iter().copied()) =>
                {
                    side.limits = limits;
                }
                _ => {
                    let targets = watch.targets.iter().copied().map(Record::new).collect();
                    self.uplinks.insert(name.clone(), Side { limits, targets });
                }
            }
        }
    }

    /// Marks every target of these uplinks down, so each needs `up` answers in a
    /// row before it carries new flows again: a restarted daemon keeps the
    /// verdicts of the one before instead of trusting an uplink that was dead.
    pub fn presume_down(&mut self, uplinks: &BTreeSet<String>) {
        for name in uplinks {
            for target in self
                .uplinks
                .get_mut(name)
                .into_iter()
                .flat_map(|s| &mut s.targets)
            {
                target.up = false;
                target.ok_streak = 0;
            }
        }
    }

    /// Records one probe result (`None`: lost) at `now`. Returns the uplink's
    /// change of condition, if this result caused one.
    pub fn record(
        &mut self,
        uplink: &str,
        target: Target,
        (outcome, cadence): (Outcome, Cadence),
        now: Instant,
    ) -> Option<Change> {
        let side = self.uplinks.get_mut(uplink)?;
        let was = side.condition();
        let probed = side.targets.iter().position(|t| t.target == target)?;
        let limits = side.limits;
        side.targets[probed].record(outcome, cadence, &limits, now);
        let condition = side.condition();
        (condition != was).then(|| Change {
            uplink: uplink.to_owned(),
            condition,
            reason: side.describe(&side.targets[probed], condition, cadence),
        })
    }

    /// Uplink sides found dead or degraded.
    pub fn verdicts(&self) -> Verdicts {
        let named = |condition| {
            self.uplinks
                .iter()
                .filter(|(_, side)| side.condition() == condition)
                .map(|(name, _)| name.clone())
                .collect()
        };
        Verdicts {
            dead: named(Condition::Down),
            degraded: named(Condition::Degraded),
            exhausted: BTreeSet::new(),
        }
    }

    pub fn report(&self, uplink: &str) -> Vec<TargetReport> {
        self.uplinks
            .get(uplink)
            .map(|side| {
                side.targets
                    .iter()
                    .map(|t| TargetReport {
                        target: t.target,
                        up: t.up,
                        rtt_ms: t.last_rtt().map(|d| d.as_secs_f64() * 1000.0),
                        loss_percent: t.loss_percent(),
                        mean_rtt_ms: t.mean_rtt_ms(),
                        degraded: t.over.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
