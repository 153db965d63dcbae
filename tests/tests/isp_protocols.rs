//! Uplinks configured by what ISPs speak (see `multiroute_tests::isp`): IPv6 from
//! radvd's router advertisements with SLAAC, IPv4 from dnsmasq through the DHCP
//! clients routers run (dhcpcd, udhcpc). No `gateway`/`gateway6` keys: multiroute
//! learns every uplink's router from what those daemons leave in the kernel, and
//! follows them as they refresh, renumber and expire.
use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use multiroute_tests::{
    Lab, LabOptions,
    isp::{DhcpClient, LEASE_SECONDS},
    percent, require_root, wait_until,
};

/// The ISPs' router lifetime: adverts come every 3–4 s, so it spans two or three.
const RA_LIFETIME: u64 = 10;

/// Probes at each uplink's gateway per family every 200 ms, 3 losses down.
const HEALTH: &str =
    "\n[health]\ntargets = [\"gateway\"]\ninterval_ms = 200\ntimeout_ms = 200\ndown = 3\nup = 3\n";

fn uplink(lab: &Lab, n: usize) -> serde_json::Value {
    lab.status().expect("status")["uplinks"][n].clone()
}

/// The IPv4 address an uplink's status shows, without its prefix length.
fn status_address(status: &serde_json::Value) -> Option<std::net::Ipv4Addr> {
    status["address"].as_str()?.split('/').next()?.parse().ok()
}

/// Asserts that `hits` follow `weights` within `tolerance` percentage points.
fn assert_shares(hits: &[usize], weights: &[u32], tolerance: f64) {
    let (total, sum) = (hits.iter().sum::<usize>(), weights.iter().sum::<u32>());
    for (i, weight) in weights.iter().enumerate() {
        let share = percent(hits[i], total);
        let expected = 100.0 * f64::from(*weight) / f64::from(sum);
        assert!(
            (share - expected).abs() <= tolerance,
            "uplink {i}: {share:.1} % of {total} connections, expected {expected:.1} % ({hits:?})"
        );
    }
}

#[test]
fn ipv6_gateways_come_from_router_advertisements_and_expire_with_them() {
    if !require_root!() {
        return;
    }
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 2, 3],
        extra_config: HEALTH.into(),
    })
    .expect("building the lab");
    lab.add_ipv6_by_ra(RA_LIFETIME as u32)
        .expect("radvd at every ISP");
    lab.start_router().expect("starting multiroute");

    // Each uplink's IPv6 router is the one its own ISP advertised; the RA defaults
    // stay in the main table, behind multiroute's multipath default over all three.
    wait_until(Duration::from_secs(5), || {
        (0..3).all(|n| uplink(&lab, n)["ipv6"]["state"] == "up")
    })
    .unwrap_or_else(|_| panic!("every uplink's IPv6 up: {}", lab.status().unwrap()));
    for n in 0..3 {
        let learned = uplink(&lab, n)["ipv6"]["gateway"].clone();
        assert_eq!(
            learned.as_str(),
            lab.ra_gateway(n).unwrap().as_deref(),
            "isp{n}'s IPv6 gateway is its RA router"
        );
    }
    let main = lab.default_routes("-6", "main").unwrap();
    let own: Vec<_> = main.iter().filter(|r| r["protocol"] == "77").collect();
    assert_eq!(own.len(), 1, "{main:#?}");
    assert_eq!(
        own[0]["nexthops"].as_array().map(Vec::len),
        Some(3),
        "{main:#?}"
    );
    assert_eq!(
        main.iter().filter(|r| r["protocol"] == "ra").count(),
        3,
        "{main:#?}"
    );
    lab.assert_kernel_matches_plan().unwrap();

    // 3 000 new IPv6 connections over more than a router lifetime: adverts refresh
    // the defaults meanwhile, and nothing churns.
    let log_lines = lab.router_log().lines().count();
    let started = Instant::now();
    let mut hits = [0; 3];
    for _ in 0..6 {
        let child = lab.start_connections_to(&lab.url6("/"), 500).unwrap();
        let batch = lab.finish_connections(child).unwrap();
        assert_eq!(batch.failures, 0, "{batch:?}");
        for (total, n) in hits.iter_mut().zip(&batch.hits) {
            *total += n;
        }
        sleep(Duration::from_secs(RA_LIFETIME) / 3);
    }
    let period = started.elapsed().as_secs_f64();
    println!("IPv6 connections per uplink over {period:.1} s: {hits:?}");
    assert!(period > 2.0 * RA_LIFETIME as f64, "{period:.1} s");
    assert_shares(&hits, &[1, 2, 3], 3.0);
    let log = lab.router_log();
    let new_lines: Vec<_> = log.lines().skip(log_lines).collect();
    assert!(
        new_lines.is_empty(),
        "adverts re-plan nothing and log nothing: {new_lines:#?}"
    );

    // isp1's router dies without a goodbye: its default expires with its lifetime
    // and isp1's IPv6 goes down with it; isp1's IPv4 carries on untouched.
    let sessions = lab
        .start_sessions(60, 20, RA_LIFETIME as f64 + 5.0, 100)
        .unwrap();
    sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    lab.stop_advertising(1).unwrap();
    wait_until(Duration::from_secs(RA_LIFETIME + 3), || {
        uplink(&lab, 1)["ipv6"]["state"] != "up"
    })
    .unwrap_or_else(|_| panic!("isp1's IPv6 outlived its RA: {}", lab.status().unwrap()));
    let down_after = stopped.elapsed().as_secs_f64();
    println!("isp1's adverts stopped: its IPv6 down after {down_after:.2} s");
    assert!(down_after <= RA_LIFETIME as f64 + 0.5, "{down_after:.2} s");
    let isp1 = uplink(&lab, 1);
    assert_eq!(isp1["ipv6"]["state"], "no gateway", "{isp1}");
    assert_eq!(isp1["state"], "up", "IPv4 untouched: {isp1}");
    // `status` reads the kernel itself, so it can see the default gone a moment
    // before the daemon's re-read just after the expiry (50 ms later) logs it.
    wait_until(Duration::from_secs(1), || {
        lab.router_log().lines().any(|l| {
            l.contains("uplink DOWN") && l.contains("isp1/ipv6") && l.contains("no gateway")
        })
    })
    .unwrap_or_else(|_| panic!("the log says why:\n{}", lab.router_log()));
    let report = sessions.finish().unwrap();
    assert_eq!((report.moved(), report.broken()), (0, 0), "IPv4 sessions");
    let after = lab.start_connections_to(&lab.url6("/"), 300).unwrap();
    let after = lab.finish_connections(after).unwrap();
    assert_eq!((after.hits[1], after.failures), (0, 0), "{after:?}");

    // Its router comes back: the new adverts bring isp1's IPv6 back.
    lab.start_radvd(1, RA_LIFETIME as u32).unwrap();
    wait_until(Duration::from_secs(RA_LIFETIME), || {
        uplink(&lab, 1)["ipv6"]["state"] == "up"
    })
    .unwrap_or_else(|_| panic!("isp1's IPv6 back: {}", lab.status().unwrap()));
    lab.assert_kernel_matches_plan().unwrap();

    // Unload leaves the RA defaults where the kernel keeps them.
    lab.stop_and_unload().unwrap();
    let main = lab.default_routes("-6", "main").unwrap();
    assert!(main.iter().all(|r| r["protocol"] == "ra"), "{main:#?}");
    assert_eq!(main.len(), 3, "{main:#?}");
}

/// The (ISP, client) pairs of the DHCP lab; ISP 0 stays static.
const CLIENTS: [(usize, DhcpClient); 2] = [(1, DhcpClient::Dhcpcd), (2, DhcpClient::Udhcpc)];

#[test]
fn ipv4_gateways_come_from_dhcp_clients_and_follow_renewals_and_expiry() {
    if !require_root!() {
        return;
    }
    let resolv_conf = std::fs::read("/etc/resolv.conf").ok();
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1, 1],
        extra_config: HEALTH.into(),
    })
    .expect("building the lab");
    // A router of DHCP uplinks: no default but what the clients add, and the
    // admin's for the static uplink appended beside udhcpc's (both at metric 0).
    let router = lab.router();
    lab.ns(&router, "ip", &["route", "del", "default"]).unwrap();
    for (n, client) in CLIENTS {
        lab.serve_dhcp(n, (100, 150), 1).unwrap();
        lab.start_dhcp_client(n, client).unwrap();
    }
    wait_until(Duration::from_secs(5), || {
        lab.default_routes("-4", "main").is_ok_and(|r| r.len() == 2)
    })
    .expect("both clients' defaults");
    lab.ns(
        &router,
        "ip",
        &[
            "route",
            "append",
            "default",
            "via",
            "198.18.0.1",
            "dev",
            "wan0",
        ],
    )
    .unwrap();
    let blocks = Lab::uplink_block(0, 1)
        + "\n[[uplink]]\nname = \"isp1\"\ninterface = \"wan1\"\n"
        + "\n[[uplink]]\nname = \"isp2\"\ninterface = \"wan2\"\n";
    lab.write_config_with(&blocks, HEALTH).unwrap();
    lab.start_router().expect("starting multiroute");

    for (n, client) in CLIENTS {
        let status = uplink(&lab, n);
        assert_eq!(status["state"], "up", "{client:?}: {status}");
        assert_eq!(
            status["gateway"],
            format!("198.18.{n}.1"),
            "{client:?}: {status}"
        );
        assert_eq!(
            status_address(&status),
            lab.uplink_ipv4(n).unwrap(),
            "{client:?}"
        );
    }
    // dhcpcd's default (metric 1002) stays in main behind multiroute's; the two at
    // metric 0 (the static one, udhcpc's) are parked side by side.
    let main = lab.default_routes("-4", "main").unwrap();
    assert!(
        main.iter()
            .any(|r| r["protocol"] == "dhcp" && r["dev"] == "wan1"),
        "{main:#?}"
    );
    let parked = lab.default_routes("-4", "100").unwrap();
    let mut parked_devs: Vec<_> = parked.iter().filter_map(|r| r["dev"].as_str()).collect();
    parked_devs.sort_unstable();
    assert_eq!(parked_devs, ["wan0", "wan2"], "{parked:#?}");
    lab.assert_kernel_matches_plan().unwrap();

    let spread = lab.connections(1500).unwrap();
    println!("connections per uplink: {:?}", spread.hits);
    assert_eq!(spread.failures, 0);
    assert_shares(&spread.hits, &[1, 1, 1], 5.0);

    // Each ISP renumbers: its DHCP server comes back with another range and router,
    // refuses the old lease, and the client takes a new address and gateway. The
    // sessions on the other uplinks run on through both renumberings.
    let sessions = lab.start_sessions(60, 20, 25.0, 100).unwrap();
    sleep(Duration::from_millis(500));
    let mut renewed_at = Instant::now();
    for (n, client) in CLIENTS {
        let old = lab.uplink_ipv4(n).unwrap().expect("a lease");
        lab.stop_dhcp_server(n).unwrap();
        lab.serve_dhcp(n, (200, 250), 254).unwrap();
        lab.renew_lease(n, client).unwrap();
        renewed_at = Instant::now();
        let mut arrived = None;
        wait_until(Duration::from_secs(15), || {
            let now = lab.uplink_ipv4(n).ok().flatten();
            if arrived.is_none() && now.is_some_and(|a| a != old) {
                arrived = Some(Instant::now());
            }
            let status = uplink(&lab, n);
            arrived.is_some()
                && status_address(&status) == now
                && status["gateway"] == format!("198.18.{n}.254")
        })
        .unwrap_or_else(|_| {
            panic!(
                "{client:?}: renumbering followed: {}\n{}",
                uplink(&lab, n),
                lab.dhcp_logs(n)
            )
        });
        let followed = arrived.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
        println!(
            "{client:?}: {old} -> {:?}, followed {followed:.2} s after the address changed",
            lab.uplink_ipv4(n).unwrap()
        );
        assert!(
            followed <= 1.0,
            "{client:?}: followed after {followed:.2} s"
        );
    }
    let report = sessions.finish().unwrap();
    // A session of a renumbered uplink may fail over to isp0 meanwhile (the client
    // reports each session's addresses sorted); those seen only from isp0 were there
    // all along.
    let on_isp0 = |s: &&multiroute_tests::Session| s.addresses.iter().all(|a| a == "198.18.0.2");
    let others: Vec<_> = report.all().filter(on_isp0).collect();
    assert!(others.len() >= 10, "sessions on isp0: {report:?}");
    assert!(
        others
            .iter()
            .all(|s| s.error.is_none() && s.answered == s.sent),
        "sessions on the other uplink untouched: {others:#?}"
    );
    lab.assert_kernel_matches_plan().unwrap();
    let after = lab.connections(600).unwrap();
    assert_eq!(after.failures, 0, "{after:?}");
    assert!(after.hits.iter().all(|&h| h > 100), "{after:?}");

    // isp1's DHCP server goes silent: dhcpcd's renewals fail, the lease runs out,
    // and dhcpcd removes the address; isp1 goes down with the reason.
    lab.stop_dhcp_server(1).unwrap();
    let limit = Duration::from_secs(LEASE_SECONDS + 10).saturating_sub(renewed_at.elapsed());
    wait_until(limit, || uplink(&lab, 1)["state"] == "down")
        .unwrap_or_else(|_| panic!("isp1 down at lease expiry: {}", uplink(&lab, 1)));
    println!(
        "isp1's lease ran out: down {:.0} s after its last renewal",
        renewed_at.elapsed().as_secs_f64()
    );
    let isp1 = uplink(&lab, 1);
    assert!(
        isp1["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no IPv4 address")),
        "{isp1}"
    );
    let after = lab.connections(300).unwrap();
    assert_eq!((after.hits[1], after.failures), (0, 0), "{after:?}");

    // Unload puts both parked defaults back; dhcpcd took its own away at expiry.
    lab.stop_and_unload().unwrap();
    let main = lab.default_routes("-4", "main").unwrap();
    let mut restored: Vec<_> = main
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or("-")
            )
        })
        .collect();
    restored.sort_unstable();
    assert_eq!(
        restored,
        ["198.18.0.1 wan0", "198.18.2.254 wan2"],
        "{main:#?}"
    );
    assert_eq!(
        std::fs::read("/etc/resolv.conf").ok(),
        resolv_conf,
        "the DHCP clients left the host's resolv.conf alone"
    );
}

/// Server-side DHCP acknowledgements dnsmasq logged for ISP `n`.
fn acks(lab: &Lab, n: usize) -> usize {
    let log = std::fs::read_to_string(lab.dir.join(format!("dhcp{n}.log"))).unwrap_or_default();
    log.matches("DHCPACK(").count()
}

#[test]
fn a_dead_uplink_gets_its_on_dead_action_renewal_or_command() {
    if !require_root!() {
        return;
    }
    let health = format!(
        "\n[health]\ntargets = [\"{}\"]\ninterval_ms = 200\ntimeout_ms = 200\n",
        multiroute_tests::SERVER
    );
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1, 1],
        extra_config: health.clone(),
    })
    .expect("building the lab");
    for (n, client) in CLIENTS {
        lab.serve_dhcp(n, (100, 150), 1).unwrap();
        lab.start_dhcp_client(n, client).unwrap();
    }
    let ran = lab.dir.join("on_dead.log");
    let command = format!(
        "on_dead = [\"/bin/sh\", \"-c\", \"echo $MULTIROUTE_UPLINK $MULTIROUTE_INTERFACE >> {}\"]\non_dead_after_ms = 1000\n",
        ran.display()
    );
    let renew = "on_dead = \"renew\"\non_dead_after_ms = 1000\n";
    let blocks = format!(
        "{}{command}\n[[uplink]]\nname = \"isp1\"\ninterface = \"wan1\"\n{renew}\n[[uplink]]\nname = \"isp2\"\ninterface = \"wan2\"\n{renew}",
        Lab::uplink_block(0, 1)
    );
    lab.write_config_with(&blocks, &health).unwrap();
    lab.start_router().expect("starting multiroute");
    let before = [acks(&lab, 1), acks(&lab, 2)];

    // Zombies: links up, DHCP answering, nothing routed beyond the ISPs.
    for n in 0..3 {
        lab.fail_upstream(n).unwrap();
    }
    let started = Instant::now();
    wait_until(Duration::from_secs(8), || {
        acks(&lab, 1) > before[0]
            && acks(&lab, 2) > before[1]
            && std::fs::read_to_string(&ran).is_ok_and(|text| text.contains("isp0 wan0"))
    })
    .unwrap_or_else(|_| {
        panic!(
            "no on_dead action within 8 s:\n{}\n{}\n{}",
            lab.dhcp_logs(1),
            lab.dhcp_logs(2),
            lab.router_log()
        )
    });
    println!(
        "dead uplinks: leases renewed and the command run {:.1} s after the failure",
        started.elapsed().as_secs_f64()
    );
    // Each action is logged once it has returned: a moment after its effect.
    let lines = [
        "uplink still dead: renewing its DHCP lease",
        "asked dhcpcd (pid",
        "asked udhcpc (pid",
        "on_dead: /bin/sh -c",
    ];
    wait_until(Duration::from_secs(1), || {
        let log = lab.router_log();
        lines.iter().all(|line| log.contains(line))
    })
    .unwrap_or_else(|_| panic!("{lines:?} not all logged:\n{}", lab.router_log()));
    // Backing off: the second attempt comes 2 s after the first, not every tick.
    sleep(Duration::from_millis(1500));
    let attempts = std::fs::read_to_string(&ran).unwrap().lines().count();
    assert!(attempts <= 2, "{attempts} attempts within 3 s");
    lab.stop_and_unload().expect("stopping multiroute");
}
