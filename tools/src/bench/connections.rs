//! Suite 5, new connections at saturation: short request/response TCP
//! connections, a fresh one per request, 32 in parallel, from the LAN client to the
//! server. The router's receive work is steered to CPU 1 (RPS on `lan0` and the
//! uplinks); the clients and the server run on CPU 0 (what the router sends the
//! ISPs is received on CPU 1, as in suite 4). The figure is
//! connections completed per second of CPU 1's busy time: what a new connection
//! costs the router (its SYN, the classifier's new-flow path, conntrack, NAT, the
//! rule walk for each of its packets). The routers are suite 4's, and take turns
//! round after round in the same way; within its turn each one alternates with
//! plain forwarding in a lab of its own, slice after slice, and its round is
//! the ratio of the two: the machine's speed drifts by more than the
//! differences sought even between turns seconds apart.
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
    Labs, Options, median,
    saturation::{self, Variant, in_netns, pin_to_cpu, router_cpu_busy},
};
use multiroute_tests::{Lab, SERVER};

/// Connections open at once, as a browser or an app opening many does.
pub const PARALLEL: usize = 32;
const PORT: u16 = 9000;
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
/// Server threads accepting (on CPU 0 with the clients).
const ACCEPTORS: usize = 4;

/// Slices of one second each router has per turn.
pub fn pairs(quick: bool) -> usize {
    if quick { 2 } else { 4 }
}
const SLICE_S: f64 = 1.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub variant: Variant,
    /// Median over the rounds: connections completed per second of the router's
    /// CPU.
    pub per_cpu_s: f64,
    pub rounds: Vec<f64>,
    /// Plain forwarding's figure in the slices alternating with this router's,
    /// round by round (the plain router's own: its rounds).
    #[serde(default)]
    pub alongside: Vec<f64>,
    /// Median connections per second of wall-clock time (what the clients saw).
    pub per_s: f64,
}

impl Measured {
    /// The median over the rounds of `self / other`, each router's round taken
    /// against the plain forwarding alongside it.
    pub fn paired_ratio(&self, other: &Measured) -> f64 {
        saturation::paired(&self.relative(), &other.relative())
    }

    /// Each round against the plain forwarding alongside it.
    pub fn relative(&self) -> Vec<f64> {
        if self.alongside.len() != self.rounds.len() {
            // Results from before the slices: the rounds as they are.
            return self.rounds.clone();
        }
        self.rounds
            .iter()
            .zip(&self.alongside)
            .map(|(ours, plain)| ours / plain)
            .collect()
    }
}

/// What one router's slices of a turn added up to.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    done: u64,
    failed: u64,
    busy_s: f64,
    seconds: f64,
}

impl Tally {
    fn per_cpu_s(self) -> f64 {
        self.done as f64 / self.busy_s
    }
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(self, more: Tally) -> Tally {
        Tally {
            done: self.done + more.done,
            failed: self.failed + more.failed,
            busy_s: self.busy_s + more.busy_s,
            seconds: self.seconds + more.seconds,
        }
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

/// One slice of `seconds` through `lab`'s router as it is set up.
fn slice(lab: &Lab, seconds: f64) -> Result<Tally> {
    // Each slice starts as the first did: the ISPs' NAT and the router's
    // conntrack forget the last one's connections.
    for ns in (0..lab.isps).map(|n| lab.isp(n)).chain([lab.router()]) {
        lab.ns(&ns, "conntrack", &["-F"])?;
    }
    let busy = router_cpu_busy()?;
    let (done, failed) = drive(lab, seconds)?;
    Ok(Tally {
        done,
        failed,
        busy_s: router_cpu_busy()? - busy,
        seconds,
    })
}

/// One router's turn: its slices alternating with plain forwarding's, in the
/// order ABBA… so a steady drift falls on both alike. (ours, plain's).
fn turn(lab: &Lab, plain: &Lab, pairs: usize) -> Result<(Tally, Tally)> {
    // A warm-up, discarded: the first second after any router was set up read
    // about 0.7× the rest, with or without a daemon.
    slice(lab, SLICE_S)?;
    let daemon = || lab.router_pid().map_or(0.0, process_cpu_s);
    let daemon_before = daemon();
    let (mut ours, mut theirs) = (Tally::default(), Tally::default());
    for k in 0..2 * pairs {
        let (target, tally) = match k % 4 {
            0 | 3 => (lab, &mut ours),
            _ => (plain, &mut theirs),
        };
        *tally = *tally + slice(target, SLICE_S)?;
    }
    if lab.router_pid().is_some() {
        eprintln!(
            "bench: the daemon used {:.2} s of CPU for {} connections",
            daemon() - daemon_before,
            ours.done
        );
    }
    for tally in [ours, theirs] {
        if tally.failed > 0 {
            eprintln!(
                "bench: {} connections failed (refused or timed out after 2 s)",
                tally.failed
            );
        }
        // A few refused in thousands is the server's backlog, not the router.
        if tally.failed * 100 > tally.done {
            bail!(
                "{} of {} connections failed",
                tally.failed,
                tally.done + tally.failed
            );
        }
    }
    Ok((ours, theirs))
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
fn connections_lab(lab: &mut Lab) -> Result<()> {
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
    Ok(())
}

pub fn run(options: &Options) -> Result<Vec<Measured>> {
    let mut labs = Labs::new(&saturation::flood_options(), connections_lab, true)?;
    let pairs = pairs(options.quick);
    let stop = Arc::new(AtomicBool::new(false));
    let listeners = labs
        .all()
        .into_iter()
        .map(|lab| {
            in_netns(&lab.inet(), || {
                TcpListener::bind((SERVER, PORT)).context("the connection server's port")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let plain = labs.plain.take().context("no plain lab")?;
    let others: Vec<Variant> = Variant::IPV4
        .into_iter()
        .filter(|&variant| variant != Variant::Baseline)
        .collect();
    let turns = std::thread::scope(|scope| {
        for listener in &listeners {
            for _ in 0..ACCEPTORS {
                let stop = &stop;
                scope.spawn(move || {
                    if pin_to_cpu(0).is_ok() {
                        serve(listener, stop);
                    }
                });
            }
        }
        let turns = super::take_turns(
            &mut labs,
            &others,
            options.forwarding_runs,
            saturation::set_up,
            |lab, _| turn(lab, &plain, pairs),
            saturation::tear_down,
        );
        // Each acceptor wakes on one last connection and sees the stop.
        stop.store(true, Ordering::Relaxed);
        let server = SocketAddr::from((SERVER, PORT));
        for lab in labs.all().into_iter().chain([&plain]) {
            let _ = in_netns(&lab.inet(), || {
                for _ in 0..ACCEPTORS {
                    let _ = TcpStream::connect_timeout(&server, Duration::from_secs(1));
                }
                Ok(())
            });
        }
        turns
    })?;
    let measured = |variant, rounds: Vec<Tally>, alongside: Vec<f64>| {
        let per_cpu_s: Vec<f64> = rounds.iter().map(|t| t.per_cpu_s()).collect();
        Measured {
            variant,
            per_cpu_s: median(per_cpu_s.clone()),
            per_s: median(rounds.iter().map(|t| t.done as f64 / t.seconds).collect()),
            rounds: per_cpu_s,
            alongside,
        }
    };
    // Plain forwarding's rounds: its slices beside every other router's.
    let plain_rounds: Vec<Tally> = (0..options.forwarding_runs as usize)
        .map(|round| {
            turns
                .iter()
                .fold(Tally::default(), |sum, turns| sum + turns[round].1)
        })
        .collect();
    let plain_per_cpu: Vec<f64> = plain_rounds.iter().map(|t| t.per_cpu_s()).collect();
    Ok(
        std::iter::once(measured(Variant::Baseline, plain_rounds, plain_per_cpu))
            .chain(others.iter().zip(turns).map(|(&variant, turns)| {
                let alongside = turns.iter().map(|t| t.1.per_cpu_s()).collect();
                measured(variant, turns.into_iter().map(|t| t.0).collect(), alongside)
            }))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(variant: Variant, rounds: Vec<f64>, alongside: Vec<f64>) -> Measured {
        Measured {
            variant,
            per_cpu_s: median(rounds.clone()),
            rounds,
            alongside,
            per_s: 0.0,
        }
    }

    /// The machine is slower in some turns than in others: each router is taken
    /// against the plain forwarding measured in its own turn, so a router 10 %
    /// behind plain reads 0.9× however fast its turns happened to be.
    #[test]
    fn each_turn_is_taken_against_plain_forwarding_alongside_it() {
        let plain_beside_fast = [20_000.0, 30_000.0, 15_000.0];
        let plain_beside_slow = [25_000.0, 16_000.0, 28_000.0];
        let fast = measured(
            Variant::FastPath,
            plain_beside_fast.iter().map(|p| p * 0.9).collect(),
            plain_beside_fast.to_vec(),
        );
        let slow = measured(
            Variant::SlowPath,
            plain_beside_slow.iter().map(|p| p * 0.8).collect(),
            plain_beside_slow.to_vec(),
        );
        let plain_rounds = vec![22_000.0, 23_000.0, 21_000.0];
        let plain = measured(Variant::Baseline, plain_rounds.clone(), plain_rounds);
        assert!((fast.paired_ratio(&plain) - 0.9).abs() < 1e-9);
        assert!((fast.paired_ratio(&slow) - 0.9 / 0.8).abs() < 1e-9);
        // Taken round by round without the plain figures, the drift would show.
        let raw = saturation::paired(&fast.rounds, &slow.rounds);
        assert!((raw - 0.9 / 0.8).abs() > 0.1, "{raw}");
    }
}
