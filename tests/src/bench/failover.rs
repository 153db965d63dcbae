//! Suite 4, failover and recovery: a silent upstream outage and a link going down,
//! with the default health config and a fast one, several trials each on one lab;
//! and a restart of multiroute itself (SIGTERM, then `load`), which must cost no
//! connection. Measured from outside as in the e2e tests: a new connection every
//! 20 ms.
use std::{thread::sleep, time::Duration};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{Options, median};
use crate::{Lab, LabOptions, SERVER, measure_outage, wall_clock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Silent,
    LinkDown,
    /// SIGTERM then `load` again: "failover" is the new-connection outage,
    /// "recovery" the time until the restarted `load` is ready.
    Restart,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub health: String,
    pub kind: Kind,
    pub failover_ms: Vec<f64>,
    pub recovery_ms: Vec<f64>,
    pub failover_median_ms: f64,
    pub recovery_median_ms: f64,
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
        (Kind::Restart, _) => anyhow::bail!("a restart is no outage to inject"),
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

pub fn run(options: &Options) -> Result<Vec<Measured>> {
    let mut results = Vec::new();
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
            let mut failover_ms = Vec::new();
            let mut recovery_ms = Vec::new();
            for _ in 0..options.failover_trials {
                super::interrupted()?;
                let (failover, recovery) = match kind {
                    Kind::Restart => restart_trial(&mut lab)?,
                    _ => outage_trial(&lab, kind, window)?,
                };
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
            };
            eprintln!("bench: failover {measured:?}");
            results.push(measured);
        }
        lab.stop_and_unload()?;
    }
    Ok(results)
}
