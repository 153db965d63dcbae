//! Health that sees a line's quality, end to end: an ISP losing 30 % of the
//! uplink's packets at random, and a saturated 20 Mbit/s upload whose queue delays
//! the probes. A bad line is "degraded" (alive, no new flows while a good uplink
//! of its tier has them), neither flapping down nor mistaken for a dead one.
use std::{thread::sleep, time::Duration};

use multiroute_tests::{Lab, LabOptions, SERVER, require_root, wait_until};
use serde_json::Value;

/// isp0's entry in `status --json`.
fn isp0(lab: &Lab) -> Value {
    let status = lab.status().expect("status --json");
    status["uplinks"][0].clone()
}

/// isp0's state every 250 ms for `seconds`: the states seen, in order, without
/// repeats, and the state changes the daemon counted over the time.
fn watch_isp0(lab: &Lab, seconds: u64) -> (Vec<String>, u64) {
    let first = isp0(lab)["state_changes"].as_u64().unwrap_or(0);
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..seconds * 4 {
        let state = isp0(lab)["state"].as_str().unwrap_or("?").to_owned();
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        sleep(Duration::from_millis(250));
    }
    let changes = isp0(lab)["state_changes"].as_u64().unwrap_or(0) - first;
    (seen, changes)
}

/// Waits (bounded) for isp0 to show `state`; returns the seconds it took.
fn until_isp0(lab: &Lab, state: &str, within: Duration) -> f64 {
    let start = std::time::Instant::now();
    wait_until(within, || isp0(lab)["state"] == state).unwrap_or_else(|_| {
        panic!(
            "isp0 never became {state} within {within:?}: {}\n{}",
            isp0(lab),
            lab.router_log()
        )
    });
    start.elapsed().as_secs_f64()
}

#[test]
fn random_loss_degrades_the_uplink_without_flapping_and_it_recovers() {
    if !require_root!() {
        return;
    }
    // Probes beyond the ISP every 200 ms: a 20-probe window is 4 s.
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: format!(
            "\n[health]\ntargets = [\"{SERVER}\"]\ninterval_ms = 200\ntimeout_ms = 500\n"
        ),
    })
    .expect("building the lab");
    lab.start_router().expect("starting multiroute");
    sleep(Duration::from_secs(5));
    assert_eq!(isp0(&lab)["state"], "up", "{}", isp0(&lab));
    // Sessions on both uplinks from before the loss to after the recovery:
    // degrading an uplink keeps its sessions where they are.
    let sessions = lab.start_sessions(20, 10, 110.0, 1000).unwrap();
    sleep(Duration::from_secs(2));

    lab.lose_upstream(0, 30).unwrap();
    let took = until_isp0(&lab, "degraded", Duration::from_secs(12));
    let degraded = isp0(&lab);
    println!("30 % loss on isp0: degraded after {took:.1} s: {degraded}");
    let reason = degraded["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("% > 20 % over 20 probes"),
        "the reason names the loss and the limit: {reason}"
    );
    assert_eq!(degraded["new_flows"], false, "{degraded}");

    let spread = lab.connections(200).unwrap();
    println!("200 new connections while isp0 is degraded: {spread:?}");
    assert_eq!(spread.failures, 0);
    assert_eq!(spread.hits, [0, 200], "no new flow on the degraded uplink");

    let (seen, changes) = watch_isp0(&lab, 60);
    println!("over 60 s of 30 % loss: states {seen:?}, {changes} changes");
    // The bound: at most 2 state changes in 60 s, and never down.
    assert!(changes <= 2, "flapping: {seen:?}\n{}", lab.router_log());
    assert!(!seen.iter().any(|s| s == "down"), "{seen:?}");
    let human = String::from_utf8_lossy(&lab.multiroute(&["status"]).stdout).into_owned();
    assert!(
        human.contains("isp0 is degraded: "),
        "status says degraded and why:\n{human}"
    );
    assert!(
        lab.router_log().contains("uplink DEGRADED"),
        "{}",
        lab.router_log()
    );

    lab.restore_upstream(0).unwrap();
    let back = until_isp0(&lab, "up", Duration::from_secs(20));
    println!(
        "loss stopped: isp0 up again after {back:.1} s: {}",
        isp0(&lab)
    );
    let spread = lab.connections(200).unwrap();
    assert!(
        spread.hits[0] > 40,
        "isp0 takes new flows again: {spread:?}"
    );
    let total = isp0(&lab)["state_changes"].as_u64().unwrap_or(0);
    assert!(total >= 2, "up → degraded (→ …) → up: {total}");
    let report = sessions.finish().unwrap();
    let isp1 = Lab::uplink_address(1).to_string();
    let on_isp1: Vec<_> = report
        .all()
        .filter(|s| s.addresses == [isp1.clone()])
        .collect();
    println!(
        "sessions across up → degraded → up: {} moved, {} of {} on isp1 broken",
        report.moved(),
        on_isp1.iter().filter(|s| s.broke()).count(),
        on_isp1.len()
    );
    assert_eq!(report.moved(), 0, "no session changes uplink: {report:?}");
    assert!(!on_isp1.is_empty(), "{report:?}");
    // isp0's own sessions cross 30 % loss (a TCP one may time out); isp1's none.
    assert!(on_isp1.iter().all(|s| !s.broke()), "{on_isp1:?}");
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn a_saturated_upload_is_not_dead_and_queueing_delay_over_the_limit_degrades() {
    if !require_root!() {
        return;
    }
    // The default health config, probing beyond the ISP; the upload is pinned to
    // isp0 by a policy rule.
    let rule = "\n[[rule]]\nname = \"upload\"\nproto = \"tcp\"\ndst_port = \"5201\"\nuplinks = [\"isp0\"]\n";
    let health = format!("\n[health]\ntargets = [\"{SERVER}\"]\n");
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: format!("{health}{rule}"),
    })
    .expect("building the lab");
    let inet = lab.inet();
    lab.start_in(&inet, "iperf3", &["-s", "-B", &SERVER.to_string()])
        .expect("starting iperf3 -s");
    lab.start_router().expect("starting multiroute");
    lab.shape_upstream(0, 20, 400).unwrap();
    sleep(Duration::from_secs(1));
    let client = lab.client();
    lab.start_in(
        &client,
        "iperf3",
        &["-c", &SERVER.to_string(), "-t", "90", "-C", "cubic"],
    )
    .expect("starting the upload");

    // The bloat case: probes come back ~400 ms late, under the 1 s timeout and
    // the 500 ms RTT limit. Nothing changes.
    let (seen, changes) = watch_isp0(&lab, 20);
    let loaded = isp0(&lab);
    println!("saturated 20 Mbit/s upload, default health: {seen:?}, {loaded}");
    let rtt = loaded["rtt_ms"].as_f64().unwrap_or(0.0);
    assert!(rtt > 150.0, "the upload fills the queue: rtt {rtt} ms");
    assert_eq!(seen, ["up"], "{}", lab.router_log());
    assert_eq!(changes, 0, "0 false transitions");

    // The same line held to 150 ms: degraded within a window (10 s).
    let blocks = format!(
        "{}[uplink.health]\nmax_rtt_ms = 150\nrecover_rtt_ms = 50\n{}",
        Lab::uplink_block(0, 1),
        Lab::uplink_block(1, 1)
    );
    lab.write_config_with(&blocks, &format!("{health}{rule}"))
        .unwrap();
    lab.signal_router(libc::SIGHUP).unwrap();
    let took = until_isp0(&lab, "degraded", Duration::from_secs(15));
    let degraded = isp0(&lab);
    println!("held to 150 ms: degraded after {took:.1} s: {degraded}");
    let reason = degraded["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("ms > 150 ms"), "{reason}");
    let spread = lab.connections(100).unwrap();
    assert_eq!(spread.hits, [0, 100], "{spread:?}");

    // Bufferbloat past the probes' 1 s timeout: the default limits again and a
    // 1.6 s queue. Each probe is counted lost at 1 s and answers late: the line
    // is slow, not dead — degraded by its RTT, never down.
    lab.write_config_with(
        &format!("{}{}", Lab::uplink_block(0, 1), Lab::uplink_block(1, 1)),
        &format!("{health}{rule}"),
    )
    .unwrap();
    lab.signal_router(libc::SIGHUP).unwrap();
    lab.shape_upstream(0, 20, 1600).unwrap();
    let (seen, _) = watch_isp0(&lab, 25);
    let bloated = isp0(&lab);
    println!("a 1.6 s queue: {seen:?}, {bloated}");
    assert!(
        !seen.iter().any(|s| s == "down"),
        "late answers keep it alive: {seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("degraded"),
        "{bloated}"
    );
    // Still degraded from above: the probe says what it is over now.
    let over = bloated["probes"][0]["degraded"]
        .as_str()
        .unwrap_or_default();
    assert!(over.contains("ms > 500 ms"), "{over}");
    lab.stop_and_unload().expect("stopping multiroute");
}
