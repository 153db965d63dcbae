//! Inbound symmetry, as an nftables ruleset: a connection that arrives on uplink X
//! (port-forwarded to a LAN host, or to the router) remembers X in its conntrack
//! mark, and its replies from the LAN get X's mark plus the inbound flag. The
//! `fwmark (mark | flag)/mask` rules sit before pins and the classifier's rules, so
//! those replies leave through X even though the classifier hashed them like any
//! new LAN flow (it runs at TC ingress, before conntrack, and cannot tell).
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
pub fn ruleset(inbound: &[InboundMark], mask: u32) -> String {
    let keep = !mask;
    let mut text = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
         \tchain inbound {{\n\t\ttype filter hook prerouting priority mangle; policy accept;\n"
    );
    for uplink in inbound {
        // Writing into a String cannot fail.
        let _ = writeln!(
            text,
            "\t\tct state new iifname \"{}\" ct mark set ct mark and {keep:#x} or {:#x}",
            uplink.interface, uplink.mark
        );
    }
    for uplink in inbound {
        let _ = writeln!(
            text,
            "\t\tct direction reply ct mark and {mask:#x} == {mark:#x} meta mark set meta mark and {keep:#x} or {mark:#x}",
            mark = uplink.mark
        );
    }
    text.push_str("\t}\n}\n");
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
        );
        assert!(text.starts_with(
            "table inet multiroute\ndelete table inet multiroute\ntable inet multiroute {\n"
        ));
        for line in [
            "ct state new iifname \"eth1\" ct mark set ct mark and 0xffff00ff or 0x8100",
            "ct state new iifname \"eth2\" ct mark set ct mark and 0xffff00ff or 0x8200",
            "ct direction reply ct mark and 0xff00 == 0x8100 meta mark set meta mark and 0xffff00ff or 0x8100",
            "ct direction reply ct mark and 0xff00 == 0x8200 meta mark set meta mark and 0xffff00ff or 0x8200",
        ] {
            assert!(text.lines().any(|l| l.trim() == line), "{line}\n{text}");
        }
    }
}
