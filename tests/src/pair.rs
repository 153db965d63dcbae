//! Two routers, one gateway: the lab with a second router beside the first, both
//! on one LAN segment and on each ISP's segment (bridges in a switch namespace),
//! joined by a sync link. keepalived (VRRP) moves the LAN gateway and the uplink
//! addresses between them; conntrackd keeps their connection tables in step. Both
//! run from the files in `contrib/ha`, templated only for names and addresses.
//!
//! ```text
//!                       ┌── router   (A) lan0 100.64.0.252 ──┐
//!  client ── br-lan ────┤        sync0 100.64.255.1/30        ├── br-ispN ── ispN ── inet
//!  100.64.0.2           └── routerb  (B) lan0 100.64.0.253 ──┘
//!                          VIPs: 100.64.0.1 (lan0), 198.18.N.2 (wanN)
//! ```
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, Result, ensure};

use crate::{Lab, LabOptions, multiroute_bin, multiroute_in, status_in};

/// The sync link's addresses, router A's first.
const SYNC: [&str; 2] = ["100.64.255.1", "100.64.255.2"];

impl Lab {
    /// The lab with two routers; neither multiroute nor keepalived is started.
    /// Two ISPs (the contrib files' example has two uplinks).
    pub fn new_pair(options: &LabOptions) -> Result<Lab> {
        ensure!(
            options.weights.len() == 2,
            "the pair lab has two ISPs, as contrib/ha's example"
        );
        Self::create(options, true)
    }

    pub fn router_b(&self) -> String {
        format!("{}-routerb", self.prefix)
    }

    /// Holds the bridges.
    pub(crate) fn switch(&self) -> String {
        format!("{}-switch", self.prefix)
    }

    pub fn config_b(&self) -> PathBuf {
        self.dir.join("multiroute-b.toml")
    }

    pub fn pin_path_b(&self) -> PathBuf {
        self.dir.join("bpf/multiroute-b")
    }

    /// Both routers' ports on the LAN and ISP bridges, their own LAN addresses
    /// (the gateway and uplink addresses are keepalived's) and the sync link.
    pub(crate) fn wire_pair(&self) -> Result<()> {
        let switch = self.switch();
        let mut bridges = vec!["br-lan".to_owned()];
        bridges.extend((0..self.isps).map(|n| format!("br-isp{n}")));
        for bridge in &bridges {
            self.ns(&switch, "ip", &["link", "add", bridge, "type", "bridge"])?;
            self.ns(&switch, "ip", &["link", "set", bridge, "up"])?;
        }
        let port = |ns: &str, inside: &str, name: &str, bridge: &str| -> Result<()> {
            self.veth(ns, inside, &switch, name)?;
            self.ns(&switch, "ip", &["link", "set", name, "master", bridge])
                .map(drop)
        };
        port(&self.client(), "eth0", "client", "br-lan")?;
        for (i, router) in [self.router(), self.router_b()].iter().enumerate() {
            port(router, "lan0", &format!("r{i}-lan"), "br-lan")?;
            self.addr(router, "lan0", &format!("100.64.0.{}/24", 252 + i))?;
            for n in 0..self.isps {
                port(
                    router,
                    &format!("wan{n}"),
                    &format!("r{i}-wan{n}"),
                    &format!("br-isp{n}"),
                )?;
            }
        }
        for n in 0..self.isps {
            port(
                &self.isp(n),
                "cpe",
                &format!("isp{n}"),
                &format!("br-isp{n}"),
            )?;
        }
        self.veth(&self.router(), "sync0", &self.router_b(), "sync0")?;
        self.addr(&self.router(), "sync0", &format!("{}/30", SYNC[0]))?;
        self.addr(&self.router_b(), "sync0", &format!("{}/30", SYNC[1]))
    }

    /// Both routers source-NAT as `contrib/ha/nat.nft` says.
    pub(crate) fn pair_nat(&self) -> Result<()> {
        let text = template(
            &contrib("nat.nft")?,
            &[
                (
                    "\"eth1\" snat to 142.154.64.7",
                    "\"wan0\" snat to 198.18.0.2",
                ),
                (
                    "\"eth2\" snat to 24.19.12.45",
                    "\"wan1\" snat to 198.18.1.2",
                ),
            ],
        )?;
        let file = self.dir.join("nat.nft");
        std::fs::write(&file, text).context("writing nat.nft")?;
        for router in [self.router(), self.router_b()] {
            self.ns(&router, "nft", &["-f", &file.to_string_lossy()])?;
        }
        Ok(())
    }

    /// `multiroute -c <router B's config> ARGS` in router B.
    pub fn multiroute_b(&self, args: &[&str]) -> Output {
        multiroute_in(&self.router_b(), &self.config_b(), args)
    }

    pub fn status_b(&self) -> Result<serde_json::Value> {
        status_in(&self.router_b(), &self.config_b())
    }

    /// Starts `multiroute load` in router B and waits until it is set up.
    pub fn start_router_b(&mut self) -> Result<()> {
        let child = self.start_load(
            &self.router_b(),
            &self.config_b(),
            "router-b.log",
            &multiroute_bin(),
        )?;
        self.router_b = Some(child);
        Ok(())
    }

    pub fn router_b_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("router-b.log")).unwrap_or_default()
    }

    /// Starts conntrackd and keepalived on both routers from `contrib/ha`, router A
    /// with the higher priority, adverts every `advert_int` seconds.
    pub fn start_ha(&mut self, advert_int: f64) -> Result<()> {
        let keepalived = contrib("keepalived.conf")?;
        let conntrackd = contrib("conntrackd.conf")?;
        for (i, router) in [self.router(), self.router_b()].iter().enumerate() {
            let side = ["a", "b"][i];
            let dir = self.dir.clone();
            let own = |name: &str| dir.join(format!("{name}-{side}"));
            let text = template(
                &conntrackd,
                &[
                    ("10.99.0.1", SYNC[i]),
                    ("10.99.0.2", SYNC[1 - i]),
                    ("Interface eth3", "Interface sync0"),
                    (
                        "/var/lock/conntrackd.lock",
                        &own("conntrackd.lock").to_string_lossy(),
                    ),
                    (
                        "/var/run/conntrackd.ctl",
                        &own("conntrackd.ctl").to_string_lossy(),
                    ),
                ],
            )?;
            let conf = own("conntrackd.conf");
            std::fs::write(&conf, text).context("writing conntrackd.conf")?;
            self.start_logged(
                router,
                "conntrackd",
                &["-C", &conf.to_string_lossy()],
                &format!("conntrackd-{side}.log"),
            )?;
            let text = template(
                &keepalived,
                &[
                    (
                        "router_id multiroute-a",
                        &format!("router_id multiroute-{side}"),
                    ),
                    (
                        "priority 150",
                        if i == 0 {
                            "priority 150"
                        } else {
                            "priority 100"
                        },
                    ),
                    ("advert_int 1", &format!("advert_int {advert_int}")),
                    ("192.168.0.1/24 dev eth0", "100.64.0.1/24 dev lan0"),
                    ("142.154.64.7/24 dev eth1", "198.18.0.2/24 dev wan0"),
                    ("24.19.12.45/24 dev eth2", "198.18.1.2/24 dev wan1"),
                    ("interface eth0", "interface lan0"),
                ],
            )?;
            let conf = own("keepalived.conf");
            std::fs::write(&conf, text).context("writing keepalived.conf")?;
            self.start_logged(
                router,
                "keepalived",
                &[
                    "--dont-fork",
                    "--log-console",
                    "--vrrp",
                    "-f",
                    &conf.to_string_lossy(),
                    "-p",
                    &own("keepalived.pid").to_string_lossy(),
                    "-r",
                    &own("vrrp.pid").to_string_lossy(),
                ],
                &format!("keepalived-{side}.log"),
            )?;
        }
        Ok(())
    }

    /// Starts `program` in `ns` for the life of the lab, its output in `log`.
    fn start_logged(&mut self, ns: &str, program: &str, args: &[&str], log: &str) -> Result<()> {
        let file = std::fs::File::create(self.dir.join(log)).context("creating a log")?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("cloning a log handle")?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {program} in {ns}"))?;
        self.children.push(child);
        Ok(())
    }

    /// A log the lab wrote (keepalived-a.log, conntrackd-b.log, …).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

/// A file of `contrib/ha`.
fn contrib(name: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/ha")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `text` with every `from` replaced by its `to`, all at once (a swap of two
/// addresses works). Fails if a `from` is missing: the contrib file changed and
/// the lab would no longer run what it ships.
fn template(text: &str, replacements: &[(&str, &str)]) -> Result<String> {
    let mut out = text.to_owned();
    for (i, (from, _)) in replacements.iter().enumerate() {
        ensure!(out.contains(from), "{from:?} is not in the contrib file");
        out = out.replace(from, &format!("\u{0}{i}\u{0}"));
    }
    for (i, (_, to)) in replacements.iter().enumerate() {
        out = out.replace(&format!("\u{0}{i}\u{0}"), to);
    }
    Ok(out)
}

/// What one router failover and failback measured (see [`failover_round`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// Until every new connection succeeds again after the master's LAN link is cut.
    pub failover_s: f64,
    /// The same after it is restored and the master takes back over.
    pub failback_s: f64,
    /// New connections that failed meanwhile, in each switch.
    pub failed: [usize; 2],
    pub sessions: usize,
    /// Sessions the server saw from more than one address.
    pub moved: usize,
    pub broken: usize,
    pub udp_lost: u64,
    /// Sessions router B put on their uplinks as the addresses arrived.
    pub seeded: usize,
}

/// The pair up and active on router A, running multiroute, keepalived and
/// conntrackd.
fn active(status: &serde_json::Value) -> bool {
    status["standby"] == false
        && status["uplinks"]
            .as_array()
            .is_some_and(|u| u.iter().all(|u| u["state"] == "up"))
}

/// NATed sessions in the conntrack table of namespace `ns`.
fn nated_sessions(lab: &Lab, ns: &str) -> usize {
    lab.ns(ns, "conntrack", &["-L", "--src-nat"])
        .map(|out| String::from_utf8_lossy(&out.stdout).lines().count())
        .unwrap_or(0)
}

/// Does `switch` with new connections attempted every 20 ms; returns seconds
/// until they all succeed again and how many failed.
fn switch_over(lab: &Lab, switch: impl FnOnce() -> Result<()>) -> Result<(f64, usize)> {
    let attempts = lab.start_attempts(9.0, 20, 500)?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t0 = crate::wall_clock();
    switch()?;
    let outage = crate::measure_outage(&Lab::attempts(attempts)?, t0)?;
    Ok((outage.seconds, outage.failed))
}

/// The pair with VRRP adverts every `advert_int` s; a live `weight isp1 3` on
/// router A (so its sessions no longer follow the config's hash and only the
/// synced NAT bindings can place them); 200 TCP and 50 UDP sessions exchanging
/// every 100 ms through A; A's LAN link cut (B takes over), then restored (A
/// takes back over).
pub fn failover_round(advert_int: f64) -> Result<Round> {
    use std::time::Duration;
    let mut lab = Lab::new_pair(&LabOptions {
        weights: vec![1, 1],
        extra_config: String::new(),
    })?;
    lab.start_router()?;
    lab.start_router_b()?;
    ensure!(
        lab.status()?["standby"] == true,
        "A stands by before keepalived"
    );
    lab.start_ha(advert_int)?;
    crate::wait_until(Duration::from_secs(15), || {
        lab.status().is_ok_and(|s| active(&s))
    })
    .with_context(|| {
        format!(
            "router A did not become active:\n{}",
            lab.log("keepalived-a.log")
        )
    })?;
    let b = lab.status_b()?;
    ensure!(
        b["standby"] == true && b["fail_open"] == false,
        "router B stands by: {b}"
    );
    ensure!(
        lab.multiroute(&["weight", "isp1", "3"]).status.success(),
        "weight isp1 3"
    );
    let sessions = lab.start_sessions(200, 50, 30.0, 100)?;
    std::thread::sleep(Duration::from_secs(2));
    let (on_a, synced) = (
        nated_sessions(&lab, &lab.router()),
        nated_sessions(&lab, &lab.router_b()),
    );
    ensure!(
        synced >= 250 && synced + 5 >= on_a,
        "conntrackd put {synced} of A's {on_a} NATed sessions into B's table:\n{}",
        lab.log("conntrackd-b.log")
    );
    let router_a = lab.router();
    let link = |state: &'static str| {
        let (lab, router_a) = (&lab, &router_a);
        move || {
            lab.ns(router_a, "ip", &["link", "set", "lan0", state])
                .map(drop)
        }
    };
    let (failover_s, failover_failed) = switch_over(&lab, link("down"))?;
    let b = lab.status_b()?;
    ensure!(active(&b), "router B took over: {b}");
    let seeded = lab
        .router_b_log()
        .lines()
        .filter(|l| l.contains("put the sessions conntrack NATs"))
        .filter_map(|l| l.split("sessions=").nth(1)?.trim().parse::<usize>().ok())
        .sum();
    std::thread::sleep(Duration::from_secs(2));
    let (failback_s, failback_failed) = switch_over(&lab, link("up"))?;
    crate::wait_until(Duration::from_secs(10), || {
        lab.status().is_ok_and(|s| active(&s)) && lab.status_b().is_ok_and(|s| s["standby"] == true)
    })
    .context("router A is master again and B stands by")?;
    let report = sessions.finish()?;
    Ok(Round {
        failover_s,
        failback_s,
        failed: [failover_failed, failback_failed],
        sessions: report.all().count(),
        moved: report.moved(),
        broken: report.broken(),
        udp_lost: report.udp_lost(),
        seeded,
    })
}
