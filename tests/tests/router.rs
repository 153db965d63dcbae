//! Router reality, end to end: connections arriving on an uplink answered through it
//! (port forwards to a LAN host and services on the router), pins for the router's
//! own DNS forwarder and for LAN sources, and an uplink readdressed as by DHCP.
use multiroute_tests::{CLIENT, Lab, LabOptions, require_root, stdout};

fn lab(weights: &[u32], extra_config: &str) -> Lab {
    Lab::new(&LabOptions {
        weights: weights.to_vec(),
        extra_config: extra_config.into(),
    })
    .expect("building the lab")
}

fn stop_cleanly(lab: &mut Lab) {
    let status = lab.stop_router(libc::SIGTERM).expect("stopping multiroute");
    assert_eq!(status.code(), Some(0), "{}", lab.router_log());
}

/// Every ISP drops and counts packets from another ISP's customer address (BCP 38,
/// as real ISPs do): a reply leaving through the wrong uplink is lost, and counted.
fn enforce_source_addresses(lab: &Lab) {
    for n in 0..lab.isps {
        lab.ns(
            &lab.isp(n),
            "nft",
            &[&format!(
                "add table ip bcp38; add chain ip bcp38 forward {{ type filter hook forward priority 0; }}; \
                 add rule ip bcp38 forward ip saddr 198.18.0.0/16 ip saddr != {} counter drop",
                Lab::uplink_address(n)
            )],
        )
        .unwrap();
    }
}

/// Packets each ISP dropped for carrying another ISP's customer address.
fn foreign_sources(lab: &Lab) -> Vec<u64> {
    (0..lab.isps)
        .map(|n| {
            let out = lab
                .ns(&lab.isp(n), "nft", &["list", "table", "ip", "bcp38"])
                .unwrap();
            stdout(&out)
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("a counter")
        })
        .collect()
}

#[test]
fn connections_arriving_on_an_uplink_are_answered_through_it() {
    if !require_root("connections_arriving_on_an_uplink_are_answered_through_it") {
        return;
    }
    let mut lab = lab(&[1, 1], "");
    // A web server on the LAN host, port-forwarded on every uplink, and one on the
    // router itself.
    lab.start_http_server(&lab.client(), &CLIENT.to_string(), 8000)
        .unwrap();
    lab.start_http_server(&lab.router(), "0.0.0.0", 8001)
        .unwrap();
    lab.ns(
        &lab.router(),
        "nft",
        &[&format!(
            "add chain ip lab pre {{ type nat hook prerouting priority -100; }}; \
             add rule ip lab pre iifname \"wan*\" tcp dport 8000 dnat to {CLIENT}:8000"
        )],
    )
    .unwrap();
    enforce_source_addresses(&lab);
    lab.start_router().unwrap();

    for n in 0..lab.isps {
        let address = Lab::uplink_address(n);
        for (port, what) in [
            (8000, "port-forwarded to the LAN host"),
            (8001, "the router's own"),
        ] {
            let (seen, failures) = lab
                .count_from(&lab.inet(), &format!("http://{address}:{port}/"), 500)
                .unwrap();
            println!(
                "500 connections to {address}:{port} ({what}): {failures} failed, server saw {seen:?}"
            );
            assert_eq!(failures, 0, "{what} via isp{n}");
        }
    }
    assert_eq!(
        foreign_sources(&lab),
        [0, 0],
        "no reply left through an uplink other than the one its connection arrived on"
    );
    // Outbound LAN traffic is still spread as before.
    let seen = lab.connections(400).unwrap();
    assert_eq!(seen.failures, 0);
    assert!(seen.hits.iter().all(|h| *h > 120), "{:?}", seen.hits);
    stop_cleanly(&mut lab);
}
