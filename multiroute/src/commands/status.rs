//! `multiroute status`: what each uplink is doing, read from the kernel (the pinned
//! maps and the interfaces), so it works whether or not `load` is still running.
use std::{collections::BTreeSet, path::Path};

use anyhow::Context as _;
use multiroute::{
    apply::{
        self,
        datapath::{self, Maps},
        netlink::Netlink,
    },
    instance,
    plan::Readiness,
};
use serde::Serialize;

use super::{CommandResult, read_config, runtime};

#[derive(Serialize)]
struct Status {
    /// PID of the running `load`, if any.
    pid: Option<u32>,
    /// LAN interfaces the classifier is attached to.
    attached: Vec<String>,
    uplinks: Vec<UplinkStatus>,
    /// Datapath outcome counters (flow_hit, flow_new, pass_not_ipv4, …).
    counters: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct UplinkStatus {
    name: String,
    /// "up", "down" or "drained" (alive, weight 0: keeps its flows, takes no new ones).
    state: &'static str,
    weight: u32,
    interface: String,
    address: Option<String>,
    gateway: Option<String>,
    table: u32,
    mark: String,
    flows: usize,
    packets: u64,
    bytes: u64,
}

pub fn run(config_path: &Path, json: bool) -> CommandResult {
    let config = read_config(config_path)?;
    let pin_path = &config.routing.pin_path;
    let (plan, _) = runtime()?.block_on(async {
        let nl = Netlink::connect().context("connecting to the kernel")?;
        apply::plan(&nl, &config, &BTreeSet::new())
            .await
            .map_err(super::Failure::from)
    })?;
    let maps = Maps::open(pin_path).ok();
    let flows = maps.as_ref().map(Maps::flows).unwrap_or_default();
    let mut uplinks = Vec::new();
    for (index, uplink) in plan.uplinks.iter().enumerate() {
        let index = index as u32;
        let traffic = maps
            .as_ref()
            .and_then(|m| m.traffic(index).ok())
            .unwrap_or_default();
        let (address, gateway) = match &uplink.readiness {
            Readiness::Ready { address, gateway } => {
                (Some(address.to_string()), Some(gateway.to_string()))
            }
            Readiness::NoGateway { address } => (Some(address.to_string()), None),
            Readiness::NoAddress => (None, None),
        };
        let state = match (uplink.alive, uplink.weight) {
            (false, _) => "down",
            (true, 0) => "drained",
            (true, _) => "up",
        };
        uplinks.push(UplinkStatus {
            name: uplink.name.clone(),
            state,
            weight: uplink.weight,
            interface: uplink.interface.clone(),
            address,
            gateway,
            table: uplink.table,
            mark: format!("{:#x}", uplink.mark),
            flows: flows
                .iter()
                .filter(|(_, flow)| flow.uplink == index)
                .count(),
            packets: traffic.packets,
            bytes: traffic.bytes,
        });
    }
    let counters = maps
        .as_ref()
        .and_then(|m| m.counters().ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(counter, value)| (counter.name(), value))
        .collect();
    let status = Status {
        pid: instance::running(&config.control.socket),
        attached: datapath::attached_interfaces(pin_path).context("reading the pin directory")?,
        uplinks,
        counters,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("encoding JSON")?
        );
    } else {
        print_table(&status);
    }
    Ok(())
}

fn print_table(status: &Status) {
    match (status.pid, status.attached.is_empty()) {
        (Some(pid), _) => println!(
            "multiroute running (PID {pid}), datapath attached to: {}",
            status.attached.join(", ")
        ),
        (None, false) => println!(
            "multiroute not running; datapath still attached to: {}",
            status.attached.join(", ")
        ),
        (None, true) => println!("multiroute not running; datapath not attached"),
    }
    println!(
        "{:<15} {:<8} {:>6} {:<15} {:<18} {:<15} {:>5} {:>7} {:>10} {:>12}",
        "UPLINK",
        "STATE",
        "WEIGHT",
        "INTERFACE",
        "ADDRESS",
        "GATEWAY",
        "TABLE",
        "FLOWS",
        "PACKETS",
        "BYTES"
    );
    for u in &status.uplinks {
        println!(
            "{:<15} {:<8} {:>6} {:<15} {:<18} {:<15} {:>5} {:>7} {:>10} {:>12}",
            u.name,
            u.state,
            u.weight,
            u.interface,
            u.address.as_deref().unwrap_or("-"),
            u.gateway.as_deref().unwrap_or("-"),
            u.table,
            u.flows,
            u.packets,
            u.bytes
        );
    }
}
