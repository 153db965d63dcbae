//! The lab: real network namespaces, veth pairs, nftables masquerade and real
//! servers, built the same way for the end-to-end tests, and for the demo and the
//! benchmarks (the `tools` crate).
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
//! This file holds [`Lab`] and the helpers every test uses; `lab/` builds the
//! topology, runs the services and runs multiroute in it; `traffic` is what the
//! client sends and measures, `faults` what the lab breaks, `kernel` what the
//! router shows, `pair` the two-router variant, `datapath` the classifier on its
//! own, `isp` and `ipv6` what ISPs speak, `container` a fresh Debian booted in the
//! router for the package.
mod cleanup;
pub mod container;
pub mod datapath;
mod faults;
pub mod fixtures;
pub mod ipv6;
pub mod isp;
mod kernel;
mod lab;
pub mod pair;
mod traffic;

pub use cleanup::{handle_signals, interrupted, stop_requested};
pub use faults::{FORWARDED_PORT, ROUTER_PORT};
pub use kernel::classifiers_using;
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

/// [`require_tool`] for the test it is used in, for each program given.
#[macro_export]
macro_rules! require_tool {
    ($($program:expr),+) => {
        true $(&& $crate::require_tool($crate::test_name!(), $program))+
    };
}

/// Skips (locally) or fails (in CI) when `program` is not installed
/// (`cargo xtask deps` installs what the tests need).
pub fn require_tool(test: &str, program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs {program}, and CI=true forbids skipping"
    );
    eprintln!("SKIPPED {test}: needs {program} (run `cargo xtask deps`)");
    false
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
    /// One lab at a time in a process; the others of [`Lab::side_by_side`] hold none.
    _serial: Option<MutexGuard<'static, ()>>,
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
            // What our programs left there: dhcpcd's privilege-separated helpers
            // outlive a killed dhcpcd, and ignore SIGTERM.
            for pid in namespace_pids(&ns) {
                // SAFETY: kill(2) on a process inside the lab's own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = run("ip", &["netns", "del", &ns]);
        }
        let _ = std::fs::remove_dir_all(self.netns_etc());
        let _ = run("umount", &[&self.dir.join("bpf").to_string_lossy()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The processes inside network namespace `ns`.
fn namespace_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect()
        })
        .unwrap_or_default()
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
