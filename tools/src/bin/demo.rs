//! `cargo xtask run`: the demo lab. A dual-stack LAN client, a router running
//! `multiroute load`, three dual-stack ISPs weighted 1:2:3 and an "internet" server;
//! every second the client opens a batch of IPv4 and of IPv6 connections and the
//! screen shows which uplink each took, next to `multiroute status`. Ctrl-C, SIGTERM,
//! a closed terminal (SIGHUP) or the time limit tear everything down.
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use multiroute_tests::{
    Lab, LabOptions, handle_signals, percent, require_root, stdout, stop_requested,
};

fn main() -> Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    if !require_root("demo") {
        return Ok(());
    }
    handle_signals();
    let weights = vec![1, 2, 3];
    let mut lab = Lab::new(&LabOptions {
        weights: weights.clone(),
        extra_config: String::new(),
    })?;
    lab.add_ipv6().context("making the lab dual-stack")?;
    let blocks: String = weights
        .iter()
        .enumerate()
        .map(|(n, weight)| Lab::dual_stack_block(n, *weight))
        .collect();
    lab.write_config_with(&blocks, "")?;
    println!(
        "lab {} built: client 100.64.0.2 and fd00:64::2 → router → isp0/isp1/isp2 (weights 1:2:3) → server 203.0.113.10 and 2001:db8:ff::10",
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
    let mut totals = [vec![0; weights.len()], vec![0; weights.len()]];
    let urls = [lab.url("/"), lab.url6("/")];
    while !stop_requested() && start.elapsed() < Duration::from_secs(seconds) {
        let mut last = Vec::new();
        for (family_totals, url) in totals.iter_mut().zip(&urls) {
            let child = lab.start_connections_to(url, 60)?;
            let multiroute_tests::Connections { hits, failures, .. } =
                lab.finish_connections(child)?;
            for (total, hit) in family_totals.iter_mut().zip(&hits) {
                *total += hit;
            }
            last.push(format!("{hits:?}, failures {failures}"));
        }
        print!("\x1b[2J\x1b[H");
        println!(
            "multiroute demo ({}s left, Ctrl-C to stop) — last 60 connections: IPv4 {}; IPv6 {}",
            seconds.saturating_sub(start.elapsed().as_secs()),
            last[0],
            last[1]
        );
        for (family, family_totals) in ["IPv4", "IPv6"].iter().zip(&totals) {
            let sum: usize = family_totals.iter().sum();
            for (i, total) in family_totals.iter().enumerate() {
                println!(
                    "  {family} isp{i} (weight {}): {total:>6} connections  {:5.1}%",
                    weights[i],
                    percent(*total, sum)
                );
            }
        }
        println!("\n{}", stdout(&lab.multiroute(&["status"])));
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("tearing the lab down");
    lab.stop_router(libc::SIGTERM)?;
    Ok(())
}
