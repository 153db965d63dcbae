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
//!
//! This file builds the lab and runs multiroute in it; `traffic` is what the client
//! sends and measures, `faults` what the lab breaks, `kernel` what the router
//! shows, `pair` the two-router variant, `datapath` the classifier on its own.
pub mod bench;
mod cleanup;
pub mod datapath;
mod faults;
pub mod ipv6;
pub mod isp;
mod kernel;
pub mod pair;
mod traffic;

pub use cleanup::{handle_signals, interrupted, stop_requested};
pub use faults::{FORWARDED_PORT, ROUTER_PORT};
pub use traffic::{
    Attempt, Connections, Outage, RunningSessions, Session, SessionsReport, measure_outage,
    wall_clock,
};

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

/// Labs share the CPU and the kernel's program list: one at a time per process.
static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The name of the function it is used in (a test's own name), so a test need
/// not spell it.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        let path = std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}

/// [`require_root`] for the test it is used in.
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root($crate::test_name!())
    };
}

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

pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub isps: usize,
    children: Vec<Child>,
    /// Daemons a test stops or restarts by name (an ISP's radvd, DHCP server or
    /// the router's DHCP client).
    services: BTreeMap<String, Child>,
    /// Ids of the flow tables this lab's routers pinned (see [`Lab::classifiers`]).
    flow_tables: Mutex<std::collections::BTreeSet<u32>>,
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
    /// Files `ip netns exec` mounts over the host's `/etc` inside the router.
    fn netns_etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(self.router())
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
        cleanup::remove_stale();
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
            services: BTreeMap::new(),
            flow_tables: Mutex::default(),
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
        cleanup::claim(&self.dir).context("recording the lab's owner")?;
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

    /// Starts `program` in namespace `ns` as service `name` (stopped with the lab,
    /// or by [`Lab::stop_service`]).
    pub fn start_service(
        &mut self,
        name: &str,
        ns: &str,
        program: &str,
        args: &[&str],
    ) -> Result<()> {
        ensure!(
            !self.services.contains_key(name),
            "{name} is already running"
        );
        let child = self.spawn_ns(ns, program, args)?;
        self.services.insert(name.to_owned(), child);
        Ok(())
    }

    /// Sends `signal` to service `name`.
    pub fn signal_service(&self, name: &str, signal: i32) -> Result<()> {
        let child = self
            .services
            .get(name)
            .with_context(|| format!("no service {name}"))?;
        signal_child(child, signal, name)
    }

    /// Stops service `name` with `signal` and waits (bounded) for it to exit.
    pub fn stop_service(&mut self, name: &str, signal: i32) -> Result<()> {
        self.signal_service(name, signal)?;
        let mut child = self.services.remove(name).context("no such service")?;
        wait_exit(&mut child, Duration::from_secs(5), name).map(drop)
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
        let probe = match address {
            "0.0.0.0" => "127.0.0.1".to_owned(),
            "::" => "[::1]".to_owned(),
            ipv6 if ipv6.contains(':') => format!("[{ipv6}]"),
            ipv4 => ipv4.to_owned(),
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
        traffic::tally(&out.stdout, "seen")
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
        self.classifiers();
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
        signal_child(child, signal, "multiroute")
    }

    /// Sends `signal` to the running `load` and waits for it to exit.
    pub fn stop_router(&mut self, signal: i32) -> Result<std::process::ExitStatus> {
        self.signal_router(signal)?;
        self.wait_router_exit()
    }

    /// Waits (bounded) for the running `load` to exit, however it was told to.
    pub fn wait_router_exit(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.router.take().context("the router is not running")?;
        wait_exit(&mut child, Duration::from_secs(15), "multiroute")
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
        for child in self.children.iter_mut().chain(self.services.values_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces() {
            let _ = run("ip", &["netns", "del", &ns]);
        }
        let _ = std::fs::remove_dir_all(self.netns_etc());
        let _ = run("umount", &[&self.dir.join("bpf").to_string_lossy()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `signal` to `child` (`ip netns exec` execs its program, so the child is
/// the program itself).
fn signal_child(child: &Child, signal: i32, what: &str) -> Result<()> {
    // SAFETY: kill(2) on a child we started and have not reaped.
    ensure!(
        unsafe { libc::kill(child.id() as i32, signal) } == 0,
        "cannot signal {what}"
    );
    Ok(())
}

/// Waits up to `limit` for `child` to exit; past it, kills it and fails.
fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> Result<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not exit within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
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

#[cfg(test)]
mod tests {
    #[test]
    fn test_name_is_the_enclosing_functions() {
        assert_eq!(test_name!(), "test_name_is_the_enclosing_functions");
    }
}
