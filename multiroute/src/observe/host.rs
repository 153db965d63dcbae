//! Reads what [`plan::host::assess`](crate::plan::host::assess) needs from this
//! host (this network namespace): sysctls, the nftables ruleset's source NAT, and
//! rules in multiroute's priority range.
use std::path::{Path, PathBuf};

use super::nat::Ruleset;
use crate::{
    config::Config,
    netlink::{Netlink, NetlinkError, is_own_rule, parse_rule, rule_priority},
    plan::host::{HostFacts, linkdown_key},
};

/// The facts of this host.
pub async fn facts(nl: &Netlink, config: &Config) -> Result<HostFacts, NetlinkError> {
    let range = config.routing.rule_priority
        ..config.routing.rule_priority + crate::config::RULE_PRIORITY_SPAN;
    let foreign_rules = nl
        .rules()
        .await?
        .into_iter()
        .filter(|rule| !is_own_rule(rule) && range.contains(&rule_priority(rule)))
        .map(|rule| (rule_priority(&rule), parse_rule(&rule).to_string()))
        .collect();
    let snat = std::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| serde_json::from_slice(&out.stdout).ok())
        .map(|json| {
            let ruleset = Ruleset::parse(&json);
            config
                .uplinks
                .iter()
                .map(|u| (u.interface.clone(), ruleset.coverage(&u.interface)))
                .collect()
        });
    Ok(HostFacts {
        ip_forward: read_sysctl("net.ipv4.ip_forward"),
        rp_filter_all: read_sysctl("net.ipv4.conf.all.rp_filter"),
        rp_filter: config
            .uplinks
            .iter()
            .filter_map(|u| {
                let key = format!("net.ipv4.conf.{}.rp_filter", u.interface);
                Some((u.interface.clone(), read_sysctl(&key)?))
            })
            .collect(),
        ignore_linkdown: config
            .uplinks
            .iter()
            .filter_map(|u| {
                Some((
                    u.interface.clone(),
                    read_sysctl(&linkdown_key(&u.interface))?,
                ))
            })
            .collect(),
        snat,
        foreign_rules,
    })
}

/// Where a sysctl lives under /proc/sys.
pub fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

pub fn read_sysctl(key: &str) -> Option<u8> {
    read_sysctl_as(key)
}

/// A sysctl that holds a larger number (a timeout in seconds).
pub fn read_sysctl_u32(key: &str) -> Option<u32> {
    read_sysctl_as(key)
}

fn read_sysctl_as<T: std::str::FromStr>(key: &str) -> Option<T> {
    std::fs::read_to_string(sysctl_path(key))
        .ok()?
        .trim()
        .parse()
        .ok()
}
