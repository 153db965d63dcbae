//! Developer entry points (README, in this order): `cargo xtask run`, `cargo xtask
//! test`. xtask depends on no multiroute crate, so it can install the eBPF toolchain
//! before anything that needs it is compiled.
mod deps;

use std::process::{Command, ExitCode};

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
    /// Only install what is missing (apt packages, the eBPF nightly, bpf-linker).
    Deps,
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
                    "multiroute-tests",
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
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // The e2e tests run the `multiroute` binary inside namespaces.
    cargo(&["build", "--package", "multiroute"])?;
    cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "multiroute-ebpf",
        "--",
        "--nocapture",
    ])
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
