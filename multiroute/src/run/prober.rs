//! ICMP echo probes sent *through* one uplink: the socket is bound to the uplink's
//! interface (SO_BINDTODEVICE) and address, so the `from <address>` rule sends it into
//! the uplink's table and a reply can only count if it came back on that interface.
//! A probe can never succeed via another uplink.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use surge_ping::{Client, ICMP, PingIdentifier, PingSequence};
use tokio::{sync::mpsc, task::JoinSet, time::MissedTickBehavior};
use tracing::debug;

use crate::{
    config::{Config, ProbeTarget},
    plan::{Plan, Readiness},
};

/// Where and how one uplink is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub uplink: String,
    pub interface: String,
    pub address: Ipv4Addr,
    pub targets: Vec<Ipv4Addr>,
}

/// What each ready uplink should be probed at: its own `probe` list or
/// `[health].targets`, with `"gateway"` resolved to its current gateway. Uplinks
/// that are not ready are not probed.
pub fn wanted(config: &Config, plan: &Plan) -> BTreeMap<String, ProbeSpec> {
    config
        .uplinks
        .iter()
        .zip(&plan.uplinks)
        .filter_map(|(uplink, planned)| {
            let Readiness::Ready { address, gateway } = planned.readiness else {
                return None;
            };
            let targets = if uplink.probe.is_empty() {
                &config.health.targets
            } else {
                &uplink.probe
            };
            let targets = targets
                .iter()
                .map(|t| match t {
                    ProbeTarget::Gateway => gateway,
                    ProbeTarget::Address(a) => *a,
                })
                .collect();
            let spec = ProbeSpec {
                uplink: planned.name.clone(),
                interface: planned.interface.clone(),
                address: address.addr,
                targets,
            };
            Some((planned.name.clone(), spec))
        })
        .collect()
}

/// One probe's outcome: the round-trip time, or `None` when it was lost (no reply
/// within the timeout, or the send itself failed, e.g. the link is down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub uplink: String,
    pub target: Ipv4Addr,
    pub rtt: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
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

const PAYLOAD: &[u8] = b"multiroute health probe";

/// Opens the uplink's raw ICMP socket and starts probing every target once per
/// interval. `ident` tells this prober's echoes apart from any other pinger's.
pub fn spawn(
    spec: ProbeSpec,
    timing: Timing,
    ident: u16,
    results: mpsc::Sender<ProbeResult>,
) -> std::io::Result<Prober> {
    // Raw, not an unprivileged ping socket: those need `ping_group_range`, which is
    // closed in a fresh network namespace, and they rewrite the echo identifier.
    let config = surge_ping::Config::builder()
        .kind(ICMP::V4)
        .sock_type_hint(socket2::Type::RAW)
        .interface(&spec.interface)
        .bind(SocketAddr::new(IpAddr::V4(spec.address), 0))
        .build();
    let client = Client::new(&config)?;
    let task = tokio::spawn(probe_loop(
        client,
        spec.clone(),
        timing,
        PingIdentifier(ident),
        results,
    ));
    Ok(Prober { spec, task })
}

async fn probe_loop(
    client: Client,
    spec: ProbeSpec,
    timing: Timing,
    ident: PingIdentifier,
    results: mpsc::Sender<ProbeResult>,
) {
    let mut ticker = tokio::time::interval(timing.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Probes outlive a tick when the timeout is longer than the interval.
    let mut in_flight = JoinSet::new();
    let mut seq: u16 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                for &target in &spec.targets {
                    seq = seq.wrapping_add(1);
                    let mut pinger = client.pinger(IpAddr::V4(target), ident).await;
                    pinger.timeout(timing.timeout);
                    let sequence = PingSequence(seq);
                    in_flight.spawn(async move {
                        let rtt = match pinger.ping(sequence, PAYLOAD).await {
                            Ok((_, rtt)) => Some(rtt),
                            Err(err) => {
                                debug!(%target, "probe lost: {err}");
                                None
                            }
                        };
                        (target, rtt)
                    });
                }
            }
            Some(Ok((target, rtt))) = in_flight.join_next() => {
                let result = ProbeResult { uplink: spec.uplink.clone(), target, rtt };
                if results.send(result).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        net::Ipv4Net,
        plan::{Interface, Observed},
    };

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
        let iface = |index, address: [u8; 4], up| Interface {
            index,
            up,
            addresses: vec![Ipv4Net::new(address.into(), 24)],
            gateway: None,
        };
        let observed = Observed::from([
            ("eth0".into(), iface(2, [100, 64, 0, 1], true)),
            ("eth1".into(), iface(3, [192, 0, 2, 7], true)),
            ("eth2".into(), iface(4, [203, 0, 113, 7], true)),
            ("eth3".into(), iface(5, [198, 18, 3, 2], false)),
        ]);
        let plan =
            Plan::build(&config, &observed, &Default::default(), &Default::default()).unwrap();
        let wanted = wanted(&config, &plan);
        let targets = |name: &str| wanted[name].targets.clone();
        assert_eq!(
            targets("dsl"),
            [Ipv4Addr::new(198, 51, 100, 9), Ipv4Addr::new(192, 0, 2, 1)]
        );
        assert_eq!(
            targets("cable"),
            [Ipv4Addr::new(203, 0, 113, 1)],
            "[health] default: the gateway"
        );
        assert_eq!(wanted["dsl"].address, Ipv4Addr::new(192, 0, 2, 7));
        assert!(
            !wanted.contains_key("lte"),
            "a link that is down is not probed"
        );
    }
}
