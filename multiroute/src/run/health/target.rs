//! One probe target's record: its `down`/`up` hysteresis over consecutive
//! results, and the loss and mean RTT of its last `window` probes against the
//! quality limits.
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::config::{Quality, Target};

/// On a lossy line a run of losses is declared a failure only once chance is
/// this unlikely to explain it, at the loss rate the window showed before it:
/// 30 % random loss flaps a 3-in-a-row rule every few dozen probes, and a false
/// "down" moves (breaks) the line's sessions.
const RUN_BY_CHANCE: f64 = 1e-5;
/// However lossy the line, a run this many times `down` declares it dead.
const MAX_RUN_FACTOR: u32 = 4;

/// One target's record.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Record {
    pub(super) target: Target,
    pub(super) up: bool,
    pub(super) ok_streak: u32,
    pub(super) fail_streak: u32,
    /// Newest last; `None` is a lost probe.
    pub(super) recent: VecDeque<Option<Duration>>,
    /// Over a quality limit, and which one.
    pub(super) over: Option<String>,
    /// When `over` last changed (None: never judged yet).
    pub(super) judged_at: Option<Instant>,
    /// Judgements in a row, while degraded, that found it under the recover
    /// limits.
    pub(super) recovering: u32,
}

impl Record {
    /// Targets start up: an uplink is trusted until probes prove otherwise, so a
    /// restart never blackholes a working line while the first probes are in flight.
    pub(super) fn new(target: Target) -> Self {
        Self {
            target,
            up: true,
            ok_streak: 0,
            fail_streak: 0,
            recent: VecDeque::new(),
            over: None,
            judged_at: None,
            recovering: 0,
        }
    }

    pub(super) fn record(
        &mut self,
        outcome: Outcome,
        cadence: Cadence,
        limits: &Limits,
        now: Instant,
    ) {
        // Only probes at the interval sample the line's quality evenly.
        let sampled = cadence == Cadence::Interval;
        match outcome {
            Outcome::Lost => {
                if sampled {
                    self.sample(None, limits);
                }
                self.fail_streak += 1;
                self.ok_streak = 0;
                if self.up && self.fail_streak >= self.down_after(limits) {
                    self.up = false;
                }
            }
            Outcome::Answered(rtt) => {
                if sampled {
                    self.sample(Some(rtt), limits);
                }
                self.answered(rtt, sampled, limits, now);
            }
            Outcome::Late(rtt) => {
                // Counted lost at its timeout, it answered after all: the line
                // is slow (a full queue), not dead. Loss and mean RTT do not
                // depend on which lost entry it was.
                if sampled && let Some(lost) = self.recent.iter_mut().find(|r| r.is_none()) {
                    *lost = Some(rtt);
                }
                self.answered(rtt, sampled, limits, now);
            }
        }
        if self.up && sampled {
            self.judge(&limits.quality, now);
        }
    }

    fn sample(&mut self, rtt: Option<Duration>, limits: &Limits) {
        while self.recent.len() >= limits.quality.window as usize {
            self.recent.pop_front();
        }
        self.recent.push_back(rtt);
    }

    fn answered(&mut self, rtt: Duration, sampled: bool, limits: &Limits, now: Instant) {
        self.ok_streak += 1;
        self.fail_streak = 0;
        if !self.up && self.ok_streak >= limits.up {
            self.up = true;
            // The outage is not the line's quality: judge it afresh.
            self.recent.clear();
            if sampled {
                self.recent.push_back(Some(rtt));
            }
            self.over = None;
            self.judged_at = Some(now);
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
        let under = loss <= quality.recover_loss_percent.into()
            && rtt.is_none_or(|rtt| rtt <= quality.recover_rtt_ms.into());
        self.recovering = if under { self.recovering + 1 } else { 0 };
        // One lucky window is not a recovery: 30 % random loss leaves a 20-probe
        // window with at most one loss now and then. Half a window more in a row
        // makes that chance small.
        let recovered = self.recovering > quality.window / 2;
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

    pub(super) fn good(&self) -> bool {
        self.up && self.over.is_none()
    }

    pub(super) fn last_rtt(&self) -> Option<Duration> {
        self.recent.iter().rev().find_map(|r| *r)
    }

    pub(super) fn mean_rtt_ms(&self) -> Option<f64> {
        let answered: Vec<f64> = self
            .recent
            .iter()
            .flatten()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        (!answered.is_empty()).then(|| answered.iter().sum::<f64>() / answered.len() as f64)
    }

    pub(super) fn loss_percent(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        let lost = self.recent.iter().filter(|r| r.is_none()).count();
        100.0 * lost as f64 / self.recent.len() as f64
    }
}

/// What became of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered within the timeout.
    Answered(Duration),
    /// No answer within the timeout (or it could not be sent).
    Lost,
    /// Answered after its timeout, when it had been counted lost.
    Late(Duration),
}

impl Outcome {
    pub fn rtt(self) -> Option<Duration> {
        match self {
            Outcome::Answered(rtt) | Outcome::Late(rtt) => Some(rtt),
            Outcome::Lost => None,
        }
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

/// Everything one uplink side is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    pub(super) down: u32,
    pub(super) up: u32,
    pub(super) quality: Quality,
}
