//! IPv6, end to end, in a dual-stack lab (three dual-stack ISPs, a dual-stack
//! client and server; see `multiroute_tests::ipv6`): IPv6 connections balanced by
//! the weights through multiroute's own NAT66, an ISP whose IPv6 breaks while its
//! IPv4 works (IPv6 flows leave it, IPv4 flows stay), recovery, the kernel equal
//! to the plan for both families, and nothing left after `unload`.
use std::{thread::sleep, time::Duration};

use multiroute::net::Family;
use multiroute_tests::{
    FORWARDED_PORT, Lab, LabOptions, SERVER, ipv6::CLIENT6, ipv6::SERVER6, measure_outage, percent,
    require_root, wait_until, wall_clock,
};

/// Probes every 200 ms at each ISP's gateway, per family (its IPv4 router and
/// the link-local IPv6 router its RAs announce), 3 losses down, 3 answers up.
const HEALTH: &str =
    "\n[health]\ntargets = [\"gateway\"]\ninterval_ms = 200\ntimeout_ms = 200\ndown = 3\nup = 3\n";

fn connections6(lab: &Lab, count: usize) -> multiroute_tests::Connections {
    let child = lab
        .start_connections_to(&lab.url6("/"), count)
        .expect("starting the client");
    lab.finish_connections(child).expect("IPv6 connections")
}

/// A dual-stack lab whose uplinks have `weights`, with `extra` config.
fn dual_stack_lab(weights: &[u32], extra: &str) -> Lab {
    let mut lab = Lab::new(&LabOptions {
        weights: weights.to_vec(),
        extra_config: extra.into(),
    })
    .expect("building the lab");
    lab.add_ipv6().expect("making the lab dual-stack");
    let blocks: String = weights
        .iter()
        .enumerate()
        .map(|(n, weight)| Lab::dual_stack_block(n, *weight))
        .collect();
    lab.write_config_with(&blocks, extra).unwrap();
    lab
}

#[test]
fn ipv6_is_balanced_and_fails_over_apart_from_ipv4() {
    if !require_root!() {
        return;
    }
    let mut lab = dual_stack_lab(&[1, 2, 3], HEALTH);
    let pristine = lab.router_snapshot().unwrap();
    lab.start_router().expect("starting multiroute");
    lab.assert_kernel_matches_plan()
        .expect("IPv4 and IPv6 rules and routes as planned");
    let rules = multiroute_tests::stdout(&lab.ns(&lab.router(), "ip", &["-6", "rule"]).unwrap());
    assert!(rules.contains("fwmark 0x100/0xff00 lookup 101"), "{rules}");

    // 1:2:3 over 3 000 IPv6 connections, each seen by the server from the IPv6
    // address of the uplink it took (NAT66 by multiroute).
    let spread = connections6(&lab, 3000);
    println!("IPv6 connections per uplink: {:?}", spread.hits);

    assert_eq!(spread.failures, 0);
    for (i, weight) in [1.0, 2.0, 3.0].iter().enumerate() {
        let share = percent(spread.hits[i], 3000);
        assert!(
            (share - 100.0 * weight / 6.0).abs() <= 3.0,
            "isp{i}: {share:.1} % of IPv6 connections ({:?})",
            spread.hits
        );
    }
    let status = lab.status().unwrap();
    let isp1 = &status["uplinks"][1];
    assert_eq!(isp1["ipv6"]["state"], "up", "{status}");
    // One new IPv6 flow per distinct 5-tuple (the client reuses some ports).
    assert!(
        status["counters_ipv6"]["flow_new"].as_u64().unwrap() >= spread.ports as u64,
        "{} ports: {status}",
        spread.ports
    );

    // isp1's IPv6 breaks, silently; its IPv4 works on. IPv4 sessions run through
    // it all, and a new IPv6 connection is tried every 20 ms.
    let sessions = lab.start_sessions(60, 20, 5.0, 100).unwrap();
    let attempts = lab.start_attempts_to(&lab.url6("/"), 4.0, 20, 500).unwrap();
    sleep(Duration::from_millis(1000));
    let t0 = wall_clock();
    lab.fail_ipv6(1).unwrap();
    let outage = measure_outage(&Lab::attempts(attempts).unwrap(), t0).unwrap();
    println!(
        "IPv6 of isp1 broken: new IPv6 connections all succeed again after {:.2} s ({} failed)",
        outage.seconds, outage.failed
    );
    let log = lab.router_log();
    assert!(
        log.lines()
            .any(|l| l.contains("uplink DOWN") && l.contains("uplink=isp1/ipv6")),
        "the daemon tells the IPv6 side's fall apart:\n{log}"
    );
    assert!(
        outage.seconds <= 1.0,
        "IPv6 failover took {:.2} s",
        outage.seconds
    );
    let report = sessions.finish().unwrap();
    assert_eq!(
        (report.moved(), report.broken()),
        (0, 0),
        "IPv4 sessions are untouched by an IPv6 outage"
    );
    let after = connections6(&lab, 600);
    assert_eq!((after.hits[1], after.failures), (0, 0), "{:?}", after.hits);
    let ipv4 = lab.connections(600).unwrap();
    assert!(ipv4.hits[1] > 100, "IPv4 still uses isp1: {:?}", ipv4.hits);
    let status = lab.status().unwrap();
    assert_eq!(status["uplinks"][1]["state"], "up", "{status}");
    assert_eq!(status["uplinks"][1]["ipv6"]["state"], "down", "{status}");
    lab.assert_kernel_matches_plan().unwrap();

    // Recovery: new IPv6 connections use isp1 again.
    lab.restore_ipv6(1).unwrap();
    wait_until(Duration::from_secs(5), || {
        lab.status()
            .is_ok_and(|s| s["uplinks"][1]["ipv6"]["state"] == "up")
    })
    .expect("isp1's IPv6 back up");
    let back = connections6(&lab, 600);
    assert!(back.hits[1] > 100 && back.failures == 0, "{:?}", back.hits);
    let flows = lab.flows(&[]).unwrap();
    assert!(
        flows.iter().any(|f| f["dst"] == SERVER6.to_string()),
        "`flows` lists IPv6 flows"
    );
    assert!(flows.iter().any(|f| f["dst"] == SERVER.to_string()));
    // `--dst` takes a prefix of either family and matches only its own.
    let to_server6 = lab.flows(&["--dst", "2001:db8:ff::/48"]).unwrap();
    assert!(
        !to_server6.is_empty() && to_server6.iter().all(|f| f["dst"] == SERVER6.to_string()),
        "{to_server6:?}"
    );

    lab.stop_and_unload().unwrap();
    assert_eq!(
        lab.router_snapshot().unwrap(),
        pristine,
        "nothing of either family is left, the IPv6 default is back"
    );
    assert_eq!(lab.classifiers(), 0);
}

/// What the server saw of `count` IPv6 connections: answers by source address.
fn sources6(lab: &Lab, count: usize) -> std::collections::BTreeMap<String, u64> {
    let (seen, failures) = lab
        .count_from(&lab.client(), &lab.url6("/"), count, None)
        .expect("IPv6 connections");
    assert_eq!(failures, 0, "{seen:?}");
    seen
}

#[test]
fn npt_maps_the_lan_prefix_statelessly_and_follows_a_new_prefix() {
    if !require_root!() {
        return;
    }
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1],
        extra_config: HEALTH.into(),
    })
    .expect("building the lab");
    lab.add_ipv6().expect("making the lab dual-stack");
    for prefix in ["2001:db8:18:100::/64", "2001:db8:18:200::/64"] {
        lab.route_ipv6_prefix(0, prefix).unwrap();
    }
    let write = |lab: &Lab, prefix: &str| {
        let block =
            Lab::dual_stack_block(0, 1) + &format!("nat6 = \"npt\"\nnpt_prefix = \"{prefix}\"\n");
        lab.write_config_with(&block, HEALTH).unwrap();
    };
    write(&lab, "2001:db8:18:100::/64");
    lab.start_router().expect("starting multiroute");
    // The LAN host fd00:64::2 keeps its interface identifier behind the prefix.
    let seen = sources6(&lab, 50);
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [("2001:db8:18:100::2".to_owned(), 50)]
    );
    // Stateless: the host is reachable from outside at its mapped address, with
    // no connection of its own first.
    lab.start_http_server(&lab.client(), &CLIENT6.to_string(), 8000)
        .unwrap();
    let (seen, failures) = lab
        .count_from(&lab.inet(), "http://[2001:db8:18:100::2]:8000/", 20, None)
        .unwrap();
    assert_eq!(failures, 0, "{seen:?}");
    assert_eq!(
        seen.into_keys().collect::<Vec<_>>(),
        ["2001:db8:19::2"],
        "the LAN host sees the internet client itself"
    );

    // A new prefix (renumbered by the ISP): a reload regenerates the translation.
    write(&lab, "2001:db8:18:200::/64");
    let t0 = std::time::Instant::now();
    lab.signal_router(libc::SIGHUP).unwrap();
    wait_until(Duration::from_secs(5), || {
        lab.ns(
            &lab.router(),
            "nft",
            &["list", "table", "inet", "multiroute"],
        )
        .is_ok_and(|out| multiroute_tests::stdout(&out).contains("2001:db8:18:200::/64"))
    })
    .expect("the new prefix in multiroute's table");
    println!(
        "NPT prefix changed by a reload in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let seen = sources6(&lab, 50);
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [("2001:db8:18:200::2".to_owned(), 50)]
    );

    lab.stop_and_unload().unwrap();
    let tables =
        multiroute_tests::stdout(&lab.ns(&lab.router(), "nft", &["list", "tables"]).unwrap());
    assert!(!tables.contains("multiroute"), "{tables}");
}

#[test]
fn an_uplink_renumbered_by_its_isp_is_followed_within_a_second() {
    if !require_root!() {
        return;
    }
    let mut lab = dual_stack_lab(&[0, 1], HEALTH);
    lab.start_router().expect("starting multiroute");
    let old = Lab::uplink_address6(1).to_string();
    assert_eq!(
        sources6(&lab, 20).into_keys().collect::<Vec<_>>(),
        std::slice::from_ref(&old)
    );

    // The ISP renumbers the link (a new address from its RA, the old one gone).
    let new = "2001:db8:18:1::99";
    let router = lab.router();
    lab.ns(
        &router,
        "ip",
        &[
            "-6",
            "addr",
            "add",
            &format!("{new}/64"),
            "dev",
            "wan1",
            "nodad",
        ],
    )
    .unwrap();
    lab.ns(
        &router,
        "ip",
        &["-6", "addr", "del", &format!("{old}/64"), "dev", "wan1"],
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    wait_until(Duration::from_secs(3), || {
        lab.ns(&router, "ip", &["-6", "rule"]).is_ok_and(|out| {
            multiroute_tests::stdout(&out).contains(&format!("from {new} lookup 102"))
        })
    })
    .expect("the from rule follows the new address");
    let followed = t0.elapsed().as_secs_f64();
    println!("IPv6 renumbering followed in {followed:.2} s");
    assert!(followed < 1.0, "{followed:.2} s");
    assert_eq!(
        sources6(&lab, 20).into_keys().collect::<Vec<_>>(),
        [new.to_owned()]
    );
    lab.assert_kernel_matches_plan().unwrap();
    let status = lab.status().unwrap();
    assert_eq!(
        status["uplinks"][1]["ipv6"]["address"],
        format!("{new}/64"),
        "{status}"
    );

    // Its link goes down: IPv6 (and IPv4) move to isp0 at once.
    lab.set_uplink_link(1, false).unwrap();
    wait_until(Duration::from_secs(3), || {
        lab.status()
            .is_ok_and(|s| s["uplinks"][1]["ipv6"]["state"] == "link down")
    })
    .expect("isp1's IPv6 side down with its link");
    assert_eq!(
        sources6(&lab, 20).into_keys().collect::<Vec<_>>(),
        [Lab::uplink_address6(0).to_string()],
        "weight 0 or not, the only live IPv6 uplink carries it (fail open)"
    );
    lab.stop_and_unload().unwrap();
}

#[test]
fn inbound_ipv6_connections_are_answered_through_their_uplink() {
    if !require_root!() {
        return;
    }
    let mut lab = dual_stack_lab(&[1, 1, 1], HEALTH);
    // A web server on the LAN host, port-forwarded on every uplink, and one on the
    // router itself; every ISP drops (and counts) another ISP's customer addresses.
    lab.serve_inbound(Family::V6).unwrap();
    lab.enforce_source_addresses(Family::V6).unwrap();
    lab.start_router().expect("starting multiroute");
    lab.connect_inbound(Family::V6, 200).unwrap();
    assert_eq!(
        lab.foreign_sources(Family::V6).unwrap(),
        [0, 0, 0],
        "no reply left through an uplink other than the one its connection arrived on"
    );
    // `flows` says why: the LAN server's replies follow the uplink their connection
    // arrived on (the internet client reaches isp N from 2001:db8:19:N::2).
    let replies: Vec<_> = lab
        .flows(&[])
        .unwrap()
        .into_iter()
        .filter(|f| f["src"] == CLIENT6.to_string() && f["src_port"] == FORWARDED_PORT)
        .collect();
    assert!(replies.len() >= 500, "{} IPv6 reply flows", replies.len());
    for flow in &replies {
        let isp = flow["dst"]
            .as_str()
            .and_then(|d| d.parse::<std::net::Ipv6Addr>().ok())
            .map(|client| format!("isp{}", client.segments()[3]));
        assert_eq!(flow["why"], "inbound", "{flow}");
        assert_eq!(flow["uplink"].as_str(), isp.as_deref(), "{flow}");
    }
    lab.stop_and_unload().unwrap();
}

#[test]
fn ipv6_sessions_open_before_the_first_load_keep_their_uplink() {
    if !require_root!() {
        return;
    }
    let mut lab = dual_stack_lab(&[1, 2, 3], "");
    // Before multiroute, the router's own firewall masqueraded IPv6 too; sessions
    // go out through its IPv6 default, ISP 0.
    lab.ns(
        &lab.router(),
        "nft",
        &["add table ip6 lab6; add chain ip6 lab6 post { type nat hook postrouting priority 100; }; \
           add rule ip6 lab6 post oifname \"wan*\" masquerade"],
    )
    .unwrap();
    let sessions = lab
        .start_sessions_to(&SERVER6.to_string(), 100, 30, 6.0, 100)
        .expect("opening IPv6 sessions");
    let attempts = lab
        .start_attempts_to(&lab.url6("/"), 3.5, 5, 3000)
        .expect("starting new IPv6 connections");
    sleep(Duration::from_secs(1));
    lab.start_router().expect("starting multiroute");
    let attempts = Lab::attempts(attempts).unwrap();
    let report = sessions.finish().unwrap();
    let failed = attempts.iter().filter(|a| !a.ok).count();
    println!(
        "first load under IPv6 traffic: {} sessions: {} moved, {} broken; {} new connections: {failed} failed",
        report.tcp.len() + report.udp.len(),
        report.moved(),
        report.broken(),
        attempts.len()
    );
    assert_eq!(
        (report.moved(), report.broken(), failed),
        (0, 0, 0),
        "{}",
        lab.router_log()
    );
    let spread: std::collections::BTreeSet<_> =
        attempts.iter().filter_map(|a| a.address.clone()).collect();
    assert!(
        spread.len() > 1,
        "new IPv6 connections are balanced once loaded: {spread:?}"
    );
    let from_conntrack = lab
        .flows(&[])
        .unwrap()
        .into_iter()
        .filter(|f| f["dst"] == SERVER6.to_string() && f["why"] == "conntrack")
        .count();
    assert!(
        from_conntrack >= 130,
        "{from_conntrack} IPv6 flows seeded from conntrack"
    );
    lab.stop_and_unload().unwrap();
}
