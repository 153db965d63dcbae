//! A faithful model of mwan3 2.12 (OpenWrt's multi-WAN), set up on the lab's
//! router the way `mwan3.sh` builds it: iptables-nft's mangle `mwan3_hook` in
//! PREROUTING and OUTPUT (connmark restore, per-WAN `mwan3_iface_in_*` chains,
//! the custom/connected/dynamic ipset chains, `mwan3_rules` → a balanced policy
//! of `statistic --mode random` marks, connmark save, then the ipset chains again
//! for every marked packet), its ip rules (`iif` 1001+, `fwmark` 2001+, the
//! unreachable 3001+, blackhole/unreachable 2061/2062) and one table per WAN
//! holding main's routes with that WAN's default. fw4's filter chains are left
//! out: no other variant has a firewall either.
use anyhow::Result;

use multiroute_tests::Lab;

/// mwan3's mark bits (`MMX_MASK`) and the marks it reserves at their top.
const MASK: u32 = 0x3f00;
const DEFAULT: u32 = 0x3f00;
const BLACKHOLE: u32 = 0x3d00;
const UNREACHABLE: u32 = 0x3e00;
/// The ipsets of destinations mwan3 never balances, each with its own chain.
const SETS: [&str; 3] = ["custom", "connected", "dynamic"];

/// WAN `n` (0-based) is mwan3's interface id `n + 1`: table, rule offsets and mark.
fn mark(n: usize) -> u32 {
    (n as u32 + 1) << MASK.trailing_zeros()
}

/// The mangle table `mwan3.sh` writes for `wans` equal-weight WANs (`wan0`, …) in
/// one balanced policy, as `iptables-restore` input.
fn mangle(wans: usize) -> String {
    let mut chains = [
        "mwan3_hook",
        "mwan3_ifaces_in",
        "mwan3_rules",
        "mwan3_policy_balanced",
    ]
    .map(str::to_owned)
    .to_vec();
    chains.extend((0..wans).map(|n| format!("mwan3_iface_in_wan{n}")));
    chains.extend(SETS.map(|set| format!("mwan3_{set}_ipv4")));
    let unmarked = format!("-m mark --mark 0x0/{MASK:#x}");
    let to_default = format!("-j MARK --set-xmark {DEFAULT:#x}/{MASK:#x}");
    let mut rules = vec![
        "-A PREROUTING -j mwan3_hook".to_owned(),
        "-A OUTPUT -j mwan3_hook".to_owned(),
        format!("-A mwan3_hook -j CONNMARK --restore-mark --nfmask {MASK:#x} --ctmask {MASK:#x}"),
        format!("-A mwan3_hook {unmarked} -j mwan3_ifaces_in"),
    ];
    rules.extend(SETS.map(|set| format!("-A mwan3_hook {unmarked} -j mwan3_{set}_ipv4")));
    rules.push(format!("-A mwan3_hook {unmarked} -j mwan3_rules"));
    rules.push(format!(
        "-A mwan3_hook -j CONNMARK --save-mark --nfmask {MASK:#x} --ctmask {MASK:#x}"
    ));
    rules.extend(SETS.map(|set| {
        format!("-A mwan3_hook -m mark ! --mark {DEFAULT:#x}/{MASK:#x} -j mwan3_{set}_ipv4")
    }));
    for n in 0..wans {
        let chain = format!("mwan3_iface_in_wan{n}");
        rules.push(format!("-A mwan3_ifaces_in {unmarked} -j {chain}"));
        rules.extend(SETS.map(|set| {
            format!(
                "-A {chain} -i wan{n} -m set --match-set mwan3_{set}_ipv4 src {unmarked} -m comment --comment default {to_default}"
            )
        }));
        rules.push(format!(
            "-A {chain} -i wan{n} {unmarked} -m comment --comment wan{n} -j MARK --set-xmark {:#x}/{MASK:#x}",
            mark(n)
        ));
    }
    rules.extend(SETS.map(|set| {
        format!("-A mwan3_{set}_ipv4 -m set --match-set mwan3_{set}_ipv4 dst {to_default}")
    }));
    rules.push(format!(
        "-A mwan3_rules {unmarked} -m comment --comment default_rule -j mwan3_policy_balanced"
    ));
    // Each member is inserted above the earlier ones with the probability of its
    // weight in the running total, so the first rule matched is the last member.
    for n in (0..wans).rev() {
        let chance = match n {
            0 => String::new(),
            _ => format!(
                " -m statistic --mode random --probability {:.3}",
                1.0 / (n + 1) as f64
            ),
        };
        rules.push(format!(
            "-A mwan3_policy_balanced {unmarked}{chance} -m comment --comment \"wan{n} 1 {}\" -j MARK --set-xmark {:#x}/{MASK:#x}",
            n + 1,
            mark(n)
        ));
    }
    let declared = chains.iter().map(|chain| format!(":{chain} - [0:0]\n"));
    format!(
        "*mangle\n{}{}\nCOMMIT\n",
        declared.collect::<String>(),
        rules.join("\n")
    )
}

/// mwan3's ip rules for `wans` WANs, each as `ip rule add pref` arguments.
fn rules(wans: usize) -> Vec<String> {
    let mut rules = Vec::new();
    for n in 0..wans {
        let (id, mark) = (n + 1, format!("{:#x}/{MASK:#x}", mark(n)));
        rules.push(format!("{} iif wan{n} lookup {id}", id + 1000));
        rules.push(format!("{} fwmark {mark} lookup {id}", id + 2000));
        rules.push(format!("{} fwmark {mark} unreachable", id + 3000));
    }
    rules.push(format!("2061 fwmark {BLACKHOLE:#x}/{MASK:#x} blackhole"));
    rules.push(format!(
        "2062 fwmark {UNREACHABLE:#x}/{MASK:#x} unreachable"
    ));
    rules
}

/// Turns the lab's plain router into mwan3.
pub fn set_up(lab: &Lab) -> Result<()> {
    let router = lab.router();
    let ip = |args: &[&str]| lab.ns(&router, "ip", args).map(drop);
    // The connected set holds every network main routes to, and multicast.
    let main = multiroute_tests::stdout(&lab.ns(
        &router,
        "ip",
        &["-4", "route", "show", "table", "main"],
    )?);
    let connected: Vec<&str> = main
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|dst| *dst != "default")
        .collect();
    for set in SETS {
        lab.ns(
            &router,
            "ipset",
            &["create", &format!("mwan3_{set}_ipv4"), "hash:net"],
        )?;
    }
    for net in connected.iter().copied().chain(["224.0.0.0/3"]) {
        lab.ns(
            &router,
            "ipset",
            &["-!", "add", "mwan3_connected_ipv4", net],
        )?;
    }
    // Each WAN's table: main's routes as mwan3 copies them (no default, none
    // link-down or unreachable), and that WAN's default.
    let copied: Vec<&str> = main
        .lines()
        .filter(|line| {
            !line.starts_with("default")
                && !line.starts_with("unreachable")
                && !line.contains("linkdown")
        })
        .collect();
    for n in 0..lab.isps {
        let table = (n + 1).to_string();
        for line in &copied {
            let mut args = vec!["route", "add"];
            args.extend(line.split_whitespace());
            args.extend(["table", &table]);
            ip(&args)?;
        }
        let gateway = format!("198.18.{n}.1");
        let dev = format!("wan{n}");
        ip(&[
            "route", "add", "default", "via", &gateway, "dev", &dev, "table", &table,
        ])?;
    }
    for rule in rules(lab.isps) {
        let mut args = vec!["rule", "add", "pref"];
        args.extend(rule.split_whitespace());
        ip(&args)?;
    }
    lab.ns(
        &router,
        "sh",
        &[
            "-c",
            "printf '%s' \"$1\" | iptables-restore",
            "sh",
            &mangle(lab.isps),
        ],
    )?;
    Ok(())
}

/// Takes mwan3 away again: the plain router is left.
pub fn tear_down(lab: &Lab) -> Result<()> {
    let router = lab.router();
    // iptables-nft's mangle table, its chains and rules with it.
    lab.ns(&router, "nft", &["delete", "table", "ip", "mangle"])?;
    for set in SETS {
        lab.ns(&router, "ipset", &["destroy", &format!("mwan3_{set}_ipv4")])?;
    }
    for rule in rules(lab.isps) {
        let pref = rule.split_whitespace().next().unwrap_or_default();
        lab.ns(&router, "ip", &["rule", "del", "pref", pref])?;
    }
    for n in 0..lab.isps {
        lab.ns(
            &router,
            "ip",
            &["route", "flush", "table", &(n + 1).to_string()],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_balances_equal_weights_as_mwan3_inserts_its_members() {
        let mangle = mangle(2);
        let policy: Vec<&str> = mangle
            .lines()
            .filter(|line| line.starts_with("-A mwan3_policy_balanced"))
            .collect();
        assert_eq!(policy.len(), 2, "{mangle}");
        assert!(policy[0].contains("--probability 0.500") && policy[0].ends_with("0x200/0x3f00"));
        assert!(!policy[1].contains("statistic") && policy[1].ends_with("0x100/0x3f00"));
    }

    #[test]
    fn a_marked_packet_still_walks_the_three_ipset_chains() {
        let mangle = mangle(2);
        let after_save: Vec<&str> = mangle
            .lines()
            .skip_while(|line| !line.contains("--save-mark"))
            .skip(1)
            .take_while(|line| line.starts_with("-A mwan3_hook"))
            .collect();
        assert_eq!(after_save.len(), 3, "{mangle}");
        assert!(
            after_save
                .iter()
                .all(|line| line.contains("! --mark 0x3f00/0x3f00"))
        );
    }
}
