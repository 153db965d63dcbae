//! Each ready uplink's prober: one task that sends a probe to every target once per
//! interval (the kinds live in [`super::probe`]) and reports each outcome to the
//! daemon's loop.
use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinSet, time::MissedTickBehavior};
use tracing::info;

use super::{
    health::{Cadence, Outcome, Watch},
    probe::{self, Through},
    silence::{self, Silence},
};
use crate::{
    config::{Config, Target},
    net::Family,
    plan::{Plan, health_name},
};

/// Where and how one uplink's side of one family is probed. `uplink` is the name
/// health checks know it by (see [`health_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub uplink: String,
    pub interface: String,
    pub address: IpAddr,
    /// Its targets and the quality limits they are held to.
    pub watch: Watch,
    /// `[health] interval_ms`, or a metered uplink's `standby_interval_ms` while
    /// it takes no new flows (so probes do not eat its data plan).
    pub interval: Duration,
}

/// What each ready uplink should be probed at, per family: its own `probe` list
/// or `[health].targets`, the targets of that family, with `"gateway"` resolved to
/// its current gateway of the family (or the peer of a point-to-point link;
/// without one, that target is left out). Sides that are not ready are not probed.
pub fn wanted(config: &Config, plan: &Plan) -> BTreeMap<String, ProbeSpec> {
    let mut wanted = BTreeMap::new();
    for (uplink, planned) in config.uplinks.iter().zip(&plan.uplinks) {
        for family in Family::ALL {
            let Some((address, hop)) = planned.ready(family) else {
                continue;
            };
            let targets: Vec<Target> = config
                .targets(uplink)
                .iter()
                .filter_map(|t| t.resolve(family, hop.probe_address()))
                .collect();
            // Nothing to probe (only "gateway" on a link without one, or no target
            // of this family): the side follows its link state (IPv6: its IPv4's
            // verdict) rather than count as dead.
            if targets.is_empty() {
                continue;
            }
            let standing_by = !planned.takes_new_flows(Family::V4, plan.active_tier());
            let interval = match uplink.budget.as_ref().and_then(|b| b.standby_interval_ms) {
                Some(ms) if standing_by => ms,
                _ => config.health.interval_ms,
            };
            let name = health_name(&planned.name, family);
            let spec = ProbeSpec {
                uplink: name.clone(),
                interface: planned.interface.clone(),
                address,
                watch: Watch {
                    targets,
                    quality: uplink.quality,
                },
                interval: Duration::from_millis(interval),
            };
            wanted.insert(name, spec);
        }
    }
    wanted
}

/// One probe's outcome: answered with its round-trip time, lost (no reply within
/// the timeout, or the send itself failed, e.g. the link is down), or answered
/// late: a second result for a probe reported lost, up to [`LATE_FACTOR`] ×
/// the timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub uplink: String,
    pub target: Target,
    pub outcome: Outcome,
    pub cadence: Cadence,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub timeout: Duration,
    /// Probes per target when the line falls silent under load (`[health] down`:
    /// as many as it takes to declare it dead).
    pub burst: u32,
}

/// A running prober; dropping it stops its probes.
pub struct Prober {
    pub spec: ProbeSpec,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens the uplink's probe sockets and starts probing every target once per
/// interval, and at once when its interface falls silent under load
/// ([`silence`]). `ident` tells this prober's echoes apart from any other
/// pinger's.
pub fn spawn(
    spec: ProbeSpec,
    timing: Timing,
    ident: u16,
    results: mpsc::Sender<ProbeResult>,
) -> std::io::Result<Prober> {
    let through = Through {
        interface: spec.interface.clone(),
        address: spec.address,
    };
    let probes = probe::for_targets(&spec.watch.targets, &through, ident)?;
    let task = tokio::spawn(probe_loop(probes, spec.clone(), timing, results));
    Ok(Prober { spec, task })
}

/// How long after its timeout a probe still listens for its answer: one that
/// comes then is late (a full queue), not lost.
const LATE_FACTOR: u32 = 4;
/// Time between the probes of a burst, so one lost packet does not stand for all.
const BURST_SPACING: Duration = Duration::from_millis(5);
/// Answers whose round trips set how long a silence and a burst probe wait.
const RTT_MEMORY: usize = 20;

type Probes = Vec<(Target, std::sync::Arc<dyn probe::Probe>)>;
type Outcomes = mpsc::UnboundedSender<(Target, Cadence, Outcome)>;

/// One probe at the interval to every target. Each reports once at its timeout,
/// and again if a late answer comes.
fn at_interval(
    probes: &Probes,
    sequence: &mut u16,
    timeout: Duration,
    outcomes: &Outcomes,
    in_flight: &mut JoinSet<()>,
) {
    for (target, probe) in probes {
        *sequence = sequence.wrapping_add(1);
        let (target, probe, sequence) = (*target, probe.clone(), *sequence);
        let outcomes = outcomes.clone();
        in_flight.spawn(async move {
            let reply = probe.probe(sequence, timeout * LATE_FACTOR);
            tokio::pin!(reply);
            let report = |result| outcomes.send((target, Cadence::Interval, result)).is_ok();
            match tokio::time::timeout(timeout, &mut reply).await {
                Ok(rtt) => report(rtt.map_or(Outcome::Lost, Outcome::Answered)),
                Err(_) => {
                    report(Outcome::Lost)
                        && reply.await.is_some_and(|rtt| report(Outcome::Late(rtt)))
                }
            };
        });
    }
}

/// `count` probes to every target, 5 ms apart, each waiting `wait`. A burst is
/// one question — is the line dead? — so it reports as one: `count` losses
/// when none answered, else one answer. (Reported one by one, the losses of
/// short timeouts would overtake the answers in between and make a run.)
fn burst(
    probes: &Probes,
    sequence: &mut u16,
    count: u32,
    wait: Duration,
    outcomes: &Outcomes,
    in_flight: &mut JoinSet<()>,
) {
    for (target, probe) in probes {
        let first = sequence.wrapping_add(1);
        *sequence = sequence.wrapping_add(count as u16);
        let (target, probe) = (*target, probe.clone());
        let outcomes = outcomes.clone();
        in_flight.spawn(async move {
            let answers = (0..count).map(|i| {
                let probe = probe.clone();
                async move {
                    tokio::time::sleep(BURST_SPACING * i).await;
                    probe.probe(first.wrapping_add(i as u16), wait).await
                }
            });
            let fastest = futures::future::join_all(answers)
                .await
                .into_iter()
                .flatten()
                .min();
            let report = |result| outcomes.send((target, Cadence::Burst, result)).is_ok();
            match fastest {
                Some(rtt) => {
                    report(Outcome::Answered(rtt));
                }
                None => {
                    for _ in 0..count {
                        report(Outcome::Lost);
                    }
                }
            }
        });
    }
}

async fn probe_loop(
    probes: Probes,
    spec: ProbeSpec,
    timing: Timing,
    results: mpsc::Sender<ProbeResult>,
) {
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sampler = tokio::time::interval(silence::SAMPLE_EVERY);
    sampler.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut line = Silence::default();
    let mut counter_files = silence::CounterFiles::new(&spec.interface);
    let mut rtts: VecDeque<Duration> = VecDeque::with_capacity(RTT_MEMORY);
    // Probes outlive a tick when the timeout is longer than the interval.
    let mut in_flight = JoinSet::new();
    let (outcomes, mut outcome) = mpsc::unbounded_channel();
    let mut sequence: u16 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                at_interval(&probes, &mut sequence, timing.timeout, &outcomes, &mut in_flight);
            }
            _ = sampler.tick() => {
                // A few of the line's slowest recent round trips, at least the floor.
                let wait = rtts
                    .iter()
                    .max()
                    .map_or(silence::MIN_SILENCE, |&slowest| (slowest * 3).max(silence::MIN_SILENCE))
                    .min(timing.timeout);
                let counters = counter_files.read();
                if counters.is_some_and(|c| line.observe(c, Instant::now(), wait)) {
                    info!(
                        uplink = %spec.uplink,
                        silent_ms = wait.as_millis() as u64,
                        "the line sends and receives nothing: probing at once"
                    );
                    burst(&probes, &mut sequence, timing.burst, wait, &outcomes, &mut in_flight);
                }
            }
            Some(_) = in_flight.join_next() => {}
            Some((target, cadence, outcome)) = outcome.recv() => {
                if let Some(rtt) = outcome.rtt() {
                    if rtts.len() == RTT_MEMORY {
                        rtts.pop_front();
                    }
                    rtts.push_back(rtt);
                }
                let result = ProbeResult { uplink: spec.uplink.clone(), target, outcome, cadence };
                if results.send(result).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use super::*;
    use crate::plan::{Interface, Observed};

    #[test]
    fn each_ready_uplink_is_probed_at_its_own_targets_with_the_gateway_resolved() {
        let config = Config::parse(
            r#"
lan = ["eth0"]
[[uplink]]
name = "dsl"
interface = "eth1"
gateway = "192.0.2.1"
probe = ["198.51.100.9", "gateway"]
[[uplink]]
name = "cable"
interface = "eth2"
gateway = "203.0.113.1"
[[uplink]]
name = "lte"
interface = "eth3"
gateway = "198.18.3.1"
"#,
            Path::new("test.toml"),
        )
        .unwrap();
        let iface = |index, address, up| Interface::with_ipv4(index, up, address, 24);
        let observed = Observed::from([
            ("eth0".into(), iface(2, [100, 64, 0, 1], true)),
            ("eth1".into(), iface(3, [192, 0, 2, 7], true)),
            ("eth2".into(), iface(4, [203, 0, 113, 7], true)),
            ("eth3".into(), iface(5, [198, 18, 3, 2], false)),
        ]);
        let plan =
            Plan::build(&config, &observed, &Default::default(), &Default::default()).unwrap();
        let wanted = wanted(&config, &plan);
        let targets = |name: &str| wanted[name].watch.targets.clone();
        assert_eq!(
            targets("dsl"),
            [
                Target::Icmp(Ipv4Addr::new(198, 51, 100, 9).into()),
                Target::Icmp(Ipv4Addr::new(192, 0, 2, 1).into())
            ]
        );
        assert_eq!(
            targets("cable"),
            [Target::Icmp(Ipv4Addr::new(203, 0, 113, 1).into())],
            "[health] default: the gateway"
        );
        assert_eq!(wanted["dsl"].address, Ipv4Addr::new(192, 0, 2, 7));
        assert!(
            !wanted.contains_key("dsl/ipv6"),
            "no IPv6 address: its IPv6 is not probed"
        );
        assert!(
            !wanted.contains_key("lte"),
            "a link that is down is not probed"
        );
    }

    #[test]
    fn a_metered_uplink_standing_by_is_probed_at_its_standby_interval() {
        let config = Config::parse(
            r#"
lan = ["eth0"]
[[uplink]]
name = "dsl"
interface = "eth1"
gateway = "192.0.2.1"
[[uplink]]
name = "lte"
interface = "eth2"
gateway = "203.0.113.1"
tier = 2
[uplink.budget]
quota = "10GB"
period = "monthly"
standby_interval_ms = 5000
"#,
            Path::new("test.toml"),
        )
        .unwrap();
        let iface = |index, address| Interface::with_ipv4(index, true, address, 24);
        let observed = Observed::from([
            ("eth0".into(), iface(2, [100, 64, 0, 1])),
            ("eth1".into(), iface(3, [192, 0, 2, 7])),
            ("eth2".into(), iface(4, [203, 0, 113, 7])),
        ]);
        let interval = |dead: &[&str]| {
            let verdicts =
                crate::plan::Verdicts::dead(dead.iter().map(|d| d.to_string()).collect());
            let plan = Plan::build(&config, &observed, &verdicts, &Default::default()).unwrap();
            let wanted = wanted(&config, &plan);
            (wanted["dsl"].interval, wanted["lte"].interval)
        };
        let (ms500, ms5000) = (Duration::from_millis(500), Duration::from_millis(5000));
        assert_eq!(interval(&[]), (ms500, ms5000), "lte stands by on tier 2");
        assert_eq!(
            interval(&["dsl"]),
            (ms500, ms500),
            "lte carries: probed as usual"
        );
    }
}
