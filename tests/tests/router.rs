//! Router reality, end to end: connections arriving on an uplink answered through it
//! (port forwards to a LAN host and services on the router), pins for the router's
//! own DNS forwarder and for LAN sources, and an uplink readdressed as by DHCP.
use std::{
    collections::BTreeMap,
    thread::sleep,
    time::{Duration, Instant},
};

use multiroute::net::Family;
use multiroute_tests::{
    CLIENT, Connections, FORWARDED_PORT, Lab, LabOptions, SERVER_PORT, SERVER2, percent,
    require_root, stdout, wait_until,
};

/// How long after `t0` a batch of four connections to `url` was first seen as
/// `done` wants (by the addresses the server saw them from); `None` after 5 s.
fn followed_after(
    lab: &Lab,
    url: &str,
    t0: Instant,
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> Option<Duration> {
    while t0.elapsed() < Duration::from_secs(5) {
        let (seen, _) = lab.count_from(&lab.client(), url, 4, None).unwrap();
        if done(&seen) {
            return Some(t0.elapsed());
        }
    }
    None
}

fn lab(weights: &[u32], extra_config: &str) -> Lab {
    Lab::new(&LabOptions {
        weights: weights.to_vec(),
        extra_config: extra_config.into(),
    })
    .expect("building the lab")
}

#[test]
fn connections_arriving_on_an_uplink_are_answered_through_it() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1], "");
    // A web server on the LAN host, port-forwarded on every uplink, and one on the
    // router itself.
    lab.serve_inbound(Family::V4).unwrap();
    lab.enforce_source_addresses(Family::V4).unwrap();
    lab.start_router().unwrap();
    lab.connect_inbound(Family::V4, 500).unwrap();

    assert_eq!(
        lab.foreign_sources(Family::V4).unwrap(),
        [0, 0],
        "no reply left through an uplink other than the one its connection arrived on"
    );
    // `flows` says why: the LAN server's replies follow the uplink their connection
    // arrived on (the internet client reaches isp N from 198.19.N.2).
    let replies: Vec<_> = lab
        .flows(&["--src", &format!("{CLIENT}/32")])
        .unwrap()
        .into_iter()
        .filter(|f| f["src_port"] == FORWARDED_PORT)
        .collect();
    assert!(replies.len() >= 900, "{} reply flows", replies.len());
    for flow in &replies {
        let isp = flow["dst"].as_str().and_then(|d| d.strip_prefix("198.19."));
        let expected = isp
            .and_then(|rest| rest.split('.').next())
            .map(|n| format!("isp{n}"));
        assert_eq!(flow["why"], "inbound", "{flow}");
        assert_eq!(flow["uplink"].as_str(), expected.as_deref(), "{flow}");
    }
    lab.assert_kernel_matches_plan().unwrap();
    // Outbound LAN traffic is still spread as before.
    let seen = lab.connections(400).unwrap();
    assert_eq!(seen.failures, 0);
    assert!(seen.hits.iter().all(|h| *h > 120), "{:?}", seen.hits);
    lab.stop_and_unload().expect("stopping multiroute");
}

/// Sources each resolver logged queries from.
fn query_sources(lab: &Lab, log: &str) -> Vec<String> {
    std::fs::read_to_string(lab.dir.join(log))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("query[A]"))
        .filter_map(|l| l.rsplit(" from ").next().map(str::to_owned))
        .collect()
}

#[test]
fn pinned_resolvers_are_reached_through_their_own_isp() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1], "");
    // Each ISP runs a resolver only reachable through it, answering its own name.
    for n in 0..2 {
        let resolver = format!("198.51.100.{}", 10 + n);
        lab.ns(
            &lab.isp(n),
            "ip",
            &["addr", "add", &format!("{resolver}/32"), "dev", "lo"],
        )
        .unwrap();
        let isp = lab.isp(n);
        lab.start_dnsmasq(
            &isp,
            &format!("resolver{n}.log"),
            &resolver,
            &[format!("--address=/isp{n}.test/192.0.2.{}", 10 + n)],
        )
        .expect("starting dnsmasq");
    }
    // The router's caching DNS forwards each name to its ISP's resolver (the seed's
    // scenario), with the resolvers pinned to their uplinks.
    let router = lab.router();
    lab.start_dnsmasq(
        &router,
        "router-dns.log",
        "100.64.0.1",
        &[
            "--server=/isp0.test/198.51.100.10".into(),
            "--server=/isp1.test/198.51.100.11".into(),
        ],
    )
    .expect("starting dnsmasq");
    let blocks = format!(
        "{}pin = [\"198.51.100.10\"]\n{}pin = [\"198.51.100.11\"]\n",
        Lab::uplink_block(0, 1),
        Lab::uplink_block(1, 1)
    );
    lab.write_config_with(&blocks, "").unwrap();
    lab.start_router().unwrap();

    for n in 0..2 {
        let (answers, failures) = lab
            .dns_queries("100.64.0.1", &format!("isp{n}.test"), 50)
            .unwrap();
        println!("isp{n}.test via the router's dnsmasq: {answers:?}, {failures} failed");
        assert_eq!(failures, 0);
        assert_eq!(answers.get(&format!("192.0.2.{}", 10 + n)), Some(&50));
        let sources = query_sources(&lab, &format!("resolver{n}.log"));
        assert!(
            sources.len() >= 50,
            "resolver {n} saw {} queries",
            sources.len()
        );
        let own = Lab::uplink_address(n).to_string();
        assert!(
            sources.iter().all(|s| *s == own),
            "resolver {n} sees queries only from {own}: {sources:?}"
        );
    }
    lab.assert_kernel_matches_plan().unwrap();
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn a_pinned_lan_source_always_uses_its_uplink() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1], "");
    lab.ns(
        &lab.client(),
        "ip",
        &["addr", "add", "100.64.0.3/24", "dev", "eth0"],
    )
    .unwrap();
    let blocks = format!(
        "{}{}pin_from = [\"100.64.0.3\"]\n",
        Lab::uplink_block(0, 1),
        Lab::uplink_block(1, 1)
    );
    lab.write_config_with(&blocks, "").unwrap();
    lab.start_router().unwrap();
    let url = lab.url("/");
    let (seen, failures) = lab
        .count_from(&lab.client(), &url, 500, Some("100.64.0.3"))
        .unwrap();
    println!("500 connections from the pinned 100.64.0.3: {seen:?}");
    assert_eq!(failures, 0);
    assert_eq!(seen.get("198.18.1.2"), Some(&500), "{seen:?}");
    let others = lab.connections(500).unwrap();
    println!("500 connections from 100.64.0.2: {:?}", others.hits);
    assert_eq!(others.failures, 0);
    assert!(others.hits.iter().all(|h| *h > 175), "{:?}", others.hits);
    lab.assert_kernel_matches_plan().unwrap();
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn a_dhcp_renew_with_new_address_and_gateway_is_followed_within_a_second() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1], "");
    let router = lab.router();
    // isp1's gateway is whatever the DHCP client put in the main table.
    lab.ns(
        &router,
        "ip",
        &[
            "route",
            "add",
            "default",
            "via",
            "198.18.1.1",
            "dev",
            "wan1",
            "metric",
            "200",
        ],
    )
    .unwrap();
    let blocks = format!(
        "{}pin = [\"{SERVER2}\"]\n{}",
        Lab::uplink_block(0, 1),
        Lab::uplink_block(1, 1).replace("gateway = \"198.18.1.1\"\n", "")
    );
    lab.write_config_with(&blocks, "").unwrap();
    lab.start_router().unwrap();
    let status = lab.status().unwrap();
    assert_eq!(status["uplinks"][1]["gateway"], "198.18.1.1", "{status}");
    assert_eq!(status["uplinks"][1]["state"], "up");
    // A transfer on isp0 (its server address is pinned there) runs throughout.
    let stream = lab.start_stream_from(SERVER2, 8).unwrap();
    sleep(Duration::from_secs(1));

    // The renew: a new address and a new gateway on wan1.
    lab.ns(
        &lab.isp(1),
        "ip",
        &["addr", "add", "198.18.1.254/24", "dev", "cpe"],
    )
    .unwrap();
    let t0 = Instant::now();
    for args in [
        &["addr", "del", "198.18.1.2/24", "dev", "wan1"][..],
        &["addr", "add", "198.18.1.5/24", "dev", "wan1"],
        &[
            "route",
            "replace",
            "default",
            "via",
            "198.18.1.254",
            "dev",
            "wan1",
            "metric",
            "200",
        ],
    ] {
        lab.ns(&router, "ip", args).unwrap();
    }
    let url = lab.url("/");
    let followed = followed_after(&lab, &url, t0, |seen| seen.contains_key("198.18.1.5"))
        .expect("new flows use isp1's new address");
    println!(
        "DHCP renew on wan1: new flows through it work {} ms later",
        followed.as_millis()
    );
    assert!(followed <= Duration::from_secs(1), "{followed:?}");

    let status = lab.status().unwrap();
    assert_eq!(status["uplinks"][1]["address"], "198.18.1.5/24", "{status}");
    assert_eq!(status["uplinks"][1]["gateway"], "198.18.1.254", "{status}");
    let rules = stdout(&lab.ns(&router, "ip", &["rule"]).unwrap());
    assert!(rules.contains("from 198.18.1.5 lookup 102"), "{rules}");
    assert!(!rules.contains("198.18.1.2"), "{rules}");
    let table = stdout(
        &lab.ns(&router, "ip", &["route", "show", "table", "102"])
            .unwrap(),
    );
    assert!(
        table.contains("default via 198.18.1.254 dev wan1"),
        "{table}"
    );
    lab.assert_kernel_matches_plan().unwrap();
    let (seen, failures) = lab.count_from(&lab.client(), &url, 300, None).unwrap();
    assert_eq!(failures, 0);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["198.18.0.2", "198.18.1.5"],
        "{seen:?}"
    );

    let output = stream.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the transfer on isp0 was interrupted"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report["seconds"].as_f64().unwrap() >= 7.5, "{report}");
    lab.stop_and_unload().expect("stopping multiroute");
}

fn sysctl(lab: &Lab, key: &str) -> String {
    stdout(&lab.ns(&lab.router(), "sysctl", &["-n", key]).unwrap())
        .trim()
        .to_owned()
}

#[test]
fn host_settings_are_checked_set_and_restored() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1], "");
    let router = lab.router();
    lab.ns(
        &router,
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_forward=0",
            "net.ipv4.conf.wan0.rp_filter=1",
        ],
    )
    .unwrap();
    lab.ns(
        &router,
        "ip",
        &[
            "rule",
            "add",
            "pref",
            "10005",
            "from",
            "192.0.2.99",
            "lookup",
            "main",
        ],
    )
    .unwrap();
    let pristine = lab.router_snapshot().unwrap();

    let check = lab.multiroute(&["check"]);
    let report = stdout(&check);
    println!("{report}");
    assert_eq!(
        check.status.code(),
        Some(1),
        "a foreign rule in the range is a problem"
    );
    assert!(
        report.contains("problem: rule `pref 10005 from 192.0.2.99 lookup main`"),
        "{report}"
    );
    assert!(
        report.contains("load will set net.ipv4.ip_forward = 1 (now 0)"),
        "{report}"
    );
    assert!(
        report.contains("load will set net.ipv4.conf.wan0.rp_filter = 2 (now 1)"),
        "{report}"
    );

    let load = lab.multiroute(&["load"]);
    assert_eq!(load.status.code(), Some(1));
    let err = String::from_utf8_lossy(&load.stderr);
    assert!(
        err.contains("ip rule del pref 10005") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(
        lab.router_snapshot().unwrap(),
        pristine,
        "a refused load changes nothing"
    );
    assert_eq!(sysctl(&lab, "net.ipv4.ip_forward"), "0");

    lab.ns(&router, "ip", &["rule", "del", "pref", "10005"])
        .unwrap();
    lab.start_router().unwrap();
    assert_eq!(sysctl(&lab, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(&lab, "net.ipv4.conf.wan0.rp_filter"), "2");
    assert_eq!(
        sysctl(&lab, "net.ipv4.conf.wan1.ignore_routes_with_linkdown"),
        "1"
    );
    assert_eq!(lab.connections(200).unwrap().failures, 0);
    // SIGKILL, then unload: the record beside the lock file restores them.
    lab.stop_router(libc::SIGKILL).unwrap();
    let out = lab.multiroute(&["unload"]);
    assert!(
        // ip_forward, wan0's rp_filter, both uplinks' ignore_routes_with_linkdown.
        stdout(&out).contains("restored 4 sysctls"),
        "{}",
        stdout(&out)
    );
    assert_eq!(sysctl(&lab, "net.ipv4.ip_forward"), "0");
    assert_eq!(sysctl(&lab, "net.ipv4.conf.wan0.rp_filter"), "1");
    assert_eq!(
        sysctl(&lab, "net.ipv4.conf.wan1.ignore_routes_with_linkdown"),
        "0"
    );

    // Without the lab's masquerade, check names the fix.
    lab.ns(&router, "nft", &["delete", "table", "ip", "lab"])
        .unwrap();
    let report = stdout(&lab.multiroute(&["check"]));
    assert!(
        report.contains("warning: nothing source-NATs traffic leaving wan0"),
        "{report}"
    );
    // A masquerade over a set of interfaces, or a verdict map, is NAT all the same.
    lab.ns(
        &router,
        "nft",
        &[
            "add table ip nat; add chain ip nat natted; add rule ip nat natted masquerade; \
           add chain ip nat post { type nat hook postrouting priority 100; }; \
           add rule ip nat post oifname { \"wan0\", \"wan9\" } masquerade; \
           add rule ip nat post oifname vmap { \"wan1\" : jump natted }",
        ],
    )
    .unwrap();
    let report = stdout(&lab.multiroute(&["check"]));
    assert!(!report.contains("source-NAT"), "{report}");
}

#[test]
fn what_others_remove_is_put_back() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1], "");
    lab.start_router().unwrap();
    let router = lab.router();
    // A firewall reload that flushes every table: multiroute hears of it from
    // nftables itself and puts its table back at once, not at the periodic check.
    let table_there = || {
        lab.ns(&router, "nft", &["list", "table", "inet", "multiroute"])
            .is_ok()
    };
    let flushed = Instant::now();
    lab.ns(&router, "nft", &["flush", "ruleset"]).unwrap();
    multiroute_tests::wait_until(Duration::from_secs(8), table_there)
        .expect("the nftables table comes back");
    let back = flushed.elapsed();
    println!(
        "nftables table back {} ms after the flush",
        back.as_millis()
    );
    assert!(
        back < Duration::from_millis(1500),
        "put back on the nftables event, not the 5 s check: {back:?}"
    );
    lab.ns(&router, "nft", &[multiroute_tests::LAB_NAT])
        .unwrap();
    // An admin deleting a rule and a route.
    lab.ns(&router, "ip", &["rule", "del", "pref", "10100"])
        .unwrap();
    lab.ns(&router, "ip", &["route", "del", "default", "table", "102"])
        .unwrap();
    // And a map write gone wrong: the first uplink's slot says dead, the ring
    // points nowhere.
    let mut maps = multiroute::apply::datapath::Maps::open(&lab.pin_path()).unwrap();
    maps.set_uplink(0, multiroute_ebpf::Uplink::default())
        .unwrap();
    let nowhere = vec![multiroute_ebpf::NO_UPLINK; multiroute_ebpf::RING_SIZE as usize];
    maps.write_rings(&multiroute::net::PerFamily::from_fn(|_| nowhere.clone()))
        .unwrap();
    // The periodic check may have run between the two writes and mended half of
    // the damage: only a repair that started after both proves the maps whole.
    let map_repairs = || lab.router_log().matches("the datapath maps").count();
    let damaged = map_repairs();
    let start = Instant::now();
    multiroute_tests::wait_until(Duration::from_secs(12), || {
        lab.assert_kernel_matches_plan().is_ok()
            && lab
                .ns(&router, "nft", &["list", "table", "inet", "multiroute"])
                .is_ok()
            && map_repairs() > damaged
    })
    .unwrap_or_else(|_| panic!("not repaired:\n{}", lab.router_log()));
    println!("repaired after {} ms", start.elapsed().as_millis());
    assert!(
        lab.router_log()
            .contains("put back what something else removed or changed"),
        "{}",
        lab.router_log()
    );
    assert_eq!(lab.status().unwrap()["ready"], true);
    let Connections { hits, failures, .. } = lab.connections(400).unwrap();
    assert_eq!(failures, 0);
    assert!(
        hits.iter().all(|&h| h > 100),
        "both uplinks steer again: {hits:?}"
    );
    assert_eq!(lab.connections(200).unwrap().failures, 0);
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn a_point_to_point_uplink_works_like_any_other() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1], "");
    lab.make_point_to_point(1).unwrap();
    let blocks = format!(
        "{}{}",
        Lab::uplink_block(0, 1),
        Lab::point_to_point_block(1, 1)
    );
    lab.write_config_with(&blocks, "\n[health]\ninterval_ms = 200\ntimeout_ms = 200\n")
        .unwrap();
    let check = lab.multiroute(&["check"]);
    let report = stdout(&check);
    assert_eq!(check.status.code(), Some(0), "{report}");
    assert!(
        report.contains(
            "uplink isp1 on wan1: address 198.18.1.2, gateway point-to-point, peer 198.18.1.1"
        ),
        "{report}"
    );
    lab.start_router().unwrap();
    let status = lab.status().unwrap();
    let isp1 = &status["uplinks"][1];
    assert_eq!(isp1["state"], "up", "{isp1}");
    assert_eq!(
        isp1["gateway"], "198.18.1.1",
        "the peer stands for the gateway"
    );
    assert_eq!(
        isp1["probes"][0]["target"], "198.18.1.1",
        "probed at the peer"
    );
    lab.assert_kernel_matches_plan().unwrap();
    let table = stdout(
        &lab.ns(&lab.router(), "ip", &["route", "show", "table", "102"])
            .unwrap(),
    );
    assert!(table.contains("default dev wan1 proto 77"), "{table}");
    let Connections { hits, failures, .. } = lab.connections(1800).unwrap();
    // A share off by more than sampling explains is told apart from a health flap
    // (a false "down" sends new flows to isp0 without failing any).
    let flaps = lab.status().unwrap()["uplinks"][1]["state_changes"].clone();
    println!(
        "point-to-point isp1 carried {} of 1800 new connections ({flaps} state changes)",
        hits[1]
    );
    assert_eq!(failures, 0);
    assert!((percent(hits[1], 1800) - 50.0).abs() <= 3.0, "{hits:?}");

    // pppd redials: the link goes away, then comes back with its address and route.
    lab.set_uplink_link(1, false).unwrap();
    wait_until(Duration::from_secs(2), || {
        lab.status()
            .is_ok_and(|s| s["uplinks"][1]["state"] == "down")
    })
    .expect("isp1 down with its link");
    let Connections { hits, failures, .. } = lab.connections(200).unwrap();
    assert_eq!((hits[1], failures), (0, 0), "nothing through the dead link");
    let router = lab.router();
    lab.set_uplink_link(1, true).unwrap();
    lab.ns(&router, "ip", &["addr", "flush", "dev", "wan1"])
        .unwrap();
    lab.ns(
        &router,
        "ip",
        &[
            "addr",
            "add",
            "198.18.1.2",
            "peer",
            "198.18.1.1/32",
            "dev",
            "wan1",
        ],
    )
    .unwrap();
    let start = Instant::now();
    wait_until(Duration::from_secs(3), || {
        lab.status().is_ok_and(|s| s["uplinks"][1]["state"] == "up")
    })
    .expect("isp1 back after the redial");
    println!("redial followed in {} ms", start.elapsed().as_millis());
    let Connections { hits, failures, .. } = lab.connections(400).unwrap();
    assert_eq!(failures, 0);
    assert!(hits[1] > 100, "new flows use the redialled link: {hits:?}");
    lab.assert_kernel_matches_plan().unwrap();
    lab.stop_and_unload().expect("stopping multiroute");
}

/// Specific routes in the main table keep winning over steering although the
/// `fwmark` rules come first: the classifier leaves their destinations unmarked.
/// A static route added while running is followed at once, and removed again.
#[test]
fn a_static_route_in_the_main_table_wins_over_steering() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1, 1], "");
    lab.start_router().unwrap();
    let router = lab.router();
    let office = format!("http://{SERVER2}:{SERVER_PORT}/");
    let spread = |lab: &Lab, url: &str| {
        let (seen, failures) = lab.count_from(&lab.client(), url, 300, None).unwrap();
        assert_eq!(failures, 0);
        seen
    };
    let seen = spread(&lab, &office);
    assert_eq!(seen.len(), 3, "balanced before the route: {seen:?}");

    // Sessions to another server run across the route's coming and going: the
    // daemon re-classifies only flows inside the changed prefix.
    let sessions = lab.start_sessions(60, 20, 4.0, 100).unwrap();
    // The admin routes the office server through isp2 only.
    let route = ["203.0.113.11/32", "via", "198.18.2.1", "dev", "wan2"];
    let t0 = Instant::now();
    lab.ns(&router, "ip", &[&["route", "add"][..], &route].concat())
        .unwrap();
    let only_isp2 =
        |seen: &BTreeMap<String, u64>| seen.keys().all(|address| address == "198.18.2.2");
    let followed = followed_after(&lab, &office, t0, only_isp2)
        .expect("the office's flows follow the static route");
    println!(
        "static route added: followed {} ms later",
        followed.as_millis()
    );
    assert!(followed <= Duration::from_secs(1), "{followed:?}");
    let seen = spread(&lab, &office);
    println!("300 connections to the routed server: {seen:?}");
    assert!(only_isp2(&seen), "{seen:?}");
    let seen = spread(&lab, &lab.url("/"));
    println!("300 connections to another server: {seen:?}");
    assert_eq!(seen.len(), 3, "other servers stay balanced: {seen:?}");

    // The operator sees those flows as the main table's, not an uplink's.
    let flows = lab.flows(&["--dst", &SERVER2.to_string()]).unwrap();
    assert!(!flows.is_empty());
    assert!(
        flows
            .iter()
            .all(|f| f["uplink"] == "main" && f["why"] == "direct"),
        "{flows:?}"
    );
    // A marked LAN packet's first rule is its uplink's.
    let rules = stdout(&lab.ns(&router, "ip", &["rule"]).unwrap());
    let first = rules.lines().find(|l| l.contains("proto 77")).unwrap_or("");
    assert!(first.contains("fwmark 0x100/0xff00"), "{rules}");
    lab.assert_kernel_matches_plan().unwrap();

    // The route goes away: the office is balanced again.
    lab.ns(&router, "ip", &[&["route", "del"][..], &route].concat())
        .unwrap();
    wait_until(Duration::from_secs(1), || {
        lab.count_from(&lab.client(), &office, 12, None)
            .is_ok_and(|(seen, _)| !only_isp2(&seen))
    })
    .expect("balanced again without the route");
    let report = sessions.finish().unwrap();
    println!(
        "sessions to another server across the route's change: {} moved, {} broken",
        report.moved(),
        report.broken()
    );
    assert_eq!((report.moved(), report.broken()), (0, 0));
    lab.stop_and_unload().expect("stopping multiroute");
}
