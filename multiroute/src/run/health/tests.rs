//! The health book's rules, result by result.
use super::*;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

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
        let outcome = rtt.map_or(Outcome::Lost, Outcome::Answered);
        self.book
            .record("dsl", target, (outcome, Cadence::Interval), self.now)
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
    // The window's mean falls under 250 ms at the 8th fast answer (of 20), and
    // stays under for half a window more.
    assert_eq!(back.0, 17);
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
    let mut burst = || {
        dsl.book
            .record("dsl", A, (Outcome::Lost, Cadence::Burst), dsl.now)
    };
    assert_eq!(burst(), None);
    assert_eq!(burst(), None);
    let down = burst().expect("three burst losses in a row");
    assert_eq!(down.condition, Condition::Down);
    assert!(down.reason.contains("sent at once"), "{}", down.reason);
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

#[test]
fn late_answers_keep_a_slow_line_alive_and_count_for_its_rtt() {
    let mut dsl = Probed::new(&[A]);
    let slow = Duration::from_millis(1400);
    // A full queue: every probe times out, then its answer comes 0.4 s later.
    let mut changes = Vec::new();
    for _ in 0..40 {
        changes.extend(dsl.probe(A, None));
        let late = (Outcome::Late(slow), Cadence::Interval);
        changes.extend(dsl.book.record("dsl", A, late, dsl.now));
    }
    let conditions: Vec<_> = changes.iter().map(|c| c.condition).collect();
    assert_eq!(conditions, [Condition::Degraded], "never dead: {changes:?}");
    let report = &dsl.book.report("dsl")[0];
    assert_eq!(report.loss_percent, 0.0, "{report:?}");
    assert!(
        report
            .degraded
            .as_deref()
            .unwrap_or_default()
            .contains("rtt 1400 ms > 500 ms")
    );
}
