//! `multiroute flows`: the flow table as the datapath holds it (read from the pinned
//! map, so it works with or without a running `load`), with the filters an operator
//! reaches for: by uplink, by source or destination.
use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, anyhow};
use multiroute::{
    apply::datapath::{self, Maps},
    net::Ipv4Net,
};
use serde::Serialize;

use super::{CommandResult, Failure, read_config};

#[derive(Debug, Default)]
pub struct Filter {
    pub uplink: Option<String>,
    pub src: Option<Ipv4Net>,
    pub dst: Option<Ipv4Net>,
}

#[derive(Serialize)]
struct FlowRow {
    proto: String,
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
    /// The uplink's name, or `slot N` for a slot no configured uplink holds (its
    /// flows move on their next packet).
    uplink: String,
    /// Whole seconds since the flow's first packet.
    age_s: u64,
    /// Packets seen from the LAN side.
    packets: u64,
}

fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        other => other.to_string(),
    }
}

pub fn run(config_path: &Path, json: bool, filter: &Filter) -> CommandResult {
    let config = read_config(config_path)?;
    if let Some(name) = &filter.uplink {
        config
            .uplink_position(name)
            .map_err(|unknown| Failure::Config(anyhow!("{}: {unknown}", config_path.display())))?;
    }
    let pin_path = &config.routing.pin_path;
    let maps = Maps::open(pin_path).map_err(|err| {
        anyhow!("no datapath is loaded for this config ({err}); start it with `multiroute load`")
    })?;
    let slots = datapath::read_slots(pin_path).context("reading the uplink slots")?;
    let now = u64::from(datapath::monotonic_seconds());
    let mut rows: Vec<FlowRow> = maps
        .flows()
        .into_iter()
        .map(|(key, flow)| {
            let (src_port, dst_port) = key.ports();
            FlowRow {
                proto: proto_name(key.proto),
                src: key.src_octets().into(),
                src_port,
                dst: key.dst_octets().into(),
                dst_port,
                uplink: slots
                    .iter()
                    .find(|(_, slot)| **slot == flow.uplink)
                    .map_or_else(|| format!("slot {}", flow.uplink), |(name, _)| name.clone()),
                age_s: now.saturating_sub(u64::from(flow.created_s)),
                packets: flow.packets,
            }
        })
        .filter(|row| filter.uplink.as_ref().is_none_or(|u| &row.uplink == u))
        .filter(|row| filter.src.is_none_or(|net| net.contains(row.src)))
        .filter(|row| filter.dst.is_none_or(|net| net.contains(row.dst)))
        .collect();
    rows.sort_by_key(|row| row.age_s);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).context("encoding JSON")?
        );
        return Ok(());
    }
    println!(
        "{:<5} {:<21} {:<21} {:<15} {:>9} {:>9}",
        "PROTO", "SOURCE", "DESTINATION", "UPLINK", "AGE", "PACKETS"
    );
    for row in &rows {
        println!(
            "{:<5} {:<21} {:<21} {:<15} {:>8}s {:>9}",
            row.proto,
            format!("{}:{}", row.src, row.src_port),
            format!("{}:{}", row.dst, row.dst_port),
            row.uplink,
            row.age_s,
            row.packets
        );
    }
    println!("{} flows", rows.len());
    Ok(())
}
