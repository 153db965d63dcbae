//! `cargo xtask bench [--quick] [--datapath-only]` runs this (release build, as
//! root): every suite of `multiroute_tests::bench`, then `target/bench/results.json`
//! and `BENCHMARKS.md`; with `--datapath-only`, only suite 1, printed.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use multiroute_tests::{
    bench::{self, Options},
    require_root,
};

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
    if !require_root("bench") {
        return Ok(());
    }
    if std::env::args().any(|a| a == "--datapath-only") {
        // Iterating on the classifier: print the figures, leave BENCHMARKS.md alone.
        let results = bench::run_datapath(&Options::new(quick))?;
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let results = bench::run(&Options::new(quick), command.into())?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).context("creating target/bench")?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )
    .context("writing target/bench/results.json")?;
    let report = bench::markdown(&results);
    std::fs::write(root.join("BENCHMARKS.md"), &report).context("writing BENCHMARKS.md")?;
    println!("{report}");
    Ok(())
}
