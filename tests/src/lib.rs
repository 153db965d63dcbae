//! The lab: real network namespaces, veth pairs, nftables masquerade and real
//! servers, built the same way for the end-to-end tests, the demo and the
//! benchmarks.
//!
//! ```text
//!  client ──lan0── router ──wanN── ispN ──inetN── inet (203.0.113.10, HTTP :8080)
//!  100.64.0.2      100.64.0.1  198.18.N.2  198.18.N.1   198.19.N.1  198.19.N.2
//! ```
//!
//! The router masquerades on every `wan*`, so the server sees the uplink address a
//! connection took. Everything lives in namespaces named `<prefix>-…`, removed on
//! drop (also when a test panics). Only documentation/benchmark ranges are used.
pub mod bench;
pub mod datapath;
pub mod pair;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const SERVER_PORT: u16 = 8080;
/// A second address of the same server, for tests that pin one destination.
pub const SERVER2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
/// The server's UDP echo port.
pub const ECHO_PORT: u16 = SERVER_PORT + 1;
/// The server also echoes UDP here, as a SIP server listens.
pub const SIP_PORT: u16 = 5060;
/// The router's own firewall in the lab: masquerade on every uplink (what a
/// firewall reload puts back after flushing the ruleset).
pub const LAB_NAT: &str = "add table ip lab; add chain ip lab post { type nat hook postrouting priority 100; }; add rule ip lab post oifname \"wan*\" masquerade";

/// An address in no ISP's routes: probes to it are never answered.
pub const UNREACHABLE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);

/// One connection of [`Lab::start_attempts`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Attempt {
    /// Wall-clock start, seconds since the Unix epoch.
    pub start: f64,
    pub ok: bool,
    /// The uplink address the server saw.
    pub address: Option<String>,
}

/// One long-lived session of [`Lab::start_sessions`], as the client saw it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Session {
    /// Every source address the server saw for this session.
    pub addresses: Vec<String>,
    pub sent: u64,
    pub answered: u64,
    /// Why a TCP session broke (a reset, a close), or `None`.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct SessionsReport {
    pub tcp: Vec<Session>,
    pub udp: Vec<Session>,
}

impl SessionsReport {
    pub fn all(&self) -> impl Iterator<Item = &Session> {
        self.tcp.iter().chain(&self.udp)
    }
    /// Sessions the server saw from more than one address.
    pub fn moved(&self) -> usize {
        self.all().filter(|s| s.addresses.len() > 1).count()
    }
    /// TCP sessions that broke, or any session that never got an answer.
    pub fn broken(&self) -> usize {
        self.all()
            .filter(|s| s.error.is_some() || s.answered == 0)
            .count()
    }
    /// UDP messages without an answer.
    pub fn udp_lost(&self) -> u64 {
        self.udp
            .iter()
            .map(|s| s.sent - s.answered.min(s.sent))
            .sum()
    }
}

/// A running [`Lab::start_sessions`] client, its sessions all open.
pub struct RunningSessions {
    child: Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl RunningSessions {
    /// Waits for the client to end and reads what it saw.
    pub fn finish(mut self) -> Result<SessionsReport> {
        use std::io::BufRead as _;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("reading the sessions report")?;
        let status = self.child.wait().context("waiting for the client")?;
        ensure!(status.success(), "the sessions client failed ({status})");
        serde_json::from_str(&line).with_context(|| format!("parsing the sessions report {line:?}"))
    }
}

/// What a stream of [`Attempt`]s saw of an outage that began at `t0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    /// From `t0` until the first attempt after which every attempt succeeded.
    pub seconds: f64,
    pub failed: usize,
}

/// Finds when new connections succeed 100 % of the time again: the start of the
/// first attempt after the last failure. At least half a second of successes
/// (25 attempts at 20 ms) must follow, or the outage did not end in the window.
pub fn measure_outage(attempts: &[Attempt], t0: f64) -> Result<Outage> {
    let failed = attempts.iter().filter(|a| !a.ok).count();
    let recovered_at = match attempts.iter().rposition(|a| !a.ok) {
        Some(i) => {
            let tail = &attempts[i + 1..];
            ensure!(
                tail.len() >= 25,
                "only {} successful attempts follow the last failure",
                tail.len()
            );
            tail[0].start
        }
        None => t0,
    };
    Ok(Outage {
        seconds: (recovered_at - t0).max(0.0),
        failed,
    })
}

/// Seconds since the Unix epoch, comparable with [`Attempt::start`].
pub fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Labs share the CPU and the kernel's program list: one at a time per process.
static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Skips (locally) or fails (in CI) when the lab cannot run here.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root, and CI=true forbids skipping"
    );
    eprintln!("SKIPPED {test}: needs root (run `cargo xtask test` as root)");
    false
}

/// The `multiroute` binary built next to the test binary.
pub fn multiroute_bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_multiroute") {
        return PathBuf::from(path);
    }
    let mut dir = std::env::current_exe().unwrap_or_default();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("multiroute")
}

/// Runs a command to completion; fails with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[derive(Debug, Clone)]
pub struct LabOptions {
    pub weights: Vec<u32>,
    /// Extra TOML appended to the generated config.
    pub extra_config: String,
}

/// What a run of [`Lab::connections`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connections {
    /// Connections answered through each uplink, by uplink index.
    pub hits: Vec<usize>,
    pub failures: usize,
    /// Distinct client ports used: a reused port is the same 5-tuple, the same flow.
    pub ports: usize,
}

pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub isps: usize,
    children: Vec<Child>,
    router: Option<Child>,
    /// A second router sharing the LAN and the ISPs' links (see [`pair`]).
    pair: bool,
    router_b: Option<Child>,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    pub fn client(&self) -> String {
        format!("{}-client", self.prefix)
    }
    pub fn router(&self) -> String {
        format!("{}-router", self.prefix)
    }
    pub fn isp(&self, n: usize) -> String {
        format!("{}-isp{n}", self.prefix)
    }
    pub fn inet(&self) -> String {
        format!("{}-inet", self.prefix)
    }
    /// The address uplink `n` has on the router (what the server sees).
    pub fn uplink_address(n: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, n as u8, 2)
    }
    pub fn pin_path(&self) -> PathBuf {
        self.dir.join("bpf/multiroute")
    }

    /// Builds the topology with `options.weights.len()` ISPs and writes the config;
    /// the router is not started.
    pub fn new(options: &LabOptions) -> Result<Lab> {
        Self::create(options, false)
    }

    fn create(options: &LabOptions, pair: bool) -> Result<Lab> {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let prefix = format!(
            "mrt{}x{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = PathBuf::from("/run").join(&prefix);
        let mut lab = Lab {
            config: dir.join("multiroute.toml"),
            prefix,
            dir,
            isps: options.weights.len(),
            children: Vec::new(),
            router: None,
            pair,
            router_b: None,
            _serial: serial,
        };
        lab.build(options)?;
        Ok(lab)
    }

    fn build(&mut self, options: &LabOptions) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("bpf")).context("creating the lab directory")?;
        // A bpffs in the host's mount namespace: `ip netns exec` remounts /sys, and a
        // mount made inside one `ip netns exec` dies with that process.
        run(
            "mount",
            &["-t", "bpf", "bpf", &self.dir.join("bpf").to_string_lossy()],
        )?;
        let (client, inet) = (self.client(), self.inet());
        for ns in self.namespaces() {
            run("ip", &["netns", "add", &ns])?;
        }
        if self.pair {
            self.wire_pair()?;
        } else {
            self.wire_router()?;
        }
        self.addr(&client, "eth0", "100.64.0.2/24")?;
        self.ns(
            &client,
            "ip",
            &["route", "add", "default", "via", "100.64.0.1"],
        )?;
        for server in [SERVER, SERVER2] {
            self.ns(
                &inet,
                "ip",
                &["addr", "add", &format!("{server}/32"), "dev", "lo"],
            )?;
        }
        for n in 0..self.isps {
            let isp = self.isp(n);
            let inet_if = format!("inet{n}");
            self.addr(&isp, "cpe", &format!("198.18.{n}.1/24"))?;
            self.veth(&isp, "inet", &inet, &inet_if)?;
            self.addr(&isp, "inet", &format!("198.19.{n}.1/24"))?;
            self.addr(&inet, &inet_if, &format!("198.19.{n}.2/24"))?;
            self.ns(
                &isp,
                "ip",
                &[
                    "route",
                    "add",
                    "203.0.113.0/24",
                    "via",
                    &format!("198.19.{n}.2"),
                ],
            )?;
            self.ns(
                &inet,
                "ip",
                &[
                    "route",
                    "add",
                    &format!("198.18.{n}.0/24"),
                    "via",
                    &format!("198.19.{n}.1"),
                ],
            )?;
            self.ns(&isp, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        }
        if self.pair {
            self.pair_nat()?;
        } else {
            self.ns(&self.router(), "nft", &[LAB_NAT])?;
        }
        for router in self.routers() {
            self.ns(&router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        }
        self.write_config(options)?;
        let server = self.spawn_ns(
            &inet,
            "python3",
            &[
                &lab_script("server.py"),
                "0.0.0.0",
                &SERVER_PORT.to_string(),
                &SERVER.to_string(),
            ],
        )?;
        self.children.push(server);
        self.wait_for_server()
    }

    /// The single router: a veth to the client and one to each ISP, its addresses,
    /// and its own default before multiroute (via the first ISP, as a box with one
    /// working uplink would have it).
    fn wire_router(&self) -> Result<()> {
        let router = self.router();
        self.veth(&self.client(), "eth0", &router, "lan0")?;
        self.addr(&router, "lan0", "100.64.0.1/24")?;
        for n in 0..self.isps {
            let wan = format!("wan{n}");
            self.veth(&router, &wan, &self.isp(n), "cpe")?;
            self.addr(&router, &wan, &format!("{}/24", Self::uplink_address(n)))?;
        }
        self.ns(
            &router,
            "ip",
            &[
                "route",
                "add",
                "default",
                "via",
                "198.18.0.1",
                "dev",
                "wan0",
            ],
        )
        .map(drop)
    }

    /// Every namespace of the lab.
    fn namespaces(&self) -> Vec<String> {
        let mut namespaces = vec![self.client(), self.inet()];
        namespaces.extend(self.routers());
        namespaces.extend((0..self.isps).map(|n| self.isp(n)));
        if self.pair {
            namespaces.push(self.switch());
        }
        namespaces
    }

    /// The router namespaces: one, or the pair.
    fn routers(&self) -> Vec<String> {
        let mut routers = vec![self.router()];
        if self.pair {
            routers.push(self.router_b());
        }
        routers
    }

    fn write_config(&self, options: &LabOptions) -> Result<()> {
        let uplinks: Vec<_> = options.weights.iter().copied().enumerate().collect();
        self.write_uplinks(&uplinks, &options.extra_config)
    }

    /// Rewrites the config with uplinks for the given (ISP index, weight) pairs only.
    pub fn write_uplinks(&self, uplinks: &[(usize, u32)], extra_config: &str) -> Result<()> {
        let blocks: String = uplinks
            .iter()
            .map(|(n, weight)| Self::uplink_block(*n, *weight))
            .collect();
        self.write_config_with(&blocks, extra_config)
    }

    /// The `[[uplink]]` table for ISP `n`; lines appended to it belong to it.
    pub fn uplink_block(n: usize, weight: u32) -> String {
        format!(
            "\n[[uplink]]\nname = \"isp{n}\"\ninterface = \"wan{n}\"\ngateway = \"198.18.{n}.1\"\nweight = {weight}\n"
        )
    }

    /// Rewrites the config from `[[uplink]]` tables and extra sections.
    /// With a pair, router B's config is the same but for its own pins and socket.
    pub fn write_config_with(&self, uplink_blocks: &str, extra_config: &str) -> Result<()> {
        let write = |config: &Path, pin_path: &Path, socket: &str| {
            let mut text = String::from("lan = [\"lan0\"]\n");
            text += uplink_blocks;
            text += &format!(
                "\n[routing]\npin_path = \"{}\"\n\n[control]\nsocket = \"{}\"\n",
                pin_path.display(),
                self.dir.join(socket).display()
            );
            text += extra_config;
            std::fs::write(config, text).context("writing the lab config")
        };
        write(&self.config, &self.pin_path(), "control.sock")?;
        if self.pair {
            write(&self.config_b(), &self.pin_path_b(), "control-b.sock")?;
        }
        Ok(())
    }

    fn wait_for_server(&self) -> Result<()> {
        self.wait_for_http(&self.isp(0), &self.url("/"))
    }

    /// Waits until `url` answers from namespace `ns`.
    fn wait_for_http(&self, ns: &str, url: &str) -> Result<()> {
        wait_until(Duration::from_secs(10), || {
            self.ns(
                ns,
                "python3",
                &[&lab_script("client.py"), "count", url, "1", "2"],
            )
            .map(|out| stdout(&out).contains("\"failures\": 0"))
            .unwrap_or(false)
        })
        .with_context(|| format!("{url} did not come up"))
    }

    /// Starts `program` in namespace `ns` for the life of the lab.
    pub fn start_in(&mut self, ns: &str, program: &str, args: &[&str]) -> Result<()> {
        let child = self.spawn_ns(ns, program, args)?;
        self.children.push(child);
        Ok(())
    }

    /// Starts dnsmasq in namespace `ns` (stopped with the lab), answering on
    /// `listen` with `rules` (e.g. `--address=/name/192.0.2.1`) and logging every
    /// query to `<lab dir>/<log>`.
    pub fn start_dnsmasq(
        &mut self,
        ns: &str,
        log: &str,
        listen: &str,
        rules: &[String],
    ) -> Result<()> {
        let dir = self.dir.clone();
        let mut args = vec![
            "--keep-in-foreground".to_owned(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            "--user=root".into(),
            "--cache-size=0".into(),
            "--log-queries".into(),
            format!("--listen-address={listen}"),
            format!("--log-facility={}", dir.join(log).display()),
            format!("--pid-file={}", dir.join(format!("{log}.pid")).display()),
        ];
        args.extend(rules.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.start_in(ns, "dnsmasq", &args)
    }

    /// Starts the lab's HTTP server in namespace `ns` on `address:port` (stopped with
    /// the lab) and waits until `ns` itself reaches it.
    pub fn start_http_server(&mut self, ns: &str, address: &str, port: u16) -> Result<()> {
        let server = self.spawn_ns(
            ns,
            "python3",
            &[&lab_script("server.py"), address, &port.to_string()],
        )?;
        self.children.push(server);
        let probe = if address == "0.0.0.0" {
            "127.0.0.1"
        } else {
            address
        };
        self.wait_for_http(ns, &format!("http://{probe}:{port}/"))
    }

    /// Runs the lab client's `count` mode against `url` from namespace `ns`, from
    /// `source` if given: (answers by the address the server saw, failures).
    pub fn count_from(
        &self,
        ns: &str,
        url: &str,
        count: usize,
        source: Option<&str>,
    ) -> Result<(BTreeMap<String, u64>, u64)> {
        let count = count.to_string();
        let script = lab_script("client.py");
        let mut args = vec![script.as_str(), "count", url, &count, "120"];
        args.extend(source);
        let out = self.ns(ns, "python3", &args)?;
        tally(&out.stdout, "seen")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{SERVER}:{SERVER_PORT}{path}")
    }

    fn veth(&self, ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<()> {
        run(
            "ip",
            &[
                "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b,
            ],
        )?;
        self.ns(ns_a, "ip", &["link", "set", a, "up"])?;
        self.ns(ns_b, "ip", &["link", "set", b, "up"])?;
        self.ns(ns_a, "ip", &["link", "set", "lo", "up"])?;
        self.ns(ns_b, "ip", &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn addr(&self, ns: &str, dev: &str, cidr: &str) -> Result<()> {
        self.ns(ns, "ip", &["addr", "add", cidr, "dev", dev])
            .map(drop)
    }

    /// Runs a command inside namespace `ns` to completion.
    pub fn ns(&self, ns: &str, program: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn spawn_ns(&self, ns: &str, program: &str, args: &[&str]) -> Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} in {ns}"))
    }

    /// `multiroute -c <lab config> ARGS` inside the router namespace.
    pub fn multiroute(&self, args: &[&str]) -> Output {
        multiroute_in(&self.router(), &self.config, args)
    }

    /// Starts `multiroute load` in the router and waits until it is fully set up.
    pub fn start_router(&mut self) -> Result<()> {
        self.start_router_with(&multiroute_bin())
    }

    /// [`Lab::start_router`] with another build of `multiroute` (an upgrade). Waits
    /// until `status --json` says `"ready": true`: rules, routes, the datapath and
    /// its maps all in place.
    pub fn start_router_with(&mut self, binary: &Path) -> Result<()> {
        let child = self.start_load(&self.router(), &self.config, "router.log", binary)?;
        self.router = Some(child);
        Ok(())
    }

    /// Starts `binary load` in namespace `ns` with `config`, logging to `log` in
    /// the lab directory, and waits until its status says ready.
    fn start_load(&self, ns: &str, config: &Path, log: &str, binary: &Path) -> Result<Child> {
        let log_path = self.dir.join(log);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("opening the router log")?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(binary)
            .arg("-c")
            .arg(config)
            .arg("load")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting multiroute load")?;
        let start = Instant::now();
        while !status_in(ns, config).is_ok_and(|status| status["ready"] == true) {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "multiroute load did not come up ({exited:?}):\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(child)
    }

    pub fn router_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("router.log")).unwrap_or_default()
    }

    /// PID of the running `load` (`ip netns exec` execs it, so it is the child's).
    pub fn router_pid(&self) -> Option<u32> {
        self.router.as_ref().map(Child::id)
    }

    /// Sends `signal` to the running `load` without waiting.
    pub fn signal_router(&self, signal: i32) -> Result<()> {
        let child = self.router.as_ref().context("the router is not running")?;
        // SAFETY: kill(2) on a child we started.
        ensure!(
            unsafe { libc::kill(child.id() as i32, signal) } == 0,
            "cannot signal multiroute"
        );
        Ok(())
    }

    /// Sends `signal` to the running `load` and waits for it to exit.
    pub fn stop_router(&mut self, signal: i32) -> Result<std::process::ExitStatus> {
        self.signal_router(signal)?;
        self.wait_router_exit()
    }

    /// Waits (bounded) for the running `load` to exit, however it was told to.
    pub fn wait_router_exit(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.router.take().context("the router is not running")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("waiting for multiroute")? {
                return Ok(status);
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("multiroute did not exit within 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the running `load` with SIGTERM, which must exit 0 and leave steering
    /// in place, then removes everything with `multiroute unload`.
    pub fn stop_and_unload(&mut self) -> Result<()> {
        let status = self.stop_router(libc::SIGTERM)?;
        ensure!(
            status.code() == Some(0),
            "multiroute exited with {status}:\n{}",
            self.router_log()
        );
        let out = self.multiroute(&["unload"]);
        ensure!(
            out.status.success(),
            "unload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `count` new connections from the LAN client, one after another.
    pub fn connections(&self, count: usize) -> Result<Connections> {
        let child = self.start_connections(count)?;
        self.finish_connections(child)
    }

    /// [`Lab::connections`] in the background.
    pub fn start_connections(&self, count: usize) -> Result<Child> {
        self.spawn_client(&["count", &self.url("/"), &count.to_string(), "240"])
    }

    pub fn finish_connections(&self, child: Child) -> Result<Connections> {
        let output = child.wait_with_output().context("waiting for the client")?;
        ensure!(
            output.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("parsing the client's report")?;
        let mut hits = vec![0; self.isps];
        let seen = report["seen"]
            .as_object()
            .context("client report without `seen`")?;
        for (address, n) in seen {
            let n = n.as_u64().unwrap_or(0) as usize;
            match self.uplink_index(address) {
                Some(i) => hits[i] += n,
                None => bail!("the server saw an unexpected source {address}"),
            }
        }
        Ok(Connections {
            hits,
            failures: report["failures"].as_u64().unwrap_or(u64::MAX) as usize,
            ports: report["ports"].as_u64().unwrap_or(0) as usize,
        })
    }

    /// Starts a long download from the client in the background.
    pub fn start_stream(&self, seconds: u32) -> Result<Child> {
        self.start_stream_from(SERVER, seconds)
    }

    /// A long download from `server` (one of the server's addresses).
    pub fn start_stream_from(&self, server: Ipv4Addr, seconds: u32) -> Result<Child> {
        self.spawn_client(&[
            "stream",
            &format!("http://{server}:{SERVER_PORT}/stream?seconds={seconds}"),
        ])
    }

    /// `count` DNS queries for `name` from the client to `server`:
    /// (answers by address, failures).
    pub fn dns_queries(
        &self,
        server: &str,
        name: &str,
        count: usize,
    ) -> Result<(BTreeMap<String, u64>, u64)> {
        let out = self.ns(
            &self.client(),
            "python3",
            &[
                &lab_script("client.py"),
                "dns",
                server,
                name,
                &count.to_string(),
            ],
        )?;
        tally(&out.stdout, "answers")
    }

    /// A new connection from the client every `interval_ms`, each given
    /// `timeout_ms`, for `seconds`, in the background; [`Lab::attempts`] collects them.
    pub fn start_attempts(&self, seconds: f64, interval_ms: u32, timeout_ms: u32) -> Result<Child> {
        self.spawn_client(&[
            "attempts",
            &self.url("/"),
            &seconds.to_string(),
            &(f64::from(interval_ms) / 1000.0).to_string(),
            &(f64::from(timeout_ms) / 1000.0).to_string(),
        ])
    }

    pub fn attempts(child: Child) -> Result<Vec<Attempt>> {
        let output = child.wait_with_output().context("waiting for the client")?;
        ensure!(
            output.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).context("parsing the attempts")
    }

    /// `tcp` long-lived TCP connections and `udp` UDP flows from the client to the
    /// server, each exchanging a numbered message every `interval_ms` for `seconds`
    /// after all are open; returns once they are.
    pub fn start_sessions(
        &self,
        tcp: usize,
        udp: usize,
        seconds: f64,
        interval_ms: u32,
    ) -> Result<RunningSessions> {
        use std::io::BufRead as _;
        let mut child = self.spawn_client(&[
            "sessions",
            &SERVER.to_string(),
            &(SERVER_PORT + 2).to_string(),
            &tcp.to_string(),
            &udp.to_string(),
            &seconds.to_string(),
            &(f64::from(interval_ms) / 1000.0).to_string(),
        ])?;
        let mut stdout =
            std::io::BufReader::new(child.stdout.take().context("the client without stdout")?);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .context("waiting for the sessions to open")?;
        if !line.contains("\"open\"") {
            let _ = child.kill();
            let output = child.wait_with_output().context("waiting for the client")?;
            bail!(
                "the sessions did not open: {line}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(RunningSessions { child, stdout })
    }

    /// One UDP flow from the client to the echo server, a request every
    /// `interval_ms`, for `seconds`, in the background (stdout piped).
    pub fn start_udp(&self, seconds: f64, interval_ms: u32) -> Result<Child> {
        self.start_udp_in(&self.client(), ECHO_PORT, seconds, interval_ms)
    }

    /// The same from namespace `ns` (the router's own traffic from the router's) to
    /// the server's UDP `port`.
    pub fn start_udp_in(
        &self,
        ns: &str,
        port: u16,
        seconds: f64,
        interval_ms: u32,
    ) -> Result<Child> {
        self.spawn_script_in(
            ns,
            &[
                "udp",
                &SERVER.to_string(),
                &port.to_string(),
                &seconds.to_string(),
                &(f64::from(interval_ms) / 1000.0).to_string(),
            ],
        )
    }

    fn spawn_client(&self, args: &[&str]) -> Result<Child> {
        self.spawn_script_in(&self.client(), args)
    }

    fn spawn_script_in(&self, ns: &str, args: &[&str]) -> Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", ns, "python3", &lab_script("client.py")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the lab client")
    }

    /// Turns ISP `n`'s link into a point-to-point one, as pppd or an LTE modem in
    /// raw-IP mode leaves it: no ARP (the same MAC on both ends), `A peer B/32`
    /// addresses, and a `default dev` route in the router's main table (metric 200,
    /// behind the lab's default). The uplink's config then names no gateway.
    pub fn make_point_to_point(&self, n: usize) -> Result<()> {
        let (router, isp) = (self.router(), self.isp(n));
        let wan = format!("wan{n}");
        let (local, peer) = (format!("198.18.{n}.2"), format!("198.18.{n}.1"));
        let mac = format!("02:00:00:00:0{n}:01");
        for (ns, dev, address, other) in [
            (&router, wan.as_str(), &local, &peer),
            (&isp, "cpe", &peer, &local),
        ] {
            self.ns(ns, "ip", &["addr", "flush", "dev", dev])?;
            self.ns(
                ns,
                "ip",
                &["link", "set", dev, "arp", "off", "address", &mac],
            )?;
            self.ns(
                ns,
                "ip",
                &[
                    "addr",
                    "add",
                    address,
                    "peer",
                    &format!("{other}/32"),
                    "dev",
                    dev,
                ],
            )?;
        }
        self.ns(
            &router,
            "ip",
            &["route", "add", "default", "dev", &wan, "metric", "200"],
        )
        .map(drop)
    }

    /// The `[[uplink]]` table for point-to-point ISP `n`: no gateway.
    pub fn point_to_point_block(n: usize, weight: u32) -> String {
        format!("\n[[uplink]]\nname = \"isp{n}\"\ninterface = \"wan{n}\"\nweight = {weight}\n")
    }

    /// ISP `n` silently stops forwarding: its gateway still answers ARP and ping from
    /// the router, nothing beyond it does.
    pub fn fail_upstream(&self, n: usize) -> Result<()> {
        self.ns(
            &self.isp(n),
            "nft",
            &["add table ip outage; add chain ip outage forward { type filter hook forward priority 0; policy drop; }"],
        )
        .map(drop)
    }

    pub fn restore_upstream(&self, n: usize) -> Result<()> {
        self.ns(&self.isp(n), "nft", &["delete table ip outage"])
            .map(drop)
    }

    /// ISP `n` drops every other ICMP echo request it forwards: the router's probes
    /// beyond the gateway see 50 % loss, alternating.
    pub fn flap_probes(&self, n: usize) -> Result<()> {
        self.ns(
            &self.isp(n),
            "nft",
            &["add table ip flap; add chain ip flap forward { type filter hook forward priority 0; }; add rule ip flap forward icmp type echo-request numgen inc mod 2 == 0 drop"],
        )
        .map(drop)
    }

    /// Sets the router's uplink interface `wan<n>` up or down.
    pub fn set_uplink_link(&self, n: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.ns(
            &self.router(),
            "ip",
            &["link", "set", &format!("wan{n}"), state],
        )
        .map(drop)
    }

    /// `multiroute status --json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        status_in(&self.router(), &self.config)
    }

    /// `multiroute flows --json ARGS`, parsed.
    pub fn flows(&self, args: &[&str]) -> Result<Vec<serde_json::Value>> {
        let mut full = vec!["flows", "--json"];
        full.extend_from_slice(args);
        let out = self.multiroute(&full);
        ensure!(
            out.status.success(),
            "flows failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("parsing flows --json")
    }

    /// Fails unless the router's multiroute rules and routes (protocol 77) are exactly
    /// the plan in force (`multiroute check --plan`), line for line.
    pub fn assert_kernel_matches_plan(&self) -> Result<()> {
        let out = self.multiroute(&["check", "--plan"]);
        let report = stdout(&out);
        let planned: std::collections::BTreeSet<String> = report
            .lines()
            .skip_while(|l| !l.ends_with("plan:"))
            .skip(1)
            .map(|l| l.trim().to_owned())
            .collect();
        ensure!(!planned.is_empty(), "no plan in:\n{report}");
        let kernel = self.kernel_lines()?;
        let missing: Vec<_> = planned.difference(&kernel).collect();
        let extra: Vec<_> = kernel.difference(&planned).collect();
        ensure!(
            missing.is_empty() && extra.is_empty(),
            "kernel differs from the plan:\n  planned, not in the kernel: {missing:#?}\n  in the kernel, not planned: {extra:#?}"
        );
        Ok(())
    }

    /// The router's protocol-77 rules and routes in the plan's `ip` syntax.
    fn kernel_lines(&self) -> Result<std::collections::BTreeSet<String>> {
        let json = |args: &[&str]| -> Result<Vec<serde_json::Value>> {
            let out = self.ns(&self.router(), "ip", args)?;
            serde_json::from_slice(&out.stdout).context("parsing ip -j")
        };
        let text = |v: &serde_json::Value| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        };
        let net = |addr: &serde_json::Value, len: &serde_json::Value| match len.as_u64() {
            Some(len) if len != 32 => format!("{}/{len}", text(addr)),
            _ => text(addr),
        };
        let mut lines = std::collections::BTreeSet::new();
        for rule in json(&["-4", "-j", "rule", "show"])? {
            if rule["protocol"] != "77" {
                continue;
            }
            let port = |name: &str| {
                if !rule[name].is_null() {
                    format!(" {name} {}", text(&rule[name]))
                } else if !rule[format!("{name}_start")].is_null() {
                    format!(
                        " {name} {}-{}",
                        text(&rule[format!("{name}_start")]),
                        text(&rule[format!("{name}_end")])
                    )
                } else {
                    String::new()
                }
            };
            let selector = if !rule["fwmark"].is_null() {
                format!("fwmark {}/{}", text(&rule["fwmark"]), text(&rule["fwmask"]))
            } else if rule["iif"] == "lo" {
                let mut matched = match rule["src"].as_str() {
                    Some("all") | None => "from all".to_owned(),
                    Some(_) => format!("from {}", net(&rule["src"], &rule["srclen"])),
                };
                if !rule["dst"].is_null() {
                    matched += &format!(" to {}", net(&rule["dst"], &rule["dstlen"]));
                }
                matched += " iif lo";
                if !rule["ipproto"].is_null() {
                    matched += &format!(" ipproto {}", text(&rule["ipproto"]));
                }
                matched + &port("sport") + &port("dport")
            } else if !rule["dst"].is_null() {
                format!("to {}", net(&rule["dst"], &rule["dstlen"]))
            } else {
                format!("from {}", net(&rule["src"], &rule["srclen"]))
            };
            let mut line = format!(
                "pref {} {selector} lookup {}",
                rule["priority"],
                text(&rule["table"])
            );
            if let Some(len) = rule["suppress_prefixlen"].as_u64() {
                line += &format!(" suppress_prefixlength {len}");
            }
            lines.insert(line);
        }
        for route in json(&["-4", "-j", "route", "show", "table", "all", "proto", "77"])? {
            let mut line = text(&route["dst"]);
            if let Some(hops) = route["nexthops"].as_array() {
                for hop in hops {
                    line += " nexthop";
                    if !hop["gateway"].is_null() {
                        line += &format!(" via {}", text(&hop["gateway"]));
                    }
                    line += &format!(" dev {} weight {}", text(&hop["dev"]), hop["weight"]);
                }
            } else if !route["gateway"].is_null() {
                line += &format!(
                    " via {} dev {}",
                    text(&route["gateway"]),
                    text(&route["dev"])
                );
            } else {
                line += &format!(" dev {}", text(&route["dev"]));
                if !route["prefsrc"].is_null() {
                    line += &format!(" src {}", text(&route["prefsrc"]));
                }
            }
            let table = route["table"].as_str().unwrap_or("main");
            lines.insert(format!("{line} table {table}"));
        }
        Ok(lines)
    }

    /// The uplink index whose address is `address`.
    pub fn uplink_index(&self, address: &str) -> Option<usize> {
        (0..self.isps).find(|&i| Self::uplink_address(i).to_string() == address)
    }

    /// Received bytes on each of the router's uplink interfaces.
    pub fn uplink_rx_bytes(&self) -> Result<Vec<u64>> {
        (0..self.isps)
            .map(|n| {
                let out = self.ns(
                    &self.router(),
                    "cat",
                    &[&format!("/sys/class/net/wan{n}/statistics/rx_bytes")],
                )?;
                stdout(&out).trim().parse().context("parsing rx_bytes")
            })
            .collect()
    }

    /// What the router's routing and TC state look like, for before/after comparisons.
    pub fn router_snapshot(&self) -> Result<String> {
        let router = self.router();
        let mut snapshot = String::new();
        // IPv6 routes are left out: link-local addresses finish DAD at their own pace
        // and would make the comparison racy; multiroute does not route IPv6 yet.
        for args in [
            &["-4", "-j", "rule", "show"][..],
            &["-6", "-j", "rule", "show"],
            &["-4", "-j", "route", "show", "table", "all"],
            &["-j", "link", "show"],
        ] {
            snapshot += &stdout(&self.ns(&router, "ip", args)?);
            snapshot.push('\n');
        }
        // Nor any nftables table of its own.
        snapshot += &stdout(&self.ns(&router, "nft", &["list", "tables"])?);
        // The classifier must leave no qdisc or legacy filter behind on the LAN side.
        snapshot += &stdout(&self.ns(&router, "tc", &["-j", "qdisc", "show", "dev", "lan0"])?);
        snapshot += &stdout(&self.ns(
            &router,
            "tc",
            &["-j", "filter", "show", "dev", "lan0", "ingress"],
        )?);
        Ok(snapshot)
    }

    /// What is pinned on the lab's bpffs, besides the kernel's own preloaded
    /// `maps.debug`/`progs.debug` iterators.
    pub fn pins(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("bpf"))
            .map(|entries| {
                entries
                    .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .filter(|name| !name.ends_with(".debug"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A lab client's JSON report `{<field>: {address: count}, "failures": n}`.
fn tally(stdout: &[u8], field: &str) -> Result<(BTreeMap<String, u64>, u64)> {
    let report: serde_json::Value =
        serde_json::from_slice(stdout).context("parsing the client's report")?;
    let counts = report[field]
        .as_object()
        .with_context(|| format!("client report without `{field}`"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    Ok((counts, report["failures"].as_u64().unwrap_or(u64::MAX)))
}

/// Number of `multiroute` classifiers loaded in the kernel (any namespace).
pub fn loaded_classifiers() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| info.name_as_str() == Some(multiroute_ebpf::PROGRAM_NAME))
        .count()
}

impl Drop for Lab {
    fn drop(&mut self) {
        let routers = [
            (self.router.take(), self.router(), self.config.clone()),
            (self.router_b.take(), self.router_b(), self.config_b()),
        ];
        for (running, ns, config) in routers {
            if let Some(mut router) = running {
                let _ = router.kill();
                let _ = router.wait();
                // A killed router leaves its set-up behind; remove it like an operator would.
                let _ = multiroute_in(&ns, &config, &["unload"]);
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces() {
            let _ = run("ip", &["netns", "del", &ns]);
        }
        let _ = run("umount", &[&self.dir.join("bpf").to_string_lossy()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `multiroute -c CONFIG ARGS` inside namespace `ns`.
fn multiroute_in(ns: &str, config: &Path, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(multiroute_bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run multiroute: {err}"))
}

/// `multiroute status --json` of the `load` in namespace `ns`, parsed.
fn status_in(ns: &str, config: &Path) -> Result<serde_json::Value> {
    let out = multiroute_in(ns, config, &["status", "--json"]);
    ensure!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("parsing status --json")
}

pub fn lab_script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("lab")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("gave up after {limit:?}")
}

/// Share of `part` in `total`, in percentage points.
pub fn percent(part: usize, total: usize) -> f64 {
    100.0 * part as f64 / total.max(1) as f64
}
