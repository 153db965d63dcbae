//! `multiroute flows`: the flow table as the datapath holds it (read from the pinned
//! map, so it works with or without a running `load`), with the filters an operator
//! reaches for: by uplink, by source or destination. Each flow says why it has
//! its uplink: the hash, a policy rule, conntrack (a session running when
//! multiroute took over), or an inbound connection (replies of a connection that
//! arrived on an uplink leave through it, whatever the classifier hashed).
use std::{collections::HashMap, net::IpAddr, path::Path};

use anyhow::{Context as _, anyhow};
use multiroute::{
    apply::datapath::{self, Maps},
    config::{Config, proto_name},
    instance,
    net::IpNet,
    netlink::conntrack,
    plan::Condition,
    run::report::UplinkReport,
};
use multiroute_ebpf::{DIRECT_UPLINK, Flow, FlowKey, FlowKey6, chosen_by};
use serde::Serialize;
use tracing::warn;

use super::{CommandResult, Failure, read_config};

#[derive(Debug, Default)]
pub struct Filter {
    pub uplink: Option<String>,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
}

#[derive(Serialize)]
struct FlowRow {
    proto: String,
    src: IpAddr,
    src_port: u16,
    dst: IpAddr,
    dst_port: u16,
    /// The uplink's name, `slot N` for a slot no configured uplink holds (its
    /// flows move on their next packet), or "main" for a flow the main table
    /// routes.
    uplink: String,
    /// What chose the uplink: "hash", "rule <name>", "conntrack", "inbound", or
    /// "direct" (a destination the main table routes specifically).
    why: String,
    /// Whole seconds since the flow's first packet.
    age_s: u64,
    /// Packets seen from the LAN side.
    packets: u64,
    /// Packets the fast path forwarded, both ways (0 for a session not on it).
    fast_packets: u64,
    /// Its uplink's state for the flow's family ("up", "degraded", "down"), as
    /// the running daemon judges it; null without one.
    uplink_state: Option<&'static str>,
}

/// What chose a flow's uplink, in words.
fn why(config: &Config, flow: &Flow) -> String {
    match flow.chosen_by {
        chosen_by::RULE => match config.rules.get(usize::from(flow.rule)) {
            Some(rule) => format!("rule {}", rule.name),
            None => format!("rule #{}", flow.rule),
        },
        chosen_by::CONNTRACK => "conntrack".into(),
        _ => "hash".into(),
    }
}

/// Replies of inbound connections, by the key the classifier gives them, with the
/// slot of the uplink they arrived on. Without conntrack access, none are known.
fn inbound_slots<K: std::hash::Hash + Eq>(
    config: &Config,
    replies: impl FnOnce(u32) -> Result<Vec<(K, u32)>, conntrack::ConntrackError>,
) -> HashMap<K, u32> {
    let numbering = config.numbering();
    match replies(numbering.inbound_flag()) {
        Ok(replies) => replies
            .into_iter()
            .filter_map(|(key, mark)| Some((key, numbering.slot_of_mark(mark)?)))
            .collect(),
        Err(err) => {
            warn!("cannot tell inbound connections apart: {err}");
            HashMap::new()
        }
    }
}

pub fn run(config_path: &Path, json: bool, filter: &Filter) -> CommandResult {
    let config = read_config(config_path)?;
    if let Some(name) = &filter.uplink {
        config
            .uplink_position(name)
            .map_err(|unknown| Failure::Config(anyhow!("{}: {unknown}", config_path.display())))?;
    }
    let maps = Maps::open(&config.routing.pin_path).map_err(|err| {
        anyhow!("no datapath is loaded for this config ({err}); start it with `multiroute load`")
    })?;
    // A prefix filter matches the flows of its own family only.
    let within =
        |net: Option<IpNet>, addr: IpAddr| net.is_none_or(|net| net.covers(IpNet::host(addr)));
    let mut rows: Vec<FlowRow> = rows(&config, &maps)?
        .into_iter()
        .filter(|row| filter.uplink.as_ref().is_none_or(|u| &row.uplink == u))
        .filter(|row| within(filter.src, row.src) && within(filter.dst, row.dst))
        .collect();
    rows.sort_by_key(|row| row.age_s);
    let report = match instance::running(&config.control.socket) {
        Some(_) => super::status::daemon_report(&config)?,
        None => None,
    };
    let uplinks = report.map(|r| r.uplinks).unwrap_or_default();
    for row in &mut rows {
        row.uplink_state = uplinks.iter().find(|u| u.name == row.uplink).map(|u| {
            match row.src {
                IpAddr::V4(_) => Condition::of(u.alive, u.degraded),
                IpAddr::V6(_) => Condition::of(u.alive6, u.degraded6),
            }
            .as_str()
        });
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).context("encoding JSON")?
        );
    } else {
        print_rows(&rows);
        print_unwell(&rows, &uplinks);
    }
    Ok(())
}

/// Every flow of both families, with its uplink and why.
fn rows(config: &Config, maps: &Maps) -> anyhow::Result<Vec<FlowRow>> {
    let slots =
        datapath::read_slots(&config.routing.pin_path).context("reading the uplink slots")?;
    let now = u64::from(datapath::monotonic_seconds());
    let inbound = inbound_slots(config, conntrack::inbound_replies::<FlowKey>);
    let inbound6 = inbound_slots(config, conntrack::inbound_replies::<FlowKey6>);
    let name_of = |slot: u32| {
        slots
            .iter()
            .find(|(_, held)| **held == slot)
            .map_or_else(|| format!("slot {slot}"), |(name, _)| name.clone())
    };
    let row = |src: IpAddr,
               dst: IpAddr,
               proto: u8,
               ports: (u16, u16),
               inbound,
               flow: &Flow,
               fast_packets: u64| {
        // Replies of inbound connections follow their arrival uplink, whatever the
        // classifier hashed.
        let (uplink, why) = match inbound {
            Some(&slot) => (name_of(slot), "inbound".to_owned()),
            None if flow.uplink_index() == DIRECT_UPLINK => {
                ("main".to_owned(), "direct".to_owned())
            }
            None => (name_of(flow.uplink_index()), why(config, flow)),
        };
        FlowRow {
            proto: proto_name(proto),
            src,
            src_port: ports.0,
            dst,
            dst_port: ports.1,
            uplink,
            why,
            age_s: now.saturating_sub(u64::from(flow.created_s)),
            packets: flow.packets,
            fast_packets,
            uplink_state: None,
        }
    };
    let ipv4 = maps.v4.all().into_iter().map(|(key, flow)| {
        let (src, dst) = (key.src_octets().into(), key.dst_octets().into());
        let fast = maps.fast.v4.session_packets(&key).unwrap_or(0);
        row(
            src,
            dst,
            key.proto,
            key.ports(),
            inbound.get(&key),
            &flow,
            fast,
        )
    });
    let ipv6 = maps.v6.all().into_iter().map(|(key, flow)| {
        let (src, dst) = (key.src_octets().into(), key.dst_octets().into());
        let ports = multiroute_ebpf::FlowIdentity::ports(&key);
        let fast = maps.fast.v6.session_packets(&key).unwrap_or(0);
        row(src, dst, key.proto, ports, inbound6.get(&key), &flow, fast)
    });
    Ok(ipv4.chain(ipv6).collect())
}

fn print_rows(rows: &[FlowRow]) {
    println!(
        "{:<5} {:<41} {:<41} {:<15} {:<20} {:>9} {:>9} {:>9}",
        "PROTO", "SOURCE", "DESTINATION", "UPLINK", "WHY", "AGE", "PACKETS", "FAST"
    );
    for row in rows {
        println!(
            "{:<5} {:<41} {:<41} {:<15} {:<20} {:>8}s {:>9} {:>9}",
            row.proto,
            std::net::SocketAddr::new(row.src, row.src_port).to_string(),
            std::net::SocketAddr::new(row.dst, row.dst_port).to_string(),
            row.uplink,
            row.why,
            row.age_s,
            row.packets,
            row.fast_packets
        );
    }
    println!("{} flows", rows.len());
}

/// Why the flows of an uplink that is not up are where they are.
fn print_unwell(rows: &[FlowRow], uplinks: &[UplinkReport]) {
    for u in uplinks {
        let state = rows
            .iter()
            .filter(|row| row.uplink == u.name)
            .find_map(|row| row.uplink_state.filter(|&state| state != "up"));
        match state {
            Some("degraded") => println!(
                "{} is degraded ({}): its flows stay, new ones go to a good uplink of its tier",
                u.name, u.reason
            ),
            Some(state) => println!("{} is {state}: {}", u.name, u.reason),
            None => {}
        }
    }
}
