//! Suite 5, new connections at saturation: short request/response TCP
//! connections, a fresh one per request, 32 in parallel, from the LAN client to the
//! server. The router's receive work is steered to CPU 1 (RPS on `lan0` and the
//! uplinks); the clients and the server run on CPU 0 (what the router sends the
//! ISPs is received on CPU 1, as in suite 4). The figure is
//! connections completed per second of CPU 1's busy time: what a new connection
//! costs the router (its SYN, the classifier's new-flow path, conntrack, NAT, the
//! rule walk for each of its packets). The routers are suite 4's, and take turns
//! round after round in the same way.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    Options, median,
    saturation::{self, Variant, in_netns, pin_to_cpu, router_cpu_busy},
};
use multiroute_tests::{Lab, LabOptions, SERVER};

/// Connections open at once, as a browser or an app opening many does.
pub const PARALLEL: usize = 32;
const PORT: u16 = 9000;
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
/// Server threads accepting (on CPU 0 with the clients).
const ACCEPTORS: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub variant: Variant,
    /// Median over the rounds: connections completed per second of the router's
    /// CPU.
    pub per_cpu_s: f64,
    pub rounds: Vec<f64>,
    /// Median connections per second of wall-clock time (what the clients saw).
    pub per_s: f64,
}

impl Measured {
    /// The median of `self / other`, round by round.
    pub fn paired_ratio(&self, other: &Measured) -> f64 {
        saturation::paired(&self.rounds, &other.rounds)
    }
}

/// The server: answers each connection's request once and closes.
fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        let mut request = [0u8; REQUEST.len()];
        if stream.read_exact(&mut request).is_ok() {
            let _ = stream.write_all(RESPONSE);
        }
    }
}

/// One request on a fresh connection: connect, ask, read to the server's close.
fn one(server: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(REQUEST)?;
    let mut answer = Vec::with_capacity(RESPONSE.len());
    stream.read_to_end(&mut answer)?;
    if answer != RESPONSE {
        bail!("a short answer: {} bytes", answer.len());
    }
    Ok(())
}

/// [`PARALLEL`] clients in the LAN client's namespace, each opening connection
/// after connection for `seconds`; (completed, failed).
fn drive(lab: &Lab, seconds: f64) -> Result<(u64, u64)> {
    let server = SocketAddr::from((SERVER, PORT));
    let (done, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    in_netns(&lab.client(), || {
        std::thread::scope(|scope| {
            for _ in 0..PARALLEL {
                scope.spawn(|| {
                    if pin_to_cpu(0).is_err() {
                        return;
                    }
                    while Instant::now() < deadline {
                        let counter = match one(server) {
                            Ok(()) => &done,
                            Err(_) => &failed,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(())
    })?;
    Ok((done.into_inner(), failed.into_inner()))
}

/// One round of one router: (per router-CPU second, per second).
fn measure_once(lab: &Lab, seconds: f64) -> Result<(f64, f64)> {
    // Each round starts as the first did: the ISPs' NAT forgets the last round's
    // connections (the router's own conntrack goes with the router).
    for n in 0..lab.isps {
        lab.ns(&lab.isp(n), "conntrack", &["-F"])?;
    }
    let daemon = || lab.router_pid().map_or(0.0, process_cpu_s);
    let (busy, daemon_before) = (router_cpu_busy()?, daemon());
    let (done, failed) = drive(lab, seconds)?;
    let busy = router_cpu_busy()? - busy;
    if lab.router_pid().is_some() {
        eprintln!(
            "bench: the daemon used {:.2} s of CPU for {done} connections",
            daemon() - daemon_before
        );
    }
    if failed > 0 {
        eprintln!("bench: {failed} connections failed (refused or timed out after 2 s)");
    }
    // A few refused in a round of thousands is the server's backlog, not the router.
    if failed * 100 > done {
        bail!("{failed} of {} connections failed", done + failed);
    }
    // Over the round's own length: one connection still waiting out its timeout
    // past the deadline would otherwise stretch a 2-second round to 4.
    Ok((done as f64 / busy, done as f64 / seconds))
}

/// CPU seconds process `pid` has used (user and system, all its threads).
fn process_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the
    // 12th and 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// The lab: the router's receive work on CPU 1 both ways, and the clients'
/// ports wide enough for a round's connections.
fn connections_lab() -> Result<Lab> {
    let lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: saturation::FLOOD_HEALTH.into(),
    })?;
    let steer: String = std::iter::once("lan0".to_owned())
        .chain((0..lab.isps).map(|n| format!("wan{n}")))
        .map(|dev| format!("echo 2 > /sys/class/net/{dev}/queues/rx-0/rps_cpus; "))
        .collect();
    lab.ns(&lab.router(), "sh", &["-c", &steer])?;
    lab.ns(
        &lab.client(),
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=1024 65000"],
    )?;
    // The server keeps few closed connections in TIME_WAIT, as a busy one is
    // configured: rounds do not slow down as they pile up.
    lab.ns(
        &lab.inet(),
        "sysctl",
        &["-qw", "net.ipv4.tcp_max_tw_buckets=4096"],
    )?;
    Ok(lab)
}

pub fn run(options: &Options) -> Result<Vec<Measured>> {
    let mut lab = connections_lab()?;
    let seconds = if options.quick { 2.0 } else { 4.0 };
    let stop = Arc::new(AtomicBool::new(false));
    let listener = in_netns(&lab.inet(), || {
        TcpListener::bind((SERVER, PORT)).context("the connection server's port")
    })?;
    let samples = std::thread::scope(|scope| {
        for _ in 0..ACCEPTORS {
            let (listener, stop) = (&listener, &stop);
            scope.spawn(move || {
                if pin_to_cpu(0).is_ok() {
                    serve(listener, stop);
                }
            });
        }
        let samples = super::take_turns(
            &mut lab,
            &Variant::IPV4,
            options.forwarding_runs,
            Variant::label,
            saturation::set_up,
            |lab, _| measure_once(lab, seconds),
            saturation::tear_down,
        );
        // Each acceptor wakes on one last connection and sees the stop.
        stop.store(true, Ordering::Relaxed);
        let server = SocketAddr::from((SERVER, PORT));
        let _ = in_netns(&lab.inet(), || {
            for _ in 0..ACCEPTORS {
                let _ = TcpStream::connect_timeout(&server, Duration::from_secs(1));
            }
            Ok(())
        });
        samples
    })?;
    Ok(Variant::IPV4
        .into_iter()
        .zip(samples)
        .map(|(variant, rounds)| Measured {
            variant,
            per_cpu_s: median(rounds.iter().map(|r| r.0).collect()),
            per_s: median(rounds.iter().map(|r| r.1).collect()),
            rounds: rounds.iter().map(|r| r.0).collect(),
        })
        .collect())
}
