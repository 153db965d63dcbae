//! `multiroute status`: what each uplink is doing, read from the kernel (the pinned
//! maps and the interfaces), so it works whether or not `load` is still running, plus
//! the running daemon's health view (state since when and why, probe RTT and loss)
//! from its control socket.
use std::{path::Path, time::SystemTime};

use anyhow::Context as _;
use multiroute::{
    apply::{
        self,
        datapath::{self, Maps},
    },
    config::{Config, format_size},
    instance,
    netlink::Netlink,
    plan::{Plan, Verdicts},
    run::{
        DaemonReport,
        control::{self, Request, Response},
        report::BudgetReport,
        view::UplinkView,
    },
};
use serde::Serialize;

use super::{CommandResult, read_config, runtime};

#[derive(Serialize)]
struct Status {
    /// PID of the running `load`, if any.
    pid: Option<u32>,
    /// The running `load`'s version (`multiroute --version`), null without one;
    /// after an upgrade it says whether the daemon is the new build yet.
    version: Option<String>,
    /// The running `load` has rules, routes, the datapath and its maps in place and
    /// consistent with its plan. False without a running `load`.
    ready: bool,
    /// LAN interfaces the classifier is attached to.
    attached: Vec<String>,
    /// Every uplink is down: LAN traffic follows the main table's original default.
    fail_open: bool,
    /// No uplink has its address: the backup of a VRRP pair, steering nothing.
    standby: bool,
    uplinks: Vec<UplinkView>,
    /// Policy rules in the order they are matched (`pin`/`pin_from` first).
    rules: Vec<RuleStatus>,
    /// Datapath outcome counters of IPv4 (flow_hit, flow_new, pass_not_ip, …).
    counters: std::collections::BTreeMap<&'static str, u64>,
    /// The same for IPv6.
    counters_ipv6: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct RuleStatus {
    name: String,
    /// What it matches, as `proto from … sport … to … dport …`.
    matches: String,
    /// Its uplinks, most preferred first.
    uplinks: Vec<String>,
    /// The uplink it uses now (the running daemon's view; without one, the first
    /// ready uplink); null when none is alive and its traffic is balanced.
    using: Option<String>,
}

pub fn run(config_path: &Path, json: bool) -> CommandResult {
    let config = read_config(config_path)?;
    let pin_path = &config.routing.pin_path;
    let (plan, _) = runtime()?.block_on(async {
        let nl = Netlink::connect().context("connecting to the kernel")?;
        apply::plan(&nl, &config, &Verdicts::default())
            .await
            .map_err(super::Failure::from)
    })?;
    let pid = instance::running(&config.control.socket);
    let health = match pid {
        Some(_) => daemon_report(&config)?,
        None => None,
    };
    let maps = Maps::open(pin_path).ok();
    let counters = |family| {
        maps.as_ref()
            .and_then(|m| m.counters(family).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(counter, value)| (counter.name(), value))
            .collect()
    };
    let status = Status {
        rules: rule_statuses(&config, &plan, health.as_ref()),
        uplinks: UplinkView::all(&plan, health.as_ref(), maps.as_ref()),
        fail_open: health.as_ref().is_some_and(|h| h.fail_open),
        standby: health.as_ref().map_or(plan.ha_backup(), |h| h.standby),
        ready: health.as_ref().is_some_and(|h| h.ready),
        version: health
            .as_ref()
            .map(|h| h.version.clone())
            .filter(|version| !version.is_empty()),
        pid,
        attached: datapath::attached_interfaces(pin_path).context("reading the pin directory")?,
        counters: counters(multiroute_ebpf::family::IPV4),
        counters_ipv6: counters(multiroute_ebpf::family::IPV6),
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

/// The running daemon's health view, over its control socket.
pub(super) fn daemon_report(config: &Config) -> anyhow::Result<Option<DaemonReport>> {
    let reply = control::ask(&config.control.socket, &Request::Status)
        .context("asking the running multiroute")?;
    Ok(match reply {
        Some(Response::Status(report)) => Some(report),
        _ => None,
    })
}

/// Each policy rule with the uplink it uses: the daemon's view, or the plan's.
fn rule_statuses(config: &Config, plan: &Plan, health: Option<&DaemonReport>) -> Vec<RuleStatus> {
    config
        .rules
        .iter()
        .zip(&plan.rule_uses)
        .map(|(rule, used)| RuleStatus {
            name: rule.name.clone(),
            matches: rule.describe(),
            uplinks: rule.uplinks.clone(),
            using: match health {
                Some(report) => report
                    .rules
                    .iter()
                    .find(|r| r.name == rule.name)
                    .and_then(|r| r.using.clone()),
                None => used.using_name.clone(),
            },
        })
        .collect()
}

/// "12s", "4m", "3h", "2d": how long ago `since` was.
fn age(since: Option<f64>) -> String {
    let Some(since) = since else {
        return "-".into();
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let seconds = (now - since).max(0.0) as u64;
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        7200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn print_table(status: &Status) {
    print_summary(status);
    print_uplinks(&status.uplinks);
    print_rules(&status.rules);
}

/// Whether it runs, and the states that concern every uplink at once.
fn print_summary(status: &Status) {
    match (status.pid, status.attached.is_empty()) {
        (Some(pid), _) => println!(
            "multiroute {} running (PID {pid}, {}), datapath attached to: {}",
            status.version.as_deref().unwrap_or("(an older build)"),
            if status.ready { "ready" } else { "NOT READY" },
            status.attached.join(", ")
        ),
        (None, false) => println!(
            "multiroute not running; datapath still steering on: {} (no health checks: `multiroute load` resumes, `multiroute unload` removes it)",
            status.attached.join(", ")
        ),
        (None, true) => println!("multiroute not running; datapath not attached"),
    }
    if status.standby {
        println!(
            "STANDBY: no uplink has its address (a VRRP peer holds them); steering nothing until they arrive"
        );
    }
    if status.fail_open {
        println!("ALL UPLINKS DOWN: failing open, LAN traffic follows the main table");
    }
}

/// The uplink table's columns: heading and width (negative: left-aligned).
const COLUMNS: [(&str, i32); 15] = [
    ("UPLINK", -15),
    ("STATE", -8),
    ("SINCE", 5),
    ("WEIGHT", 6),
    ("TIER", 4),
    ("INTERFACE", -10),
    ("ADDRESS", -18),
    ("GATEWAY", -15),
    ("TABLE", 5),
    ("RTT", 8),
    ("LOSS", 5),
    ("FLOWS", 7),
    ("PACKETS", 10),
    ("BYTES", 12),
    ("FAST", 10),
];

fn print_row(cells: [String; 15]) {
    let line: Vec<_> = cells
        .iter()
        .zip(COLUMNS)
        .map(|(cell, (_, width))| match width {
            ..0 => format!("{cell:<0$}", width.unsigned_abs() as usize),
            _ => format!("{cell:>0$}", width as usize),
        })
        .collect();
    println!("{}", line.join(" "));
}

fn print_uplinks(uplinks: &[UplinkView]) {
    print_row(COLUMNS.map(|(heading, _)| heading.to_owned()));
    let or_dash = |text: &Option<String>| text.clone().unwrap_or_else(|| "-".into());
    for u in uplinks {
        print_row([
            u.name.clone(),
            u.state.to_owned(),
            age(u.since),
            u.weight.to_string(),
            format!("{}{}", u.tier, if u.new_flows { "" } else { "*" }),
            u.interface.clone(),
            or_dash(&u.ipv4.address),
            or_dash(&u.ipv4.gateway),
            u.table.to_string(),
            u.rtt_ms.map_or("-".into(), |ms| format!("{ms:.1}ms")),
            u.loss_percent.map_or("-".into(), |p| format!("{p:.0}%")),
            u.flows.to_string(),
            u.packets.to_string(),
            u.bytes.to_string(),
            u.fast_packets.to_string(),
        ]);
    }
    if uplinks.iter().any(|u| !u.new_flows) {
        println!(
            "TIER *: takes no new flows now (down, drained, degraded while a good uplink of its tier is live, or a better tier is live)"
        );
    }
    for u in uplinks.iter().filter(|u| u.ipv6.side.address.is_some()) {
        println!(
            "{} IPv6 {}: {} via {}",
            u.name,
            u.ipv6.state,
            or_dash(&u.ipv6.side.address),
            or_dash(&u.ipv6.side.gateway)
        );
    }
    for u in uplinks {
        if let Some(budget) = &u.budget {
            println!("{}", budget_line(&u.name, budget));
        }
    }
    for u in uplinks
        .iter()
        .filter(|u| matches!(u.state, "down" | "degraded"))
    {
        if let Some(reason) = &u.reason {
            println!("{} is {}: {reason}", u.name, u.state);
        }
    }
}

/// "lte budget: 4.2 MB of 5.0 MB (84 %) until 2026-12-15 00:00; at quota: standby".
fn budget_line(name: &str, budget: &BudgetReport) -> String {
    let end = jiff::Timestamp::from_second(budget.period_end)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_else(|_| "-".into());
    let percent = 100.0 * budget.used_bytes as f64 / budget.quota_bytes.max(1) as f64;
    format!(
        "{name} budget: {} of {} ({percent:.0} %) until {end}; at quota: {}{}",
        format_size(budget.used_bytes),
        format_size(budget.quota_bytes),
        budget.at_quota,
        if budget.exhausted { " (EXHAUSTED)" } else { "" }
    )
}

fn print_rules(rules: &[RuleStatus]) {
    if rules.is_empty() {
        return;
    }
    println!();
    println!("{:<20} {:<40} {:<24} USING", "RULE", "MATCHES", "UPLINKS");
    for rule in rules {
        println!(
            "{:<20} {:<40} {:<24} {}",
            rule.name,
            rule.matches,
            rule.uplinks.join(", "),
            rule.using.as_deref().unwrap_or("none alive: balanced")
        );
    }
}
