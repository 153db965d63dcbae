//! `cargo xtask run`: the demo lab. A LAN client, a router running `multiroute load`,
//! three ISPs weighted 1:2:3 and an "internet" server; every second the client opens
//! a batch of connections and the screen shows which uplink each took, next to
//! `multiroute status`. Ctrl-C (or the time limit) tears everything down.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use multiroute_tests::{Lab, LabOptions, percent, require_root, stdout};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    if !require_root("demo") {
        return Ok(());
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let weights = vec![1, 2, 3];
    let mut lab = Lab::new(&LabOptions {
        weights: weights.clone(),
        extra_config: String::new(),
    })?;
    println!(
        "lab {} built: client 100.64.0.2 → router → isp0/isp1/isp2 (weights 1:2:3) → server 203.0.113.10",
        lab.prefix
    );
    println!(
        "config: {}\n{}",
        lab.config.display(),
        std::fs::read_to_string(&lab.config)?
    );
    lab.start_router().context("starting multiroute")?;
    let rules = stdout(&lab.ns(&lab.router(), "ip", &["rule"])?);
    println!("router's `ip rule`:\n{rules}");
    println!(
        "router's `ip route show table 101`:\n{}",
        stdout(&lab.ns(&lab.router(), "ip", &["route", "show", "table", "101"])?)
    );

    let start = Instant::now();
    let mut totals = vec![0; weights.len()];
    while !STOP.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(seconds) {
        let multiroute_tests::Connections { hits, failures, .. } = lab.connections(60)?;
        for (total, hit) in totals.iter_mut().zip(&hits) {
            *total += hit;
        }
        let sum: usize = totals.iter().sum();
        print!("\x1b[2J\x1b[H");
        println!(
            "multiroute demo ({}s left, Ctrl-C to stop) — last 60 connections: {hits:?}, failures {failures}",
            seconds.saturating_sub(start.elapsed().as_secs())
        );
        for (i, total) in totals.iter().enumerate() {
            println!(
                "  isp{i} (weight {}): {total:>6} connections  {:5.1}%",
                weights[i],
                percent(*total, sum)
            );
        }
        println!("\n{}", stdout(&lab.multiroute(&["status"])));
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("tearing the lab down");
    lab.stop_router(libc::SIGTERM)?;
    Ok(())
}
