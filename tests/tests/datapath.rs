//! The classifier, loaded into the kernel and driven through BPF_PROG_TEST_RUN.
//! Fixtures in Katran's style (`multiroute_tests::fixtures`): tables of packets
//! built field by field, each with the verdict and the counter expected.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use multiroute::plan::{Member, build_ring};
use multiroute_ebpf::{Counter, RING_SIZE, Uplink, chosen_by, family};
use multiroute_tests::{
    datapath::{LoadedDatapath, Verdict, icmp_echo, tcp, tcp6, udp, udp6},
    fixtures::{self, Expect, Fixture},
    require_root, test_name,
};

const MASK: u32 = 0xff00;
const MARKS: [u32; 3] = [0x100, 0x200, 0x300];
/// Bits outside the mask that must survive steering.
const FOREIGN_MARK: u32 = 0x5000_0007;
const TC_ACT_UNSPEC: i32 = -1;
const NAMES: [&str; 3] = ["dsl", "cable", "lte"];

fn lan(host: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + host)
}

const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// Loads the classifier with three uplinks, `alive` and `weights` as given.
fn setup(name: &str, weights: [u32; 3], alive: [bool; 3]) -> Option<LoadedDatapath> {
    if !require_root(name) {
        return None;
    }
    let mut dp = LoadedDatapath::load(name).expect("loading the classifier");
    configure(&mut dp, weights, alive);
    Some(dp)
}

fn configure(dp: &mut LoadedDatapath, weights: [u32; 3], alive: [bool; 3]) {
    configure_families(dp, weights, alive, [false; 3]);
}

/// Uplinks alive per family, each family's ring over its live uplinks.
fn configure_families(
    dp: &mut LoadedDatapath,
    weights: [u32; 3],
    alive: [bool; 3],
    alive6: [bool; 3],
) {
    for (i, mark) in MARKS.iter().enumerate() {
        let uplink = Uplink {
            mark: *mark,
            mask: MASK,
            carries: u32::from(alive[i]),
            carries6: u32::from(alive6[i]),
        };
        dp.maps
            .set_uplink(i as u32, uplink)
            .expect("writing the uplink table");
    }
    let ring = |alive: [bool; 3]| {
        let members: Vec<_> = (0..3)
            .filter(|&i| alive[i])
            .map(|i| Member {
                index: i as u32,
                name: NAMES[i],
                weight: weights[i],
            })
            .collect();
        build_ring(&members, RING_SIZE)
    };
    let rings = multiroute::net::PerFamily {
        v4: ring(alive),
        v6: ring(alive6),
    };
    dp.maps.write_rings(&rings).expect("writing the rings");
}

fn verdict(dp: &mut LoadedDatapath, packet: &[u8]) -> Verdict {
    dp.run(packet, FOREIGN_MARK, 1).expect("test run").0
}

/// Which uplink a verdict chose, checking the foreign bits survived.
fn uplink_of(v: Verdict) -> Option<usize> {
    assert_eq!(
        v.return_code, TC_ACT_UNSPEC,
        "the classifier never drops or short-circuits"
    );
    assert_eq!(
        v.mark & !MASK,
        FOREIGN_MARK & !MASK,
        "bits outside the mask must survive"
    );
    MARKS.iter().position(|m| *m == v.mark & MASK)
}

/// Each packet passes with its mark as it came and the verdict that lets the
/// stack go on.
fn assert_untouched(dp: &mut LoadedDatapath, packets: &[(&str, Vec<u8>)]) {
    for (what, packet) in packets {
        let v = dp
            .run(packet, FOREIGN_MARK, 1)
            .unwrap_or_else(|err| panic!("{what}: {err:#}"))
            .0;
        assert_eq!(
            v,
            Verdict {
                return_code: TC_ACT_UNSPEC,
                mark: FOREIGN_MARK
            },
            "{what} must pass untouched"
        );
    }
}

/// The outcome counters of `family`, by outcome.
fn counters(dp: &LoadedDatapath, family: u32) -> HashMap<Counter, u64> {
    dp.maps
        .counters(family)
        .expect("reading the counters")
        .into_iter()
        .collect()
}

fn many_flows(n: u32, seed: u32) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(move |i| {
        tcp(
            lan(1 + (i + seed) % 250),
            1024 + ((i + seed) / 250) as u16,
            SERVER,
            443,
        )
    })
}

fn shares(dp: &mut LoadedDatapath, flows: impl Iterator<Item = Vec<u8>>) -> [usize; 3] {
    let mut counts = [0; 3];
    for packet in flows {
        let chosen = uplink_of(verdict(dp, &packet)).expect("every new flow is steered");
        counts[chosen] += 1;
    }
    counts
}

/// Runs a fixture table in order: each row's verdict, and the one counter of
/// `family` it moved (the other family's counters stay where they were).
fn run_fixtures(dp: &mut LoadedDatapath, family: u32, fixtures: &[Fixture]) {
    let other = family ^ 1;
    let mut took: HashMap<&str, usize> = HashMap::new();
    for fixture in fixtures {
        let what = fixture.description;
        let (before, before_other) = (counters(dp, family), counters(dp, other));
        let v = dp
            .run(&fixture.packet, FOREIGN_MARK, 1)
            .unwrap_or_else(|err| panic!("{what}: {err:#}"))
            .0;
        let counter = match fixture.expect {
            Expect::Steered {
                counter,
                same_flow_as,
            } => {
                let uplink = uplink_of(v).unwrap_or_else(|| panic!("{what} must be steered"));
                if let Some(earlier) = same_flow_as {
                    assert_eq!(Some(&uplink), took.get(earlier), "{what}: {earlier}'s flow");
                }
                took.insert(what, uplink);
                counter
            }
            Expect::Untouched(counter) => {
                let untouched = Verdict {
                    return_code: TC_ACT_UNSPEC,
                    mark: FOREIGN_MARK,
                };
                assert_eq!(v, untouched, "{what} must pass untouched");
                counter
            }
        };
        let after = counters(dp, family);
        for (seen, value) in &after {
            let moved = value - before.get(seen).copied().unwrap_or(0);
            let want = u64::from(*seen == counter);
            assert_eq!(moved, want, "{what}: counter {seen:?} (want {counter:?})");
        }
        assert_eq!(
            counters(dp, other),
            before_other,
            "{what}: families count apart"
        );
    }
}

#[test]
fn ipv4_fixtures_steer_ip_and_pass_everything_else_untouched() {
    let Some(mut dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    let fixtures = fixtures::ipv4(lan(7), SERVER);
    run_fixtures(&mut dp, family::IPV4, &fixtures);
    let steered = fixtures
        .iter()
        .filter(|f| matches!(f.expect, Expect::Steered { .. }))
        .count() as u64;
    let traffic: u64 = (0..3).map(|i| dp.maps.traffic(i).unwrap().packets).sum();
    assert_eq!(
        traffic, steered,
        "every steered packet counted on its uplink"
    );
}

#[test]
fn same_five_tuple_gets_the_same_mark_every_time() {
    let Some(mut dp) = setup("same-tuple", [1, 1, 1], [true; 3]) else {
        return;
    };
    for flow in many_flows(200, 0) {
        let first = verdict(&mut dp, &flow);
        for _ in 0..5 {
            assert_eq!(verdict(&mut dp, &flow), first);
        }
    }
    // Fragments and protocols without ports are keyed by addresses only.
    let a = icmp_echo(lan(9), SERVER, 1, 1);
    let b = icmp_echo(lan(9), SERVER, 1, 2);
    assert_eq!(
        verdict(&mut dp, &a),
        verdict(&mut dp, &b),
        "one echo id, one flow"
    );
    let counters = counters(&dp, multiroute_ebpf::family::IPV4);
    assert_eq!(counters[&Counter::FlowNew], 201);
    assert_eq!(counters[&Counter::FlowHit], 1001);
}

#[test]
fn weights_one_two_three_over_sixty_thousand_flows() {
    let Some(mut dp) = setup(test_name!(), [1, 2, 3], [true; 3]) else {
        return;
    };
    let counts = shares(&mut dp, many_flows(60_000, 0));
    let total: usize = counts.iter().sum();
    for (i, want) in [1.0, 2.0, 3.0].iter().enumerate() {
        let share = 100.0 * counts[i] as f64 / total as f64;
        let expected = 100.0 * want / 6.0;
        println!(
            "uplink {i}: {} flows, {share:.2}% (want {expected:.2}%)",
            counts[i]
        );
        assert!(
            (share - expected).abs() <= 2.0,
            "uplink {i}: {share:.2}% vs {expected:.2}%"
        );
    }
}

#[test]
fn dead_uplink_gets_no_new_flows_and_its_flows_move() {
    let Some(mut dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    let before: Vec<_> = many_flows(3000, 0)
        .map(|p| uplink_of(verdict(&mut dp, &p)))
        .collect();
    assert!(before.contains(&Some(1)));
    configure(&mut dp, [1, 1, 1], [true, false, true]);
    let after: Vec<_> = many_flows(3000, 0)
        .map(|p| uplink_of(verdict(&mut dp, &p)))
        .collect();
    for (was, now) in before.iter().zip(&after) {
        match was {
            Some(1) => assert!(
                matches!(now, Some(0 | 2)),
                "a flow of the dead uplink must move"
            ),
            other => assert_eq!(other, now, "flows on live uplinks must stay"),
        }
    }
    let fresh = shares(&mut dp, many_flows(3000, 100_000));
    assert_eq!(
        fresh[1], 0,
        "no new flow may use the dead uplink: {fresh:?}"
    );
    let counters = counters(&dp, multiroute_ebpf::family::IPV4);
    assert_eq!(
        counters[&Counter::FlowMoved] as usize,
        before.iter().filter(|u| **u == Some(1)).count()
    );

    // All dead: fail open, unmarked, so the main table decides.
    configure(&mut dp, [1, 1, 1], [false; 3]);
    let v = verdict(&mut dp, &tcp(lan(3), 999, SERVER, 80));
    assert_eq!(
        v.mark, FOREIGN_MARK,
        "with no live uplink nothing is marked"
    );
}

#[test]
fn weight_changes_keep_existing_flows() {
    let Some(mut dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    let before: Vec<_> = many_flows(3000, 0).map(|p| verdict(&mut dp, &p)).collect();
    configure(&mut dp, [1, 0, 4], [true; 3]);
    let after: Vec<_> = many_flows(3000, 0).map(|p| verdict(&mut dp, &p)).collect();
    assert_eq!(
        before, after,
        "no existing flow may change uplink on a weight change"
    );
    let fresh = shares(&mut dp, many_flows(6000, 200_000));
    assert_eq!(fresh[1], 0, "weight 0 drains: {fresh:?}");
    let share = 100.0 * fresh[2] as f64 / 6000.0;
    assert!(
        (share - 80.0).abs() <= 2.0,
        "new flows follow 1:0:4, got {fresh:?}"
    );
}

#[test]
fn cost_per_packet_is_reported() {
    let Some(mut dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    let known = tcp(lan(1), 1000, SERVER, 80);
    let (_, known_ns) = dp.run(&known, 0, 1_000_000).unwrap();
    let mut new_total = std::time::Duration::ZERO;
    for packet in many_flows(20_000, 300_000) {
        new_total += dp.run(&packet, 0, 1).unwrap().1;
    }
    let new_ns = new_total.as_nanos() as f64 / 20_000.0;
    println!(
        "known flow: {} ns/packet (1 000 000 repeats); new flow: {new_ns:.0} ns/packet (20 000 flows)",
        known_ns.as_nanos()
    );
    assert!(known_ns.as_nanos() > 0, "the kernel reports a duration");
}

/// The fixtures' three uplinks in config form, with `rules` after them, as the
/// datapath's rule maps hold them.
fn policy(rules: &str) -> multiroute::plan::Policy {
    let text = format!(
        "lan = [\"lan0\"]\n{}{rules}",
        NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| format!("[[uplink]]\nname = \"{name}\"\ninterface = \"wan{i}\"\n"))
            .collect::<String>()
    );
    let config = multiroute::config::Config::parse(&text, std::path::Path::new("policy.toml"))
        .expect("the policy config");
    multiroute::plan::policy::datapath(&config.rules, |name| {
        NAMES.iter().position(|n| *n == name).map(|i| i as u32)
    })
}

/// Policy rules, matched once per new flow: SIP over cable then DSL; an office
/// subnet's traffic to one network over LTE; one host over DSL; source ports
/// 5000-5100 (TCP and UDP only) over LTE.
const POLICY: &str = r#"
[[rule]]
name = "sip"
proto = "udp"
dst_port = "5060-5061"
uplinks = ["cable", "dsl"]

[[rule]]
name = "office"
src = ["100.64.0.128/25"]
dst = ["198.51.100.0/24"]
uplinks = ["lte"]

[[rule]]
name = "host"
src = ["100.64.0.200"]
uplinks = ["dsl"]

[[rule]]
name = "ports"
src_port = "5000-5100"
uplinks = ["lte"]
"#;

/// What chose the uplink of the flow from `src` to `dst`: (chosen_by, rule).
fn chosen(dp: &LoadedDatapath, src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> (u8, u8) {
    let flow = dp
        .maps
        .v4
        .all()
        .into_iter()
        .find(|(key, _)| {
            key.src_octets() == src.octets()
                && key.dst_octets() == dst.octets()
                && key.ports().0 == sport
        })
        .map(|(_, flow)| flow)
        .expect("the flow is remembered");
    (flow.chosen_by, flow.rule)
}

#[test]
fn policy_rules_choose_new_flows_in_order_and_fall_back_in_order() {
    let Some(mut dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    dp.maps
        .write_policy(&policy(POLICY))
        .expect("writing the rules");
    let office_server = Ipv4Addr::new(198, 51, 100, 7);
    let cases = [
        ("SIP over cable", udp(lan(5), 5060, SERVER, 5060), 1, 0),
        ("SIP's other port", udp(lan(5), 7000, SERVER, 5061), 1, 0),
        (
            "office to its network",
            tcp(lan(130), 40_000, office_server, 443),
            2,
            1,
        ),
        (
            "the host inside the office: office first",
            tcp(lan(200), 40_001, office_server, 80),
            2,
            1,
        ),
        (
            "the host elsewhere",
            tcp(lan(200), 40_002, SERVER, 80),
            0,
            2,
        ),
        ("source port in range", tcp(lan(9), 5050, SERVER, 80), 2, 3),
    ];
    for (what, packet, uplink, rule) in &cases {
        assert_eq!(uplink_of(verdict(&mut dp, packet)), Some(*uplink), "{what}");
        let ip = etherparse::SlicedPacket::from_ethernet(packet).expect("our own packet");
        let Some(etherparse::NetSlice::Ipv4(v4)) = ip.net else {
            panic!("IPv4")
        };
        let sport = match ip.transport {
            Some(etherparse::TransportSlice::Tcp(t)) => t.source_port(),
            Some(etherparse::TransportSlice::Udp(u)) => u.source_port(),
            _ => 0,
        };
        let (src, dst) = (v4.header().source_addr(), v4.header().destination_addr());
        // Rules are numbered in the config's order (no pins here).
        assert_eq!(
            chosen(&dp, src, dst, sport),
            (chosen_by::RULE, *rule),
            "{what}"
        );
    }
    // Near misses are balanced: SIP's port over TCP, a port past the range, the
    // office subnet elsewhere, an ICMP echo whose identifier is in the port range.
    for (src, sport, packet) in [
        (lan(6), 40_010, tcp(lan(6), 40_010, SERVER, 5060)),
        (lan(6), 40_011, udp(lan(6), 40_011, SERVER, 5062)),
        (lan(131), 40_012, tcp(lan(131), 40_012, SERVER, 443)),
        (lan(7), 5050, icmp_echo(lan(7), SERVER, 5050, 1)),
    ] {
        assert!(uplink_of(verdict(&mut dp, &packet)).is_some());
        assert_eq!(
            chosen(&dp, src, SERVER, sport).0,
            chosen_by::HASH,
            "{src}:{sport}"
        );
    }
    let counters = counters(&dp, multiroute_ebpf::family::IPV4);
    assert_eq!(counters[&Counter::FlowRule], 6);

    // Cable dies: the SIP flow moves to DSL, still by its rule; a new one too.
    configure(&mut dp, [1, 1, 1], [true, false, true]);
    assert_eq!(uplink_of(verdict(&mut dp, &cases[0].1)), Some(0));
    assert_eq!(chosen(&dp, lan(5), SERVER, 5060), (chosen_by::RULE, 0));
    assert_eq!(
        uplink_of(verdict(&mut dp, &udp(lan(8), 5060, SERVER, 5060))),
        Some(0)
    );
    // Both die: SIP is balanced over what lives.
    configure(&mut dp, [1, 1, 1], [false, false, true]);
    assert_eq!(
        uplink_of(verdict(&mut dp, &udp(lan(10), 5060, SERVER, 5060))),
        Some(2)
    );
    assert_eq!(chosen(&dp, lan(10), SERVER, 5060).0, chosen_by::HASH);

    // An empty rule set matches nothing.
    dp.maps
        .write_policy(&Default::default())
        .expect("clearing the rules");
    configure(&mut dp, [1, 1, 1], [true; 3]);
    verdict(&mut dp, &udp(lan(11), 5060, SERVER, 5060));
    assert_eq!(chosen(&dp, lan(11), SERVER, 5060).0, chosen_by::HASH);
}

#[test]
fn maps_of_another_layout_are_refused_not_adopted() {
    let Some(dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    let pin_path = dp.pin_path();
    let mut layout: aya::maps::Array<aya::maps::MapData, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(
            aya::maps::MapData::from_pin(pin_path.join(multiroute_ebpf::map_names::LAYOUT))
                .expect("the layout pin"),
        ))
        .expect("an array");
    assert_eq!(layout.get(&0, 0).unwrap(), multiroute_ebpf::MAP_LAYOUT);
    // A future release's maps, as a downgrade would find them.
    layout.set(0, &99, 0).unwrap();
    let err = match multiroute::apply::datapath::Datapath::load(
        &pin_path,
        multiroute_ebpf::balance::CONNECTION,
    ) {
        Ok(_) => panic!("maps of layout 99 were adopted"),
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("layout 99") && err.contains("multiroute unload") && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(layout.get(&0, 0).unwrap(), 99, "nothing was changed");
}

/// The previous release's maps (layout 2) are upgraded in place: the flow table
/// is kept, the counters start afresh with their new size.
#[test]
fn maps_of_the_previous_layout_are_upgraded_in_place() {
    let Some(mut dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    let flow = tcp(lan(3), 40_000, SERVER, 443);
    let chosen = uplink_of(verdict(&mut dp, &flow));
    assert!(chosen.is_some());
    let pin_path = dp.pin_path();
    let layout = || -> aya::maps::Array<aya::maps::MapData, u32> {
        aya::maps::Array::try_from(aya::maps::Map::Array(
            aya::maps::MapData::from_pin(pin_path.join(multiroute_ebpf::map_names::LAYOUT))
                .expect("the layout pin"),
        ))
        .expect("an array")
    };
    layout().set(0, &2, 0).unwrap();
    let counters = pin_path.join(multiroute_ebpf::map_names::COUNTERS);
    let layout2_counters = 10 * family::COUNT;
    multiroute_tests::datapath::pin_older_counters(&counters, layout2_counters)
        .expect("layout 2's counters");
    let entries = || {
        aya::maps::MapInfo::from_pin(&counters)
            .expect("the counters pin")
            .max_entries()
    };
    assert_eq!(entries(), layout2_counters);
    multiroute::apply::datapath::Datapath::load(&pin_path, multiroute_ebpf::balance::CONNECTION)
        .expect("layout 2 is upgraded in place");
    assert_eq!(layout().get(&0, 0).unwrap(), multiroute_ebpf::MAP_LAYOUT);
    assert_eq!(
        entries(),
        multiroute_ebpf::COUNTER_COUNT * family::COUNT,
        "the counters are recreated at their new size"
    );
    let maps = multiroute::apply::datapath::Maps::open(&pin_path).expect("the maps");
    assert_eq!(maps.v4.all().len(), 1, "the running flow is kept");
    assert!(pin_path.join(multiroute_ebpf::map_names::DIRECT).exists());
}

#[test]
fn the_affinity_table_is_sized_by_the_balance_mode() {
    let Some(mut dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    uplink_of(verdict(&mut dp, &tcp(lan(1), 1000, SERVER, 443)));
    use multiroute::apply::datapath::{Datapath, affinity_capacity};
    use multiroute_ebpf::{AFFINITY_TABLE_SIZE, balance, map_names};
    let pin_path = dp.pin_path();
    let entries = || {
        aya::maps::MapInfo::from_pin(pin_path.join(map_names::AFFINITY))
            .expect("the affinity pin")
            .max_entries()
    };
    assert_eq!(entries(), 1, "\"connection\" never reads it");
    // A load for "source" (a restart after the mode changed) replaces it.
    let _grouping = Datapath::load(&pin_path, balance::SOURCE).expect("loading for source");
    assert_eq!(entries(), AFFINITY_TABLE_SIZE);
    assert_eq!(affinity_capacity(balance::ADDRESSES), AFFINITY_TABLE_SIZE);
    // The flow table is adopted, not replaced.
    let maps = multiroute::apply::datapath::Maps::open(&pin_path).expect("the maps");
    assert_eq!(maps.v4.all().len(), 1, "the flow seen before the reload");
}

fn lan6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, host)
}

const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 10);

#[test]
fn ipv6_fixtures_are_parsed_through_extension_headers_and_steered_like_ipv4() {
    let Some(mut dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    configure_families(&mut dp, [1, 1, 1], [true; 3], [true; 3]);
    let fixtures = fixtures::ipv6(lan6(7), SERVER6);
    run_fixtures(&mut dp, family::IPV6, &fixtures);
    let new_flows = fixtures
        .iter()
        .filter(|f| f.expect == fixtures::NEW)
        .count();
    assert_eq!(
        dp.maps.v6.all().len(),
        new_flows,
        "one flow-table entry per new flow"
    );
}

#[test]
fn ipv6_follows_its_own_weights_and_liveness() {
    let Some(mut dp) = setup("ipv6-shares", [1, 2, 3], [true; 3]) else {
        return;
    };
    // cable's IPv6 is broken, its IPv4 fine.
    configure_families(&mut dp, [1, 2, 3], [true; 3], [true, false, true]);
    let flows = |n: u16| (0..n).map(|i| tcp6(lan6(1 + i % 200), 1024 + i / 200, SERVER6, 443));
    let mut counts = [0usize; 3];
    for packet in flows(6000) {
        counts[uplink_of(verdict(&mut dp, &packet)).expect("steered")] += 1;
    }
    assert_eq!(counts[1], 0, "no IPv6 flow on cable: {counts:?}");
    let share = counts[2] as f64 / 6000.0;
    assert!((share - 0.75).abs() < 0.03, "lte 3 of 1+3: {counts:?}");
    let ipv4 = shares(&mut dp, many_flows(3000, 0));
    assert!(ipv4[1] > 800, "IPv4 still uses cable: {ipv4:?}");
    // IPv6 recovers on cable: new IPv6 flows 1:2:3; the running ones stay.
    configure_families(&mut dp, [1, 2, 3], [true; 3], [true; 3]);
    let mut again = [0usize; 3];
    for packet in flows(6000) {
        again[uplink_of(verdict(&mut dp, &packet)).expect("steered")] += 1;
    }
    assert_eq!(again, counts, "known IPv6 flows keep their uplink");
    let fresh: Vec<_> = (0..3000u16)
        .map(|i| tcp6(lan6(1 + i % 200), 40000 + i / 200, SERVER6, 443))
        .collect();
    let mut new_counts = [0usize; 3];
    for packet in &fresh {
        new_counts[uplink_of(verdict(&mut dp, packet)).expect("steered")] += 1;
    }
    for (i, weight) in [1.0, 2.0, 3.0].iter().enumerate() {
        let share = new_counts[i] as f64 / 3000.0;
        assert!(
            (share - weight / 6.0).abs() < 0.03,
            "new IPv6 flows 1:2:3: {new_counts:?}"
        );
    }
}

const POLICY6: &str = r#"
[[rule]]
name = "office"
src = ["fd00:0:0:1::/64", "100.64.0.128/25"]
dst = ["2001:db8:ff::/64"]
uplinks = ["lte"]

[[rule]]
name = "sip"
proto = "udp"
dst_port = 5060
uplinks = ["cable"]
"#;

#[test]
fn ipv6_prefixes_in_policy_rules_match_ipv6_flows() {
    let Some(mut dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    configure_families(&mut dp, [1, 1, 1], [true; 3], [true; 3]);
    dp.maps
        .write_policy(&policy(POLICY6))
        .expect("writing the rules");
    let other_server = Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, 1);
    let elsewhere = Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 7);
    let rule_of = |dp: &LoadedDatapath, src: Ipv6Addr, dst: Ipv6Addr| {
        let flow = dp
            .maps
            .v6
            .all()
            .into_iter()
            .find(|(key, _)| key.src_octets() == src.octets() && key.dst_octets() == dst.octets())
            .expect("the flow is remembered")
            .1;
        (flow.chosen_by, flow.rule)
    };
    // The office's IPv6 prefix to the server's: lte, by rule 0.
    let office = tcp6(lan6(7), 40_000, SERVER6, 443);
    assert_eq!(uplink_of(verdict(&mut dp, &office)), Some(2));
    assert_eq!(rule_of(&dp, lan6(7), SERVER6), (chosen_by::RULE, 0));
    // A rule without prefixes matches both families.
    let sip = udp6(elsewhere, 5060, other_server, 5060);
    assert_eq!(uplink_of(verdict(&mut dp, &sip)), Some(1));
    assert_eq!(rule_of(&dp, elsewhere, other_server), (chosen_by::RULE, 1));
    assert_eq!(
        uplink_of(verdict(&mut dp, &udp(lan(9), 5060, SERVER, 5060))),
        Some(1)
    );
    // Near misses are balanced: another IPv6 source; an IPv4 office host to an
    // IPv4 server (the rule's destinations are IPv6 only).
    verdict(&mut dp, &tcp6(elsewhere, 40_001, SERVER6, 443));
    assert_eq!(rule_of(&dp, elsewhere, SERVER6).0, chosen_by::HASH);
    verdict(&mut dp, &tcp(lan(130), 40_002, SERVER, 443));
    assert_eq!(chosen(&dp, lan(130), SERVER, 40_002).0, chosen_by::HASH);
}

/// Destinations the main table routes specifically (a VPN subnet, a static IPv6
/// route, the router's own address) pass unmarked, so the `fwmark` rules can come
/// before the main table's lookup; a change of them re-classifies exactly the
/// flows that changed sides.
#[test]
fn destinations_the_main_table_routes_pass_unmarked() {
    use std::collections::BTreeSet;

    use multiroute::net::{IpNet, Ipv4Net, Ipv6Net};

    let Some(mut dp) = setup(test_name!(), [1, 1, 1], [true; 3]) else {
        return;
    };
    configure_families(&mut dp, [1, 1, 1], [true; 3], [true; 3]);
    let vpn = Ipv4Addr::new(198, 51, 100, 7);
    let router = lan(1);
    let static6 = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 5);
    let mut direct: BTreeSet<IpNet> = [
        IpNet::V4("198.51.100.0/24".parse::<Ipv4Net>().unwrap()),
        IpNet::V4(Ipv4Net::host(router)),
        IpNet::V6("2001:db8:77::/48".parse::<Ipv6Net>().unwrap()),
    ]
    .into();
    assert_eq!(dp.maps.write_direct(&direct).expect("writing"), 0);
    let to_vpn = tcp(lan(5), 40_000, vpn, 22);
    assert_untouched(
        &mut dp,
        &[
            ("a new flow into the VPN subnet", to_vpn.clone()),
            ("its next packet", to_vpn.clone()),
            (
                "a flow to the router itself",
                tcp(lan(5), 40_001, router, 53),
            ),
            (
                "an IPv6 flow into a static route",
                tcp6(lan6(5), 40_002, static6, 443),
            ),
        ],
    );
    let to_server = tcp(lan(5), 40_003, SERVER, 443);
    assert!(uplink_of(verdict(&mut dp, &to_server)).is_some());
    let v4 = counters(&dp, family::IPV4);
    assert_eq!(v4[&Counter::PassDirect], 3);
    assert_eq!(v4[&Counter::FlowNew], 1);
    assert_eq!(counters(&dp, family::IPV6)[&Counter::PassDirect], 1);
    let direct_flows = dp
        .maps
        .v4
        .all()
        .into_iter()
        .filter(|(_, flow)| flow.uplink_index() == multiroute_ebpf::DIRECT_UPLINK)
        .count();
    assert_eq!(direct_flows, 2, "direct flows are remembered as such");

    // The server's network gets a route of its own: its steered flow is forgotten
    // and passes unmarked from its next packet on; the direct flows stay.
    direct.insert(IpNet::V4("203.0.113.0/24".parse::<Ipv4Net>().unwrap()));
    assert_eq!(dp.maps.write_direct(&direct).expect("writing"), 1);
    assert_untouched(&mut dp, &[("the server's flow, now direct", to_server)]);
    // The VPN route goes away: its flow is steered from its next packet on.
    direct.remove(&IpNet::V4("198.51.100.0/24".parse::<Ipv4Net>().unwrap()));
    assert_eq!(dp.maps.write_direct(&direct).expect("writing"), 1);
    assert!(uplink_of(verdict(&mut dp, &to_vpn)).is_some());
}
