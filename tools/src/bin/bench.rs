//! `cargo xtask bench [--quick] [--datapath-only | --forwarding-only]` runs this
//! (release build, as root): every suite of `multiroute_tools::bench`, then
//! `target/bench/results.json` and `BENCHMARKS.md`; with `--datapath-only` or
//! `--forwarding-only`, only suite 1 or suites 2–3, printed; with
//! `--report-only`, BENCHMARKS.md again from the last results (after editing notes).
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use multiroute_tests::require_root;
use multiroute_tools::bench::{self, Options};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let report_only = std::env::args().any(|a| a == "--report-only");
    if !report_only && !require_root("bench") {
        return Ok(());
    }
    bench::handle_signals();
    if std::env::args().any(|a| a == "--datapath-only") {
        // Iterating on the classifier: print the figures, leave BENCHMARKS.md alone.
        let results = bench::run_datapath(&Options::new(quick))?;
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    if std::env::args().any(|a| a == "--forwarding-only") {
        // Iterating on the per-packet path: the same, for the forwarding suite.
        let results = bench::run_forwarding(&Options::new(quick))?;
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    if std::env::args().any(|a| a == "--failover-only") {
        // Iterating on health: the failover and recovery rows.
        let results = bench::run_failover(&Options::new(quick))?;
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    if std::env::args().any(|a| a == "--saturation-only") {
        // Iterating on the fast path: the router's own CPU at saturation.
        let results = bench::run_saturation(&Options::new(quick))?;
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    if std::env::args().any(|a| a == "--connections-only") {
        // Iterating on the new-connection path: connections per router CPU second.
        let results = bench::run_connections(&Options::new(quick))?;
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/bench");
    let json = dir.join("results.json");
    let results = if std::env::args().any(|a| a == "--report-only") {
        // Re-render BENCHMARKS.md from the last run (after editing the notes).
        serde_json::from_str(&std::fs::read_to_string(&json).context("reading the last results")?)
            .context("parsing target/bench/results.json")?
    } else {
        let results = bench::run(&Options::new(quick), command.into())?;
        std::fs::create_dir_all(&dir).context("creating target/bench")?;
        std::fs::write(&json, serde_json::to_string_pretty(&results)?)
            .context("writing target/bench/results.json")?;
        results
    };
    let report = bench::markdown(&results);
    std::fs::write(root.join("BENCHMARKS.md"), &report).context("writing BENCHMARKS.md")?;
    println!("{report}");
    Ok(())
}
