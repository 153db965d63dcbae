//! Asking the host's DHCP client of an interface to get its lease again, for
//! `on_dead = "renew"`. Supported, tried in this order, in multiroute's own
//! network namespace only:
//! - busybox `udhcpc -i <if>` (OpenWrt, Alpine, most firmware): SIGUSR1, renew;
//! - `dhcpcd … <if>` started for the interface: SIGHUP, rebind (broadcast, so a
//!   server that renumbered is heard);
//! - dhcpcd in manager mode (Debian's service): `dhcpcd --rebind <if>`;
//! - systemd-networkd: `networkctl renew <if>`.
//!
//! ISC dhclient has no signal that renews and is not supported.
use std::path::Path;

use super::helper::{Input, TIMEOUT, run_bounded};

/// A process seen in /proc: its pid, its parent's and its argv (a retitled
/// process, as dhcpcd's "dhcpcd: wan1 [ip4]", split at its spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub argv: Vec<String>,
}

/// How the DHCP client of `interface` is asked, among `processes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    Signal {
        pid: i32,
        signal: i32,
        client: &'static str,
    },
    Run(Vec<String>),
}

fn program(argv: &[String]) -> &str {
    let first = argv
        .first()
        .map_or("", |a| a.rsplit('/').next().unwrap_or(a));
    // A retitled process: "dhcpcd: wan1 [ip4]".
    let first = first.strip_suffix(':').unwrap_or(first);
    // busybox applets: `busybox udhcpc …`.
    match (first, argv.get(1)) {
        ("busybox", Some(applet)) => applet,
        _ => first,
    }
}

/// Whether `argv` names `interface` (`wan1`, `-i wan1`, `-iwan1`, `--interface=wan1`).
fn names(argv: &[String], interface: &str) -> bool {
    argv.iter().skip(1).any(|arg| {
        arg == interface
            || arg.strip_prefix("-i") == Some(interface)
            || arg.strip_prefix("--interface=") == Some(interface)
    })
}

/// Picks how to ask, from what runs.
pub fn choose(processes: &[Process], interface: &str) -> Option<Ask> {
    // A client's own helpers (dhcpcd's privilege-separated proxies) are not it.
    let is_client = |p: &Process, name: &str| program(&p.argv) == name;
    let top = |p: &&Process, name: &str| {
        !processes
            .iter()
            .any(|parent| parent.pid == p.ppid && is_client(parent, name))
    };
    let named = |name: &str| {
        processes
            .iter()
            .filter(|p| is_client(p, name) && names(&p.argv, interface))
            .find(|p| top(p, name))
    };
    if let Some(p) = named("udhcpc") {
        return Some(Ask::Signal {
            pid: p.pid,
            signal: libc::SIGUSR1,
            client: "udhcpc",
        });
    }
    if let Some(p) = named("dhcpcd") {
        return Some(Ask::Signal {
            pid: p.pid,
            signal: libc::SIGHUP,
            client: "dhcpcd",
        });
    }
    let runs = |name: &str| processes.iter().any(|p| program(&p.argv) == name);
    // Manager mode names no interface: every argument is an option.
    let manager = processes
        .iter()
        .any(|p| program(&p.argv) == "dhcpcd" && p.argv.iter().skip(1).all(|a| a.starts_with('-')));
    if manager {
        return Some(Ask::Run(vec![
            "dhcpcd".into(),
            "--rebind".into(),
            interface.into(),
        ]));
    }
    if runs("systemd-networkd") {
        return Some(Ask::Run(vec![
            "networkctl".into(),
            "renew".into(),
            interface.into(),
        ]));
    }
    None
}

/// The processes in this network namespace (the DHCP clients of other
/// namespaces' interfaces of the same name are not ours).
pub fn processes() -> Vec<Process> {
    let ours = std::fs::read_link("/proc/self/ns/net").ok();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path();
            if std::fs::read_link(dir.join("ns/net")).ok() != ours {
                return None;
            }
            let argv = read_argv(&dir)?;
            let ppid = std::fs::read_to_string(dir.join("status"))
                .ok()?
                .lines()
                .find_map(|line| line.strip_prefix("PPid:"))?
                .trim()
                .parse()
                .ok()?;
            Some(Process { pid, ppid, argv })
        })
        .collect()
}

fn read_argv(dir: &Path) -> Option<Vec<String>> {
    let raw = std::fs::read(dir.join("cmdline")).ok()?;
    let mut argv: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if let [title] = argv.as_slice() {
        argv = title.split_whitespace().map(str::to_owned).collect();
    }
    (!argv.is_empty()).then_some(argv)
}

/// The DHCP client started for `interface` ("udhcpc", "dhcpcd") among
/// `processes`; a manager serving every interface says nothing about this one.
pub fn client_of(processes: &[Process], interface: &str) -> Option<&'static str> {
    match choose(processes, interface)? {
        Ask::Signal { client, .. } => Some(client),
        Ask::Run(_) => None,
    }
}

/// Asks `interface`'s DHCP client for its lease again; says what was done.
pub async fn renew(interface: &str) -> Result<String, String> {
    match choose(&processes(), interface) {
        None => Err(format!(
            "no DHCP client of {interface} found (supported: udhcpc, dhcpcd, systemd-networkd)"
        )),
        Some(Ask::Signal {
            pid,
            signal,
            client,
        }) => {
            // SAFETY: kill(2) with a pid read from /proc and a valid signal number.
            if unsafe { libc::kill(pid, signal) } == 0 {
                Ok(format!(
                    "asked {client} (pid {pid}) to renew the lease of {interface}"
                ))
            } else {
                Err(format!(
                    "signalling {client} (pid {pid}): {}",
                    std::io::Error::last_os_error()
                ))
            }
        }
        Some(Ask::Run(argv)) => run_bounded(&argv, Input::default(), TIMEOUT).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: i32, argv: &str) -> Process {
        Process {
            pid,
            ppid: 1,
            argv: argv.split(' ').map(str::to_owned).collect(),
        }
    }

    #[test]
    fn the_client_of_the_interface_is_found_by_its_argv() {
        let running = [
            process(10, "/sbin/udhcpc -f -i wan2 -t 10"),
            process(11, "dhcpcd --nobackground --ipv4only wan1"),
            process(12, "busybox udhcpc -iwan3"),
        ];
        let signal = |pid, signal, client| {
            Some(Ask::Signal {
                pid,
                signal,
                client,
            })
        };
        assert_eq!(
            choose(&running, "wan2"),
            signal(10, libc::SIGUSR1, "udhcpc")
        );
        assert_eq!(choose(&running, "wan1"), signal(11, libc::SIGHUP, "dhcpcd"));
        assert_eq!(
            choose(&running, "wan3"),
            signal(12, libc::SIGUSR1, "udhcpc")
        );
        // A manager-mode dhcpcd is asked over its socket; nothing: none.
        let manager = [process(20, "/usr/sbin/dhcpcd -b -q")];
        assert_eq!(
            choose(&manager, "eth1"),
            Some(Ask::Run(vec![
                "dhcpcd".into(),
                "--rebind".into(),
                "eth1".into()
            ]))
        );
        let networkd = [process(30, "/lib/systemd/systemd-networkd")];
        assert!(
            matches!(choose(&networkd, "eth1"), Some(Ask::Run(argv)) if argv[0] == "networkctl")
        );
        assert_eq!(choose(&[process(40, "dhclient eth1")], "eth1"), None);
        // dhcpcd 9 retitles itself and its proxies; the one to ask is the top one.
        let retitled = [
            Process {
                ppid: 50,
                ..process(51, "dhcpcd: [privileged proxy] wan1 [ip4]")
            },
            process(50, "dhcpcd: wan1 [ip4]"),
            process(52, "udhcpc -f -i wan2"),
        ];
        assert_eq!(
            choose(&retitled, "wan1"),
            signal(50, libc::SIGHUP, "dhcpcd")
        );
    }
}
