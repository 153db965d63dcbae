//! Inbound symmetry, as an nftables ruleset: a connection that arrives on uplink X
//! (port-forwarded to a LAN host, or to the router) remembers X in its conntrack
//! mark, and its replies from the LAN get X's mark plus the inbound flag. The
//! `fwmark (mark | flag)/mask` rules send those replies through X even though the
//! classifier hashed them like any new LAN flow (it runs at TC ingress, before
//! conntrack, and cannot tell).
//!
//! Every forwarded packet walks this chain, so its cost must not grow with the
//! uplinks: one rule returns at once for every packet that is neither a new
//! connection nor part of an inbound one (nearly all traffic), and two verdict maps
//! (by input interface, by conntrack mark) find the uplink's own chain in one
//! lookup each.
//!
//! The table also holds NAT for the LAN's IPv6 (`nat6`): unlike IPv4, where the
//! router's own firewall masquerades (the seed's recipe), IPv6 NAT is multiroute's,
//! regenerated whenever an uplink's address or prefix changes. Masquerade is
//! conntrack's NAT66. Prefix translation (RFC 6296) is stateless: the prefix bits
//! of a LAN source are rewritten into the uplink's prefix after conntrack has seen
//! the packet (postrouting, after NAT), and those of a destination back into the
//! LAN's before conntrack sees an arriving one (prerouting, before conntrack), so
//! conntrack only ever sees LAN addresses, each host keeps its interface
//! identifier, and connections from outside reach it without state. nftables
//! updates the TCP/UDP checksums for the changed pseudo-header.
use std::fmt::Write as _;

use crate::net::Ipv6Net;

/// Table multiroute owns; nothing else in it.
pub const TABLE: &str = "multiroute";

/// One uplink's part of the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMark {
    pub interface: String,
    /// The uplink's mark with the inbound flag set.
    pub mark: u32,
}

/// How one uplink translates the LAN's IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nat66 {
    pub interface: String,
    pub translation: Translation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translation {
    /// To the uplink's current address.
    Masquerade,
    /// The LAN prefix `lan` onto `outside`, 1:1 and stateless: each LAN host
    /// keeps its interface identifier (the bits past `outside`'s length).
    Prefix { lan: Ipv6Net, outside: Ipv6Net },
}

/// The bits past `len` of an IPv6 address, as an nftables mask.
fn host_mask(len: u8) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::from(u128::MAX.checked_shr(u32::from(len)).unwrap_or(0))
}

/// The whole `table inet multiroute`, applied atomically by `nft -f` (an empty
/// list still yields the table, so applying it is also how stale rules go).
/// `flag` is the inbound flag inside `mask`.
pub fn ruleset(inbound: &[InboundMark], nat6: &[Nat66], mask: u32, flag: u32) -> String {
    let mut text =
        format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    inbound_chains(&mut text, inbound, mask, flag);
    masquerade_chain(&mut text, nat6);
    prefix_chains(&mut text, nat6);
    text.push_str("}\n");
    text
}

/// The `inbound` chain with its two verdict maps, and each uplink's two chains.
/// Writing into a String cannot fail, hence the ignored results.
fn inbound_chains(text: &mut String, inbound: &[InboundMark], mask: u32, flag: u32) {
    text.push_str(
        "\tchain inbound {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n",
    );
    if !inbound.is_empty() {
        let arrivals: Vec<_> = inbound
            .iter()
            .enumerate()
            .map(|(i, uplink)| format!("\"{}\" : jump arrived{i}", uplink.interface))
            .collect();
        let replies: Vec<_> = inbound
            .iter()
            .enumerate()
            .map(|(i, uplink)| format!("{:#x} : jump reply{i}", uplink.mark))
            .collect();
        let _ = write!(
            text,
            "\t\tct state != new ct mark and {flag:#x} == 0 return\n\
             \t\tct state new iifname vmap {{ {} }}\n\
             \t\tct direction reply ct mark and {mask:#x} vmap {{ {} }}\n",
            arrivals.join(", "),
            replies.join(", ")
        );
    }
    text.push_str("\t}\n");
    let keep = !mask;
    for (i, uplink) in inbound.iter().enumerate() {
        let _ = write!(
            text,
            "\tchain arrived{i} {{\n\t\tct mark set ct mark and {keep:#x} or {mark:#x}\n\t}}\n\
             \tchain reply{i} {{\n\t\tmeta mark set meta mark and {keep:#x} or {mark:#x}\n\t}}\n",
            mark = uplink.mark
        );
    }
}

/// NAT66 masquerade on the uplinks that translate that way.
fn masquerade_chain(text: &mut String, nat6: &[Nat66]) {
    let masquerade: Vec<_> = nat6
        .iter()
        .filter(|u| u.translation == Translation::Masquerade)
        .collect();
    if masquerade.is_empty() {
        return;
    }
    text.push_str(
        "\tchain nat6 {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    for uplink in masquerade {
        let _ = writeln!(
            text,
            "\t\tmeta nfproto ipv6 oifname \"{}\" masquerade",
            uplink.interface
        );
    }
    text.push_str("\t}\n");
}

/// Prefix translation both ways on the uplinks that map the LAN's prefix.
fn prefix_chains(text: &mut String, nat6: &[Nat66]) {
    let prefixes: Vec<_> = nat6
        .iter()
        .filter_map(|u| match u.translation {
            Translation::Prefix { lan, outside } => Some((&u.interface, lan, outside)),
            Translation::Masquerade => None,
        })
        .collect();
    if prefixes.is_empty() {
        return;
    }
    // Out: after NAT (srcnat is 100), conntrack has the LAN address already.
    // In: before conntrack (-200) and before anything else.
    let mut out = String::from(
        "\tchain npt_out {\n\t\ttype filter hook postrouting priority 300; policy accept;\n",
    );
    let mut back = String::from(
        "\tchain npt_in {\n\t\ttype filter hook prerouting priority -400; policy accept;\n",
    );
    for (interface, lan, outside) in prefixes {
        let mask = host_mask(outside.prefix_len);
        let _ = writeln!(
            out,
            "\t\tmeta nfproto ipv6 oifname \"{interface}\" ip6 saddr {lan} ip6 saddr set ip6 saddr & {mask} | {}",
            outside.addr
        );
        let _ = writeln!(
            back,
            "\t\tmeta nfproto ipv6 iifname \"{interface}\" ip6 daddr {outside} ip6 daddr set ip6 daddr & {mask} | {}",
            lan.addr
        );
    }
    for chain in [out, back] {
        text.push_str(&chain);
        text.push_str("\t}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_uplink_marks_its_inbound_connections_and_their_replies() {
        let text = ruleset(
            &[
                InboundMark {
                    interface: "eth1".into(),
                    mark: 0x8100,
                },
                InboundMark {
                    interface: "eth2".into(),
                    mark: 0x8200,
                },
            ],
            &[],
            0xff00,
            0x8000,
        );
        assert!(!text.contains("nat6"), "no IPv6 NAT asked for: {text}");
        assert!(text.starts_with(
            "table inet multiroute\ndelete table inet multiroute\ntable inet multiroute {\n"
        ));
        let chain: Vec<_> = text
            .lines()
            .skip_while(|l| !l.contains("chain inbound"))
            .skip(2)
            .take_while(|l| l.trim() != "}")
            .map(str::trim)
            .collect();
        // Three rules whatever the number of uplinks; the first ends the walk for
        // every packet that is neither new nor part of an inbound connection.
        assert_eq!(
            chain,
            [
                "ct state != new ct mark and 0x8000 == 0 return",
                "ct state new iifname vmap { \"eth1\" : jump arrived0, \"eth2\" : jump arrived1 }",
                "ct direction reply ct mark and 0xff00 vmap { 0x8100 : jump reply0, 0x8200 : jump reply1 }",
            ]
        );
        for line in [
            "ct mark set ct mark and 0xffff00ff or 0x8100",
            "ct mark set ct mark and 0xffff00ff or 0x8200",
            "meta mark set meta mark and 0xffff00ff or 0x8100",
            "meta mark set meta mark and 0xffff00ff or 0x8200",
        ] {
            assert!(text.lines().any(|l| l.trim() == line), "{line}\n{text}");
        }
    }

    #[test]
    fn without_ready_uplinks_the_chain_is_empty() {
        let text = ruleset(&[], &[], 0xff00, 0x8000);
        assert!(text.contains("policy accept;\n\t}\n}\n"), "{text}");
    }

    #[test]
    fn ipv6_nat_per_uplink_masquerades_or_maps_the_prefix() {
        let text = ruleset(
            &[],
            &[
                Nat66 {
                    interface: "eth1".into(),
                    translation: Translation::Masquerade,
                },
                Nat66 {
                    interface: "eth2".into(),
                    translation: Translation::Prefix {
                        lan: "fd00:1::/64".parse().unwrap(),
                        outside: "2001:db8:2:100::/64".parse().unwrap(),
                    },
                },
            ],
            0xff00,
            0x8000,
        );
        let chain = |name: &str| -> Vec<String> {
            text.lines()
                .skip_while(|l| !l.contains(&format!("chain {name} ")))
                .skip(1)
                .take_while(|l| l.trim() != "}")
                .map(|l| l.trim().to_owned())
                .collect()
        };
        assert_eq!(
            chain("nat6"),
            [
                "type nat hook postrouting priority srcnat; policy accept;",
                "meta nfproto ipv6 oifname \"eth1\" masquerade",
            ]
        );
        assert_eq!(
            chain("npt_out"),
            [
                "type filter hook postrouting priority 300; policy accept;",
                "meta nfproto ipv6 oifname \"eth2\" ip6 saddr fd00:1::/64 ip6 saddr set ip6 saddr & ::ffff:ffff:ffff:ffff | 2001:db8:2:100::",
            ]
        );
        assert_eq!(
            chain("npt_in"),
            [
                "type filter hook prerouting priority -400; policy accept;",
                "meta nfproto ipv6 iifname \"eth2\" ip6 daddr 2001:db8:2:100::/64 ip6 daddr set ip6 daddr & ::ffff:ffff:ffff:ffff | fd00:1::",
            ]
        );
    }
}
