//! ICMP echo probes sent *through* one uplink: the socket is bound to the uplink's
//! interface (SO_BINDTODEVICE) and address, so the `from <address>` rule sends it into
//! the uplink's table and a reply can only count if it came back on that interface.
//! A probe can never succeed via another uplink.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence};
use tokio::{sync::mpsc, task::JoinSet, time::MissedTickBehavior};
use tracing::debug;

/// Where and how one uplink is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub uplink: String,
    pub interface: String,
    pub address: Ipv4Addr,
    pub targets: Vec<Ipv4Addr>,
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
    let config = Config::builder()
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
