//! Suite 1, datapath cost: the classifier in the kernel through `BPF_PROG_TEST_RUN`,
//! against the empty TC program of the same object measured in the same run. The
//! kernel times the program runs itself, so the syscall is not in the figures.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;
use multiroute::{
    apply::datapath::Capacity,
    net::{IpNet, Ipv4Net, Ipv6Net, PerFamily},
    plan::{Member, Policy, build_ring},
};
use multiroute_ebpf::{Flow, FlowKey, MAX_RULES, PolicyRule, RING_SIZE, RuleSet, Uplink};
use serde::{Deserialize, Serialize};

use super::{Options, median};
use multiroute_tests::datapath::{LoadedDatapath, arp, tcp, tcp6};

const MASK: u32 = 0xff00;
/// Big enough for a million flows plus the ones a run adds.
const BIG_TABLE: u32 = 1 << 21;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    pub name: String,
    pub ns_per_packet: f64,
    /// Against the empty program run the same way (`repeat` or one packet per run).
    pub ratio_to_floor: f64,
    /// The target for this ratio, if it has one.
    pub target_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// The empty program, `repeat` runs of one packet.
    pub floor_ns: f64,
    /// The empty program, one run per packet (what a new flow's run is compared with).
    pub floor_single_ns: f64,
    pub cases: Vec<Case>,
}

/// Uplink table and rings (both families) for `n` equally weighted uplinks.
fn configure(dp: &mut LoadedDatapath, n: u32) -> Result<()> {
    let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    for i in 0..n {
        dp.maps.set_uplink(
            i,
            Uplink {
                mark: (i + 1) << 8,
                mask: MASK,
                carries: 1,
                carries6: 1,
            },
        )?;
    }
    let members: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Member {
            index: i as u32,
            name,
            weight: 1,
        })
        .collect();
    let ring = build_ring(&members, RING_SIZE);
    dp.maps.write_rings(&PerFamily::from_fn(|_| ring.clone()))?;
    dp.maps.write_direct(&direct_destinations()?)?;
    Ok(())
}

/// What a home router's main table routes specifically, and its own addresses:
/// a new flow looks its destination up among them (none matches the benchmark's
/// server).
fn direct_destinations() -> Result<BTreeSet<IpNet>> {
    let v4 = [
        "192.168.1.0/24",
        "192.168.1.1/32",
        "198.18.0.0/24",
        "198.18.0.2/32",
        "198.18.1.0/24",
        "198.18.1.2/32",
        "10.8.0.0/24",
        "127.0.0.1/32",
    ]
    .map(|net| net.parse::<Ipv4Net>().map(IpNet::V4));
    let v6 = [
        "fd00:64::/64",
        "fd00:64::1/128",
        "2001:db8:18::/64",
        "2001:db8:18::2/128",
        "fe80::/64",
    ]
    .map(|net| net.parse::<Ipv6Net>().map(IpNet::V6));
    v4.into_iter()
        .chain(v6)
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)
}

/// 64 rules matching any address: the first 63 want destination ports below the
/// benchmark flows' 443, the last one wants 443.
fn worst_case_rules() -> Policy {
    let rule = |last: bool| PolicyRule {
        proto: 6,
        ports: 1,
        uplink_count: 1,
        src_port_last: u16::MAX,
        dst_port_first: if last { 443 } else { 1 },
        dst_port_last: if last { 443 } else { 442 },
        uplinks: [1, 0, 0, 0, 0, 0, 0, 0],
        ..PolicyRule::default()
    };
    Policy {
        rules: (0..MAX_RULES).map(|i| rule(i + 1 == MAX_RULES)).collect(),
        set: RuleSet {
            present: u64::MAX,
            any_src: u64::MAX,
            any_dst: u64::MAX,
        },
        ..Policy::default()
    }
}

/// The `i`-th distinct flow: a TCP SYN from its own source address and port.
fn flow_packet(i: u32) -> Vec<u8> {
    let src = Ipv4Addr::from(0x6440_0000 | (i >> 14)); // 100.64.0.0/10
    tcp(
        src,
        1024 + (i & 0x3fff) as u16,
        Ipv4Addr::new(203, 0, 113, 10),
        443,
    )
}

/// The `i`-th distinct IPv6 flow, numbered like [`flow_packet`]'s.
fn flow_packet6(i: u32) -> Vec<u8> {
    let src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, (i >> 30) as u16, (i >> 14) as u16);
    tcp6(
        src,
        1024 + (i & 0x3fff) as u16,
        Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10),
        443,
    )
}

fn flow_key(i: u32) -> FlowKey {
    let src = Ipv4Addr::from(0x6440_0000 | (i >> 14));
    FlowKey::new(
        src.octets(),
        1024 + (i & 0x3fff) as u16,
        [203, 0, 113, 10],
        443,
        6,
    )
}

/// Median over `runs` of the per-packet time of `repeat` runs of `packet`.
fn repeated(dp: &mut LoadedDatapath, floor: bool, packet: &[u8], options: &Options) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..options.runs {
        let (_, per_packet) = if floor {
            dp.run_floor(packet, options.repeat)?
        } else {
            dp.run(packet, 0, options.repeat)?
        };
        samples.push(per_packet.as_nanos() as f64);
    }
    Ok(median(samples))
}

/// Median over `runs` of the mean kernel time of single runs over fresh flows,
/// numbered from `*next` on.
fn single_runs(
    dp: &mut LoadedDatapath,
    floor: bool,
    next: &mut u32,
    options: &Options,
) -> Result<f64> {
    single_runs_of(dp, floor, next, options, flow_packet)
}

/// [`single_runs`] over the flows `packet` makes.
fn single_runs_of(
    dp: &mut LoadedDatapath,
    floor: bool,
    next: &mut u32,
    options: &Options,
    packet: fn(u32) -> Vec<u8>,
) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..options.runs {
        let mut total = 0.0;
        for _ in 0..options.new_flows {
            let packet = packet(*next);
            *next += 1;
            let (_, took) = if floor {
                dp.run_floor(&packet, 1)?
            } else {
                dp.run(&packet, 0, 1)?
            };
            total += took.as_nanos() as f64;
        }
        samples.push(total / f64::from(options.new_flows));
    }
    Ok(median(samples))
}

pub fn run(options: &Options) -> Result<Results> {
    // Both flow tables big enough for every flow a run adds: a full LRU table
    // evicts on each insert, which is another case than a new flow's.
    let capacity = Capacity {
        flows: BIG_TABLE,
        flows6: BIG_TABLE,
        ..Capacity::for_balance(multiroute_ebpf::balance::CONNECTION)
    };
    let mut dp = LoadedDatapath::load_with("bench", capacity)?;
    configure(&mut dp, 2)?;
    let known = flow_packet(u32::MAX >> 1);
    let floor_ns = repeated(&mut dp, true, &known, options)?;
    let mut next = 0;
    // A warm-up, discarded: the first new flows into a freshly created table
    // measured a quarter above the steady state (cold caches and TLB over its
    // preallocated elements).
    single_runs(&mut dp, false, &mut next, options)?;
    let floor_single_ns = single_runs(&mut dp, true, &mut next, options)?;
    let mut cases = Vec::new();
    let mut push = |name: String, ns: f64, floor: f64, target: Option<f64>| {
        cases.push(Case {
            name,
            ns_per_packet: ns,
            ratio_to_floor: ns / floor,
            target_ratio: target,
        })
    };
    for uplinks in [1, 4, 16] {
        super::interrupted()?;
        configure(&mut dp, uplinks)?;
        dp.run(&known, 0, 1)?;
        let ns = repeated(&mut dp, false, &known, options)?;
        push(
            format!("known flow, {uplinks} uplinks"),
            ns,
            floor_ns,
            Some(3.0),
        );
        let ns = single_runs(&mut dp, false, &mut next, options)?;
        push(
            format!("new flow, {uplinks} uplinks"),
            ns,
            floor_single_ns,
            Some(8.0),
        );
    }
    configure(&mut dp, 2)?;
    let ns = repeated(&mut dp, false, &arp(), options)?;
    push("non-IP pass-through (ARP)".into(), ns, floor_ns, None);

    // IPv6: its own flow table (40-byte keys) and ring, the same steering.
    let known6 = flow_packet6(u32::MAX >> 1);
    dp.run(&known6, 0, 1)?;
    let ns = repeated(&mut dp, false, &known6, options)?;
    push("IPv6 known flow, 2 uplinks".into(), ns, floor_ns, Some(3.0));
    let mut next6 = 0;
    let ns = single_runs_of(&mut dp, false, &mut next6, options, flow_packet6)?;
    push(
        "IPv6 new flow, 2 uplinks".into(),
        ns,
        floor_single_ns,
        Some(8.0),
    );

    // The policy rules' worst case: all 64 rules are candidates for every new flow
    // and only the last one matches (by port), so the walk tries each.
    dp.maps.write_policy(&worst_case_rules())?;
    dp.run(&flow_packet(next), 0, 1)?;
    let chosen = dp
        .maps
        .v4
        .get(&flow_key(next))
        .map(|f| (f.chosen_by, f.rule));
    anyhow::ensure!(
        chosen == Some((multiroute_ebpf::chosen_by::RULE, (MAX_RULES - 1) as u8)),
        "the last rule must choose the benchmark's new flows: {chosen:?}"
    );
    next += 1;
    let ns = single_runs(&mut dp, false, &mut next, options)?;
    push(
        format!("new flow, {MAX_RULES} policy rules, the last one matching"),
        ns,
        floor_single_ns,
        None,
    );
    dp.maps.write_policy(&Policy::default())?;

    // A full flow table: the flows live at the far end of the numbering so the new
    // flows above do not collide with them.
    for entries in [1_000u32, 1_000_000] {
        super::interrupted()?;
        let mut dp = LoadedDatapath::load_sized(&format!("bench{entries}"), BIG_TABLE)?;
        configure(&mut dp, 2)?;
        let base = 1 << 30;
        for i in 0..entries {
            dp.maps.v4.insert(
                &flow_key(base + i),
                &Flow {
                    uplink: (i % 2) as u16,
                    ..Flow::default()
                },
            )?;
        }
        let ns = repeated(&mut dp, false, &flow_packet(base + entries / 2), options)?;
        push(
            format!("known flow, {entries} flows in the table"),
            ns,
            floor_ns,
            Some(3.0),
        );
        let mut fresh = 0;
        let ns = single_runs(&mut dp, false, &mut fresh, options)?;
        push(
            format!("new flow, {entries} flows in the table"),
            ns,
            floor_single_ns,
            Some(8.0),
        );
    }
    Ok(Results {
        floor_ns,
        floor_single_ns,
        cases,
    })
}
