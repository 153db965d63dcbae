//! Health checks and failover, end to end: a silent upstream outage, a link going
//! down, a running UDP exchange, a long transfer on the healthy uplink, alternating
//! probe loss, and every uplink dead. Times are measured from the outside: a client opens
//! a new connection every 20 ms and the test finds when they all succeed again.
use std::{
    io::{BufRead, BufReader, Read},
    thread::sleep,
    time::Duration,
};

use multiroute_tests::{
    Attempt, Lab, LabOptions, SERVER, SERVER_PORT, SERVER2, SIP_PORT, UNREACHABLE, measure_outage,
    percent, require_root, wait_until, wall_clock,
};

/// The health config: a probe every 200 ms to a target beyond the ISP's
/// gateway, 3 losses down, 3 answers up.
const INTERVAL_S: f64 = 0.2;
const UP: f64 = 3.0;

fn health(target: std::net::Ipv4Addr) -> String {
    format!(
        "\n[health]\ntargets = [\"{target}\"]\ninterval_ms = 200\ntimeout_ms = 200\ndown = 3\nup = 3\n"
    )
}

fn running_lab(target: std::net::Ipv4Addr) -> Lab {
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: health(target),
    })
    .expect("building the lab");
    lab.start_router().expect("starting multiroute");
    lab
}

/// Attempts: one new connection every 20 ms, each given 500 ms.
fn start_attempts(lab: &Lab, seconds: f64) -> std::process::Child {
    lab.start_attempts(seconds, 20, 500)
        .expect("starting the client")
}

/// Seconds from `t0` until every new connection succeeds, and how many failed.
fn failover_after(attempts: &[Attempt], t0: f64) -> (f64, usize) {
    let outage = measure_outage(attempts, t0).expect("measuring the outage");
    (outage.seconds, outage.failed)
}

/// The uplink's entry in `status --json`.
fn uplink_status(lab: &Lab, name: &str) -> serde_json::Value {
    let status = lab.status().expect("status --json");
    status["uplinks"]
        .as_array()
        .expect("uplinks")
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} missing from status: {status}"))
}

/// The daemon's own account of state changes, with its apply times.
fn print_transitions(lab: &Lab) {
    for line in lab.router_log().lines().filter(|l| {
        [
            "uplink DOWN",
            "uplink up",
            "uplink DEGRADED",
            "probing at once",
        ]
        .iter()
        .any(|event| l.contains(event))
    }) {
        println!("  router: {line}");
    }
}

/// The long transfer's conntrack entry: (client port, conntrack id).
fn transfer_entry(lab: &Lab, client_port: Option<u16>) -> (u16, u64) {
    let mut args = vec![
        "-L",
        "-p",
        "tcp",
        "--dport",
        "8080",
        "--state",
        "ESTABLISHED",
        "-o",
        "id",
    ];
    let port = client_port.map(|p| p.to_string());
    if let Some(port) = &port {
        args.extend(["--sport", port]);
    }
    let out = lab
        .ns(&lab.router(), "conntrack", &args)
        .expect("conntrack -L");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly the transfer is established:\n{text}"
    );
    let field = |name: &str| -> u64 {
        lines[0]
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {}", lines[0]))
    };
    (field("sport=") as u16, field("id="))
}

#[test]
fn silent_upstream_failure_fails_over_within_a_second_and_recovers() {
    if !require_root!() {
        return;
    }
    let mut lab = running_lab(SERVER);
    // A long download: whichever uplink carries it is the healthy one.
    let before = lab.uplink_rx_bytes().unwrap();
    let stream = lab.start_stream(14).expect("starting the download");
    sleep(Duration::from_secs(1));
    let after = lab.uplink_rx_bytes().unwrap();
    let healthy = if after[0] - before[0] > after[1] - before[1] {
        0
    } else {
        1
    };
    let victim = 1 - healthy;
    let (port, id) = transfer_entry(&lab, None);

    let client = start_attempts(&lab, 3.0);
    sleep(Duration::from_millis(800));
    let t0 = wall_clock();
    lab.fail_upstream(victim).unwrap();
    let attempts = Lab::attempts(client).unwrap();
    let (failover, failed) = failover_after(&attempts, t0);
    println!(
        "silent failure of isp{victim}: new connections all succeed {:.0} ms after the outage ({failed} of {} failed before)",
        failover * 1000.0,
        attempts.len()
    );
    assert!(failed > 0, "connections through isp{victim} fail at first");
    assert!(failover <= 1.0, "failover took {failover:.3} s");
    let healthy_address = Lab::uplink_address(healthy).to_string();
    assert!(
        attempts
            .iter()
            .filter(|a| a.start > t0 + failover)
            .all(|a| a.address.as_deref() == Some(&healthy_address)),
        "after failover every new flow uses isp{healthy}"
    );
    let down = uplink_status(&lab, &format!("isp{victim}"));
    assert_eq!(down["state"], "down", "{down}");
    assert_eq!(down["state_changes"], 1, "{down}");
    let reason = down["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("missed 3 probes"), "{reason}");
    assert!(down["loss_percent"].as_f64().unwrap_or(0.0) > 0.0, "{down}");
    assert!(!lab.status().unwrap()["fail_open"].as_bool().unwrap());
    assert!(
        lab.router_log().contains("uplink DOWN"),
        "{}",
        lab.router_log()
    );
    // The dead uplink keeps its table (probes still go through it) but leaves the
    // main default: the kernel holds exactly the running plan.
    lab.assert_kernel_matches_plan().unwrap();

    // Recovery: new flows come back to the ISP in proportion to weight. 4.5 s
    // leave ≥ 145 new flows after a recovery at the 1.1 s bound, so the 35-65 %
    // band is ≥ 3.5 standard deviations wide (3 s once left 87 flows: 34.5 %).
    let client = start_attempts(&lab, 4.5);
    sleep(Duration::from_millis(500));
    let t1 = wall_clock();
    lab.restore_upstream(victim).unwrap();
    let attempts = Lab::attempts(client).unwrap();
    let victim_address = Lab::uplink_address(victim).to_string();
    let back = attempts
        .iter()
        .find(|a| a.start >= t1 && a.address.as_deref() == Some(&victim_address))
        .map(|a| a.start - t1)
        .expect("new flows use the recovered ISP again");
    let after_recovery: Vec<_> = attempts.iter().filter(|a| a.start > t1 + back).collect();
    let share = percent(
        after_recovery
            .iter()
            .filter(|a| a.address.as_deref() == Some(&victim_address))
            .count(),
        after_recovery.len(),
    );
    println!(
        "recovery of isp{victim}: first new flow through it {:.0} ms after the ISP came back; then {share:.1}% of {} new flows (weight share 50%)",
        back * 1000.0,
        after_recovery.len()
    );
    print_transitions(&lab);
    assert!(back <= UP * INTERVAL_S + 0.5, "recovery took {back:.3} s");
    assert!(
        (35.0..=65.0).contains(&share),
        "share after recovery {share:.1}%"
    );
    assert!(
        attempts.iter().all(|a| a.ok),
        "no connection fails on recovery"
    );
    assert_eq!(
        uplink_status(&lab, &format!("isp{victim}"))["state_changes"],
        2
    );

    // The transfer on the healthy uplink never noticed.
    assert_eq!(
        transfer_entry(&lab, Some(port)),
        (port, id),
        "the healthy uplink's conntrack entry was not flushed"
    );
    let output = stream.wait_with_output().unwrap();
    assert!(output.status.success(), "the transfer was interrupted");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report["seconds"].as_f64().unwrap() >= 13.5, "{report}");
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn a_busy_uplink_failing_silently_is_routed_around_within_300_ms_by_default() {
    if !require_root!() {
        return;
    }
    // The default health timing (a probe every 500 ms, 1 s timeout, 3 down):
    // probes alone would take ≈ 2 s. The line is busy with 200 new connections/s,
    // and its own counters show packets going out with nothing coming back.
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: format!("\n[health]\ntargets = [\"{SERVER}\"]\n"),
    })
    .expect("building the lab");
    lab.start_router().expect("starting multiroute");
    let client = lab
        .start_attempts(3.0, 5, 500)
        .expect("starting the client");
    sleep(Duration::from_millis(1000));
    let t0 = wall_clock();
    lab.fail_upstream(0).unwrap();
    let attempts = Lab::attempts(client).unwrap();
    let (failover, failed) = failover_after(&attempts, t0);
    println!(
        "busy isp0 failed silently: new connections all succeed {:.0} ms after the outage ({failed} of {} failed before)",
        failover * 1000.0,
        attempts.len()
    );
    print_transitions(&lab);
    assert!(failed > 0, "connections through isp0 fail at first");
    assert!(failover <= 0.3, "failover took {failover:.3} s");
    assert_eq!(uplink_status(&lab, "isp0")["state"], "down");
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn link_down_fails_over_within_200_ms() {
    if !require_root!() {
        return;
    }
    let mut lab = running_lab(SERVER);
    let client = start_attempts(&lab, 2.5);
    sleep(Duration::from_millis(800));
    let t0 = wall_clock();
    lab.set_uplink_link(0, false).unwrap();
    let attempts = Lab::attempts(client).unwrap();
    let (failover, failed) = failover_after(&attempts, t0);
    println!(
        "link down on wan0: new connections all succeed {:.0} ms after ({failed} of {} failed)",
        failover * 1000.0,
        attempts.len()
    );
    assert!(failover <= 0.2, "failover took {failover:.3} s");
    let down = uplink_status(&lab, "isp0");
    assert_eq!(down["state"], "down", "{down}");
    assert!(
        down["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("down or has no carrier"),
        "{down}"
    );
    lab.assert_kernel_matches_plan().unwrap();

    let client = start_attempts(&lab, 2.5);
    sleep(Duration::from_millis(500));
    let t1 = wall_clock();
    lab.set_uplink_link(0, true).unwrap();
    let attempts = Lab::attempts(client).unwrap();
    let back = attempts
        .iter()
        .find(|a| a.start >= t1 && a.address.as_deref() == Some("198.18.0.2"))
        .map(|a| a.start - t1)
        .expect("new flows use wan0 again once it is up");
    println!(
        "link up on wan0: first new flow through it after {:.0} ms",
        back * 1000.0
    );
    assert!(back <= UP * INTERVAL_S + 0.5, "recovery took {back:.3} s");
    assert!(
        attempts.iter().all(|a| a.ok),
        "no connection fails on recovery"
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn udp_exchange_moves_to_a_live_uplink() {
    if !require_root!() {
        return;
    }
    let mut lab = running_lab(SERVER);
    let mut client = lab.start_udp(4.0, 20).expect("starting the UDP client");
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().unwrap().unwrap()).expect("the first answer");
    let first = first["first"]
        .as_str()
        .expect("an answer before failure")
        .to_owned();
    let victim = lab.uplink_index(&first).expect("an uplink address");
    sleep(Duration::from_millis(500));
    lab.fail_upstream(victim).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(&lines.next().unwrap().unwrap()).expect("the UDP report");
    let mut stderr = String::new();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(client.wait().unwrap().success(), "{stderr}");
    let lost = last["lost"].as_u64().unwrap();
    println!(
        "UDP, one request per 20 ms, isp{victim} failed silently: {lost} of {} requests lost (≈{} ms), then answered via {}",
        last["sent"],
        lost * 20,
        last["last_address"]
    );
    assert_ne!(last["last_address"], first.as_str(), "{last}");
    assert!(lost > 0 && lost <= 60, "lost {lost} requests: {last}");
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn alternating_probe_loss_degrades_the_uplink_but_never_takes_it_down() {
    if !require_root!() {
        return;
    }
    let mut lab = running_lab(SERVER);
    lab.flap_probes(0).unwrap();
    sleep(Duration::from_secs(6));
    let flapping = uplink_status(&lab, "isp0");
    println!("isp0 losing every other probe for 6 s: {flapping}");
    assert_eq!(flapping["state"], "degraded", "{flapping}");
    assert_eq!(
        flapping["state_changes"], 1,
        "up → degraded only: {flapping}"
    );
    let loss = flapping["loss_percent"].as_f64().unwrap();
    assert!((35.0..=65.0).contains(&loss), "loss {loss}");
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn all_uplinks_dead_fails_open() {
    if !require_root!() {
        return;
    }
    let mut lab = running_lab(UNREACHABLE);
    wait_until(Duration::from_secs(5), || {
        lab.status()
            .is_ok_and(|s| s["fail_open"].as_bool() == Some(true))
    })
    .expect("both uplinks go down when nothing answers their probes");
    assert!(
        lab.router_log().contains("ALL UPLINKS ARE DOWN"),
        "{}",
        lab.router_log()
    );
    let human = lab.multiroute(&["status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("ALL UPLINKS DOWN"));
    // The main table's original default (via isp0) carries the LAN meanwhile.
    let seen = lab.connections(100).unwrap();
    assert_eq!(seen.failures, 0, "{}", lab.router_log());
    assert_eq!(seen.hits, [100, 0]);
    lab.stop_and_unload().expect("stopping multiroute");
}

/// Seconds until `uplink` shows `state` in `status`, polling every 50 ms.
fn time_until_state(lab: &Lab, uplink: usize, state: &str) -> f64 {
    let start = std::time::Instant::now();
    wait_until(Duration::from_secs(5), || {
        lab.status()
            .is_ok_and(|s| s["uplinks"][uplink]["state"] == state)
    })
    .unwrap_or_else(|_| panic!("isp{uplink} never became {state}:\n{}", lab.router_log()));
    start.elapsed().as_secs_f64()
}

#[test]
fn tcp_and_dns_probes_keep_an_uplink_that_drops_icmp_and_catch_silence() {
    if !require_root!() {
        return;
    }
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: String::new(),
    })
    .expect("building the lab");
    let inet = lab.inet();
    lab.start_dnsmasq(
        &inet,
        "dns.log",
        &multiroute_tests::SERVER2.to_string(),
        &[],
    )
    .expect("starting dnsmasq");
    // ISP 0 is an LTE carrier that drops every ICMP packet, its own included.
    lab.ns(
        &lab.isp(0),
        "nft",
        &["add table ip noicmp; add chain ip noicmp filter { type filter hook prerouting priority 0; }; add rule ip noicmp filter icmp type echo-request drop"],
    )
    .unwrap();
    let blocks = format!(
        "{}probe = [\"tcp://{SERVER}:8080\"]\n{}probe = [\"dns://{}\"]\n",
        Lab::uplink_block(0, 1),
        Lab::uplink_block(1, 1),
        multiroute_tests::SERVER2,
    );
    lab.write_config_with(&blocks, &health(SERVER)).unwrap();
    lab.start_router().unwrap();
    sleep(Duration::from_secs(2));
    let status = lab.status().unwrap();
    for (n, target) in [
        (0, format!("tcp://{SERVER}:8080")),
        (1, format!("dns://{}", multiroute_tests::SERVER2)),
    ] {
        let uplink = &status["uplinks"][n];
        assert_eq!(uplink["state"], "up", "{uplink}");
        assert_eq!(uplink["state_changes"], 0, "{uplink}");
        assert_eq!(uplink["probes"][0]["target"], target.as_str());
        assert!(uplink["probes"][0]["rtt_ms"].as_f64().is_some(), "{uplink}");
    }
    // The TCP target goes silent through ISP 0: a failover, as for ICMP.
    lab.drop_forwarded(0, "tcp dport 8080").unwrap();
    let tcp_down = time_until_state(&lab, 0, "down");
    lab.restore_upstream(0).unwrap();
    time_until_state(&lab, 0, "up");
    // The DNS target goes silent through ISP 1.
    lab.drop_forwarded(1, "udp dport 53").unwrap();
    let dns_down = time_until_state(&lab, 1, "down");
    println!(
        "tcp target silent: isp0 down after {tcp_down:.2} s; dns target silent: isp1 down after {dns_down:.2} s"
    );
    assert!(tcp_down < 1.5 && dns_down < 1.5, "{tcp_down} / {dns_down}");
    let spread = lab.connections(200).unwrap();
    assert_eq!(spread.failures, 0);
    assert_eq!(
        spread.hits[1], 0,
        "no new flow on the uplink whose DNS target is silent"
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

/// A UDP flow started now: (the uplink that first answered, the client).
fn udp_session(
    lab: &Lab,
    seconds: f64,
) -> (usize, std::process::Child, impl Iterator<Item = String>) {
    let mut client = lab.start_udp(seconds, 50).expect("starting the UDP client");
    let mut lines = BufReader::new(client.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a first answer")).expect("the first answer");
    let uplink = lab
        .uplink_index(first["first"].as_str().expect("an address"))
        .expect("an uplink address");
    (uplink, client, lines)
}

/// Fails both tier-1 uplinks, checks the backup takes every new flow within the
/// failover bound and starts a UDP flow on it, restores them, checks new flows
/// return to tier 1; returns the uplink the UDP flow ended on.
fn backup_round(lab: &Lab, failback: &str) -> usize {
    let attempts = lab.start_attempts(2.5, 20, 500).unwrap();
    sleep(Duration::from_millis(500));
    let t0 = wall_clock();
    lab.fail_upstream(0).unwrap();
    lab.fail_upstream(1).unwrap();
    let attempts = Lab::attempts(attempts).unwrap();
    let outage = measure_outage(&attempts, t0).unwrap();
    let after: Vec<_> = attempts
        .iter()
        .filter(|a| a.start > t0 + outage.seconds)
        .collect();
    assert!(
        after
            .iter()
            .all(|a| a.address.as_deref() == Some("198.18.2.2")),
        "{failback}: the backup takes every new flow"
    );
    let (on, mut client, mut lines) = udp_session(lab, 3.0);
    assert_eq!(on, 2, "the UDP flow starts on the backup");
    lab.restore_upstream(0).unwrap();
    lab.restore_upstream(1).unwrap();
    wait_until(Duration::from_secs(5), || {
        lab.status()
            .is_ok_and(|s| s["uplinks"][0]["state"] == "up" && s["uplinks"][1]["state"] == "up")
    })
    .expect("tier 1 recovers");
    // To the server's other address: a client port reused from the outage's
    // attempts would be the same 5-tuple, a flow "keep" leaves on the backup.
    let url = format!("http://{SERVER2}:{SERVER_PORT}/");
    let back = lab
        .finish_connections(lab.start_connections_to(&url, 300).unwrap())
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&lines.next().expect("the UDP report")).unwrap();
    assert!(client.wait().unwrap().success());
    println!(
        "failback {failback}: tier 1 failed → new flows on the backup after {:.0} ms ({} failed); \
         after recovery {:?} of 300 new flows per uplink; the UDP flow ended on {}",
        outage.seconds * 1000.0,
        outage.failed,
        back.hits,
        report["last_address"]
    );
    assert!(
        outage.seconds < 1.0,
        "{failback}: failover {:.2} s",
        outage.seconds
    );
    assert_eq!(back.failures, 0);
    assert_eq!(back.hits[2], 0, "{failback}: new flows return to tier 1");
    lab.uplink_index(report["last_address"].as_str().unwrap())
        .unwrap()
}

#[test]
fn a_backup_tier_takes_new_flows_only_while_the_better_tier_is_dead() {
    if !require_root!() {
        return;
    }
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1, 1],
        extra_config: String::new(),
    })
    .expect("building the lab");
    let blocks = |failback: &str| {
        let uplinks = format!(
            "{}{}{}tier = 2\n",
            Lab::uplink_block(0, 1),
            Lab::uplink_block(1, 1),
            Lab::uplink_block(2, 1)
        );
        (
            uplinks,
            format!("{}\n[balance]\nfailback = \"{failback}\"\n", health(SERVER)),
        )
    };
    let (uplinks, extra) = blocks("keep");
    lab.write_config_with(&uplinks, &extra).unwrap();
    lab.start_router().unwrap();
    let spread = lab.connections(1000).unwrap();
    assert_eq!(spread.failures, 0);
    assert_eq!(
        spread.hits[2], 0,
        "the tier-2 uplink gets no flow while tier 1 lives: {spread:?}"
    );
    let status = lab.status().unwrap();
    assert_eq!(status["uplinks"][2]["tier"], 2);
    assert_eq!(status["uplinks"][2]["new_flows"], false);

    assert_eq!(
        backup_round(&lab, "keep"),
        2,
        "keep: the flow stays on the backup"
    );

    let (uplinks, extra) = blocks("move");
    lab.write_config_with(&uplinks, &extra).unwrap();
    lab.signal_router(libc::SIGHUP).unwrap();
    sleep(Duration::from_millis(500));
    let ended_on = backup_round(&lab, "move");
    assert_ne!(ended_on, 2, "move: the flow moves back to tier 1");
    assert!(
        lab.router_log().contains("flushed the conntrack entries")
            && lab.router_log().contains("uplink=isp2"),
        "move flushes the backup's conntrack entries:\n{}",
        lab.router_log()
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

/// A UDP exchange's report: the address the server saw first, and every address
/// with how many answers came through it.
fn udp_report(mut client: std::process::Child) -> serde_json::Value {
    let mut out = String::new();
    client
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut out)
        .expect("reading the UDP client");
    assert!(client.wait().expect("the UDP client").success());
    let mut lines = out.lines();
    let first: serde_json::Value =
        serde_json::from_str(lines.next().expect("a first answer")).expect("the first answer");
    let mut report: serde_json::Value =
        serde_json::from_str(lines.next().expect("the report")).expect("the report");
    report["first"] = first["first"].clone();
    report
}

/// Answers per uplink index in a UDP report.
fn answers_by_uplink(lab: &Lab, report: &serde_json::Value) -> [u64; 3] {
    let mut by = [0; 3];
    for (address, count) in report["by_address"].as_object().expect("by_address") {
        let uplink = lab.uplink_index(address).expect("an uplink address");
        by[uplink] += count.as_u64().unwrap_or(0);
    }
    by
}

#[test]
fn a_policy_rule_keeps_sip_on_its_uplinks_in_order_from_lan_and_router() {
    if !require_root!() {
        return;
    }
    let rule = "\n[[rule]]\nname = \"sip\"\nproto = \"udp\"\ndst_port = 5060\nuplinks = [\"isp1\", \"isp2\"]\n";
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1, 1],
        extra_config: format!("{}{rule}", health(SERVER)),
    })
    .expect("building the lab");
    lab.start_router().expect("starting multiroute");
    lab.assert_kernel_matches_plan()
        .expect("the router's own SIP rule is in the kernel");
    let status = lab.status().unwrap();
    assert_eq!(status["rules"][0]["name"], "sip");
    assert_eq!(status["rules"][0]["using"], "isp1");

    // Two long SIP exchanges, one from a LAN host and one from the router itself.
    let seconds = 12.0;
    let lan_sip = lab
        .start_udp_in(&lab.client(), SIP_PORT, seconds, 50)
        .unwrap();
    let router_sip = lab
        .start_udp_in(&lab.router(), SIP_PORT, seconds, 50)
        .unwrap();
    sleep(Duration::from_secs(2));
    let flows = lab.flows(&["--uplink", "isp1"]).unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["dst_port"] == SIP_PORT && f["why"] == "rule sip"),
        "the LAN's SIP flow is on isp1 by its rule: {flows:?}"
    );

    // isp1 fails: SIP goes to isp2 (the next listed), never to isp0.
    lab.fail_upstream(1).unwrap();
    wait_until(Duration::from_secs(3), || {
        lab.status().is_ok_and(|s| s["rules"][0]["using"] == "isp2")
    })
    .expect("the rule falls back to isp2");
    let mut fresh = Vec::new();
    for _ in 0..4 {
        let report = udp_report(lab.start_udp_in(&lab.client(), SIP_PORT, 0.3, 50).unwrap());
        fresh.push(answers_by_uplink(&lab, &report));
    }
    let router_fresh = udp_report(lab.start_udp_in(&lab.router(), SIP_PORT, 0.3, 50).unwrap());
    assert!(
        fresh.iter().all(|by| by[0] == 0 && by[1] == 0 && by[2] > 0),
        "new SIP flows from the LAN use isp2 while isp1 is dead: {fresh:?}"
    );
    assert_eq!(
        answers_by_uplink(&lab, &router_fresh)[2],
        router_fresh["answered"].as_u64().unwrap(),
        "the router's own new SIP flow uses isp2: {router_fresh}"
    );
    sleep(Duration::from_secs(2));

    // isp1 recovers: SIP returns to it, the running exchanges included.
    lab.restore_upstream(1).unwrap();
    wait_until(Duration::from_secs(5), || {
        lab.status().is_ok_and(|s| s["rules"][0]["using"] == "isp1")
    })
    .expect("the rule returns to isp1");
    lab.assert_kernel_matches_plan()
        .expect("the router's own SIP rule follows");

    for (who, client) in [("LAN", lan_sip), ("router", router_sip)] {
        let report = udp_report(client);
        let by = answers_by_uplink(&lab, &report);
        println!(
            "{who} SIP exchange: answers per uplink {by:?}, {} of {} lost, first via {}, last via {}",
            report["lost"], report["sent"], report["first"], report["last_address"]
        );
        assert_eq!(by[0], 0, "{who}: never through isp0 (not listed): {report}");
        assert!(by[1] > 0 && by[2] > 0, "{who}: isp1, then isp2: {report}");
        assert_eq!(
            lab.uplink_index(report["first"].as_str().unwrap()),
            Some(1),
            "{who}: starts on isp1"
        );
        assert_eq!(
            lab.uplink_index(report["last_address"].as_str().unwrap()),
            Some(1),
            "{who}: back on isp1 after it recovered: {report}"
        );
    }
    assert!(
        lab.router_log()
            .contains("moved flows back to the uplink their policy rule prefers"),
        "{}",
        lab.router_log()
    );
    lab.stop_and_unload().unwrap();
}
