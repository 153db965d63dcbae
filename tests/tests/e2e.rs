//! End to end in network namespaces: real veths, real nftables masquerade, a real
//! HTTP server behind simulated ISPs, and `multiroute load` running in the router.
use std::time::Duration;

use multiroute_tests::{
    Connections, Lab, LabOptions, loaded_classifiers, percent, require_root, stdout,
};

fn lab(weights: &[u32]) -> Lab {
    Lab::new(&LabOptions {
        weights: weights.to_vec(),
        extra_config: String::new(),
    })
    .expect("building the lab")
}

/// `count` connections must split like `weights`, each share within ±3 points.
fn assert_split(weights: &[u32], count: usize) {
    let mut lab = lab(weights);
    lab.start_router().expect("starting multiroute");
    let Connections {
        hits,
        failures,
        ports,
    } = lab.connections(count).expect("running the client");
    assert_eq!(
        failures,
        0,
        "every connection must succeed; router log:\n{}",
        lab.router_log()
    );
    let total: u32 = weights.iter().sum();
    for (i, weight) in weights.iter().enumerate() {
        let want = 100.0 * f64::from(*weight) / f64::from(total);
        let got = percent(hits[i], count);
        println!(
            "uplink isp{i} (weight {weight}): {} connections = {got:.2}% (want {want:.2}%)",
            hits[i]
        );
        assert!(
            (got - want).abs() <= 3.0,
            "isp{i}: {got:.2}% vs {want:.2}% ({hits:?})"
        );
    }
    let flows = status_flows(&lab).iter().sum::<u64>() as usize;
    // The server closes first, so the client may reuse a source port at once: such a
    // connection is the same 5-tuple, hence the same flow. Nothing else crosses lan0.
    assert_eq!(
        flows, ports,
        "one flow per distinct 5-tuple ({count} connections)"
    );
    stop_cleanly(&mut lab);
}

/// Connections tracked per uplink, as `status --json` reports them.
fn status_flows(lab: &Lab) -> Vec<u64> {
    let out = lab.multiroute(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    status["uplinks"]
        .as_array()
        .expect("status --json lists uplinks")
        .iter()
        .map(|u| u["flows"].as_u64().expect("flows is a number"))
        .collect()
}

/// SIGTERM to the running `load`: it must exit 0 (leaving steering in place).
fn stop_cleanly(lab: &mut Lab) {
    let status = lab.stop_router(libc::SIGTERM).expect("stopping multiroute");
    assert_eq!(status.code(), Some(0), "{}", lab.router_log());
}

fn unload(lab: &Lab) {
    let out = lab.multiroute(&["unload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The router is exactly as before `load`: routing, TC, pins, and no classifier
/// left in the kernel.
fn assert_restored(lab: &Lab, pristine: &str, when: &str) {
    assert_eq!(lab.router_snapshot().unwrap(), pristine, "{when}");
    assert_eq!(loaded_classifiers(), 0, "{when}: the classifier is gone");
    assert!(
        lab.pins().is_empty(),
        "{when}: no pins left: {:?}",
        lab.pins()
    );
}

#[test]
fn two_uplinks_one_to_one() {
    if require_root("two_uplinks_one_to_one") {
        assert_split(&[1, 1], 3000);
    }
}

#[test]
fn three_uplinks_one_two_three() {
    if require_root("three_uplinks_one_two_three") {
        assert_split(&[1, 2, 3], 3000);
    }
}

#[test]
fn long_transfer_keeps_its_uplink() {
    if !require_root("long_transfer_keeps_its_uplink") {
        return;
    }
    let mut lab = lab(&[1, 1]);
    lab.start_router().expect("starting multiroute");
    let before = lab.uplink_rx_bytes().unwrap();
    let stream = lab.start_stream(12).expect("starting the download");
    // New flows keep arriving on both uplinks while the transfer runs.
    let Connections { hits, failures, .. } = lab.connections(1000).unwrap();
    assert_eq!(failures, 0);
    assert!(
        hits.iter().all(|h| *h > 300),
        "both uplinks take new flows meanwhile: {hits:?}"
    );
    let output = stream.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the download failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let bytes = report["bytes"].as_u64().unwrap();
    let seconds = report["seconds"].as_f64().unwrap();
    assert!(seconds >= 10.0, "the transfer ran {seconds:.1} s");
    let after = lab.uplink_rx_bytes().unwrap();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("download: {bytes} bytes in {seconds:.1} s; received per uplink: {delta:?}");
    let carried = delta.iter().filter(|d| **d >= bytes).count();
    assert_eq!(
        carried, 1,
        "exactly one uplink carried the whole transfer: {delta:?} for {bytes} bytes"
    );
    let busiest_other = delta
        .iter()
        .copied()
        .filter(|d| *d < bytes)
        .max()
        .unwrap_or(0);
    assert!(
        busiest_other < bytes / 4,
        "the other uplink saw only the short connections: {delta:?}"
    );
}

#[test]
fn unload_restores_the_host_exactly() {
    if !require_root("unload_restores_the_host_exactly") {
        return;
    }
    let mut lab = lab(&[1, 1]);
    let pristine = lab.router_snapshot().unwrap();
    assert_eq!(
        loaded_classifiers(),
        0,
        "no classifier loaded before the test"
    );

    // SIGTERM stops the daemon but leaves routing and the datapath steering (a
    // restart must move no session); `unload` removes everything.
    lab.start_router().unwrap();
    let running = lab.router_snapshot().unwrap();
    assert_ne!(running, pristine, "load changed rules and routes");
    let rules = stdout(&lab.ns(&lab.router(), "ip", &["rule"]).unwrap());
    assert!(rules.contains("fwmark 0x100/0xff00 lookup 101"), "{rules}");
    assert!(rules.contains("suppress_prefixlength 0"), "{rules}");
    let main = stdout(
        &lab.ns(&lab.router(), "ip", &["route", "show", "default"])
            .unwrap(),
    );
    assert!(
        main.contains("nexthop via 198.18.0.1") && main.contains("nexthop via 198.18.1.1"),
        "{main}"
    );
    assert_eq!(loaded_classifiers(), 1);
    lab.connections(200).unwrap();
    stop_cleanly(&mut lab);
    assert_eq!(
        lab.router_snapshot().unwrap(),
        running,
        "SIGTERM leaves rules, routes and the datapath as they were"
    );
    assert_eq!(loaded_classifiers(), 1, "still steering after SIGTERM");
    let Connections { hits, failures, .. } = lab.connections(400).unwrap();
    assert_eq!(failures, 0);
    assert!(
        hits.iter().all(|h| *h > 100),
        "the datapath steers without the daemon: {hits:?}"
    );
    unload(&lab);
    assert_restored(
        &lab,
        &pristine,
        "unload after SIGTERM must restore the host",
    );

    // SIGKILL: steering goes on without the daemon; `unload` cleans up.
    lab.start_router().unwrap();
    lab.stop_router(libc::SIGKILL).unwrap();
    let Connections { hits, failures, .. } = lab.connections(400).unwrap();
    assert_eq!(failures, 0);
    assert!(
        hits.iter().all(|h| *h > 100),
        "the pinned datapath still steers: {hits:?}"
    );
    unload(&lab);
    assert_restored(
        &lab,
        &pristine,
        "unload after SIGKILL must restore the host",
    );

    // `unload` while `load` runs: the daemon is asked to stop, then unload removes
    // everything.
    lab.start_router().unwrap();
    unload(&lab);
    stop_cleanly(&mut lab);
    assert_restored(
        &lab,
        &pristine,
        "unload of a running load must restore the host",
    );

    let again = lab.multiroute(&["unload"]);
    assert_eq!(again.status.code(), Some(0), "unload is idempotent");
    assert!(
        stdout(&again).contains("nothing to remove"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn bad_input_changes_nothing() {
    if !require_root("bad_input_changes_nothing") {
        return;
    }
    let mut lab = lab(&[1, 1]);
    let pristine = lab.router_snapshot().unwrap();
    let good = std::fs::read_to_string(&lab.config).unwrap();

    std::fs::write(&lab.config, format!("{good}\n[health]\nintervall_ms = 5\n")).unwrap();
    let out = lab.multiroute(&["load"]);
    assert_eq!(out.status.code(), Some(2), "config error exits 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("multiroute.toml") && err.contains("intervall_ms") && err.lines().count() == 1,
        "{err}"
    );

    std::fs::write(&lab.config, good.replace("wan1", "wan9")).unwrap();
    let out = lab.multiroute(&["load"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"wan9\" of uplink \"isp1\" does not exist")
    );
    assert_eq!(lab.router_snapshot().unwrap(), pristine, "nothing changed");
    assert!(lab.pins().is_empty());

    std::fs::write(&lab.config, &good).unwrap();
    let check = lab.multiroute(&["check"]);
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout(&check)
            .contains("ok: uplink isp1 on wan1: address 198.18.1.2/24, gateway 198.18.1.1")
    );
    assert_eq!(
        lab.router_snapshot().unwrap(),
        pristine,
        "check changes nothing"
    );

    lab.start_router().unwrap();
    let second = lab.multiroute(&["load"]);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("already running") && err.contains("PID"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(100));
    stop_cleanly(&mut lab); // the first one is unharmed by the refused second load
}
