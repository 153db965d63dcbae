//! Suite 4, forwarding at saturation: the router's own CPU, not iperf3's. A
//! generator that costs little per packet (the object's `multiroute_bench_gen`,
//! run with `BPF_PROG_RUN` and XDP live frames: each frame enters the router's
//! stack as if `lan0` had received it) floods 64-byte UDP of many flows from
//! CPU 0; RPS hands them to CPU 1, where the router's receive path runs; beyond
//! the ISPs `multiroute_bench_drop` counts and drops what the router forwarded.
//! The figure is packets forwarded per second of CPU 1's busy time: what one
//! router CPU forwards, whatever the generator managed to offer.
//! (Debian's xdp-tools 1.3 cannot load on this kernel: their objects name a
//! tracepoint it renamed.) Every flow is answered first, so conntrack holds it
//! (and the fast path has bound it) before the flood. Variants take turns, round
//! after round; the comparisons are medians of paired ratios. The IPv6 rows
//! flood the same way over IPv6, against plain forwarding + NAT66.
use std::time::Duration;

use std::os::fd::AsRawFd;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    maps::{Array, PerCpuArray},
    programs::{TcAttachType, TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;
use multiroute_ebpf::bench::{self, FIRST_PORT, FLOWS};
use serde::{Deserialize, Serialize};

use super::{Contender, Labs, Options, forwarding, median, mwan3};
use multiroute_tests::{
    CLIENT, Lab, LabOptions, SERVER,
    datapath::LoadedDatapath,
    ipv6::{CLIENT6, SERVER6},
    stdout,
};

/// The flows: this client port to [`FLOWS`] server ports from [`FIRST_PORT`].
const CLIENT_PORT: u16 = 10000;
/// The service name of [`Variant::DestroyListener`]'s `conntrack -E`.
const LISTENER: &str = "conntrack-destroy-listener";
/// Health for a router whose CPU the bench saturates on purpose: its probes are
/// lost in the flood, and an uplink going down mid-round would measure failover,
/// not forwarding. (A real router's probes suffer the same; see the notes.)
pub(super) const FLOOD_HEALTH: &str =
    "\n[health]\ndown = 1000\nmax_loss_percent = 100\nmax_rtt_ms = 3600000\n";
/// Frames the generator hands the kernel at a time.
const BATCH: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Variant {
    Baseline,
    FastPath,
    SlowPath,
    RulesOnly,
    Ecmp,
    Mwan3,
    DestroyListener,
    /// Plain forwarding where an `ip rule` once was (see [`super::Labs`]).
    PlainAfterRules,
    Baseline6,
    FastPath6,
}

impl Variant {
    /// The IPv4 routers (suite 5 measures these).
    pub const IPV4: [Variant; 8] = [
        Variant::Baseline,
        Variant::FastPath,
        Variant::SlowPath,
        Variant::RulesOnly,
        Variant::Ecmp,
        Variant::Mwan3,
        Variant::DestroyListener,
        Variant::PlainAfterRules,
    ];
    /// Suite 4's: the IPv4 routers, then IPv6's.
    pub const ALL: [Variant; 10] = {
        let mut all = [Variant::Baseline6; 10];
        let mut at = 0;
        while at < Self::IPV4.len() {
            all[at] = Self::IPV4[at];
            at += 1;
        }
        all[9] = Variant::FastPath6;
        all
    };

    /// Whether the flood is IPv6.
    pub fn ipv6(self) -> bool {
        matches!(self, Variant::Baseline6 | Variant::FastPath6)
    }
}

impl Contender for Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "plain forwarding + masquerade",
            Variant::FastPath => "multiroute (fast path)",
            Variant::SlowPath => "multiroute (slow path only)",
            Variant::RulesOnly => "(multiroute's rules and tables only)",
            Variant::Ecmp => "kernel ECMP, L4 hash",
            Variant::Mwan3 => "mwan3 2.12 model (iptables-nft, ipset)",
            Variant::DestroyListener => "(plain forwarding + a conntrack destroy listener)",
            Variant::PlainAfterRules => "(plain forwarding where an ip rule once was)",
            Variant::Baseline6 => "IPv6: plain forwarding + NAT66",
            Variant::FastPath6 => "IPv6: multiroute (fast path)",
        }
    }

    fn adds_rules(self) -> bool {
        !matches!(
            self,
            Variant::Baseline | Variant::Ecmp | Variant::DestroyListener | Variant::Baseline6
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub variant: Variant,
    /// Median over the rounds: thousands of 64-byte packets forwarded per second
    /// of the router's CPU (what one CPU forwards when saturated).
    pub kpps: f64,
    pub rounds: Vec<f64>,
}

impl Measured {
    /// The median of `self / other`, round by round.
    pub fn paired_ratio(&self, other: &Measured) -> f64 {
        paired(&self.rounds, &other.rounds)
    }
}

/// The median of `ours / theirs`, round by round.
pub(super) fn paired(ours: &[f64], theirs: &[f64]) -> f64 {
    median(ours.iter().zip(theirs).map(|(a, b)| a / b).collect())
}

/// Echoes every datagram on each flow's server port.
const ECHO: &str = "
import select, socket, sys
first, n = int(sys.argv[1]), int(sys.argv[2])
family = socket.AF_INET6 if ':' in sys.argv[3] else socket.AF_INET
socks = []
for port in range(first, first + n):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((sys.argv[3], port))
    socks.append(s)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
";

/// Sends `argv[6]` datagrams to each flow's port from the client port and waits
/// for every answer: conntrack then holds every flow as answered, and the
/// classifier has offered each to the fast path (the daemon binds it before the
/// flood, which leaves it no CPU to do so).
const ANSWERED: &str = "
import socket, sys
first, n, each = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[6])
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[3] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[4], int(sys.argv[5])))
s.settimeout(2)
answered = 0
for port in range(first, first + n):
    got = 0
    for _ in range(each):
        s.sendto(b'x' * 18, (sys.argv[3], port))
        try:
            s.recvfrom(2048)
            got += 1
        except socket.timeout:
            pass
    answered += got == each
print(answered)
";

/// What the slow-path variant adds to the lab's config.
const SLOW_PATH_ONLY: &str = "\n[datapath]\nfast_path = false\n";

pub(super) fn set_up(lab: &mut Lab, variant: Variant) -> Result<()> {
    match variant {
        Variant::Baseline => {}
        Variant::Baseline6 => forwarding::nat66(lab, true)?,
        Variant::FastPath | Variant::FastPath6 => lab.start_router()?,
        Variant::SlowPath => {
            let config = std::fs::read_to_string(&lab.config)?;
            std::fs::write(&lab.config, config + SLOW_PATH_ONLY)?;
            lab.start_router()?;
        }
        Variant::RulesOnly => forwarding::rules_only(lab)?,
        Variant::Ecmp => forwarding::ecmp(lab, true)?,
        Variant::Mwan3 => mwan3::set_up(lab)?,
        // What the fast path's one subscription costs the kernel by itself.
        Variant::DestroyListener => {
            let router = lab.router();
            lab.start_service(LISTENER, &router, "conntrack", &["-E", "-e", "DESTROY"])?;
            std::thread::sleep(Duration::from_millis(200));
        }
        // Its lab has had multiroute's rules by now; one more makes it certain.
        Variant::PlainAfterRules => {
            let router = lab.router();
            for family in ["-4", "-6"] {
                lab.ns(
                    &router,
                    "ip",
                    &[family, "rule", "add", "pref", "1", "lookup", "main"],
                )?;
                lab.ns(&router, "ip", &[family, "rule", "del", "pref", "1"])?;
            }
        }
    }
    Ok(())
}

pub(super) fn tear_down(lab: &mut Lab, variant: Variant) -> Result<()> {
    let router = lab.router();
    match variant {
        Variant::Baseline | Variant::PlainAfterRules => {}
        Variant::Baseline6 => forwarding::nat66(lab, false)?,
        Variant::FastPath | Variant::FastPath6 => lab.stop_and_unload()?,
        Variant::SlowPath => {
            lab.stop_and_unload()?;
            let config = std::fs::read_to_string(&lab.config)?;
            let config = config.strip_suffix(SLOW_PATH_ONLY).unwrap_or(&config);
            std::fs::write(&lab.config, config)?;
        }
        Variant::RulesOnly => forwarding::unload(lab)?,
        Variant::Ecmp => forwarding::ecmp(lab, false)?,
        Variant::Mwan3 => mwan3::tear_down(lab)?,
        Variant::DestroyListener => lab.stop_service(LISTENER, libc::SIGTERM)?,
    }
    // The flows' entries go with the router: the next variant answers them anew.
    lab.ns(&router, "conntrack", &["-F"])?;
    Ok(())
}

fn mac(lab: &Lab, ns: &str, dev: &str) -> Result<String> {
    let out = lab.ns(ns, "ip", &["-j", "link", "show", dev])?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    links[0]["address"]
        .as_str()
        .map(str::to_owned)
        .context("interface without a MAC")
}

/// Runs `work` on a thread inside namespace `ns` (setns affects that thread only).
pub(super) fn in_netns<T: Send>(ns: &str, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let path = format!("/run/netns/{ns}");
                let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: setns on this thread with a namespace fd we hold open.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                work()
            })
            .join()
            .map_err(|_| anyhow!("the thread in {ns} panicked"))?
    })
}

/// Pins the calling thread to `cpu`.
pub(super) fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity act on
    // this thread's set only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// The generator and the sinks: the object's benchmark programs, loaded apart
/// from any router (their own bpffs), the sinks attached to every ISP's `cpe`
/// in both labs.
struct Flood {
    loaded: LoadedDatapath,
}

impl Flood {
    fn attach(labs: &Labs) -> Result<Self> {
        let mut loaded = LoadedDatapath::load("saturation")?;
        for lab in labs.all() {
            for n in 0..lab.isps {
                let sink = loaded.datapath.tc_program(bench::DROP_PROGRAM)?;
                in_netns(&lab.isp(n), || {
                    sink.attach(c"cpe", TcAttachType::Ingress)
                        .context("attaching the sink")?;
                    Ok(())
                })?;
            }
        }
        Ok(Self { loaded })
    }

    /// Packets the sinks dropped so far.
    fn sunk(&mut self) -> Result<u64> {
        let map = self
            .loaded
            .datapath
            .own_map(bench::MAP)
            .context("no benchmark map")?;
        let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(counts.get(&bench::DROPPED, 0)?.iter().sum())
    }

    /// Hands `packets` copies of `frame` (destination ports rotated) to the
    /// router's stack as received on `lan0`, from CPU 0.
    fn send(&mut self, lab: &Lab, frame: &[u8], packets: u32) -> Result<()> {
        let router = lab.router();
        let index: u32 = stdout(&lab.ns(&router, "cat", &["/sys/class/net/lan0/ifindex"])?)
            .trim()
            .parse()
            .context("lan0's ifindex")?;
        // An IPv4 frame is shorter than the map's IPv6 headers: the generator
        // copies only its own.
        let mut headers = [0u8; bench::HEADERS6];
        let len = frame.len().min(bench::HEADERS6);
        headers[..len].copy_from_slice(&frame[..len]);
        let map = self
            .loaded
            .datapath
            .own_map(bench::FRAME_MAP)
            .context("no benchmark frame map")?;
        Array::<_, [u8; bench::HEADERS6]>::try_from(map)?.set(0, &headers, 0)?;
        let generator: &mut Xdp = self.loaded.datapath.xdp_program(bench::GEN_PROGRAM)?;
        in_netns(&router, || {
            pin_to_cpu(0)?;
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, …
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&index.to_ne_bytes());
            generator
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat: packets,
                    attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                    ..TestRunOptions::default()
                })
                .context("BPF_PROG_RUN with live frames")?;
            Ok(())
        })
    }
}

/// A 64-byte frame (with the FCS) from the client to the server, UDP checksum 0
/// so the generator may change the port; over IPv6 (which requires a UDP
/// checksum, fixed by the generator for the port) the smallest frame with the
/// same payload, 84 bytes.
fn frame(client_mac: [u8; 6], router_mac: [u8; 6], ipv6: bool) -> Result<Vec<u8>> {
    let builder = PacketBuilder::ethernet2(client_mac, router_mac);
    let builder = if ipv6 {
        builder.ipv6(CLIENT6.octets(), SERVER6.octets(), 64)
    } else {
        builder.ipv4(CLIENT.octets(), SERVER.octets(), 64)
    };
    let builder = builder.udp(CLIENT_PORT, FIRST_PORT);
    let mut frame = Vec::with_capacity(builder.size(18));
    let mut payload = [0; 18];
    payload[0] = bench::MARK;
    builder.write(&mut frame, &payload)?;
    if !ipv6 {
        frame[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    }
    Ok(frame)
}

fn mac_bytes(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow!("{text} is not a MAC"))
}

/// One flood through the router as it is set up: packets forwarded per second.
fn measure_once(lab: &Lab, flood: &mut Flood, packets: u32, ipv6: bool) -> Result<f64> {
    let client = lab.client();
    let (server, client_ip) = if ipv6 {
        (SERVER6.to_string(), CLIENT6.to_string())
    } else {
        (SERVER.to_string(), CLIENT.to_string())
    };
    let (first, flows) = (FIRST_PORT.to_string(), FLOWS.to_string());
    let answered = lab.ns(
        &client,
        "python3",
        &[
            "-c",
            ANSWERED,
            &first,
            &flows,
            &server,
            &client_ip,
            &CLIENT_PORT.to_string(),
            &multiroute_ebpf::OFFER_AFTER.to_string(),
        ],
    )?;
    let answered: u16 = stdout(&answered).trim().parse().unwrap_or(0);
    if answered != FLOWS {
        bail!("only {answered} of {FLOWS} flows were answered");
    }
    // The fast path binds the offered sessions meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    let frame = frame(
        mac_bytes(&mac(lab, &client, "eth0")?)?,
        mac_bytes(&mac(lab, &lab.router(), "lan0")?)?,
        ipv6,
    )?;
    let before = (flood.sunk()?, router_cpu_busy()?);
    flood.send(lab, &frame, packets)?;
    // What is still queued is forwarded within a moment.
    std::thread::sleep(Duration::from_millis(100));
    let forwarded = flood.sunk()? - before.0;
    let busy = router_cpu_busy()? - before.1;
    Ok(forwarded as f64 / busy / 1e3)
}

/// How much of what the classifier saw took the fast path (the flows were bound
/// before the flood, so anything else means they were not).
fn say_fast_share(lab: &Lab, ipv6: bool) -> Result<()> {
    let counters = &lab.status()?[if ipv6 { "counters_ipv6" } else { "counters" }];
    let count = |name: &str| counters[name].as_u64().unwrap_or(0);
    let seen = count("flow_hit") + count("flow_new");
    eprintln!(
        "bench: the fast path took {:.1} % of the {seen} packets the classifier saw ({} passed with no uplink)",
        100.0 * count("fast_out") as f64 / seen.max(1) as f64,
        count("pass_no_uplink")
    );
    Ok(())
}

/// Seconds the router's CPU (CPU 1) has spent busy since boot: everything but
/// idle and I/O wait, from `/proc/stat` (in USER_HZ ticks).
pub(super) fn router_cpu_busy() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu1 "))
        .context("no CPU 1 in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks.iter().sum::<u64>() - idle) as f64 / hz)
}

/// Two ISPs of equal weight, and health that tolerates the flood.
pub(super) fn flood_options() -> LabOptions {
    LabOptions {
        weights: vec![1, 1],
        extra_config: FLOOD_HEALTH.into(),
    }
}

/// The lab for the flood, dual-stack: the router's receive work on CPU 1, and
/// the server answering each flow of both families.
fn flood_lab(lab: &mut Lab) -> Result<()> {
    lab.add_ipv6()?;
    let blocks = Lab::dual_stack_block(0, 1) + &Lab::dual_stack_block(1, 1);
    lab.write_config_with(&blocks, FLOOD_HEALTH)?;
    let router = lab.router();
    lab.ns(
        &router,
        "sh",
        &["-c", "echo 2 > /sys/class/net/lan0/queues/rx-0/rps_cpus"],
    )?;
    let inet = lab.inet();
    for server in [SERVER.to_string(), SERVER6.to_string()] {
        lab.start_in(
            &inet,
            "python3",
            &[
                "-c",
                ECHO,
                &FIRST_PORT.to_string(),
                &FLOWS.to_string(),
                &server,
            ],
        )?;
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

pub fn run(options: &Options) -> Result<Vec<Measured>> {
    let mut labs = Labs::new(&flood_options(), flood_lab, false)?;
    let mut flood = Flood::attach(&labs)?;
    let packets: u32 = if options.quick { 3_000_000 } else { 10_000_000 };
    let samples = super::take_turns(
        &mut labs,
        &Variant::ALL,
        options.forwarding_runs,
        set_up,
        |lab, variant| {
            let forwarded = measure_once(lab, &mut flood, packets, variant.ipv6())?;
            if matches!(variant, Variant::FastPath | Variant::FastPath6) {
                say_fast_share(lab, variant.ipv6())?;
            }
            Ok(forwarded)
        },
        tear_down,
    )?;
    Ok(Variant::ALL
        .into_iter()
        .zip(samples)
        .map(|(variant, rounds)| Measured {
            variant,
            kpps: median(rounds.clone()),
            rounds,
        })
        .collect())
}
