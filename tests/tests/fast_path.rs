//! The fast path end to end: established sessions rewritten and redirected by the
//! datapath, their replies too, with conntrack still the truth (a deleted entry
//! sends its session back to the slow path).
use std::time::Duration;

use multiroute_tests::{Lab, LabOptions, SERVER, ipv6::SERVER6, require_root, stdout, wait_until};
use serde_json::Value;

const IPERF_PORT: u16 = 5201;

fn lab(extra_config: &str) -> Lab {
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: extra_config.to_owned(),
    })
    .expect("building the lab");
    let inet = lab.inet();
    // Bound to the server's address: its UDP answers must come from where the
    // client sent them.
    let server = SERVER.to_string();
    lab.start_in(
        &inet,
        "iperf3",
        &["-s", "-B", &server, "-p", &IPERF_PORT.to_string()],
    )
    .expect("starting iperf3 -s");
    lab
}

/// IPv4 counters of `status --json`, by name.
fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}

/// The counters of `status --json` for the server's family.
fn counter_of(server: &str, status: &Value, name: &str) -> u64 {
    let family = if server.contains(':') {
        "counters_ipv6"
    } else {
        "counters"
    };
    status[family][name].as_u64().unwrap_or(0)
}

/// Packets steered to every uplink (slow and fast path alike).
fn steered(status: &Value) -> u64 {
    status["uplinks"]
        .as_array()
        .map(|uplinks| uplinks.iter().filter_map(|u| u["packets"].as_u64()).sum())
        .unwrap_or(0)
}

/// Runs iperf3 from the client for `seconds` (`udp`: at 20 Mbit/s); returns its
/// JSON report.
fn iperf(lab: &Lab, seconds: u32, udp: bool) -> Value {
    iperf_to(lab, &SERVER.to_string(), seconds, udp)
}

fn iperf_to(lab: &Lab, server: &str, seconds: u32, udp: bool) -> Value {
    let (server, port, time) = (
        server.to_owned(),
        IPERF_PORT.to_string(),
        seconds.to_string(),
    );
    let mut args = vec!["-c", &server, "-p", &port, "-t", &time, "-J"];
    if udp {
        args.extend(["-u", "-b", "20M"]);
    }
    let out = lab
        .ns(&lab.client(), "iperf3", &args)
        .expect("running iperf3");
    serde_json::from_str(&stdout(&out)).expect("iperf3 -J")
}

#[test]
fn a_bulk_transfer_takes_the_fast_path_both_ways() {
    if !require_root!() {
        return;
    }
    let mut lab = lab("");
    lab.start_router().expect("starting multiroute");
    bulk_transfers(&lab, &SERVER.to_string(), "");
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn a_bulk_ipv6_transfer_takes_the_fast_path_both_ways_through_nat66() {
    if !require_root!() {
        return;
    }
    let mut lab = ipv6_lab(None);
    bulk_transfers(&lab, &SERVER6.to_string(), "-f ipv6");
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn a_bulk_ipv6_transfer_takes_the_fast_path_through_prefix_translation() {
    if !require_root!() {
        return;
    }
    // Each uplink maps the LAN's prefix onto its own: conntrack sees the LAN
    // host's address, the fast path writes the mapped one.
    let mut lab = ipv6_lab(Some(["2001:db8:18:100::/64", "2001:db8:18:200::/64"]));
    bulk_transfers(&lab, &SERVER6.to_string(), "-f ipv6");
    lab.stop_and_unload().expect("stopping multiroute");
}

/// IPv6 sessions on the fast path through a restart (two seconds without a
/// daemon, which sends every session back to the slow path): none moves or
/// breaks, and the restarted daemon binds them again.
#[test]
fn ipv6_fast_path_sessions_survive_a_restart() {
    if !require_root!() {
        return;
    }
    let mut lab = ipv6_lab(None);
    let server = SERVER6.to_string();
    let sessions = lab
        .start_sessions_to(&server, 40, 10, 9.0, 50)
        .expect("opening the IPv6 sessions");
    let fast = |lab: &Lab| counter_of(&server, &lab.status().unwrap(), "fast_out");
    let bound = wait_until(Duration::from_secs(4), || fast(&lab) > 500);
    assert!(
        bound.is_ok(),
        "the IPv6 sessions took the fast path: {}\n{}",
        fast(&lab),
        lab.router_log()
    );
    lab.stop_router(libc::SIGTERM).expect("stopping multiroute");
    std::thread::sleep(Duration::from_secs(2));
    lab.start_router().expect("restarting multiroute");
    let restarted = fast(&lab);
    let bound_again = wait_until(Duration::from_secs(4), || fast(&lab) > restarted + 500);
    assert!(
        bound_again.is_ok(),
        "the restarted daemon bound the IPv6 sessions again: {} then {}\n{}",
        restarted,
        fast(&lab),
        lab.router_log()
    );
    let report = sessions.finish().expect("the sessions");
    println!(
        "IPv6 restart: {} sessions: {} moved, {} broken, {} UDP messages lost",
        report.tcp.len() + report.udp.len(),
        report.moved(),
        report.broken(),
        report.udp_lost()
    );
    assert_eq!(report.tcp.len() + report.udp.len(), 50);
    assert!(
        report.moved() == 0 && report.broken() == 0,
        "IPv6 sessions moved or broke across the restart\n{}",
        lab.router_log()
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

/// The lab made dual-stack (NAT66, or each uplink mapping the LAN onto its
/// prefix of `npt`, routed to it), an iperf3 server on the IPv6 server, and
/// multiroute started.
fn ipv6_lab(npt: Option<[&str; 2]>) -> Lab {
    let mut lab = lab("");
    lab.add_ipv6().expect("making the lab dual-stack");
    let mut blocks = String::new();
    for n in 0..lab.isps {
        blocks += &Lab::dual_stack_block(n, 1);
        if let Some(prefix) = npt.map(|prefixes| prefixes[n]) {
            lab.route_ipv6_prefix(n, prefix).unwrap();
            blocks += &format!("nat6 = \"npt\"\nnpt_prefix = \"{prefix}\"\n");
        }
    }
    lab.write_config_with(&blocks, "").unwrap();
    let (inet, server) = (lab.inet(), SERVER6.to_string());
    lab.start_in(
        &inet,
        "iperf3",
        &["-s", "-B", &server, "-p", &IPERF_PORT.to_string()],
    )
    .expect("starting iperf3 -s on IPv6");
    lab.start_router().expect("starting multiroute");
    lab
}

/// A TCP and a UDP transfer to `server`: at least 99 % of the LAN side's packets
/// take the fast path, TCP's ACKs come back on it, and conntrack (`conntrack -L`
/// with `family`) saw the close.
fn bulk_transfers(lab: &Lab, server: &str, family: &str) {
    for udp in [false, true] {
        let before = lab.status().unwrap();
        let report = iperf_to(lab, server, 3, udp);
        let after = lab.status().unwrap();
        let count = |name| counter_of(server, &after, name) - counter_of(server, &before, name);
        let (out, replies) = (count("fast_out"), count("fast_reply"));
        let total = steered(&after) - steered(&before);
        let share = 100.0 * out as f64 / total.max(1) as f64;
        let kind = if udp { "UDP" } else { "TCP" };
        println!(
            "{kind} to {server}: {out} of {total} LAN packets on the fast path ({share:.2}%), {replies} replies"
        );
        assert!(
            report["error"].is_null(),
            "iperf3: {}\n{}",
            report["error"],
            lab.router_log()
        );
        assert!(share >= 99.0, "{kind}: only {share:.2}% on the fast path");
        if !udp {
            assert!(
                replies > 100,
                "TCP's ACKs come back on the fast path: {replies}"
            );
            // The close took the slow path: conntrack saw the FINs.
            let mut args = vec!["-L", "-p", "tcp"];
            args.extend(family.split_whitespace());
            let tcp = stdout(&lab.ns(&lab.router(), "conntrack", &args).unwrap());
            assert!(
                tcp.lines()
                    .any(|l| l.contains("dport=5201") && l.contains("TIME_WAIT")),
                "the transfer's sessions closed in conntrack: {tcp}"
            );
        }
    }
}

#[test]
fn an_uplink_mtu_lowered_mid_transfer_is_followed_by_path_mtu_discovery() {
    if !require_root!() {
        return;
    }
    let mut lab = lab("");
    lab.start_router().expect("starting multiroute");
    let router = lab.router();
    let report = std::thread::scope(|scope| {
        let running = scope.spawn(|| iperf(&lab, 5, false));
        std::thread::sleep(Duration::from_millis(1500));
        for wan in ["wan0", "wan1"] {
            lab.ns(&router, "ip", &["link", "set", wan, "mtu", "1280"])
                .unwrap();
        }
        running.join().expect("iperf3 ran")
    });
    // Over-sized packets take the slow path, whose "fragmentation needed" shrinks
    // the sender's segments: the transfer goes on.
    assert!(report["error"].is_null(), "iperf3: {}", report["error"]);
    let intervals = report["intervals"].as_array().cloned().unwrap_or_default();
    let last = intervals
        .last()
        .map(|i| i["sum"]["bytes"].as_u64().unwrap_or(0));
    println!("last second after the MTU change: {last:?} bytes");
    assert!(
        last.is_some_and(|bytes| bytes > 1_000_000),
        "traffic after the change"
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn fast_path_sessions_stay_in_conntrack_and_do_not_time_out() {
    if !require_root!() {
        return;
    }
    let mut lab = lab("");
    // UDP entries that would expire in 3 s unless refreshed: the fast path's
    // packets never reach conntrack.
    for key in [
        "nf_conntrack_udp_timeout",
        "nf_conntrack_udp_timeout_stream",
    ] {
        lab.ns(
            &lab.router(),
            "sysctl",
            &["-qw", &format!("net.netfilter.{key}=3")],
        )
        .unwrap();
    }
    lab.start_router().expect("starting multiroute");
    let (client, router, server) = (lab.client(), lab.router(), SERVER.to_string());
    let (report, listed) = std::thread::scope(|scope| {
        let running = scope.spawn(|| {
            let args = [
                "-c", &server, "-p", "5201", "-t", "8", "-u", "-b", "5M", "-J",
            ];
            lab.ns(&client, "iperf3", &args)
        });
        std::thread::sleep(Duration::from_secs(6));
        let listed = lab.ns(
            &router,
            "conntrack",
            &["-L", "-p", "udp", "--dport", "5201"],
        );
        (running.join(), listed)
    });
    let report: Value = serde_json::from_str(&stdout(&report.unwrap().unwrap())).unwrap();
    let listed = stdout(&listed.unwrap());
    println!("{listed}");
    assert!(
        listed.contains("dport=5201"),
        "the session is in conntrack -L: {listed}"
    );
    let status = lab.status().unwrap();
    let sent = report["end"]["sum"]["packets"].as_u64().unwrap_or(0);
    let fast = counter(&status, "fast_out");
    println!("{fast} of {sent} datagrams on the fast path");
    assert!(
        sent > 1000 && fast as f64 >= 0.99 * sent as f64,
        "{fast} of {sent}"
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn a_deleted_conntrack_entry_sends_its_session_back_to_the_slow_path() {
    if !require_root!() {
        return;
    }
    let mut lab = lab("");
    lab.start_router().expect("starting multiroute");
    let fast = |lab: &Lab| counter(&lab.status().unwrap(), "fast_out");
    // A UDP session at 20 Mbit/s for 6 s; its entry is deleted after 2 s.
    let client = lab.client();
    let server = SERVER.to_string();
    let transfer = std::thread::scope(|scope| {
        let running = scope.spawn(|| {
            lab.ns(
                &client,
                "iperf3",
                &[
                    "-c", &server, "-p", "5201", "-t", "6", "-u", "-b", "20M", "-J",
                ],
            )
        });
        wait_until(Duration::from_secs(3), || fast(&lab) > 100).expect("fast path in use");
        std::thread::sleep(Duration::from_secs(1));
        lab.ns(
            &lab.router(),
            "conntrack",
            &["-D", "-p", "udp", "--dport", "5201"],
        )
        .expect("conntrack -D");
        let deleted = fast(&lab);
        std::thread::sleep(Duration::from_millis(300));
        let after_delete = fast(&lab);
        (running.join(), deleted, after_delete)
    });
    let (report, deleted, after_delete) = transfer;
    report.unwrap().expect("iperf3 ran");
    // The next packet takes the slow path, which makes a new entry; as it is never
    // answered (iperf3's UDP only sends), the session stays there.
    println!("fast-path packets: {deleted} at the delete, {after_delete} 300 ms later");
    assert!(deleted > 100, "the session was on the fast path: {deleted}");
    assert!(
        after_delete - deleted <= 2,
        "back on the slow path within a packet or two: {}",
        after_delete - deleted
    );
    // The daemon heard of it through its filtered socket (the ends of unbound
    // sessions, such as the health probes', stop in the kernel).
    let status = lab.status().unwrap();
    assert!(
        counter(&status, "end_bound") >= 1,
        "the deleted session's end passed the filter: {}",
        status["counters"]
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn a_port_forwarded_transfer_takes_the_fast_path_both_ways() {
    if !require_root!() {
        return;
    }
    let mut lab = lab("");
    lab.serve_inbound(multiroute::net::Family::V4)
        .expect("the lab's port forward");
    // iperf3 on the LAN host too, forwarded from every uplink's port 5202.
    let (client, router) = (lab.client(), lab.router());
    let lan_host = multiroute_tests::CLIENT.to_string();
    lab.start_in(&client, "iperf3", &["-s", "-B", &lan_host, "-p", "5202"])
        .unwrap();
    lab.ns(
        &router,
        "nft",
        &[&format!(
            "add rule ip forward pre iifname \"wan*\" tcp dport 5202 dnat to {lan_host}:5202"
        )],
    )
    .unwrap();
    lab.start_router().expect("starting multiroute");
    let before = lab.status().unwrap();
    let uplink = Lab::uplink_address(1).to_string();
    let inet = lab.inet();
    wait_until(Duration::from_secs(5), || {
        lab.ns(&inet, "iperf3", &["-c", &uplink, "-p", "5202", "-n", "1K"])
            .is_ok()
    })
    .expect("the forwarded iperf3 answers");
    let out = lab
        .ns(
            &inet,
            "iperf3",
            &["-c", &uplink, "-p", "5202", "-t", "3", "-J"],
        )
        .expect("iperf3 through the port forward");
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(report["error"].is_null(), "iperf3: {}", report["error"]);
    let after = lab.status().unwrap();
    let arrived = counter(&after, "fast_reply") - counter(&before, "fast_reply");
    let answers = counter(&after, "fast_out") - counter(&before, "fast_out");
    let isp1 = |status: &Value| status["uplinks"][1]["fast_packets"].as_u64().unwrap_or(0);
    println!("port forward: {arrived} arriving and {answers} answering packets on the fast path");
    assert!(
        arrived > 10_000,
        "the transfer's data arrived fast: {arrived}"
    );
    assert!(answers > 1_000, "the LAN host's ACKs left fast: {answers}");
    assert!(
        isp1(&after) - isp1(&before) >= arrived + answers,
        "counted on isp1"
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn a_firewall_reload_under_fast_path_traffic_breaks_no_session() {
    if !require_root!() {
        return;
    }
    let mut lab = lab("");
    lab.start_router().expect("starting multiroute");
    let (client, router, server) = (lab.client(), lab.router(), SERVER.to_string());
    let fast = |lab: &Lab| counter(&lab.status().unwrap(), "fast_out");
    let (report, before, after) = std::thread::scope(|scope| {
        let running = scope.spawn(|| {
            let args = [
                "-c", &server, "-p", "5201", "-t", "5", "-u", "-b", "5M", "-J",
            ];
            lab.ns(&client, "iperf3", &args)
        });
        std::thread::sleep(Duration::from_secs(2));
        // What a firewall reload does: flush everything, load its own rules.
        lab.ns(&router, "nft", &["flush", "ruleset"]).unwrap();
        lab.ns(&router, "nft", &[multiroute_tests::LAB_NAT])
            .unwrap();
        let before = fast(&lab);
        std::thread::sleep(Duration::from_secs(1));
        (running.join(), before, fast(&lab))
    });
    let report: Value = serde_json::from_str(&stdout(&report.unwrap().unwrap())).unwrap();
    let sum = &report["end"]["sum"];
    let (sent, lost) = (
        sum["packets"].as_u64().unwrap_or(0),
        sum["lost_packets"].as_u64().unwrap_or(u64::MAX),
    );
    println!(
        "reload: {lost} of {sent} datagrams lost; {} fast after it",
        after - before
    );
    assert!(sent > 1000 && lost * 100 <= sent, "{lost} of {sent} lost");
    assert!(after - before > 100, "the session stayed on the fast path");
    lab.stop_and_unload().expect("stopping multiroute");
}
