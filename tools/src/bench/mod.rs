//! `cargo xtask bench`: multiroute against the floor and the alternatives, on the
//! same machine in the same run, reported as ratios (absolute figures on shared
//! machines are noise). Each suite is its own module; this one holds the options,
//! runs them and writes `target/bench/results.json` and `BENCHMARKS.md`.
pub mod connections;
pub mod datapath;
pub mod failover;
pub mod forwarding;
pub mod memory;
mod mwan3;
mod report;
pub mod saturation;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use report::markdown;

pub use multiroute_tests::{handle_signals, interrupted};

/// How much to measure: `--quick` is what a developer runs (≤ 2 minutes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    pub quick: bool,
    /// Medians are taken over this many runs.
    pub runs: u32,
    /// `BPF_PROG_TEST_RUN` repetitions for one-packet cases.
    pub repeat: u32,
    /// Fresh flows per run for the new-flow cases.
    pub new_flows: u32,
    pub iperf_seconds: u32,
    pub forwarding_runs: u32,
    pub connections: usize,
    pub failover_trials: u32,
    /// Also measure failover with the default (slow) health config.
    pub failover_default_config: bool,
    pub memory_flows: u32,
}

impl Options {
    pub fn new(quick: bool) -> Self {
        if quick {
            Options {
                quick,
                runs: 3,
                repeat: 1_000_000,
                new_flows: 5_000,
                iperf_seconds: 1,
                forwarding_runs: 2,
                connections: 300,
                failover_trials: 1,
                failover_default_config: false,
                memory_flows: 1_000_000,
            }
        } else {
            Options {
                quick,
                runs: 5,
                repeat: 1_000_000,
                new_flows: 50_000,
                iperf_seconds: 3,
                forwarding_runs: 5,
                connections: 1_000,
                failover_trials: 5,
                failover_default_config: true,
                memory_flows: 1_000_000,
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub command: String,
    pub date: String,
    pub machine: String,
    pub options: Options,
    pub datapath: datapath::Results,
    pub forwarding: Vec<forwarding::Measured>,
    #[serde(default)]
    pub saturation: Vec<saturation::Measured>,
    #[serde(default)]
    pub connections: Vec<connections::Measured>,
    pub failover: Vec<failover::Measured>,
    pub memory: memory::Measured,
}

/// One router a suite measures.
pub(crate) trait Contender: Copy {
    fn label(self) -> &'static str;
    /// Whether its set-up adds `ip rule`s, and so takes its turns in
    /// [`Labs::ruled`].
    fn adds_rules(self) -> bool;
}

/// The identical labs the routers take turns in. Once a namespace has had an
/// `ip rule`, the kernel walks the rules for every forwarded packet there, and
/// takes `fib_validate_source`'s full reverse lookup, for good: it never clears
/// `fib_has_custom_rules` (nor IPv6's). A plain router measured where
/// multiroute once ran pays for rules it does not have (about 7 % of a new
/// connection in suite 5), so the routers without rules have a lab that never
/// had one.
pub(crate) struct Labs {
    pub rule_free: multiroute_tests::Lab,
    pub ruled: multiroute_tests::Lab,
    /// Suite 5's third: plain forwarding, measured alongside each other router.
    pub plain: Option<multiroute_tests::Lab>,
}

impl Labs {
    /// The labs built with `options`, then made ready by `prepare`; with
    /// `plain`, the third.
    pub fn new(
        options: &multiroute_tests::LabOptions,
        prepare: impl Fn(&mut multiroute_tests::Lab) -> Result<()>,
        plain: bool,
    ) -> Result<Self> {
        let mut labs = multiroute_tests::Lab::side_by_side(options, 2 + usize::from(plain))?;
        for lab in &mut labs {
            prepare(lab)?;
        }
        let mut labs = labs.into_iter();
        let (Some(rule_free), Some(ruled)) = (labs.next(), labs.next()) else {
            anyhow::bail!("fewer labs than asked for");
        };
        Ok(Labs {
            rule_free,
            ruled,
            plain: labs.next(),
        })
    }

    pub fn all(&self) -> Vec<&multiroute_tests::Lab> {
        [&self.rule_free, &self.ruled]
            .into_iter()
            .chain(&self.plain)
            .collect()
    }

    /// The lab `variant` takes its turns in.
    pub fn of(&mut self, variant: impl Contender) -> &mut multiroute_tests::Lab {
        match variant.adds_rules() {
            true => &mut self.ruled,
            false => &mut self.rule_free,
        }
    }
}

/// Every variant in turn, round after round, so drift on a shared machine falls
/// on every variant alike: each variant's figures, round by round. Each round
/// starts one variant later than the last, so no variant always follows the
/// same one or goes first. `measure` runs between `set_up` and `tear_down`, in
/// the variant's lab; a failed measurement fails the suite after the lab is
/// turned back.
pub(crate) fn take_turns<V: Contender, T: std::fmt::Debug>(
    labs: &mut Labs,
    variants: &[V],
    runs: u32,
    mut set_up: impl FnMut(&mut multiroute_tests::Lab, V) -> Result<()>,
    mut measure: impl FnMut(&multiroute_tests::Lab, V) -> Result<T>,
    mut tear_down: impl FnMut(&mut multiroute_tests::Lab, V) -> Result<()>,
) -> Result<Vec<Vec<T>>> {
    let mut samples: Vec<Vec<T>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..runs as usize {
        for step in 0..variants.len() {
            let i = (round + step) % variants.len();
            let variant = variants[i];
            interrupted()?;
            let lab = labs.of(variant);
            set_up(lab, variant)?;
            let measured = measure(lab, variant);
            tear_down(lab, variant)?;
            let measured = measured?;
            eprintln!("bench: round {round}, {}: {measured:.2?}", variant.label());
            samples[i].push(measured);
        }
    }
    Ok(samples)
}

/// Runs one suite, saying what and how long.
fn suite<T>(name: &str, run: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("bench: {name}");
    let start = std::time::Instant::now();
    let result = run();
    eprintln!("bench: {name}: {:.0} s", start.elapsed().as_secs_f64());
    result
}

/// Only the datapath suite, for iterating on the classifier.
pub fn run_datapath(options: &Options) -> Result<datapath::Results> {
    suite("datapath cost (BPF_PROG_TEST_RUN)", || {
        datapath::run(options)
    })
}

/// Only the saturation suite (the router's own CPU), for iterating on the fast path.
pub fn run_saturation(options: &Options) -> Result<Vec<saturation::Measured>> {
    suite("forwarding at saturation (XDP generator and sinks)", || {
        saturation::run(options)
    })
}

/// Only the connection suite (new connections, the router's own CPU).
pub fn run_connections(options: &Options) -> Result<Vec<connections::Measured>> {
    suite("new connections at saturation (32 in parallel)", || {
        connections::run(options)
    })
}

/// Only the forwarding suite, for iterating on the per-packet path.
pub fn run_forwarding(options: &Options) -> Result<Vec<forwarding::Measured>> {
    suite(
        "forwarding and connection rate (namespace lab, iperf3)",
        || forwarding::run(options),
    )
}

/// Only the failover suite, for iterating on health.
pub fn run_failover(options: &Options) -> Result<Vec<failover::Measured>> {
    suite("failover and recovery", || failover::run(options))
}

pub fn run(options: &Options, command: String) -> Result<Results> {
    let datapath = run_datapath(options)?;
    let forwarding = run_forwarding(options)?;
    let saturation = run_saturation(options)?;
    let connections = run_connections(options)?;
    let failover = run_failover(options)?;
    let memory = suite("memory", || {
        memory::run(options.memory_flows, options.connections)
    })?;
    Ok(Results {
        command,
        date: multiroute_tests::stdout(&multiroute_tests::run(
            "date",
            &["-u", "+%Y-%m-%d %H:%M UTC"],
        )?)
        .trim()
        .to_owned(),
        machine: machine(),
        options: options.clone(),
        datapath,
        forwarding,
        saturation,
        connections,
        failover,
        memory,
    })
}

/// Kernel, CPU model and count, memory: what a reader needs to weigh the figures.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("Linux {}, {cpus} × {model}, {memory}", kernel.trim())
}

/// The median of `samples` (the mean of the middle two for an even count).
pub fn median(mut samples: Vec<f64>) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len().is_multiple_of(2) {
        (samples[mid - 1] + samples[mid]) / 2.0
    } else {
        samples[mid]
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
