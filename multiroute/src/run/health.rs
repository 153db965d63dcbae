//! What the probes say about each uplink, as pure bookkeeping. Per target: a
//! `down`/`up` hysteresis over consecutive results (alive or dead), and the loss
//! and mean RTT over its last `window` probes against the quality limits (good or
//! degraded, with hysteresis and a minimum time in each). An uplink is alive while
//! `targets_needed` of its targets are, degraded while fewer than that many are
//! also good. No clock is read here: the caller passes results and the time in,
//! which keeps every rule unit-testable.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Quality, Target},
    plan::{Condition, Verdicts},
};

/// On a lossy line a run of losses is declared a failure only once chance is
/// this unlikely to explain it, at the loss rate the window showed before it:
/// 30 % random loss flaps a 3-in-a-row rule every few dozen probes, and a false
/// "down" moves (breaks) the line's sessions.
const RUN_BY_CHANCE: f64 = 1e-5;
/// However lossy the line, a run this many times `down` declares it dead.
const MAX_RUN_FACTOR: u32 = 4;

/// One target's record.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    target: Target,
    up: bool,
    ok_streak: u32,
    fail_streak: u32,
    /// Newest last; `None` is a lost probe.
    recent: VecDeque<Option<Duration>>,
    /// Over a quality limit, and which one.
    over: Option<String>,
    /// When `over` last changed (None: never judged yet).
    judged_at: Option<Instant>,
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
            recent: VecDeque::new(),
            over: None,
            judged_at: None,
        }
    }

    fn record(&mut self, rtt: Option<Duration>, cadence: Cadence, limits: &Limits, now: Instant) {
        // Only probes at the interval sample the line's quality evenly.
        let sampled = cadence == Cadence::Interval;
        if sampled {
            while self.recent.len() >= limits.quality.window as usize {
                self.recent.pop_front();
            }
            self.recent.push_back(rtt);
        }
        if rtt.is_some() {
            self.ok_streak += 1;
            self.fail_streak = 0;
            if !self.up && self.ok_streak >= limits.up {
                self.up = true;
                // The outage is not the line's quality: judge it afresh.
                self.recent.clear();
                if sampled {
                    self.recent.push_back(rtt);
                }
                self.over = None;
                self.judged_at = Some(now);
            }
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            if self.up && self.fail_streak >= self.down_after(limits) {
                self.up = false;
            }
        }
        if self.up && sampled {
            self.judge(&limits.quality, now);
        }
    }

    /// Losses in a row that declare this target dead: `down`, or more on a line
    /// whose window showed more loss than `recover_loss_percent` before the run
    /// (see [`RUN_BY_CHANCE`]).
    fn down_after(&self, limits: &Limits) -> u32 {
        let run = self.recent.iter().rev().take_while(|r| r.is_none()).count();
        let before = self.recent.len() - run;
        let lost = self
            .recent
            .iter()
            .take(before)
            .filter(|r| r.is_none())
            .count();
        let rate = lost as f64 / before.max(1) as f64;
        let clean = rate * 100.0 <= limits.quality.recover_loss_percent.into();
        if clean || before < (limits.quality.window as usize).div_ceil(2) {
            return limits.down;
        }
        let unlikely = (RUN_BY_CHANCE.ln() / rate.ln()).ceil();
        let most = limits.down * MAX_RUN_FACTOR;
        if unlikely.is_finite() {
            (unlikely as u32).clamp(limits.down, most)
        } else {
            most
        }
    }

    /// Good or degraded, once a whole window is in, each verdict held for at least
    /// `min_state_ms`.
    fn judge(&mut self, quality: &Quality, now: Instant) {
        if self.recent.len() < quality.window as usize {
            return;
        }
        let (loss, rtt) = (self.loss_percent(), self.mean_rtt_ms());
        let n = self.recent.len();
        let over_limit = if loss > quality.max_loss_percent.into() {
            Some(format!(
                "loss {loss:.0} % > {} % over {n} probes",
                quality.max_loss_percent
            ))
        } else {
            rtt.filter(|&rtt| rtt > quality.max_rtt_ms.into())
                .map(|rtt| {
                    format!(
                        "rtt {rtt:.0} ms > {} ms (mean over {n} probes)",
                        quality.max_rtt_ms
                    )
                })
        };
        let recovered = loss <= quality.recover_loss_percent.into()
            && rtt.is_none_or(|rtt| rtt <= quality.recover_rtt_ms.into());
        let next = match (&self.over, over_limit) {
            (None, over) => over,
            (Some(_), _) if recovered => None,
            (Some(_), Some(over)) => Some(over),
            // Between the limits: still degraded, and what it waits for.
            (Some(_), None) => Some(format!(
                "loss {loss:.0} %, rtt {} over {n} probes; recovers at ≤ {} % and ≤ {} ms",
                rtt.map_or("-".into(), |rtt| format!("{rtt:.0} ms")),
                quality.recover_loss_percent,
                quality.recover_rtt_ms
            )),
        };
        if next.is_some() != self.over.is_some() {
            let held = Duration::from_millis(quality.min_state_ms.into());
            if self
                .judged_at
                .is_some_and(|at| now.duration_since(at) < held)
            {
                return;
            }
            self.judged_at = Some(now);
        }
        self.over = next;
    }

    fn good(&self) -> bool {
        self.up && self.over.is_none()
    }

    fn last_rtt(&self) -> Option<Duration> {
        self.recent.iter().rev().find_map(|r| *r)
    }

    fn mean_rtt_ms(&self) -> Option<f64> {
        let answered: Vec<f64> = self
            .recent
            .iter()
            .flatten()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        (!answered.is_empty()).then(|| answered.iter().sum::<f64>() / answered.len() as f64)
    }

    fn loss_percent(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        let lost = self.recent.iter().filter(|r| r.is_none()).count();
        100.0 * lost as f64 / self.recent.len() as f64
    }
}

/// Why a probe was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// At the interval: it counts for liveness and quality.
    Interval,
    /// In a burst when the line fell silent under load: for liveness only (a
    /// burst would weigh one moment over the window).
    Burst,
}

/// `[health] down` and `up`: consecutive results that flip a target's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub down: u32,
    pub up: u32,
}

/// Everything one uplink side is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    down: u32,
    up: u32,
    quality: Quality,
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
    fn describe(&self, probed: &Record, condition: Condition) -> String {
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
        (rtt, cadence): (Option<Duration>, Cadence),
        now: Instant,
    ) -> Option<Change> {
        let side = self.uplinks.get_mut(uplink)?;
        let was = side.condition();
        let probed = side.targets.iter().position(|t| t.target == target)?;
        let limits = side.limits;
        side.targets[probed].record(rtt, cadence, &limits, now);
        let condition = side.condition();
        (condition != was).then(|| Change {
            uplink: uplink.to_owned(),
            condition,
            reason: side.describe(&side.targets[probed], condition),
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
    const SLOW: Option<Duration> = Some(Duration::from_millis(700));
    const INTERVAL: Duration = Duration::from_millis(500);

    fn watch(targets: &[Target], quality: Quality) -> BTreeMap<String, Watch> {
        let watch = Watch {
            targets: targets.to_vec(),
            quality,
        };
        BTreeMap::from([("dsl".to_owned(), watch)])
    }

    /// A book of one uplink, "dsl", and a clock that moves one interval a probe.
    struct Probed {
        book: HealthBook,
        now: Instant,
    }

    impl Probed {
        fn new(targets: &[Target]) -> Self {
            Self::with(targets, Quality::default())
        }

        fn with(targets: &[Target], quality: Quality) -> Self {
            let mut book = HealthBook::new(Thresholds { down: 3, up: 2 });
            book.track(&watch(targets, quality));
            Self {
                book,
                now: Instant::now(),
            }
        }

        fn probe(&mut self, target: Target, rtt: Option<Duration>) -> Option<Change> {
            self.now += INTERVAL;
            self.book
                .record("dsl", target, (rtt, Cadence::Interval), self.now)
        }

        fn condition(&self) -> Condition {
            let verdicts = self.book.verdicts();
            if verdicts.dead.contains("dsl") {
                Condition::Down
            } else if verdicts.degraded.contains("dsl") {
                Condition::Degraded
            } else {
                Condition::Up
            }
        }
    }

    #[test]
    fn an_uplink_presumed_down_needs_up_answers_to_return() {
        let mut dsl = Probed::new(&[A, B]);
        dsl.book.presume_down(&BTreeSet::from(["dsl".to_owned()]));
        assert_eq!(dsl.condition(), Condition::Down);
        assert_eq!(dsl.probe(A, RTT), None);
        let up = dsl.probe(A, RTT).expect("two answers bring it back");
        assert_eq!(up.condition, Condition::Up);
    }

    #[test]
    fn down_after_consecutive_losses_up_after_consecutive_answers() {
        let mut dsl = Probed::new(&[A]);
        assert_eq!(dsl.probe(A, None), None);
        assert_eq!(dsl.probe(A, None), None);
        let down = dsl.probe(A, None).expect("third loss flips it");
        assert_eq!(down.condition, Condition::Down);
        assert!(down.reason.contains("missed 3 probes"), "{}", down.reason);
        assert_eq!(dsl.condition(), Condition::Down);
        assert_eq!(dsl.probe(A, RTT), None);
        let up = dsl.probe(A, RTT).expect("second answer flips it back");
        assert_eq!(up.condition, Condition::Up);
        assert!(up.reason.contains("rtt 3.0 ms"), "{}", up.reason);
        assert_eq!(
            dsl.book.report("dsl")[0].loss_percent,
            0.0,
            "the outage is not counted as the line's loss"
        );
    }

    #[test]
    fn alternating_loss_degrades_the_line_but_never_kills_it() {
        let mut dsl = Probed::new(&[A]);
        let mut changes = Vec::new();
        for i in 0..100 {
            let rtt = if i % 2 == 0 { None } else { RTT };
            changes.extend(dsl.probe(A, rtt));
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].condition, Condition::Degraded);
        assert!(
            changes[0]
                .reason
                .contains("loss 50 % > 20 % over 20 probes"),
            "{}",
            changes[0].reason
        );
        assert_eq!(dsl.book.report("dsl")[0].loss_percent, 50.0);
    }

    #[test]
    fn a_lossy_line_needs_a_longer_run_of_losses_to_be_dead() {
        let mut dsl = Probed::new(&[A]);
        // 30 % loss: 3 of every 10 probes lost, never in a row.
        for i in 0..40 {
            dsl.probe(
                A,
                if [1, 4, 7].contains(&(i % 10)) {
                    None
                } else {
                    RTT
                },
            );
        }
        assert_eq!(dsl.condition(), Condition::Degraded);
        let run = (1..=12)
            .find(|_| dsl.probe(A, None).is_some())
            .expect("dead within 4 × down");
        // The 11 probes before the run held 3 losses: 0.27^9 < 1e-5.
        assert_eq!(run, 9);
        assert_eq!(dsl.condition(), Condition::Down);
        // A clean line still goes down after `down` losses.
        let mut clean = Probed::new(&[A]);
        for _ in 0..40 {
            clean.probe(A, RTT);
        }
        clean.probe(A, None);
        clean.probe(A, None);
        assert!(clean.probe(A, None).is_some());
    }

    #[test]
    fn degraded_by_rtt_recovers_under_the_lower_limit_after_the_minimum_time() {
        let mut dsl = Probed::new(&[A]);
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen.extend(dsl.probe(A, SLOW));
        }
        assert_eq!(seen.len(), 1, "degraded once the window is full: {seen:?}");
        assert!(
            seen[0].reason.contains("rtt 700 ms > 500 ms"),
            "{}",
            seen[0].reason
        );
        // 400 ms is under the limit but above recover_rtt_ms (250): it stays.
        for _ in 0..40 {
            assert_eq!(dsl.probe(A, Some(Duration::from_millis(400))), None);
        }
        let back = (0..40)
            .find_map(|i| dsl.probe(A, RTT).map(|c| (i, c)))
            .expect("back under 250 ms");
        assert_eq!(back.1.condition, Condition::Up);
        // The window's mean falls under 250 ms at the 8th fast answer (of 20).
        assert_eq!(back.0, 7);
    }

    #[test]
    fn a_verdict_is_held_for_the_minimum_time() {
        let quality = Quality {
            min_state_ms: 30_000,
            window: 4,
            ..Quality::default()
        };
        let mut dsl = Probed::with(&[A], quality);
        // Degraded at the fourth probe (2 s), then good answers at once.
        for rtt in [None, RTT, None, RTT] {
            dsl.probe(A, rtt);
        }
        assert_eq!(dsl.condition(), Condition::Degraded);
        let back = (1..100).find(|_| dsl.probe(A, RTT).is_some()).unwrap();
        assert_eq!(back, 60, "30 s at 500 ms a probe");
    }

    #[test]
    fn a_burst_counts_for_liveness_but_not_for_the_window() {
        let mut dsl = Probed::new(&[A]);
        for _ in 0..20 {
            dsl.probe(A, RTT);
        }
        let mut burst = |rtt| dsl.book.record("dsl", A, (rtt, Cadence::Burst), dsl.now);
        assert_eq!(burst(None), None);
        assert_eq!(burst(None), None);
        let down = burst(None).expect("three burst losses in a row");
        assert_eq!(down.condition, Condition::Down);
        assert_eq!(
            dsl.book.report("dsl")[0].loss_percent,
            0.0,
            "not in the window"
        );
    }

    #[test]
    fn targets_needed_counts_answering_and_good_targets() {
        let quality = Quality {
            targets_needed: 2,
            ..Quality::default()
        };
        let mut dsl = Probed::with(&[A, B], quality);
        for _ in 0..2 {
            dsl.probe(A, RTT);
            dsl.probe(B, None);
        }
        dsl.probe(A, RTT);
        let down = dsl.probe(B, None).expect("one of two answers, two needed");
        assert_eq!(down.condition, Condition::Down);
        assert!(
            down.reason.contains("1 of 2 targets good, 2 needed"),
            "{}",
            down.reason
        );
    }

    #[test]
    fn alive_while_any_target_answers() {
        let mut dsl = Probed::new(&[A, B]);
        for _ in 0..5 {
            assert_eq!(dsl.probe(A, None), None);
            assert_eq!(dsl.probe(B, RTT), None);
        }
        assert_eq!(dsl.condition(), Condition::Up);
        assert_eq!(dsl.probe(B, None), None);
        assert_eq!(dsl.probe(B, None), None);
        let down = dsl.probe(B, None).expect("last target down");
        assert_eq!(down.condition, Condition::Down);
    }

    #[test]
    fn retracking_keeps_unchanged_uplinks_and_resets_changed_ones() {
        let mut dsl = Probed::new(&[A]);
        for _ in 0..3 {
            dsl.probe(A, None);
        }
        let tighter = Quality {
            max_loss_percent: 10,
            ..Quality::default()
        };
        dsl.book.track(&watch(&[A], tighter));
        assert_eq!(
            dsl.condition(),
            Condition::Down,
            "same targets: the record stays"
        );
        dsl.book.track(&watch(&[B], tighter));
        assert_eq!(dsl.condition(), Condition::Up, "a new target starts up");
        dsl.book.track(&BTreeMap::new());
        assert_eq!(dsl.probe(B, None), None, "forgotten uplink");
    }

    #[test]
    fn the_window_is_bounded() {
        let mut dsl = Probed::new(&[A]);
        for _ in 0..20 {
            dsl.probe(A, RTT);
        }
        for _ in 0..2 {
            dsl.probe(A, None);
        }
        for _ in 0..18 {
            dsl.probe(A, RTT);
        }
        let report = &dsl.book.report("dsl")[0];
        assert_eq!(report.loss_percent, 10.0);
        assert_eq!(report.rtt_ms, Some(3.0));
        assert!(report.up);
    }
}
