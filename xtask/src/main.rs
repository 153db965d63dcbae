//! Developer entry points (README, in this order): `cargo xtask run`, `cargo xtask
//! test`, `cargo xtask bench`. xtask depends on no multiroute crate, so it can install the eBPF toolchain
//! before anything that needs it is compiled.
mod deps;
mod dist;
mod layers;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing, build, and start the demo lab; with `-- ARGS`, run
    /// `multiroute ARGS` on this host instead.
    Run {
        /// How long the demo runs before it tears itself down (Ctrl-C ends it sooner).
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The whole suite: format, lints, unit tests, datapath test-runs, namespace e2e.
    Test,
    /// Benchmarks against the floor and the alternatives; writes BENCHMARKS.md and
    /// target/bench/results.json (release build; needs root).
    Bench {
        /// The developer's run: fewer repetitions and trials, about two minutes.
        #[arg(long)]
        quick: bool,
        /// Only the datapath suite, printed (BENCHMARKS.md is left alone).
        #[arg(long)]
        datapath_only: bool,
        /// Only the forwarding suite, printed (BENCHMARKS.md is left alone).
        #[arg(long)]
        forwarding_only: bool,
        /// Only the saturation suite (the router's own CPU), printed.
        #[arg(long)]
        saturation_only: bool,
        /// Rewrite BENCHMARKS.md from target/bench/results.json without measuring.
        #[arg(long)]
        report_only: bool,
    },
    /// Only install what is missing (apt packages, the eBPF nightly, bpf-linker).
    Deps,
    /// Build the Debian package, target/dist/multiroute_<version>-1_<arch>.deb.
    Dist {
        /// Another architecture: aarch64-unknown-linux-gnu (Debian's cross linker).
        #[arg(long)]
        target: Option<String>,
        /// Cargo profile of the binary (the tests package their dev build).
        #[arg(long, default_value = "release")]
        profile: String,
    },
    /// Check the library's module graph: no circle between files, no arrow from a
    /// lower room to a higher one (net → config → plan → netlink → observe → apply →
    /// run).
    Layers {
        /// Another checkout to check (default: this workspace).
        #[arg(long)]
        root: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Task::Deps => deps::ensure(),
        Task::Dist { target, profile } => {
            deps::ensure()?;
            dist::build(target.as_deref(), &profile).map(drop)
        }
        Task::Layers { root } => layers::check(&root.unwrap_or_else(workspace_root)),
        Task::Bench {
            quick,
            datapath_only,
            forwarding_only,
            saturation_only,
            report_only,
        } => {
            deps::ensure()?;
            // The lab runs the release `multiroute` next to the bench binary.
            cargo(&["build", "--release", "--package", "multiroute"])?;
            let mut args = vec![
                "run",
                "--release",
                "--quiet",
                "--package",
                "multiroute-tools",
                "--bin",
                "bench",
                "--",
            ];
            if quick {
                args.push("--quick");
            }
            if datapath_only {
                args.push("--datapath-only");
            }
            if forwarding_only {
                args.push("--forwarding-only");
            }
            if saturation_only {
                args.push("--saturation-only");
            }
            if report_only {
                args.push("--report-only");
            }
            cargo(&args)
        }
        Task::Test => {
            deps::ensure()?;
            test()
        }
        Task::Run { seconds, args } => {
            deps::ensure()?;
            cargo(&["build", "--package", "multiroute"])?;
            if args.is_empty() {
                cargo(&[
                    "run",
                    "--quiet",
                    "--package",
                    "multiroute-tools",
                    "--bin",
                    "demo",
                    "--",
                    &seconds.to_string(),
                ])
            } else {
                status(Command::new("target/debug/multiroute").args(&args))
            }
        }
    }
}

fn test() -> Result<()> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if ci && !deps::is_root() {
        bail!("CI=true needs root: the datapath and namespace tests may not be skipped");
    }
    cargo(&["fmt", "--all", "--", "--check"])?;
    layers::check(&workspace_root())?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // The e2e tests run the `multiroute` binary inside namespaces.
    cargo(&["build", "--package", "multiroute"])?;
    // The package tests install these (built from the same dev build, so no
    // second compile of the host's binary).
    dist::build(None, "dev")?;
    dist::build(Some(dist::AARCH64), "dev")?;
    cargo_test(&[
        "test",
        "--workspace",
        "--exclude",
        "multiroute-ebpf",
        "--",
        "--nocapture",
    ])
}

/// Runs `cargo test`, echoing its output, and closes with one summary line over all
/// test binaries (cargo's own last line is that of whichever binary ran last).
fn cargo_test(args: &[&str]) -> Result<()> {
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test without stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            passed += count_before(result, " passed");
            failed += count_before(result, " failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("\ntests: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The number right before `label` in "ok. 21 passed; 0 failed; …".
fn count_before(text: &str, label: &str) -> u64 {
    text.split_once(label)
        .and_then(|(head, _)| head.rsplit([' ', '.']).next()?.parse().ok())
        .unwrap_or(0)
}

fn cargo(args: &[&str]) -> Result<()> {
    status(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

fn status(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    println!("xtask: {shown}");
    let status = command
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// The workspace root: xtask's manifest directory's parent.
fn workspace_root() -> std::path::PathBuf {
    let xtask = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}
