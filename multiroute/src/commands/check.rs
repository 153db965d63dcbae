//! `multiroute check`: validate the config and the host without changing anything.
use std::path::Path;

use anyhow::{Context as _, anyhow};
use multiroute::{
    apply::{self, datapath},
    config::Config,
    instance,
    net::Family,
    netlink::Netlink,
    observe, plan,
    plan::{Plan, Readiness, Verdicts},
    run::{
        control::{self, Request, Response},
        fast_path,
    },
};

use super::{CommandResult, Failure, read_config, runtime};

/// The running load's plan (it knows which uplinks are dead) or, without one, the
/// plan for the host as it is.
fn print_plan(config: &Config, computed: Vec<String>) -> CommandResult {
    let running = control::ask(&config.control.socket, &Request::Plan)
        .context("asking the running multiroute for its plan")?;
    let (lines, source) = match running {
        Some(Response::Plan { lines }) => (lines, "the running load's plan"),
        _ => (computed, "plan for this host"),
    };
    println!("{source}:");
    for line in lines {
        println!("  {line}");
    }
    Ok(())
}

/// TCX (multi-program TC attachment through bpf links) arrived in Linux 6.6.
const MIN_KERNEL: (u32, u32) = (6, 6);

pub fn run(config_path: &Path, show_plan: bool) -> CommandResult {
    let config = read_config(config_path)?;
    multiroute::run::hooks::check_programs(&config, config_path)
        .map_err(|err| Failure::Config(err.into()))?;
    println!(
        "ok: {} is valid ({} uplinks)",
        config_path.display(),
        config.uplinks.len()
    );
    let mut problems = system_problems(&config);
    let (plan, assessment) = runtime()?.block_on(async {
        let nl = Netlink::connect().context("connecting to the kernel")?;
        let (plan, _) = apply::plan(&nl, &config, &Verdicts::default())
            .await
            .map_err(Failure::from)?;
        let facts = observe::host::facts(&nl, &config)
            .await
            .context("reading the host's settings")?;
        Ok::<_, Failure>((plan, plan::host::assess(&config, &facts)))
    })?;
    for change in &assessment.changes {
        println!(
            "note: load will set {} = {} (now {}): {}; unload restores it",
            change.key, change.to, change.from, change.why
        );
    }
    for warning in &assessment.warnings {
        println!("warning: {warning}");
    }
    problems.extend(assessment.conflicts);
    print_interfaces(&plan);
    if show_plan {
        print_plan(&config, plan.lines())?;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        for problem in &problems {
            println!("problem: {problem}");
        }
        Err(Failure::Runtime(anyhow!(
            "{} problem(s) found on this host",
            problems.len()
        )))
    }
}

/// Root, the kernel, the bpffs and a running instance: what `load` needs of the
/// system before it looks at interfaces. Prints what is fine, returns problems.
fn system_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("not running as root: load needs CAP_NET_ADMIN and CAP_BPF".to_owned());
    }
    match kernel_version() {
        Some(version) if version >= MIN_KERNEL => {
            println!("ok: kernel {}.{} has TCX", version.0, version.1)
        }
        Some(version) => problems.push(format!(
            "kernel {}.{} is older than {}.{}, which multiroute needs for TCX attachment",
            version.0, version.1, MIN_KERNEL.0, MIN_KERNEL.1
        )),
        None => {
            problems.push("cannot read the kernel version from /proc/sys/kernel/osrelease".into())
        }
    }
    let pin_path = &config.routing.pin_path;
    let bpffs_at = pin_path.parent().unwrap_or(Path::new("/"));
    if datapath::is_bpffs(bpffs_at) {
        println!("ok: {} is on a bpffs", bpffs_at.display());
    } else {
        println!(
            "note: {} is not a bpffs yet; load will mount one there",
            bpffs_at.display()
        );
    }
    match (config.datapath.fast_path, fast_path::unavailable()) {
        (false, _) => println!("note: fast path off ([datapath] fast_path = false)"),
        (true, None) => {
            println!(
                "ok: fast path: established IPv4 and IPv6 sessions skip the rule walk and netfilter"
            )
        }
        (true, Some(why)) => {
            println!("warning: fast path unavailable, every session takes the slow path: {why}")
        }
    }
    if let Some(pid) = instance::running(&config.control.socket) {
        println!("note: multiroute is running for this config (PID {pid})");
    }
    problems
}

/// The LAN interfaces and each uplink's readiness per family.
fn print_interfaces(plan: &Plan) {
    for (name, index) in &plan.datapath.lan {
        println!("ok: LAN interface {name} (ifindex {index})");
    }
    for uplink in &plan.uplinks {
        for (family, readiness) in uplink.readiness.iter() {
            let side = match family {
                Family::V4 => format!("{} on {}", uplink.name, uplink.interface),
                Family::V6 => format!("{} IPv6", uplink.name),
            };
            match (family, readiness) {
                (Family::V4, Readiness::Ready { address, gateway }) => println!(
                    "ok: uplink {side}: address {address}, gateway {gateway}, table {}, mark {:#x}",
                    uplink.table, uplink.mark
                ),
                (Family::V6, Readiness::Ready { address, gateway }) => {
                    println!("ok: uplink {side}: address {address}, gateway {gateway}")
                }
                // IPv6 is optional: an uplink without it is not a warning.
                (Family::V6, Readiness::NoAddress) => {}
                (Family::V4, other) => println!(
                    "warning: uplink {side}: {}",
                    other.problem(family).unwrap_or_default()
                ),
                (Family::V6, other) => println!(
                    "warning: uplink {side}: {} (its IPv6 carries nothing until it has both an address and a gateway; set `gateway6` or let an RA announce one)",
                    other.state()
                ),
            }
        }
    }
}

fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}
