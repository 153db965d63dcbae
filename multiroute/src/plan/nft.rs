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
use std::fmt::Write as _;

/// Table multiroute owns; nothing else in it.
pub const TABLE: &str = "multiroute";

/// One uplink's part of the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMark {
    pub interface: String,
    /// The uplink's mark with the inbound flag set.
    pub mark: u32,
}

/// The whole `table inet multiroute`, applied atomically by `nft -f` (an empty
/// list still yields the table, so applying it is also how stale rules go).
/// `flag` is the inbound flag inside `mask`.
pub fn ruleset(inbound: &[InboundMark], mask: u32, flag: u32) -> String {
    let keep = !mask;
    let mut text = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
         \tchain inbound {{\n\t\ttype filter hook prerouting priority mangle; policy accept;\n"
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
        // Writing into a String cannot fail.
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
    for (i, uplink) in inbound.iter().enumerate() {
        let _ = write!(
            text,
            "\tchain arrived{i} {{\n\t\tct mark set ct mark and {keep:#x} or {mark:#x}\n\t}}\n\
             \tchain reply{i} {{\n\t\tmeta mark set meta mark and {keep:#x} or {mark:#x}\n\t}}\n",
            mark = uplink.mark
        );
    }
    text.push_str("}\n");
    text
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
            0xff00,
            0x8000,
        );
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
        let text = ruleset(&[], 0xff00, 0x8000);
        assert!(text.contains("policy accept;\n\t}\n}\n"), "{text}");
    }
}
