//! Suites 2 and 3, forwarding throughput and connection-setup rate: the same
//! two-ISP lab with four routers — plain forwarding + masquerade (the baseline),
//! multiroute, an nftables mark router as mwan3 and VyOS build it (hash → mark,
//! saved in and restored from the conntrack mark, same fwmark rules and tables),
//! and kernel ECMP with L4 hashing — plus two partial multiroutes that show where
//! its per-packet cost goes, and the same for IPv6: plain IPv6 forwarding + NAT66
//! against multiroute (whose NAT66 is its own). iperf3 measures, the lab's client
//! counts connections.
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Contender, Labs, Options, median};
use multiroute_tests::{Lab, LabOptions, SERVER, ipv6::SERVER6, lab_script};

/// The IPv6 iperf3 server's port (the IPv4 one keeps iperf3's default).
const IPERF6_PORT: &str = "5202";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Variant {
    Baseline,
    Multiroute,
    NftMark,
    Ecmp,
    /// Decomposition: multiroute's rules and tables, nothing marking packets.
    RoutingOnly,
    /// Decomposition: multiroute without its inbound-symmetry nftables chain.
    NoInboundChain,
    /// IPv6 through the plain router with a NAT66 masquerade.
    Baseline6,
    /// IPv6 through multiroute.
    Multiroute6,
}

impl Variant {
    pub const ALL: [Variant; 8] = [
        Variant::Baseline,
        Variant::Multiroute,
        Variant::NftMark,
        Variant::Ecmp,
        Variant::RoutingOnly,
        Variant::NoInboundChain,
        Variant::Baseline6,
        Variant::Multiroute6,
    ];

    /// Measured over IPv6, to the server's IPv6 address.
    pub fn ipv6(self) -> bool {
        matches!(self, Variant::Baseline6 | Variant::Multiroute6)
    }
}

impl Contender for Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "plain forwarding + masquerade",
            Variant::Multiroute => "multiroute",
            Variant::NftMark => "nft mark router (mwan3/VyOS style)",
            Variant::Ecmp => "kernel ECMP, L4 hash",
            Variant::RoutingOnly => "(multiroute's rules and tables only)",
            Variant::NoInboundChain => "(multiroute without the inbound chain)",
            Variant::Baseline6 => "IPv6: plain forwarding + NAT66",
            Variant::Multiroute6 => "IPv6: multiroute",
        }
    }

    fn adds_rules(self) -> bool {
        !matches!(self, Variant::Baseline | Variant::Ecmp | Variant::Baseline6)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub variant: Variant,
    pub tcp1_gbps: f64,
    pub tcp8_gbps: f64,
    /// 64-byte UDP datagrams received per second.
    pub udp64_kpps: f64,
    pub connections_per_s: f64,
    /// Every round's four figures, in the order above: the comparisons pair each
    /// round with the other router's in the same round.
    #[serde(default)]
    pub rounds: Vec<[f64; 4]>,
}

impl Measured {
    /// Each column's median over the rounds of `self / other`, round by round:
    /// measured minutes apart, the machine drifts by more than the differences
    /// sought, and a round's variants are measured within a minute of each
    /// other. Falls back to the ratio of the medians without rounds (results
    /// written before they were kept).
    pub fn paired_ratios(&self, other: &Measured) -> [f64; 4] {
        let medians = |m: &Measured| [m.tcp1_gbps, m.tcp8_gbps, m.udp64_kpps, m.connections_per_s];
        if self.rounds.is_empty() || self.rounds.len() != other.rounds.len() {
            let (ours, theirs) = (medians(self), medians(other));
            return std::array::from_fn(|k| ours[k] / theirs[k]);
        }
        std::array::from_fn(|k| {
            median(
                self.rounds
                    .iter()
                    .zip(&other.rounds)
                    .map(|(ours, theirs)| ours[k] / theirs[k])
                    .collect(),
            )
        })
    }
}

/// The mwan3/VyOS way: restore a connection's mark from conntrack, else hash the
/// 5-tuple onto a mark and save it.
const NFT_MARK_RULESET: &str = "table ip nftmark {
    chain pre {
        type filter hook prerouting priority mangle; policy accept;
        iifname \"lan0\" ct mark and 0xff00 != 0 meta mark set ct mark accept
        iifname \"lan0\" meta mark set jhash ip saddr . ip daddr . th sport . th dport mod 2 map { 0 : 0x100, 1 : 0x200 }
        iifname \"lan0\" ct mark set meta mark
    }
}
";

/// The plain router's NAT66 for the IPv6 baseline (multiroute brings its own).
const NAT66_RULESET: &str = "table ip6 nat66 {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"wan*\" masquerade
    }
}
";

/// Adds (`on`) or removes the plain router's NAT66.
pub(super) fn nat66(lab: &Lab, on: bool) -> Result<()> {
    let router = lab.router();
    if on {
        lab.ns(&router, "nft", &[NAT66_RULESET])?;
    } else {
        lab.ns(&router, "nft", &["delete", "table", "ip6", "nat66"])?;
    }
    Ok(())
}

/// The seed's multipath default, hashed on the 5-tuple.
pub(super) const ECMP_DEFAULT: [&str; 17] = [
    "route",
    "replace",
    "default",
    "nexthop",
    "via",
    "198.18.0.1",
    "dev",
    "wan0",
    "weight",
    "1",
    "nexthop",
    "via",
    "198.18.1.1",
    "dev",
    "wan1",
    "weight",
    "1",
];
pub(super) const PLAIN_DEFAULT: [&str; 7] = [
    "route",
    "replace",
    "default",
    "via",
    "198.18.0.1",
    "dev",
    "wan0",
];

/// Turns the lab's router into `variant`; [`tear_down`] turns it back into the
/// plain one, so all variants share one lab and take turns.
fn set_up(lab: &mut Lab, variant: Variant) -> Result<()> {
    let router = lab.router();
    match variant {
        Variant::Baseline => {}
        Variant::Baseline6 => {
            nat66(lab, true)?;
        }
        Variant::Multiroute | Variant::Multiroute6 => lab.start_router()?,
        Variant::NftMark => {
            // multiroute's tables and rules, with nftables doing the marking.
            without_daemon(lab)?;
            detach_classifier(lab)?;
            lab.ns(&router, "nft", &[NFT_MARK_RULESET])?;
        }
        Variant::RoutingOnly => rules_only(lab)?,
        Variant::NoInboundChain => {
            without_daemon(lab)?;
            lab.ns(&router, "nft", &["delete", "table", "inet", "multiroute"])?;
        }
        Variant::Ecmp => ecmp(lab, true)?,
    }
    Ok(())
}

/// multiroute's tables and rules alone: no classifier, no nftables table.
pub(super) fn rules_only(lab: &mut Lab) -> Result<()> {
    without_daemon(lab)?;
    detach_classifier(lab)?;
    lab.ns(
        &lab.router(),
        "nft",
        &["delete", "table", "inet", "multiroute"],
    )?;
    Ok(())
}

/// The kernel's own ECMP default (hashing the 5-tuple) instead of the plain
/// default, or back (`on` false).
pub(super) fn ecmp(lab: &Lab, on: bool) -> Result<()> {
    let router = lab.router();
    let (policy, default) = match on {
        true => ("1", &ECMP_DEFAULT[..]),
        false => ("0", &PLAIN_DEFAULT[..]),
    };
    lab.ns(&router, "ip", default)?;
    lab.ns(
        &router,
        "sysctl",
        &[
            "-qw",
            &format!("net.ipv4.fib_multipath_hash_policy={policy}"),
        ],
    )?;
    Ok(())
}

/// multiroute's set-up without its daemon (which would put back what the partial
/// variants take away): load, then SIGKILL; the pinned set-up stays.
fn without_daemon(lab: &mut Lab) -> Result<()> {
    lab.start_router()?;
    lab.stop_router(libc::SIGKILL)?;
    Ok(())
}

pub(super) fn unload(lab: &Lab) -> Result<()> {
    let out = lab.multiroute(&["unload"]);
    if !out.status.success() {
        bail!("unload: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn detach_classifier(lab: &Lab) -> Result<()> {
    std::fs::remove_file(lab.pin_path().join("link-lan0")).context("detaching the classifier")
}

fn tear_down(lab: &mut Lab, variant: Variant) -> Result<()> {
    let router = lab.router();
    match variant {
        Variant::Baseline => {}
        Variant::Baseline6 => {
            nat66(lab, false)?;
        }
        Variant::Multiroute | Variant::Multiroute6 => lab.stop_and_unload()?,
        Variant::RoutingOnly | Variant::NoInboundChain => unload(lab)?,
        Variant::NftMark => {
            lab.ns(&router, "nft", &["delete", "table", "ip", "nftmark"])?;
            unload(lab)?;
        }
        Variant::Ecmp => ecmp(lab, false)?,
    }
    Ok(())
}

/// `iperf3 -J` from the client to the server (its IPv6 address and iperf3 for
/// `ipv6`); the parsed report.
fn iperf(lab: &Lab, ipv6: bool, args: &[&str]) -> Result<serde_json::Value> {
    iperf_from(lab, &lab.client(), ipv6, args)
}

/// [`iperf`] from namespace `ns`.
fn iperf_from(lab: &Lab, ns: &str, ipv6: bool, args: &[&str]) -> Result<serde_json::Value> {
    let server = if ipv6 {
        SERVER6.to_string()
    } else {
        SERVER.to_string()
    };
    let mut full = vec!["-c", server.as_str(), "-J"];
    // Client and server on CPUs of their own, the same for every router: left to
    // the scheduler, the two sometimes share one of the two CPUs and a
    // measurement halves.
    if std::thread::available_parallelism().is_ok_and(|cpus| cpus.get() >= 2) {
        full.extend(["-A", "0,1"]);
    }
    if ipv6 {
        full.extend(["-p", IPERF6_PORT]);
    }
    full.extend_from_slice(args);
    let out = lab.ns(ns, "iperf3", &full)?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J")?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3: {error}");
    }
    Ok(report)
}

/// One round of every measurement: (TCP 1 stream, TCP 8 streams, UDP kpps, conn/s).
fn measure_once(lab: &Lab, variant: Variant, options: &Options) -> Result<[f64; 4]> {
    let seconds = options.iperf_seconds.to_string();
    let gbps = |report: serde_json::Value| {
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9
    };
    let ipv6 = variant.ipv6();
    // A warm-up, discarded, for every router alike: the first second after a
    // router was set up (ARP for the second ISP's gateway, TCP finding its pace
    // through paths it has not used yet) measured well below the rest.
    iperf(lab, ipv6, &["-t", "1", "-P", "8"])?;
    let tcp1 = gbps(iperf(lab, ipv6, &["-t", &seconds])?);
    let tcp8 = gbps(iperf(lab, ipv6, &["-t", &seconds, "-P", "8"])?);
    let report = iperf(lab, ipv6, &["-t", &seconds, "-u", "-b", "0", "-l", "64"])?;
    let sum = &report["end"]["sum"];
    let received =
        sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
    let udp = received / sum["seconds"].as_f64().unwrap_or(1.0) / 1e3;
    let start = Instant::now();
    let out = lab.ns(
        &lab.client(),
        "python3",
        &[
            &lab_script("client.py"),
            "count",
            &if ipv6 { lab.url6("/") } else { lab.url("/") },
            &options.connections.to_string(),
            "120",
        ],
    )?;
    let elapsed = start.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    if report["failures"].as_u64() != Some(0) {
        bail!("{}: connections failed: {report}", variant.label());
    }
    Ok([tcp1, tcp8, udp, options.connections as f64 / elapsed])
}

/// The dual-stack lab with its iperf3 servers listening.
fn iperf_lab(lab: &mut Lab) -> Result<()> {
    lab.add_ipv6()?;
    let blocks = Lab::dual_stack_block(0, 1) + &Lab::dual_stack_block(1, 1);
    lab.write_config_with(&blocks, "")?;
    let inet = lab.inet();
    lab.start_in(&inet, "iperf3", &["-s", "-B", &SERVER.to_string()])?;
    lab.start_in(
        &inet,
        "iperf3",
        &["-s", "-B", &SERVER6.to_string(), "-p", IPERF6_PORT],
    )?;
    // iperf3's servers need a moment to listen. Asked from the first ISP: the
    // client's IPv6 only reaches the server through a NAT66, which only some
    // variants have.
    let isp = lab.isp(0);
    multiroute_tests::wait_until(std::time::Duration::from_secs(5), || {
        iperf_from(lab, &isp, false, &["-n", "1K"]).is_ok()
            && iperf_from(lab, &isp, true, &["-n", "1K"]).is_ok()
    })
    .context("iperf3 servers did not come up")?;
    Ok(())
}

/// All variants take turns, round after round, so drift on a shared machine (it
/// is there: the same router measured minutes apart differs by ~10 %) falls on
/// every variant alike; medians over the rounds.
pub fn run(options: &Options) -> Result<Vec<Measured>> {
    let two_isps = LabOptions {
        weights: vec![1, 1],
        extra_config: String::new(),
    };
    let mut labs = Labs::new(&two_isps, iperf_lab, false)?;
    let samples = super::take_turns(
        &mut labs,
        &Variant::ALL,
        options.forwarding_runs,
        set_up,
        |lab, variant| measure_once(lab, variant, options),
        tear_down,
    )?;
    Ok(Variant::ALL
        .into_iter()
        .zip(samples)
        .map(|(variant, rounds)| {
            let column = |k: usize| median(rounds.iter().map(|r| r[k]).collect());
            Measured {
                variant,
                tcp1_gbps: column(0),
                tcp8_gbps: column(1),
                udp64_kpps: column(2),
                connections_per_s: column(3),
                rounds,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rounds: Vec<[f64; 4]>) -> Measured {
        let column = |k: usize| median(rounds.iter().map(|r| r[k]).collect());
        Measured {
            variant: Variant::Multiroute,
            tcp1_gbps: column(0),
            tcp8_gbps: column(1),
            udp64_kpps: column(2),
            connections_per_s: column(3),
            rounds,
        }
    }

    /// The machine's speed drifts from round to round by far more than the 5 %
    /// one router is ahead in each round, and one round has a hiccup: the
    /// paired ratio is the 5 %, the medians' ratio is not.
    #[test]
    fn paired_ratios_see_through_drift() {
        let speeds = [100.0, 60.0, 90.0, 70.0, 80.0];
        let theirs = measured(speeds.iter().map(|s| [*s; 4]).collect());
        let mut ahead: Vec<[f64; 4]> = speeds.iter().map(|s| [s * 1.05; 4]).collect();
        ahead[4] = [40.0; 4];
        let ours = measured(ahead);
        for ratio in ours.paired_ratios(&theirs) {
            assert!((ratio - 1.05).abs() < 1e-9, "{ratio}");
        }
        let medians = ours.tcp1_gbps / theirs.tcp1_gbps;
        assert!(medians < 0.95, "{medians}");
        // Without rounds (results written before they were kept): the medians'.
        let mut old = ours.clone();
        old.rounds.clear();
        assert!((old.paired_ratios(&theirs)[2] - medians).abs() < 1e-9);
    }
}
