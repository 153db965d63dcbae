//! Suite 5, memory: the kernel's own accounting of the datapath's maps with a
//! million flows (`memlock` in each map's fdinfo), and the daemon's resident set
//! idle and while the lab pushes connections and a download through it.
use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use multiroute::apply::datapath::Capacity;
use multiroute_ebpf::{Flow, FlowKey, FlowKey6};
use serde::{Deserialize, Serialize};

use multiroute_tests::{Lab, LabOptions, datapath::LoadedDatapath};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub flows: u32,
    /// With `flows` IPv4 flows.
    pub map_memory_mib: f64,
    /// With `flows` IPv6 flows.
    pub map_memory_ipv6_mib: f64,
    pub rss_idle_mib: f64,
    pub rss_loaded_mib: f64,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Sum of `memlock` over the maps pinned under `pin_path`, as the kernel accounts it.
fn map_memory(pin_path: &std::path::Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(pin_path)? {
        let path = entry?.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("MR_"))
        {
            continue;
        }
        let fd = aya::maps::MapInfo::from_pin(&path)?.fd()?;
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("fdinfo without memlock")?;
    }
    Ok(total)
}

fn rss(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024.0 / MIB)
}

pub fn run(flows: u32, connections: usize) -> Result<Measured> {
    let defaults = Capacity::for_balance(multiroute_ebpf::balance::CONNECTION);
    let map_memory_mib = {
        let mut dp = LoadedDatapath::load_with("memory", Capacity { flows, ..defaults })?;
        for i in 0..flows {
            let key = FlowKey::wire(
                0x6440_0000 | i,
                443,
                u32::from_ne_bytes([203, 0, 113, 10]),
                443,
                6,
            );
            dp.maps.v4.insert(&key, &Flow::default())?;
        }
        map_memory(&dp.pin_path())? as f64 / MIB
    };
    super::interrupted()?;
    let map_memory_ipv6_mib = {
        let capacity = Capacity {
            flows6: flows,
            ..defaults
        };
        let mut dp = LoadedDatapath::load_with("memory6", capacity)?;
        for i in 0..flows {
            let key = FlowKey6 {
                src: [0xfd00_u32.to_be(), 0, 0, i],
                dst: FlowKey6::words([
                    0x20, 0x01, 0x0d, 0xb8, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
                ]),
                src_port: 443,
                dst_port: 443,
                proto: 6,
                pad: [0; 3],
            };
            dp.maps.v6.insert(&key, &Flow::default())?;
        }
        map_memory(&dp.pin_path())? as f64 / MIB
    };

    super::interrupted()?;
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: String::new(),
    })?;
    lab.start_router()?;
    let pid = lab.router_pid().context("no router PID")?;
    thread::sleep(Duration::from_secs(2));
    let rss_idle_mib = rss(pid)?;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss(pid).unwrap_or(0.0));
                thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let stream = lab.start_stream(3)?;
    // Status and metrics-style reads walk the flow table: part of "under load".
    let seen = lab.connections(connections)?;
    let _ = lab.status();
    let _ = stream.wait_with_output();
    done.store(true, Ordering::Relaxed);
    let rss_loaded_mib = sampler.join().unwrap_or(0.0).max(rss(pid)?);
    anyhow::ensure!(
        seen.failures == 0,
        "connections failed while measuring memory"
    );
    lab.stop_and_unload()?;
    Ok(Measured {
        flows,
        map_memory_mib,
        map_memory_ipv6_mib,
        rss_idle_mib,
        rss_loaded_mib,
    })
}
