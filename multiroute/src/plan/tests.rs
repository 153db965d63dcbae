//! The plan for the seed's own example must be the seed's own commands.
use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use super::slots::Slots;
use super::*;
use crate::net::{IpNet, Ipv4Net, Ipv6Net};

/// The seed's interfaces: eth0 LAN 192.168.0.1/24, eth1 DSL 142.154.64.7/24 via
/// 142.154.64.1, eth2 cable 24.19.12.45/24 via 24.19.12.1, and its two DNS pins.
const SEED_CONFIG: &str = r#"
lan = ["eth0"]

[[uplink]]
name = "dsl"
interface = "eth1"
gateway = "142.154.64.1"
pin = ["142.154.61.100"]

[[uplink]]
name = "cable"
interface = "eth2"
gateway = "24.19.12.1"
pin = ["24.19.100.1"]
"#;

fn seed_host() -> Observed {
    let iface = |index, addr, prefix_len| Interface::with_ipv4(index, true, addr, prefix_len);
    Observed::from([
        ("eth0".into(), iface(2, [192, 168, 0, 1], 24)),
        ("eth1".into(), iface(3, [142, 154, 64, 7], 24)),
        ("eth2".into(), iface(4, [24, 19, 12, 45], 24)),
        ("lo".into(), iface(1, [127, 0, 0, 1], 8)),
    ])
}

fn seed_plan() -> Plan {
    let config = Config::parse(SEED_CONFIG, Path::new("seed.toml")).unwrap();
    build(&config, &seed_host(), &BTreeSet::new()).unwrap()
}

/// A fresh start: no slots held yet.
fn build(config: &Config, host: &Observed, dead: &BTreeSet<String>) -> Result<Plan, PlanError> {
    Plan::build(config, host, &Verdicts::dead(dead.clone()), &Slots::new())
}

fn lines<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// The plan's rules for the router's own traffic (`iif lo`), as `ip` lists them.
fn router_rule_lines(plan: &Plan) -> Vec<String> {
    lines(&plan.routing.rules)
        .into_iter()
        .filter(|r| r.contains("iif lo"))
        .collect()
}

#[test]
fn seed_tables_match_the_seed_commands() {
    // The seed's `ip route add … table dsl_internet|cable_internet`, with
    // dsl_internet = 101 and cable_internet = 102 and the gateway's device spelled out.
    let expected = [
        "127.0.0.0/8 dev lo table 101",
        "192.168.0.0/24 dev eth0 table 101",
        "142.154.64.0/24 dev eth1 src 142.154.64.7 table 101",
        "24.19.12.0/24 dev eth2 src 24.19.12.45 table 101",
        "default via 142.154.64.1 dev eth1 table 101",
        "127.0.0.0/8 dev lo table 102",
        "192.168.0.0/24 dev eth0 table 102",
        "142.154.64.0/24 dev eth1 src 142.154.64.7 table 102",
        "24.19.12.0/24 dev eth2 src 24.19.12.45 table 102",
        "default via 24.19.12.1 dev eth2 table 102",
    ];
    assert_eq!(lines(&seed_plan().routing.routes), expected);
}

#[test]
fn seed_rules_match_the_seed_commands_plus_steering() {
    let expected = [
        // The classifier's choice, pins included (they are policy rules it matches),
        // first: a marked LAN packet walks no other rule. It never marks a packet
        // the main table routes specifically (see `direct`).
        "pref 10100 fwmark 0x100/0xff00 lookup 101",
        "pref 10101 fwmark 0x200/0xff00 lookup 102",
        // Everything unmarked (the router's own, LAN to LAN): specific main routes
        // win over the rules below.
        "pref 10190 from all lookup main suppress_prefixlength 0",
        // Replies to connections that arrived on an uplink (conntrack-marked).
        "pref 10200 fwmark 0x8100/0xff00 lookup 101",
        "pref 10201 fwmark 0x8200/0xff00 lookup 102",
        // ip rule add from 142.154.64.7 table dsl_internet; … from 24.19.12.45 …
        "pref 10300 from 142.154.64.7 lookup 101",
        "pref 10301 from 24.19.12.45 lookup 102",
        // ip rule add to 142.154.61.100 table dsl_internet; to 24.19.100.1 table
        // cable_internet — for the router's own traffic; the LAN's never gets here.
        "pref 10400 from all to 142.154.61.100 iif lo lookup 101",
        "pref 10401 from all to 24.19.100.1 iif lo lookup 102",
    ];
    assert_eq!(lines(&seed_plan().routing.rules), expected);
}

/// The classifier leaves to the main table what it routes specifically (of any
/// route type) and the router's own addresses; defaults are not among them.
#[test]
fn direct_destinations_are_main_routes_and_own_addresses() {
    let config = Config::parse(SEED_CONFIG, Path::new("seed.toml")).unwrap();
    let mut host = seed_host();
    let net = |s: &str| IpNet::V4(s.parse::<Ipv4Net>().unwrap());
    host.main_routes = [
        "192.168.0.0/24",
        "142.154.64.0/24",
        "24.19.12.0/24",
        "10.8.0.0/24",
    ]
    .map(net)
    .into();
    let plan = build(&config, &host, &BTreeSet::new()).unwrap();
    let direct: Vec<_> = plan
        .datapath
        .direct
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        direct,
        [
            "10.8.0.0/24",
            "24.19.12.0/24",
            "24.19.12.45",
            "127.0.0.1",
            "142.154.64.0/24",
            "142.154.64.7",
            "192.168.0.0/24",
            "192.168.0.1",
        ]
    );
}

/// While `load` brings the classifier up, the main table's lookup stands in front
/// of the marks; nothing else differs.
#[test]
fn load_holds_the_main_lookup_in_front_until_the_classifier_is_ready() {
    let plan = seed_plan();
    let (now, guarded) = (
        lines(&plan.routing.rules),
        lines(&plan.routing.rules_main_first(10000)),
    );
    let changed: Vec<_> = now.iter().zip(&guarded).filter(|(a, b)| a != b).collect();
    assert_eq!(
        changed,
        [(
            &"pref 10190 from all lookup main suppress_prefixlength 0".to_owned(),
            &"pref 10000 from all lookup main suppress_prefixlength 0".to_owned()
        )]
    );
    assert_eq!(now.len(), guarded.len());
}

/// More specific main routes than the datapath holds: none are written and the
/// main table is consulted before the marks, as it must win.
#[test]
fn too_many_main_routes_put_the_main_table_first() {
    let config = Config::parse(SEED_CONFIG, Path::new("seed.toml")).unwrap();
    let mut host = seed_host();
    host.main_routes = (0..=multiroute_ebpf::MAX_DIRECT_PREFIXES)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24)))
        .collect();
    let plan = build(&config, &host, &BTreeSet::new()).unwrap();
    assert!(plan.datapath.direct.is_empty());
    let rules = lines(&plan.routing.rules);
    assert_eq!(
        rules[0],
        "pref 10000 from all lookup main suppress_prefixlength 0"
    );
    assert_eq!(rules[1], "pref 10100 fwmark 0x100/0xff00 lookup 101");
    assert_eq!(
        rules.iter().filter(|r| r.contains("lookup main")).count(),
        1
    );
}

#[test]
fn seed_main_default_is_the_seed_multipath_route() {
    // ip route add default scope global nexthop via 142.154.64.1 dev eth1 weight 1
    //                                  nexthop via 24.19.12.1 dev eth2 weight 1
    let route = seed_plan().routing.main_default.v4.unwrap();
    assert_eq!(
        route.to_string(),
        "default nexthop via 142.154.64.1 dev eth1 weight 1 nexthop via 24.19.12.1 dev eth2 weight 1 table main"
    );
}

#[test]
fn datapath_gets_marks_inside_the_mask_and_a_ring_of_both() {
    let plan = seed_plan();
    let marks: Vec<_> = plan
        .datapath
        .uplinks
        .iter()
        .map(|u| (u.mark, u.mask, u.carries))
        .collect();
    assert_eq!(marks, [(0x100, 0xff00, 1), (0x200, 0xff00, 1)]);
    let on_dsl = plan.datapath.ring.v4.iter().filter(|&&i| i == 0).count();
    assert!((on_dsl as f64 / plan.datapath.ring.v4.len() as f64 - 0.5).abs() < 0.001);
    assert_eq!(plan.datapath.lan, [("eth0".to_string(), 2)]);
}

#[test]
fn dead_uplink_leaves_ring_and_main_default_but_keeps_its_table() {
    let config = Config::parse(SEED_CONFIG, Path::new("seed.toml")).unwrap();
    let dead = BTreeSet::from(["dsl".to_string()]);
    let plan = build(&config, &seed_host(), &dead).unwrap();
    assert!(plan.datapath.ring.v4.iter().all(|&i| i == 1));
    assert_eq!(plan.datapath.uplinks[0].carries, 0);
    assert_eq!(
        plan.routing.main_default.v4.unwrap().to_string(),
        "default via 24.19.12.1 dev eth2 table main"
    );
    assert!(plan.routing.routes.iter().any(|r| r.table == 101));
    // Its pins lapse: pinned traffic follows the normal choice meanwhile.
    assert!(
        !lines(&plan.routing.rules)
            .iter()
            .any(|r| r.contains("to 142.154.61.100"))
    );
    assert!(
        lines(&plan.routing.rules)
            .iter()
            .any(|r| r.contains("to 24.19.100.1 iif lo lookup 102"))
    );
    // Probes must keep flowing through the dead uplink to see it recover.
    assert!(
        lines(&plan.routing.rules)
            .iter()
            .any(|r| r.ends_with("from 142.154.64.7 lookup 101"))
    );
}

/// SIP from anywhere over cable, else DSL; and a LAN host's DNS over DSL.
const POLICY_CONFIG: &str = r#"
[[rule]]
name = "sip"
proto = "udp"
dst_port = "5060-5061"
uplinks = ["cable", "dsl"]

[[rule]]
name = "dns"
src = ["192.168.0.0/24", "192.168.0.53"]
dst_port = 53
uplinks = ["dsl"]
"#;

#[test]
fn policy_rules_go_to_the_classifier_and_the_routers_own_rules() {
    let config = Config::parse(
        &format!("{SEED_CONFIG}{POLICY_CONFIG}"),
        Path::new("seed.toml"),
    )
    .unwrap();
    let plan = build(&config, &seed_host(), &BTreeSet::new()).unwrap();
    let names: Vec<_> = config.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["dsl.pin", "cable.pin", "sip", "dns"]);
    let policy = &plan.datapath.policy;
    assert_eq!(policy.set.present, 0b1111);
    assert_eq!(policy.set.any_src, 0b0111, "only dns names sources");
    assert_eq!(policy.set.any_dst, 0b1100, "sip and dns name ports only");
    let sip = policy.rules[2];
    assert_eq!(
        (sip.proto, sip.ports, sip.dst_port_first, sip.dst_port_last),
        (17, 1, 5060, 5061)
    );
    assert_eq!((sip.src_port_first, sip.src_port_last), (0, u16::MAX));
    assert_eq!(sip.uplinks[..usize::from(sip.uplink_count)], [1, 0]);
    // The host address inside the LAN prefix carries the prefix's rule too.
    let net = |text: &str| IpNet::V4(text.parse().unwrap());
    assert_eq!(policy.src[&net("192.168.0.0/24")], 0b1000);
    assert_eq!(policy.src[&net("192.168.0.53")], 0b1000);
    assert_eq!(policy.dst[&net("24.19.100.1")], 0b0010);
    assert_eq!(
        router_rule_lines(&plan),
        [
            "pref 10400 from all to 142.154.61.100 iif lo lookup 101",
            "pref 10401 from all to 24.19.100.1 iif lo lookup 102",
            "pref 10402 from all iif lo ipproto udp dport 5060-5061 lookup 102",
            // Ports without a protocol: TCP and UDP, each source.
            "pref 10403 from 192.168.0.0/24 iif lo ipproto tcp dport 53 lookup 101",
            "pref 10404 from 192.168.0.0/24 iif lo ipproto udp dport 53 lookup 101",
            "pref 10405 from 192.168.0.53 iif lo ipproto tcp dport 53 lookup 101",
            "pref 10406 from 192.168.0.53 iif lo ipproto udp dport 53 lookup 101",
        ]
    );
    let using = |plan: &Plan| -> Vec<Option<String>> {
        plan.rule_uses
            .iter()
            .map(|u| u.using_name.clone())
            .collect()
    };
    assert_eq!(
        using(&plan),
        [Some("dsl"), Some("cable"), Some("cable"), Some("dsl")].map(|u| u.map(String::from))
    );

    // Cable dead: SIP falls back to DSL, cable's pin lapses (its traffic is
    // balanced); the datapath's entries do not change (it reads liveness itself).
    let dead = BTreeSet::from(["cable".to_string()]);
    let fallback = build(&config, &seed_host(), &dead).unwrap();
    assert_eq!(
        using(&fallback),
        [Some("dsl"), None, Some("dsl"), Some("dsl")].map(|u| u.map(String::from))
    );
    assert_eq!(fallback.datapath.policy, plan.datapath.policy);
    let local = router_rule_lines(&fallback);
    assert!(
        local.contains(&"pref 10402 from all iif lo ipproto udp dport 5060-5061 lookup 101".into())
    );
    assert!(
        !local.iter().any(|r| r.starts_with("pref 10401 ")),
        "{local:?}"
    );
    assert_eq!(
        plan.routing.rules.len(),
        fallback.routing.rules.len() + 1,
        "only cable's pin goes (a dead uplink keeps its tables and rules); SIP's moves"
    );
}

#[test]
fn gateway_is_learned_from_the_host_when_omitted() {
    let text = SEED_CONFIG.replace("gateway = \"142.154.64.1\"\n", "");
    let config = Config::parse(&text, Path::new("seed.toml")).unwrap();
    let mut host = seed_host();
    host.get_mut("eth1").unwrap().gateway.v4 = Some("142.154.64.254".parse().unwrap());
    let plan = build(&config, &host, &BTreeSet::new()).unwrap();
    assert!(
        lines(&plan.routing.routes)
            .contains(&"default via 142.154.64.254 dev eth1 table 101".into())
    );

    host.get_mut("eth1").unwrap().gateway.v4 = None;
    let plan = build(&config, &host, &BTreeSet::new()).unwrap();
    assert!(matches!(
        plan.uplinks[0].readiness.v4,
        Readiness::NoGateway { .. }
    ));
    assert!(!plan.uplinks[0].alive.v4);
    assert!(
        plan.routing.routes.iter().all(|r| r.table != 101),
        "no table for an uplink without gateway"
    );
}

#[test]
fn uplink_without_address_is_not_ready() {
    let config = Config::parse(SEED_CONFIG, Path::new("seed.toml")).unwrap();
    let mut host = seed_host();
    host.get_mut("eth2").unwrap().addresses.v4.clear();
    let plan = build(&config, &host, &BTreeSet::new()).unwrap();
    assert_eq!(plan.uplinks[1].readiness.v4, Readiness::NoAddress);
    assert!(
        !lines(&plan.routing.rules)
            .iter()
            .any(|r| r.contains("lookup 102"))
    );
}

#[test]
fn missing_interfaces_are_named() {
    let config = Config::parse(SEED_CONFIG, Path::new("seed.toml")).unwrap();
    let mut host = seed_host();
    host.remove("eth2");
    let err = build(&config, &host, &BTreeSet::new()).unwrap_err();
    assert_eq!(
        err,
        PlanError::MissingUplink {
            uplink: "cable".into(),
            interface: "eth2".into()
        }
    );
    host.remove("eth0");
    assert_eq!(
        build(&config, &host, &BTreeSet::new()).unwrap_err(),
        PlanError::MissingLan("eth0".into())
    );
}

#[test]
fn main_default_off_means_no_main_route() {
    let text = format!("{SEED_CONFIG}\n[routing]\nmain_default = false\n");
    let config = Config::parse(&text, Path::new("seed.toml")).unwrap();
    assert!(
        build(&config, &seed_host(), &BTreeSet::new())
            .unwrap()
            .routing
            .main_default
            .v4
            .is_none()
    );
}

#[test]
fn link_down_uplink_has_no_table_and_no_rules() {
    let config = Config::parse(SEED_CONFIG, Path::new("seed.toml")).unwrap();
    let mut host = seed_host();
    host.get_mut("eth1").unwrap().up = false;
    let plan = build(&config, &host, &BTreeSet::new()).unwrap();
    assert_eq!(plan.uplinks[0].readiness.v4, Readiness::LinkDown);
    assert!(!plan.uplinks[0].alive.v4);
    assert!(plan.routing.routes.iter().all(|r| r.table != 101));
    assert!(
        !lines(&plan.routing.routes)
            .iter()
            .any(|r| r.contains("dev eth1")),
        "no table routes through a down link: the kernel would refuse them"
    );
    assert!(
        !lines(&plan.routing.rules)
            .iter()
            .any(|r| r.contains("lookup 101"))
    );
    assert!(
        plan.datapath.ring.v4.iter().all(|&i| i == 1),
        "every new flow to cable"
    );
}

#[test]
fn a_degraded_uplink_takes_no_new_flows_while_a_good_one_of_its_tier_does() {
    let config = Config::parse(SEED_CONFIG, Path::new("seed.toml")).unwrap();
    let degraded = |names: &[&str]| Verdicts {
        degraded: names.iter().map(|n| n.to_string()).collect(),
        ..Verdicts::default()
    };
    let plan = Plan::build(&config, &seed_host(), &degraded(&["dsl"]), &Slots::new()).unwrap();
    let dsl = plan.uplink("dsl").unwrap();
    assert_eq!(dsl.condition(Family::V4), Condition::Degraded);
    assert!(dsl.carries(Family::V4), "its running flows stay");
    assert!(!dsl.takes_new_flows(Family::V4, plan.active_tier()));
    assert_eq!(
        ring_members(&plan),
        BTreeSet::from([plan.uplink("cable").unwrap().slot])
    );
    // Both degraded: both carry new flows, as if healthy.
    let both = degraded(&["dsl", "cable"]);
    let plan = Plan::build(&config, &seed_host(), &both, &Slots::new()).unwrap();
    assert_eq!(ring_members(&plan).len(), 2);
    assert!(!plan.fail_open());
}

#[test]
fn an_exhausted_budget_stands_by_below_every_tier_or_stops() {
    let metered = |at_quota: &str| {
        let text = format!(
            "{SEED_CONFIG}[uplink.budget]\nquota = \"1GB\"\nperiod = \"daily\"\nat_quota = \"{at_quota}\"\n"
        );
        Config::parse(&text, Path::new("seed.toml")).unwrap()
    };
    let verdicts = |dead: &[&str]| Verdicts {
        dead: dead.iter().map(|n| n.to_string()).collect(),
        exhausted: BTreeSet::from(["cable".to_owned()]),
        ..Verdicts::default()
    };
    let config = metered("standby");
    let plan = Plan::build(&config, &seed_host(), &verdicts(&[]), &Slots::new()).unwrap();
    let cable = plan.uplink("cable").unwrap();
    assert!(cable.exhausted && cable.standby, "its flows move");
    assert_eq!(cable.tier, EXHAUSTED_TIER);
    assert_eq!(
        ring_members(&plan),
        BTreeSet::from([plan.uplink("dsl").unwrap().slot])
    );
    // Nothing else alive: it carries.
    let alone = Plan::build(&config, &seed_host(), &verdicts(&["dsl"]), &Slots::new()).unwrap();
    assert_eq!(ring_members(&alone), BTreeSet::from([cable.slot]));
    // "stop" carries nothing, even alone; "warn" changes nothing.
    let stop = metered("stop");
    let stopped = Plan::build(&stop, &seed_host(), &verdicts(&["dsl"]), &Slots::new()).unwrap();
    assert!(ring_members(&stopped).is_empty());
    let warn = metered("warn");
    let warned = Plan::build(&warn, &seed_host(), &verdicts(&[]), &Slots::new()).unwrap();
    assert_eq!(ring_members(&warned).len(), 2);
}

#[test]
fn all_dead_fails_open() {
    let config = Config::parse(SEED_CONFIG, Path::new("seed.toml")).unwrap();
    let dead = BTreeSet::from(["dsl".to_owned(), "cable".to_owned()]);
    let plan = build(&config, &seed_host(), &dead).unwrap();
    assert!(plan.fail_open());
    assert!(
        plan.routing.main_default.v4.is_none(),
        "the original default comes back"
    );
    assert!(
        plan.datapath
            .ring
            .v4
            .iter()
            .all(|&i| i == multiroute_ebpf::NO_UPLINK)
    );
    assert!(!seed_plan().fail_open());
}

#[test]
fn uplinks_keep_the_slot_the_datapath_holds() {
    let config = Config::parse(SEED_CONFIG, Path::new("seed.toml")).unwrap();
    let held = Slots::from([("dsl".to_owned(), 1), ("cable".to_owned(), 0)]);
    let plan = Plan::build(&config, &seed_host(), &Verdicts::default(), &held).unwrap();
    let dsl = &plan.uplinks[0];
    assert_eq!((dsl.slot, dsl.table, dsl.mark), (1, 102, 0x200));
    assert_eq!(plan.datapath.uplinks[1].mark, 0x200);
    assert_eq!(plan.datapath.uplinks[0].mark, 0x100, "cable in slot 0");
    assert!(
        lines(&plan.routing.rules)
            .iter()
            .any(|r| r.ends_with("from 142.154.64.7 lookup 102"))
    );
}

/// The seed's two uplinks with cable as a backup tier.
fn tiered(failback: &str) -> Config {
    let text = SEED_CONFIG.replace(
        "gateway = \"24.19.12.1\"",
        "gateway = \"24.19.12.1\"\ntier = 2",
    ) + &format!("\n[balance]\nfailback = \"{failback}\"\n");
    Config::parse(&text, Path::new("tiered.toml")).unwrap()
}

fn ring_members(plan: &Plan) -> BTreeSet<u32> {
    let ring = plan.datapath.ring.v4.iter().copied();
    ring.filter(|&slot| slot != multiroute_ebpf::NO_UPLINK)
        .collect()
}

#[test]
fn new_flows_use_the_best_live_tier_only() {
    let config = tiered("keep");
    let plan = build(&config, &seed_host(), &BTreeSet::new()).unwrap();
    assert_eq!(
        ring_members(&plan),
        BTreeSet::from([0]),
        "only dsl (tier 1)"
    );
    assert_eq!(
        plan.routing.main_default.v4.as_ref().unwrap().to_string(),
        "default via 142.154.64.1 dev eth1 table main",
        "the router's own traffic prefers tier 1 too"
    );
    assert_eq!(
        plan.datapath.uplinks[1].carries, 1,
        "keep: the backup keeps its flows"
    );
    let dsl_dead = build(&config, &seed_host(), &BTreeSet::from(["dsl".into()])).unwrap();
    assert_eq!(
        ring_members(&dsl_dead),
        BTreeSet::from([1]),
        "the backup takes over"
    );
    assert!(!dsl_dead.fail_open());
}

#[test]
fn failback_move_moves_the_backups_flows_while_a_better_tier_lives() {
    let plan = build(&tiered("move"), &seed_host(), &BTreeSet::new()).unwrap();
    let cable = &plan.uplinks[1];
    assert!(
        cable.alive.v4 && cable.standby,
        "alive, probed, standing by"
    );
    assert_eq!(
        plan.datapath.uplinks[1].carries, 0,
        "its flows move on their next packet"
    );
    assert!(
        plan.routing
            .rules
            .iter()
            .any(|r| r.to_string().contains("from 24.19.12.45")),
        "still routable for its own address and probes"
    );
    let dsl_dead = build(
        &tiered("move"),
        &seed_host(),
        &BTreeSet::from(["dsl".into()]),
    )
    .unwrap();
    assert!(!dsl_dead.uplinks[1].standby);
    assert_eq!(dsl_dead.datapath.uplinks[1].carries, 1);
}

#[test]
fn a_point_to_point_uplink_defaults_into_its_link_and_connects_its_peer() {
    // cable as PPPoE would leave it: `inet 24.19.12.45 peer 24.19.12.1/32`, no gateway.
    let config = Config::parse(
        &SEED_CONFIG.replace("gateway = \"24.19.12.1\"\n", ""),
        Path::new("ppp.toml"),
    )
    .unwrap();
    let mut host = seed_host();
    let eth2 = host.get_mut("eth2").unwrap();
    eth2.addresses.v4 = vec![IpNet::V4(Ipv4Net::new(Ipv4Addr::new(24, 19, 12, 45), 32))];
    eth2.peer = Some(Ipv4Addr::new(24, 19, 12, 1));
    let plan = build(&config, &host, &BTreeSet::new()).unwrap();
    let routes = lines(&plan.routing.routes);
    for expected in [
        "default dev eth2 table 102",
        "24.19.12.1 dev eth2 src 24.19.12.45 table 102",
        "24.19.12.1 dev eth2 src 24.19.12.45 table 101",
    ] {
        assert!(
            routes.iter().any(|r| r == expected),
            "{expected} in {routes:#?}"
        );
    }
    assert_eq!(
        plan.routing.main_default.v4.unwrap().to_string(),
        "default nexthop via 142.154.64.1 dev eth1 weight 1 nexthop dev eth2 weight 1 table main"
    );
    assert!(plan.uplinks[1].alive.v4);
}

/// The seed's config with `nat6 = "npt"` on cable, and `extra` after it.
fn dual_stack_config(extra: &str) -> Config {
    let text = SEED_CONFIG.replace(
        "pin = [\"24.19.100.1\"]",
        "pin = [\"24.19.100.1\"]\nnat6 = \"npt\"",
    ) + extra;
    Config::parse(&text, Path::new("dual.toml")).unwrap()
}

/// The seed's host, dual-stack: the LAN has fd00:1::1/64, DSL 2001:db8:1::7/64
/// behind the router fe80::1 (as an RA would leave it), cable 2001:db8:2::7/64
/// behind fe80::2, with `nat6 = "npt"`.
fn dual_stack() -> (Config, Observed) {
    let config = dual_stack_config("");
    let mut host = seed_host();
    let v6 = |text: &str| text.parse::<Ipv6Net>().unwrap();
    let set = |iface: &mut Interface, address: &str, gateway: Option<&str>| {
        let (addr, len) = address.split_once('/').unwrap();
        iface.addresses.v6 = vec![IpNet::V6(Ipv6Net::new(
            addr.parse().unwrap(),
            len.parse().unwrap(),
        ))];
        iface.gateway.v6 = gateway.map(|g| g.parse().unwrap());
    };
    set(host.get_mut("eth0").unwrap(), "fd00:1::1/64", None);
    set(
        host.get_mut("eth1").unwrap(),
        "2001:db8:1::7/64",
        Some("fe80::1"),
    );
    set(
        host.get_mut("eth2").unwrap(),
        "2001:db8:2::7/64",
        Some("fe80::2"),
    );
    assert_eq!(v6("2001:db8:1::/64").prefix_len, 64);
    (config, host)
}

#[test]
fn ipv6_gets_its_own_tables_rules_and_main_default() {
    let (config, host) = dual_stack();
    let plan = build(&config, &host, &BTreeSet::new()).unwrap();
    let ipv6: Vec<_> = plan
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("-6 "))
        .collect();
    assert_eq!(
        ipv6,
        [
            "-6 pref 10100 fwmark 0x100/0xff00 lookup 101",
            "-6 pref 10101 fwmark 0x200/0xff00 lookup 102",
            "-6 pref 10190 from all lookup main suppress_prefixlength 0",
            "-6 pref 10200 fwmark 0x8100/0xff00 lookup 101",
            "-6 pref 10201 fwmark 0x8200/0xff00 lookup 102",
            "-6 pref 10300 from 2001:db8:1::7 lookup 101",
            "-6 pref 10301 from 2001:db8:2::7 lookup 102",
            "-6 fd00:1::/64 dev eth0 table 101",
            "-6 2001:db8:1::/64 dev eth1 src 2001:db8:1::7 table 101",
            "-6 2001:db8:2::/64 dev eth2 src 2001:db8:2::7 table 101",
            "-6 default via fe80::1 dev eth1 table 101",
            "-6 fd00:1::/64 dev eth0 table 102",
            "-6 2001:db8:1::/64 dev eth1 src 2001:db8:1::7 table 102",
            "-6 2001:db8:2::/64 dev eth2 src 2001:db8:2::7 table 102",
            "-6 default via fe80::2 dev eth2 table 102",
            "-6 default nexthop via fe80::1 dev eth1 weight 1 nexthop via fe80::2 dev eth2 weight 1 table main",
        ]
    );
    assert_eq!(
        plan.firewall.nat6,
        [
            nft::Nat66 {
                interface: "eth1".into(),
                translation: nft::Translation::Masquerade,
            },
            nft::Nat66 {
                interface: "eth2".into(),
                translation: nft::Translation::Prefix {
                    lan: "fd00:1::/64".parse().unwrap(),
                    outside: "2001:db8:2::/64".parse().unwrap(),
                },
            },
        ],
        "masquerade by default; npt learns the uplink's prefix"
    );
}

#[test]
fn a_broken_ipv6_leaves_the_ipv6_ring_only() {
    let (config, host) = dual_stack();
    let dead = BTreeSet::from([health_name("dsl", Family::V6)]);
    let plan = build(&config, &host, &dead).unwrap();
    let dsl = plan.uplink("dsl").unwrap();
    assert!(dsl.alive.v4 && !dsl.alive.v6);
    assert_eq!(
        plan.datapath.uplinks[dsl.slot as usize].carries6, 0,
        "its IPv6 flows move"
    );
    assert!(
        plan.datapath.ring.v4.contains(&dsl.slot),
        "IPv4 keeps using dsl"
    );
    assert!(!plan.datapath.ring.v6.contains(&dsl.slot));
    assert_eq!(
        plan.routing.main_default.v6.as_ref().unwrap().to_string(),
        "-6 default via fe80::2 dev eth2 table main"
    );
    // Its IPv6 table and rules stay: replies and the router's own traffic from
    // its address still need them.
    assert!(
        plan.lines()
            .contains(&"-6 default via fe80::1 dev eth1 table 101".to_owned())
    );

    // Without IPv6 targets of its own, an uplink's IPv6 follows its IPv4.
    let ipv4_only = config_with_targets(&config, "[\"198.51.100.9\"]");
    let plan = build(&ipv4_only, &host, &BTreeSet::from(["dsl".to_owned()])).unwrap();
    let dsl = plan.uplink("dsl").unwrap();
    assert!(!dsl.alive.v4 && !dsl.alive.v6);
}

fn config_with_targets(config: &Config, targets: &str) -> Config {
    let mut config = config.clone();
    config.health.targets = Config::parse(
        &format!("lan = [\"x\"]\n[[uplink]]\nname = \"a\"\ninterface = \"y\"\n[health]\ntargets = {targets}\n"),
        Path::new("t.toml"),
    )
    .unwrap()
    .health
    .targets;
    config
}

#[test]
fn without_ipv6_nothing_of_it_is_planned() {
    let plan = seed_plan();
    assert!(!plan.lines().iter().any(|l| l.starts_with("-6 ")));
    assert!(
        plan.datapath
            .ring
            .v6
            .iter()
            .all(|slot| *slot == multiroute_ebpf::NO_UPLINK)
    );
    assert!(plan.routing.main_default.v6.is_none() && plan.firewall.nat6.is_empty());
}

#[test]
fn router_policy_rules_go_to_the_families_their_prefixes_name() {
    let (_, host) = dual_stack();
    let extra = r#"
[[rule]]
name = "sip"
proto = "udp"
dst_port = 5060
uplinks = ["cable"]

[[rule]]
name = "v6only"
dst = ["2001:db8:ff::/64"]
uplinks = ["dsl"]
"#;
    let config = dual_stack_config(extra);
    let plan = build(&config, &host, &BTreeSet::new()).unwrap();
    assert_eq!(
        router_rule_lines(&plan),
        [
            "pref 10400 from all to 142.154.61.100 iif lo lookup 101",
            "pref 10401 from all to 24.19.100.1 iif lo lookup 102",
            "pref 10402 from all iif lo ipproto udp dport 5060 lookup 102",
            "-6 pref 10402 from all iif lo ipproto udp dport 5060 lookup 102",
            "-6 pref 10403 from all to 2001:db8:ff::/64 iif lo lookup 101",
        ]
    );
    // The classifier's IPv6 trie holds the IPv6 destination.
    assert_eq!(
        plan.datapath.policy.dst[&IpNet::V6("2001:db8:ff::/64".parse().unwrap())],
        0b1000
    );
}
