//! What the router's kernel and multiroute show: status, flows, the plan against
//! the kernel's rules and routes, counters, snapshots for residue checks.
use anyhow::{Context as _, Result, ensure};

use crate::{Lab, status_in, stdout};

/// Multiroute classifiers in the kernel that use one of the maps `map_ids`.
pub fn classifiers_using(map_ids: &std::collections::BTreeSet<u32>) -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| info.name_as_str() == Some(multiroute_ebpf::PROGRAM_NAME))
        .filter(|info| {
            info.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.iter().any(|id| map_ids.contains(id)))
        })
        .count()
}

impl Lab {
    /// Multiroute classifiers in the kernel that use this lab's flow tables; other
    /// labs' and the host's own are not counted. The tables' ids are remembered,
    /// so a program still loaded after `unload` removed the pins is counted too.
    pub fn classifiers(&self) -> usize {
        let mut seen = self
            .flow_tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for pins in [self.pin_path(), self.pin_path_b()] {
            let pin = pins.join(multiroute_ebpf::map_names::FLOWS);
            if let Ok(info) = aya::maps::MapData::from_pin(pin).and_then(|map| map.info()) {
                seen.insert(info.id());
            }
        }
        classifiers_using(&seen)
    }

    /// `multiroute status --json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        status_in(&self.router(), &self.config)
    }

    /// `multiroute flows --json ARGS`, parsed.
    pub fn flows(&self, args: &[&str]) -> Result<Vec<serde_json::Value>> {
        let mut full = vec!["flows", "--json"];
        full.extend_from_slice(args);
        let out = self.multiroute(&full);
        ensure!(
            out.status.success(),
            "flows failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("parsing flows --json")
    }

    /// Fails unless the router's multiroute rules and routes (protocol 77) are exactly
    /// the plan in force (`multiroute check --plan`), line for line.
    pub fn assert_kernel_matches_plan(&self) -> Result<()> {
        let out = self.multiroute(&["check", "--plan"]);
        let report = stdout(&out);
        let planned: std::collections::BTreeSet<String> = report
            .lines()
            .skip_while(|l| !l.ends_with("plan:"))
            .skip(1)
            .map(|l| l.trim().to_owned())
            .collect();
        ensure!(!planned.is_empty(), "no plan in:\n{report}");
        let kernel = self.kernel_lines()?;
        let missing: Vec<_> = planned.difference(&kernel).collect();
        let extra: Vec<_> = kernel.difference(&planned).collect();
        ensure!(
            missing.is_empty() && extra.is_empty(),
            "kernel differs from the plan:\n  planned, not in the kernel: {missing:#?}\n  in the kernel, not planned: {extra:#?}"
        );
        Ok(())
    }

    /// What `ip ARGS` (with `-j`) prints in the router, parsed.
    pub(crate) fn router_json(&self, args: &[&str]) -> Result<Vec<serde_json::Value>> {
        let out = self.ns(&self.router(), "ip", args)?;
        serde_json::from_slice(&out.stdout).context("parsing ip -j")
    }

    /// The router's protocol-77 rules and routes in the plan's `ip` syntax.
    fn kernel_lines(&self) -> Result<std::collections::BTreeSet<String>> {
        let text = |v: &serde_json::Value| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        };
        let mut lines = std::collections::BTreeSet::new();
        for (flag, prefix, host) in [("-4", "", 32), ("-6", "-6 ", 128)] {
            let net = |addr: &serde_json::Value, len: &serde_json::Value| match len.as_u64() {
                Some(len) if len != host => format!("{}/{len}", text(addr)),
                _ => text(addr),
            };
            for rule in self.router_json(&[flag, "-j", "rule", "show"])? {
                if rule["protocol"] != "77" {
                    continue;
                }
                let port = |name: &str| {
                    if !rule[name].is_null() {
                        format!(" {name} {}", text(&rule[name]))
                    } else if !rule[format!("{name}_start")].is_null() {
                        format!(
                            " {name} {}-{}",
                            text(&rule[format!("{name}_start")]),
                            text(&rule[format!("{name}_end")])
                        )
                    } else {
                        String::new()
                    }
                };
                let selector = if !rule["fwmark"].is_null() {
                    format!("fwmark {}/{}", text(&rule["fwmark"]), text(&rule["fwmask"]))
                } else if rule["iif"] == "lo" {
                    let mut matched = match rule["src"].as_str() {
                        Some("all") | None => "from all".to_owned(),
                        Some(_) => format!("from {}", net(&rule["src"], &rule["srclen"])),
                    };
                    if !rule["dst"].is_null() {
                        matched += &format!(" to {}", net(&rule["dst"], &rule["dstlen"]));
                    }
                    matched += " iif lo";
                    if !rule["ipproto"].is_null() {
                        matched += &format!(" ipproto {}", text(&rule["ipproto"]));
                    }
                    matched + &port("sport") + &port("dport")
                } else if !rule["dst"].is_null() {
                    format!("to {}", net(&rule["dst"], &rule["dstlen"]))
                } else {
                    format!("from {}", net(&rule["src"], &rule["srclen"]))
                };
                let mut line = format!(
                    "{prefix}pref {} {selector} lookup {}",
                    rule["priority"],
                    text(&rule["table"])
                );
                if let Some(len) = rule["suppress_prefixlen"].as_u64() {
                    line += &format!(" suppress_prefixlength {len}");
                }
                lines.insert(line);
            }
            for route in
                self.router_json(&[flag, "-j", "route", "show", "table", "all", "proto", "77"])?
            {
                let mut line = format!("{prefix}{}", text(&route["dst"]));
                if let Some(hops) = route["nexthops"].as_array() {
                    for hop in hops {
                        line += " nexthop";
                        if !hop["gateway"].is_null() {
                            line += &format!(" via {}", text(&hop["gateway"]));
                        }
                        line += &format!(" dev {} weight {}", text(&hop["dev"]), hop["weight"]);
                    }
                } else if !route["gateway"].is_null() {
                    line += &format!(
                        " via {} dev {}",
                        text(&route["gateway"]),
                        text(&route["dev"])
                    );
                } else {
                    line += &format!(" dev {}", text(&route["dev"]));
                    if !route["prefsrc"].is_null() {
                        line += &format!(" src {}", text(&route["prefsrc"]));
                    }
                }
                let table = route["table"].as_str().unwrap_or("main");
                lines.insert(format!("{line} table {table}"));
            }
        }
        Ok(lines)
    }

    /// The uplink index whose address is `address`.
    /// The uplink whose address (of either family) the server saw.
    /// The uplink whose subnet `address` is in (198.18.N.0/24, 2001:db8:18:N::/64):
    /// static, DHCP-leased and SLAAC addresses alike.
    pub fn uplink_index(&self, address: &str) -> Option<usize> {
        let address: std::net::IpAddr = address.parse().ok()?;
        (0..self.isps).find(|&i| match address {
            std::net::IpAddr::V4(v4) => v4.octets()[..3] == Self::uplink_address(i).octets()[..3],
            std::net::IpAddr::V6(v6) => {
                v6.segments()[..4] == Self::uplink_address6(i).segments()[..4]
            }
        })
    }

    /// Received bytes on each of the router's uplink interfaces.
    pub fn uplink_rx_bytes(&self) -> Result<Vec<u64>> {
        (0..self.isps)
            .map(|n| {
                let out = self.ns(
                    &self.router(),
                    "cat",
                    &[&format!("/sys/class/net/wan{n}/statistics/rx_bytes")],
                )?;
                stdout(&out).trim().parse().context("parsing rx_bytes")
            })
            .collect()
    }

    /// What the router's routing and TC state look like, for before/after comparisons.
    pub fn router_snapshot(&self) -> Result<String> {
        let router = self.router();
        let mut snapshot = String::new();
        // Of IPv6 routes only multiroute's own and the defaults: link-local
        // addresses finish DAD at their own pace and would make the rest racy.
        for args in [
            &["-4", "-j", "rule", "show"][..],
            &["-6", "-j", "rule", "show"],
            &["-4", "-j", "route", "show", "table", "all"],
            &["-6", "-j", "route", "show", "table", "all", "proto", "77"],
            &["-6", "-j", "route", "show", "default"],
            &["-j", "link", "show"],
        ] {
            snapshot += &stdout(&self.ns(&router, "ip", args)?);
            snapshot.push('\n');
        }
        // Nor any nftables table of its own.
        snapshot += &stdout(&self.ns(&router, "nft", &["list", "tables"])?);
        // The classifier must leave no qdisc or legacy filter behind on the LAN side.
        snapshot += &stdout(&self.ns(&router, "tc", &["-j", "qdisc", "show", "dev", "lan0"])?);
        snapshot += &stdout(&self.ns(
            &router,
            "tc",
            &["-j", "filter", "show", "dev", "lan0", "ingress"],
        )?);
        Ok(snapshot)
    }

    /// What is pinned on the lab's bpffs, besides the kernel's own preloaded
    /// `maps.debug`/`progs.debug` iterators.
    pub fn pins(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("bpf"))
            .map(|entries| {
                entries
                    .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .filter(|name| !name.ends_with(".debug"))
                    .collect()
            })
            .unwrap_or_default()
    }
}
