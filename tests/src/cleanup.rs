//! What ends a lab's process before its `Drop` runs (SIGKILL, a closed terminal
//! before the signal was handled, a crash) leaves its namespaces, daemons, bpffs
//! mount and pinned maps on the host. Each lab writes its owner (PID and start
//! time) into its directory; the next lab, test or demo removes, by prefix, every
//! lab whose owner is gone, and says so. Labs of a live process are never touched.
//!
//! Also the signals that end the demo and the benchmarks: SIGINT, SIGTERM and
//! SIGHUP (a closed terminal or ssh session) all stop them at the next check, so
//! they unwind and every lab is torn down on the way out.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Result, bail};

/// Every lab's directory is `/run/<prefix>`, every namespace `<prefix>-<role>`.
const RUN: &str = "/run";
const PREFIX_START: &str = "mrt";
const OWNER: &str = "owner";

/// Whether `name` is a lab prefix (`mrt<pid>x<n>`).
fn is_prefix(name: &str) -> bool {
    name.strip_prefix(PREFIX_START)
        .and_then(|rest| rest.split_once('x'))
        .is_some_and(|(pid, n)| {
            !pid.is_empty()
                && !n.is_empty()
                && pid.bytes().chain(n.bytes()).all(|b| b.is_ascii_digit())
        })
}

/// A process's start time in clock ticks since boot (field 22 of its stat), which
/// tells a live owner from another process that got its PID later.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Writes the owner of the lab in `dir`: this process.
pub(crate) fn claim(dir: &Path) -> Result<()> {
    let pid = std::process::id();
    let Some(started) = start_time(pid) else {
        bail!("cannot read this process's start time")
    };
    std::fs::write(dir.join(OWNER), format!("{pid} {started}\n"))?;
    Ok(())
}

/// Whether the process that made lab `prefix` still runs. A lab from before owner
/// files (none in its directory, or no directory) is judged by the PID its prefix
/// carries.
fn owner_alive(prefix: &str) -> bool {
    let owner = std::fs::read_to_string(Path::new(RUN).join(prefix).join(OWNER)).ok();
    let recorded = owner.as_deref().and_then(|text| {
        let mut fields = text.split_whitespace();
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    });
    match recorded {
        Some((pid, started)) => start_time(pid) == Some(started),
        None => prefix
            .trim_start_matches(PREFIX_START)
            .split('x')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| start_time(pid).is_some()),
    }
}

fn namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes every lab whose owner is gone, printing one line for each.
pub(crate) fn remove_stale() {
    let mut prefixes: Vec<String> = namespaces()
        .iter()
        .filter_map(|ns| ns.split_once('-').map(|(prefix, _)| prefix.to_owned()))
        .chain(
            std::fs::read_dir(RUN)
                .into_iter()
                .flatten()
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok()),
        )
        .filter(|name| is_prefix(name))
        .collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    for prefix in prefixes {
        if !owner_alive(&prefix) {
            let removed = remove(&prefix);
            eprintln!(
                "lab: removed what lab {prefix} left behind (its process is gone): {removed} namespaces, its daemons, pins and mount"
            );
        }
    }
}

/// Removes lab `prefix`: its daemons (every process in its namespaces), what its
/// routers set up, its namespaces, bpffs mount and files. Returns the number of
/// namespaces removed.
fn remove(prefix: &str) -> usize {
    let dir = PathBuf::from(RUN).join(prefix);
    let own: Vec<String> = namespaces()
        .into_iter()
        .filter(|ns| ns.starts_with(&format!("{prefix}-")))
        .collect();
    for ns in &own {
        let pids = Command::new("ip").args(["netns", "pids", ns]).output();
        for pid in pids
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a process inside a namespace this lab made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for (role, config) in [
        ("router", "multiroute.toml"),
        ("routerb", "multiroute-b.toml"),
    ] {
        let (ns, config) = (format!("{prefix}-{role}"), dir.join(config));
        if own.contains(&ns) && config.exists() {
            let _ = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(crate::multiroute_bin())
                .arg("-c")
                .arg(&config)
                .arg("unload")
                .output();
        }
    }
    for ns in &own {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
    }
    let _ = Command::new("umount").arg(dir.join("bpf")).output();
    let _ = std::fs::remove_dir_all(&dir);
    own.len()
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT, SIGTERM and SIGHUP make the next [`interrupted`] check fail.
pub fn handle_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether one of [`handle_signals`]'s signals arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Called between steps: fails once a stop was asked for.
pub fn interrupted() -> Result<()> {
    if stop_requested() {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_prefixes_are_told_from_other_names() {
        assert!(is_prefix("mrt1234x0"));
        assert!(is_prefix("mrt99999x12"));
        for other in [
            "mrt",
            "mrtx1",
            "mrt12x",
            "mrt12",
            "mrt1a2x3",
            "systemd",
            "mrt12x3-router",
        ] {
            assert!(!is_prefix(other), "{other}");
        }
    }

    #[test]
    fn this_process_owns_what_it_claims() {
        let dir = std::env::temp_dir().join(format!("mrt-owner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        claim(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(OWNER)).unwrap();
        let pid: u32 = text.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(pid, std::process::id());
        assert!(start_time(pid).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
