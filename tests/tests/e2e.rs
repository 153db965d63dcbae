//! End to end in network namespaces: real veths, real nftables masquerade, a real
//! HTTP server behind simulated ISPs, and `multiroute load` running in the router.
use std::time::Duration;

use multiroute_tests::{Connections, Lab, LabOptions, percent, require_root, stdout};

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
    assert_eq!(lab.classifiers(), 0, "{when}: the classifier is gone");
    assert!(
        lab.pins().is_empty(),
        "{when}: no pins left: {:?}",
        lab.pins()
    );
}

#[test]
fn two_uplinks_one_to_one() {
    if require_root!() {
        assert_split(&[1, 1], 3000);
    }
}

#[test]
fn three_uplinks_one_two_three() {
    if require_root!() {
        assert_split(&[1, 2, 3], 3000);
    }
}

#[test]
fn long_transfer_keeps_its_uplink() {
    if !require_root!() {
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
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1]);
    let pristine = lab.router_snapshot().unwrap();

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
    assert_eq!(lab.classifiers(), 1);
    let version = stdout(&lab.multiroute(&["--version"]));
    assert_eq!(
        lab.status().unwrap()["version"]
            .as_str()
            .map(|v| format!("multiroute {v}\n")),
        Some(version),
        "status names the running daemon's version"
    );
    lab.connections(200).unwrap();
    stop_cleanly(&mut lab);
    assert_eq!(
        lab.router_snapshot().unwrap(),
        running,
        "SIGTERM leaves rules, routes and the datapath as they were"
    );
    assert_eq!(lab.classifiers(), 1, "still steering after SIGTERM");
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
    if !require_root!() {
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

/// Gives the LAN client `count` more addresses from 100.64.16.1 on, one after
/// another (routed by the router through it, 100.64.16.0/20).
fn add_client_sources(lab: &Lab, count: usize) {
    let first = u32::from(std::net::Ipv4Addr::new(100, 64, 16, 1));
    let batch: String = (0..count as u32)
        .map(|i| {
            format!(
                "addr add {}/32 dev eth0\n",
                std::net::Ipv4Addr::from(first + i)
            )
        })
        .collect();
    let file = lab.dir.join("sources.batch");
    std::fs::write(&file, batch).unwrap();
    lab.ns(&lab.client(), "ip", &["-batch", &file.to_string_lossy()])
        .unwrap();
    lab.ns(
        &lab.router(),
        "ip",
        &[
            "route",
            "add",
            "100.64.16.0/20",
            "via",
            "100.64.0.2",
            "dev",
            "lan0",
        ],
    )
    .unwrap();
}

/// From each of `count` sources from `first` on, one request to each server
/// address: per source the uplinks the server saw, in order.
fn per_source(
    lab: &Lab,
    first: &str,
    count: usize,
    servers: &[std::net::Ipv4Addr],
) -> Vec<Vec<usize>> {
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("http://{s}:{}/", multiroute_tests::SERVER_PORT))
        .collect();
    let mut args = vec![
        multiroute_tests::lab_script("client.py"),
        "sources".into(),
        first.into(),
        count.to_string(),
    ];
    args.extend(urls);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.ns(&lab.client(), "python3", &args).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&String> = report["seen"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, seen)| seen.as_array().unwrap().iter().any(|a| a.is_null()))
        .map(|(source, _)| source)
        .take(8)
        .collect();
    assert!(
        failed.is_empty(),
        "{} requests failed, from e.g. {failed:?}",
        report["failures"]
    );
    report["seen"]
        .as_object()
        .unwrap()
        .values()
        .map(|seen| {
            seen.as_array()
                .unwrap()
                .iter()
                .map(|a| lab.uplink_index(a.as_str().unwrap()).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn balancing_by_addresses_or_by_source_keeps_hosts_together() {
    if !require_root!() {
        return;
    }
    const SOURCES: usize = 1000;
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: "\n[balance]\nby = \"source\"\n".into(),
    })
    .unwrap();
    add_client_sources(&lab, 2 * SOURCES);
    lab.start_router().unwrap();
    let server = multiroute_tests::SERVER;
    let server2 = multiroute_tests::SERVER2;
    // by = "source": every connection of a LAN host on one uplink.
    let seen = per_source(&lab, "100.64.16.1", SOURCES, &[server, server2, server]);
    let split = seen.iter().filter(|s| s[0] == 0).count();
    println!(
        "by source: {SOURCES} hosts, {split} on isp0, {} split across uplinks",
        seen.iter().filter(|s| s.iter().any(|u| *u != s[0])).count()
    );
    assert!(
        seen.iter().all(|s| s.iter().all(|u| *u == s[0])),
        "each host on one uplink"
    );
    assert!(
        (percent(split, SOURCES) - 50.0).abs() <= 3.0,
        "{split} of {SOURCES} hosts on isp0"
    );

    // by = "addresses" (reloaded: running flows stay): one uplink per host and
    // server, the two servers independently.
    let config = std::fs::read_to_string(&lab.config).unwrap();
    std::fs::write(
        &lab.config,
        config.replace("by = \"source\"", "by = \"addresses\""),
    )
    .unwrap();
    lab.signal_router(libc::SIGHUP).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Other hosts: a reused 5-tuple of the first round would be that flow.
    let seen = per_source(
        &lab,
        "100.64.19.233",
        SOURCES,
        &[server2, server, server2, server],
    );
    let pairs_on_isp0 = seen
        .iter()
        .map(|s| usize::from(s[0] == 0) + usize::from(s[1] == 0))
        .sum::<usize>();
    let hosts_split = seen.iter().filter(|s| s[0] != s[1]).count();
    println!(
        "by addresses: {pairs_on_isp0} of {} host-server pairs on isp0; {hosts_split} hosts use both uplinks",
        2 * SOURCES
    );
    assert!(
        seen.iter().all(|s| s[0] == s[2] && s[1] == s[3]),
        "each host and server on one uplink"
    );
    assert!((percent(pairs_on_isp0, 2 * SOURCES) - 50.0).abs() <= 3.0);
    assert!(
        hosts_split > SOURCES / 4,
        "a host's servers spread over both uplinks: {hosts_split}"
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn version_names_the_commit_and_the_map_layout() {
    let out = std::process::Command::new(multiroute_tests::multiroute_bin())
        .arg("--version")
        .output()
        .expect("running multiroute --version");
    assert!(out.status.success());
    let version = stdout(&out);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or("unknown".to_owned(), |out| stdout(&out).trim().to_owned());
    assert_eq!(
        version.trim(),
        format!(
            "multiroute {} (commit {commit}, map layout {})",
            env!("CARGO_PKG_VERSION"),
            multiroute_ebpf::MAP_LAYOUT
        )
    );
}
