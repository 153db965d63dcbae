//! Suite 4, failover and recovery: a silent upstream outage and a link going down,
//! with the default health config and a fast one, several trials each on one lab;
//! and a restart of multiroute itself (SIGTERM, then `load`), which must cost no
//! connection; and a router failover of the HA pair (one round per advert
//! interval), with the long-lived sessions it lost. Measured from outside as in
//! the e2e tests: a new connection every 20 ms.
use std::{thread::sleep, time::Duration};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{Options, median};
use multiroute_tests::{Lab, LabOptions, SERVER, measure_outage, wall_clock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Silent,
    LinkDown,
    /// SIGTERM then `load` again: "failover" is the new-connection outage,
    /// "recovery" the time until the restarted `load` is ready.
    Restart,
    /// The HA pair (contrib/ha): the master router's LAN link cut ("failover":
    /// until new connections work through the backup), then restored
    /// ("recovery": until they work through the master again).
    Router,
    /// A silent upstream failure under 200 new connections/s (passive detection).
    Busy,
    /// 30 % random loss at the ISP: "failover" until the uplink is degraded (no
    /// new flows), "recovery" from the loss's end until it is up again.
    Loss,
    /// A saturated 20 Mbit/s upload through an 800 ms queue: as for loss, with
    /// the RTT limit.
    Queue,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub health: String,
    pub kind: Kind,
    pub failover_ms: Vec<f64>,
    pub recovery_ms: Vec<f64>,
    pub failover_median_ms: f64,
    pub recovery_median_ms: f64,
    /// Router failover only: long-lived sessions that moved or broke, of how many.
    #[serde(default)]
    pub sessions_lost: Option<(usize, usize)>,
}

/// (name, `[health]` section, seconds a trial's failure window needs).
const CONFIGS: [(&str, &str, f64); 2] = [
    (
        "default (500 ms interval, 1 s timeout, down 3, up 3)",
        "",
        4.5,
    ),
    (
        "fast (200 ms interval, 200 ms timeout, down 3, up 3)",
        "interval_ms = 200\ntimeout_ms = 200\n",
        2.5,
    ),
];

fn restart_trial(lab: &mut Lab) -> Result<(f64, f64)> {
    let client = lab.start_attempts(2.5, 20, 500)?;
    sleep(Duration::from_millis(800));
    let t0 = wall_clock();
    lab.stop_router(libc::SIGTERM)?;
    lab.start_router()?;
    let ready = wall_clock() - t0;
    let outage = measure_outage(&Lab::attempts(client)?, t0)?;
    anyhow::ensure!(
        outage.failed == 0,
        "{} connections failed across a restart",
        outage.failed
    );
    Ok((outage.seconds * 1000.0, ready * 1000.0))
}

fn outage_trial(lab: &Lab, kind: Kind, window: f64) -> Result<(f64, f64)> {
    let fail = |up: bool| match (kind, up) {
        (Kind::Silent, false) => lab.fail_upstream(0),
        (Kind::Silent, true) => lab.restore_upstream(0),
        (Kind::LinkDown, up) => lab.set_uplink_link(0, up),
        _ => anyhow::bail!("{kind:?} is not an outage of the uplink's link or upstream"),
    };
    let client = lab.start_attempts(window + 0.8, 20, 500)?;
    sleep(Duration::from_millis(800));
    let t0 = wall_clock();
    fail(false)?;
    let outage = measure_outage(&Lab::attempts(client)?, t0)?;
    let client = lab.start_attempts(window + 0.5, 20, 500)?;
    sleep(Duration::from_millis(500));
    let t1 = wall_clock();
    fail(true)?;
    let back = Lab::attempts(client)?
        .iter()
        .find(|a| a.start >= t1 && a.address.as_deref() == Some("198.18.0.2"))
        .map(|a| a.start - t1)
        .context("new flows never returned to the recovered uplink")?;
    Ok((outage.seconds * 1000.0, back * 1000.0))
}

/// Seconds from now until isp0's state in `status` is `state` (polled every
/// 50 ms, at most `within`).
fn until_state(lab: &Lab, state: &str, within: Duration) -> Result<f64> {
    let start = std::time::Instant::now();
    multiroute_tests::wait_until(within, || {
        lab.status()
            .is_ok_and(|s| s["uplinks"][0]["state"] == state)
    })
    .with_context(|| {
        let now = lab.status().map(|s| s["uplinks"][0].to_string());
        format!("isp0 never became {state}: {}", now.unwrap_or_default())
    })?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// One trial of a quality case: (until degraded, until up again after the cause
/// ends), in ms.
fn quality_trial(lab: &mut Lab, kind: Kind) -> Result<(f64, f64)> {
    let within = Duration::from_secs(40);
    match kind {
        Kind::Busy => {
            let client = lab.start_attempts(3.0, 5, 500)?;
            sleep(Duration::from_millis(800));
            let t0 = wall_clock();
            lab.fail_upstream(0)?;
            let outage = measure_outage(&Lab::attempts(client)?, t0)?;
            let t1 = wall_clock();
            lab.restore_upstream(0)?;
            until_state(lab, "up", within)?;
            Ok((outage.seconds * 1000.0, (wall_clock() - t1) * 1000.0))
        }
        Kind::Loss => {
            lab.lose_upstream(0, 30)?;
            let degraded = until_state(lab, "degraded", within)?;
            lab.restore_upstream(0)?;
            Ok((degraded, until_state(lab, "up", within)?))
        }
        Kind::Queue => {
            lab.shape_upstream(0, 20, 800)?;
            let client = lab.client();
            let server = SERVER.to_string();
            // Cubic, as most hosts: it fills the queue (BBR would not).
            let upload = ["-c", &server, "-t", "60", "-C", "cubic"];
            lab.start_service("upload", &client, "iperf3", &upload)?;
            let degraded = until_state(lab, "degraded", within);
            lab.stop_service("upload", libc::SIGTERM)?;
            Ok((degraded?, until_state(lab, "up", within)?))
        }
        _ => anyhow::bail!("{kind:?} is no quality case"),
    }
}

/// Passive detection, loss and queueing delay under the default health config.
fn quality(options: &Options) -> Result<Vec<Measured>> {
    let upload = "\n[[rule]]\nname = \"upload\"\nproto = \"tcp\"\ndst_port = \"5201\"\nuplinks = [\"isp0\"]\n";
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: format!("\n[health]\ntargets = [\"{SERVER}\"]\n{upload}"),
    })?;
    let inet = lab.inet();
    lab.start_in(&inet, "iperf3", &["-s", "-B", &SERVER.to_string()])?;
    lab.start_router()?;
    let mut results = Vec::new();
    for kind in [Kind::Busy, Kind::Loss, Kind::Queue] {
        let health = CONFIGS[0].0;
        results.push(trials(options, health, kind, || {
            quality_trial(&mut lab, kind)
        })?);
    }
    lab.stop_and_unload()?;
    Ok(results)
}

/// `failover_trials` runs of `trial` (failover, recovery in ms), with medians.
fn trials(
    options: &Options,
    health: &str,
    kind: Kind,
    mut trial: impl FnMut() -> Result<(f64, f64)>,
) -> Result<Measured> {
    let (mut failover_ms, mut recovery_ms) = (Vec::new(), Vec::new());
    for _ in 0..options.failover_trials {
        super::interrupted()?;
        let (failover, recovery) = trial()?;
        failover_ms.push(failover);
        recovery_ms.push(recovery);
    }
    let measured = Measured {
        health: health.to_owned(),
        kind,
        failover_median_ms: median(failover_ms.clone()),
        recovery_median_ms: median(recovery_ms.clone()),
        failover_ms,
        recovery_ms,
        sessions_lost: None,
    };
    eprintln!("bench: failover {measured:?}");
    Ok(measured)
}

pub fn run(options: &Options) -> Result<Vec<Measured>> {
    let mut results = quality(options)?;
    for (health, section, window) in CONFIGS {
        if section.is_empty() && !options.failover_default_config {
            continue;
        }
        let mut lab = Lab::new(&LabOptions {
            weights: vec![1, 1],
            extra_config: format!("\n[health]\ntargets = [\"{SERVER}\"]\n{section}"),
        })?;
        lab.start_router()?;
        for kind in [Kind::Silent, Kind::LinkDown, Kind::Restart] {
            results.push(trials(options, health, kind, || match kind {
                Kind::Restart => restart_trial(&mut lab),
                _ => outage_trial(&lab, kind, window),
            })?);
        }
        lab.stop_and_unload()?;
    }
    for advert_int in [1.0, 0.3] {
        super::interrupted()?;
        let round = multiroute_tests::pair::failover_round(advert_int)?;
        let measured = Measured {
            health: format!("HA pair, VRRP advert_int {advert_int} s"),
            kind: Kind::Router,
            failover_ms: vec![round.failover_s * 1000.0],
            recovery_ms: vec![round.failback_s * 1000.0],
            failover_median_ms: round.failover_s * 1000.0,
            recovery_median_ms: round.failback_s * 1000.0,
            sessions_lost: Some((round.moved + round.broken, round.sessions)),
        };
        eprintln!("bench: failover {measured:?}");
        results.push(measured);
    }
    Ok(results)
}
