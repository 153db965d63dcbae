//! No session lost at the edges of multiroute's own life, under continuous traffic:
//! sessions opened before the first `load`, new connections every 5 ms across it,
//! a restart with the shipped systemd unit's own commands, an upgrade (another
//! binary), a reload, weight changes and self-repair. Every session must be seen by
//! the server from one address for its whole life, and none may break.
use std::{
    path::Path,
    process::Child,
    thread::sleep,
    time::{Duration, Instant},
};

use multiroute_tests::{Attempt, Lab, LabOptions, RunningSessions, require_root};

/// The sessions the issue asks for: 200 long-lived TCP connections, 50 UDP flows.
const TCP_SESSIONS: usize = 200;
const UDP_SESSIONS: usize = 50;
/// Each session exchanges a message this often.
const EXCHANGE_MS: u32 = 100;
/// A new connection this often, across each event.
const NEW_CONNECTION_MS: u32 = 5;

fn lab() -> Lab {
    Lab::new(&LabOptions {
        weights: vec![1, 2, 3],
        extra_config: String::new(),
    })
    .expect("building the lab")
}

/// Long-lived sessions plus a new connection every 5 ms.
struct Traffic {
    sessions: RunningSessions,
    attempts: Child,
}

fn start_traffic(lab: &Lab, session_seconds: f64, attempt_seconds: f64) -> Traffic {
    let sessions = lab
        .start_sessions(TCP_SESSIONS, UDP_SESSIONS, session_seconds, EXCHANGE_MS)
        .expect("opening the sessions");
    let attempts = lab
        .start_attempts(attempt_seconds, NEW_CONNECTION_MS, 3000)
        .expect("starting new connections");
    Traffic { sessions, attempts }
}

/// How long after an admin deletes a steering rule a new connection may break: one
/// whose first packets left through the main table's default before the daemon put
/// the rule back (in milliseconds) is reset when its packets return to their
/// uplink, as masquerade ends a NATed connection that changes interface.
const DAMAGE_WINDOW: f64 = 0.1;

/// Waits for the traffic to end, prints the figures and asserts that nothing moved
/// or broke.
fn assert_nothing_lost(lab: &Lab, traffic: Traffic, what: &str) {
    assert_nothing_lost_but_at(lab, traffic, what, None);
}

/// [`assert_nothing_lost`], but a new connection started within [`DAMAGE_WINDOW`]
/// after `damage` (wall-clock seconds) may fail.
fn assert_nothing_lost_but_at(lab: &Lab, traffic: Traffic, what: &str, damage: Option<f64>) {
    let attempts: Vec<Attempt> = Lab::attempts(traffic.attempts).expect("the new connections");
    let report = traffic.sessions.finish().expect("the sessions");
    let in_window =
        |a: &&Attempt| damage.is_some_and(|t| (t..t + DAMAGE_WINDOW).contains(&a.start));
    let excused = attempts.iter().filter(|a| !a.ok).filter(in_window).count();
    let failed = attempts.iter().filter(|a| !a.ok).count() - excused;
    println!(
        "{what}: {} sessions ({} TCP, {} UDP): {} moved, {} broken, {} UDP messages lost; \
         {} new connections: {failed} failed ({excused} more started as a steering rule was deleted)",
        report.tcp.len() + report.udp.len(),
        report.tcp.len(),
        report.udp.len(),
        report.moved(),
        report.broken(),
        report.udp_lost(),
        attempts.len(),
    );
    let troubled: Vec<_> = report
        .all()
        .filter(|s| s.addresses.len() != 1 || s.error.is_some())
        .take(5)
        .collect();
    assert!(
        troubled.is_empty() && report.moved() == 0 && report.broken() == 0,
        "{what}: sessions moved or broke, e.g. {troubled:?}\n{}",
        lab.router_log()
    );
    assert_eq!(
        failed,
        0,
        "{what}: new connections failed\n{}",
        lab.router_log()
    );
    assert!(
        excused <= 2,
        "{what}: {excused} new connections broke by the deleted rule"
    );
    assert!(
        attempts
            .iter()
            .filter(|a| !in_window(a))
            .all(|a| a.address.is_some()),
        "{what}: every new connection answered"
    );
}

#[test]
fn sessions_open_before_the_first_load_keep_their_uplink() {
    if !require_root!() {
        return;
    }
    let mut lab = lab();
    // Opened through the router's plain default route, NATed to ISP 0.
    let traffic = start_traffic(&lab, 6.0, 3.5);
    sleep(Duration::from_secs(1));
    let start = Instant::now();
    lab.start_router().expect("starting multiroute");
    println!("load ready after {} ms", start.elapsed().as_millis());
    assert_nothing_lost(&lab, traffic, "first load");
    let log = lab.router_log();
    let takeover = log
        .lines()
        .find(|l| l.contains("took over the host's running sessions"))
        .unwrap_or_else(|| panic!("no takeover in the log:\n{log}"));
    println!("{takeover}");
    let seeded: usize = takeover
        .split_whitespace()
        .find_map(|word| word.strip_prefix("seeded="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the takeover says how many sessions it seeded: {takeover}"));
    assert!(
        seeded >= TCP_SESSIONS + UDP_SESSIONS,
        "every session open before load came from conntrack: {takeover}"
    );
    // `flows` says so: the sessions' flows were chosen by conntrack, new ones by the
    // hash.
    let flows = lab.flows(&[]).unwrap();
    let by = |why: &str| flows.iter().filter(|f| f["why"] == why).count();
    assert!(
        by("conntrack") >= TCP_SESSIONS + UDP_SESSIONS && by("hash") > 0,
        "{} by conntrack, {} by the hash",
        by("conntrack"),
        by("hash")
    );
    // New connections after the takeover are balanced again, not stuck on ISP 0.
    let spread = lab.connections(600).unwrap();
    assert_eq!(spread.failures, 0);
    assert!(
        spread.hits.iter().all(|&h| h > 50),
        "new flows are balanced after the takeover: {:?}",
        spread.hits
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

/// The unit's `ExecStop=` command line, with `$MAINPID` filled in, as systemd
/// would run it.
fn unit_stop(pid: u32) -> Vec<String> {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/multiroute.service"),
    )
    .expect("reading contrib/multiroute.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStop="))
        .expect("the unit has ExecStop=");
    line.split_whitespace()
        .map(|word| word.replace("$MAINPID", &pid.to_string()))
        .collect()
}

/// Stops the router as `systemctl stop`/`restart` would and waits for it to exit.
fn stop_as_systemd(lab: &mut Lab) {
    let pid = lab.router_pid().expect("the router runs");
    let command = unit_stop(pid);
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .status()
        .expect("running ExecStop");
    assert!(status.success(), "ExecStop {command:?} failed");
    let exit = lab.wait_router_exit().expect("multiroute exits");
    assert_eq!(exit.code(), Some(0), "{}", lab.router_log());
}

#[test]
fn restart_and_upgrade_move_no_session() {
    if !require_root!() {
        return;
    }
    let mut lab = lab();
    lab.start_router().expect("starting multiroute");
    let traffic = start_traffic(&lab, 7.0, 5.5);
    sleep(Duration::from_secs(1));
    // `systemctl restart` on a slow box: two seconds without a daemon.
    stop_as_systemd(&mut lab);
    sleep(Duration::from_secs(2));
    lab.start_router().expect("restarting multiroute");
    sleep(Duration::from_millis(700));
    // An upgrade: a new binary in place, then a restart.
    let upgraded = lab.dir.join("multiroute-upgraded");
    std::fs::copy(multiroute_tests::multiroute_bin(), &upgraded).expect("installing the upgrade");
    stop_as_systemd(&mut lab);
    lab.start_router_with(&upgraded)
        .expect("starting the upgraded multiroute");
    assert_nothing_lost(&lab, traffic, "restart (2 s gap) and upgrade");
    let log = lab.router_log();
    assert_eq!(
        log.matches("adopted the running datapath").count(),
        2,
        "both restarts adopted the datapath:\n{log}"
    );
    assert_eq!(lab.classifiers(), 1, "one program loaded");
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn reload_weights_and_self_repair_move_no_session() {
    if !require_root!() {
        return;
    }
    let mut lab = lab();
    lab.start_router().expect("starting multiroute");
    let router = lab.router();
    let traffic = start_traffic(&lab, 6.0, 4.5);
    sleep(Duration::from_millis(500));
    lab.signal_router(libc::SIGHUP).unwrap();
    sleep(Duration::from_millis(500));
    // Drained: isp0 keeps its sessions and takes no new ones; then back.
    assert!(lab.multiroute(&["weight", "isp0", "0"]).status.success());
    sleep(Duration::from_millis(500));
    assert!(lab.multiroute(&["weight", "isp0", "1"]).status.success());
    sleep(Duration::from_millis(500));
    // An admin deletes a steering rule; a firewall reload flushes every table and
    // loads its own (atomically, as `nft -f` of a file starting with a flush does).
    let damage = multiroute_tests::wall_clock();
    lab.ns(&router, "ip", &["rule", "del", "pref", "10102"])
        .unwrap();
    sleep(Duration::from_millis(500));
    lab.ns(
        &router,
        "nft",
        &[&format!("flush ruleset; {}", multiroute_tests::LAB_NAT)],
    )
    .unwrap();
    assert_nothing_lost_but_at(
        &lab,
        traffic,
        "reload, weight 0 and back, self-repair",
        Some(damage),
    );
    multiroute_tests::wait_until(Duration::from_secs(8), || {
        lab.assert_kernel_matches_plan().is_ok()
            && lab
                .ns(&router, "nft", &["list", "table", "inet", "multiroute"])
                .is_ok()
    })
    .unwrap_or_else(|_| panic!("not repaired:\n{}", lab.router_log()));
    assert_eq!(lab.status().unwrap()["ready"], true);
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn an_uplink_losing_carrier_while_no_daemon_runs_is_routed_around() {
    if !require_root!() {
        return;
    }
    let mut lab = lab();
    lab.start_router().expect("starting multiroute");
    let status = lab.stop_router(libc::SIGTERM).expect("stopping multiroute");
    assert_eq!(status.code(), Some(0));
    // The modem of ISP 0 goes away: wan0 loses carrier, nothing probes.
    lab.ns(&lab.isp(0), "ip", &["link", "set", "cpe", "down"])
        .unwrap();
    let spread = lab.connections(300).unwrap();
    println!("no daemon, wan0 without carrier: {spread:?}");
    assert_eq!(spread.failures, 0, "new connections avoid the dead link");
    assert_eq!(spread.hits[0], 0, "nothing leaves through wan0");
    lab.ns(&lab.isp(0), "ip", &["link", "set", "cpe", "up"])
        .unwrap();
    let out = lab.multiroute(&["unload"]);
    assert!(out.status.success());
}

#[test]
fn a_restart_keeps_a_dead_uplink_dead_until_its_probes_answer() {
    if !require_root!() {
        return;
    }
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: format!(
            "\n[health]\ntargets = [\"{}\"]\ninterval_ms = 200\ntimeout_ms = 200\n",
            multiroute_tests::SERVER
        ),
    })
    .expect("building the lab");
    lab.start_router().expect("starting multiroute");
    lab.fail_upstream(0).unwrap();
    let state = |lab: &Lab| lab.status().unwrap()["uplinks"][0]["state"].clone();
    multiroute_tests::wait_until(Duration::from_secs(5), || state(&lab) == "down")
        .expect("isp0 found dead");
    let status = lab.stop_router(libc::SIGTERM).unwrap();
    assert_eq!(status.code(), Some(0));
    lab.start_router().expect("restarting multiroute");
    assert_eq!(state(&lab), "down", "the restart trusts no dead uplink");
    let spread = lab.connections(200).unwrap();
    assert_eq!(spread.failures, 0);
    assert_eq!(
        spread.hits[0], 0,
        "no new flow on the dead uplink: {spread:?}"
    );
    lab.restore_upstream(0).unwrap();
    let start = Instant::now();
    multiroute_tests::wait_until(Duration::from_secs(5), || state(&lab) == "up")
        .expect("isp0 back once its probes answer");
    println!(
        "isp0 back {} ms after its upstream",
        start.elapsed().as_millis()
    );
    lab.stop_and_unload().expect("stopping multiroute");
}
