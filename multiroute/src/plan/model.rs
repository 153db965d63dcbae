//! Routes and rules in domain terms. `Display` prints them as the `ip` command a
//! user would type, which is also how the seed writes them and how tests compare.
use std::{fmt, net::IpAddr};

use crate::{
    config::{PortRange, proto_name},
    net::{Family, IpNet},
};

pub const MAIN_TABLE: u32 = 254;

/// The metric of multiroute's default in the main table, both families. It sorts
/// before the defaults other programs keep there (RA at 1024, dhcpcd at 1000 +
/// ifindex, NetworkManager at 100 and up), which stay where their owner refreshes,
/// replaces and expires them; those at 0 or 1 (ifupdown, udhcpc's script, an
/// admin's `ip route add`) are parked meanwhile. Not 0 itself: a program adding
/// its default at 0 while multiroute's stands would be refused ("File exists")
/// and its new gateway never seen.
pub const MAIN_DEFAULT_METRIC: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub table: u32,
    /// Its family is the route's: the gateways and sources below are of it too.
    pub dst: IpNet,
    pub next: RouteNext,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteNext {
    /// Directly connected, optionally with a preferred source address.
    Dev {
        dev: String,
        src: Option<IpAddr>,
    },
    Gateway {
        gateway: IpAddr,
        dev: String,
    },
    Multipath(Vec<Nexthop>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Nexthop {
    /// `None` on a point-to-point link: the packet goes to the interface itself.
    pub gateway: Option<IpAddr>,
    pub dev: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// `ip rule` and `ip -6 rule` are separate lists.
    pub family: Family,
    pub priority: u32,
    pub selector: Selector,
    pub table: u32,
    pub suppress_prefixlength: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Selector {
    All,
    From(IpNet),
    To(IpNet),
    Fwmark {
        mark: u32,
        mask: u32,
    },
    /// `iif lo …`: the router's own traffic only (a policy rule's part for it).
    Local(LocalMatch),
}

/// What a policy rule's routing rule matches of the router's own traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalMatch {
    pub from: Option<IpNet>,
    pub to: Option<IpNet>,
    pub proto: Option<u8>,
    pub sport: Option<PortRange>,
    pub dport: Option<PortRange>,
}

impl fmt::Display for LocalMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            Some(net) => write!(f, "from {net}")?,
            None => f.write_str("from all")?,
        }
        if let Some(net) = self.to {
            write!(f, " to {net}")?;
        }
        f.write_str(" iif lo")?;
        if let Some(proto) = self.proto {
            write!(f, " ipproto {}", proto_name(proto))?;
        }
        if let Some(range) = self.sport {
            write!(f, " sport {range}")?;
        }
        if let Some(range) = self.dport {
            write!(f, " dport {range}")?;
        }
        Ok(())
    }
}

fn table_name(table: u32) -> String {
    match table {
        MAIN_TABLE => "main".into(),
        other => other.to_string(),
    }
}

/// `-6 ` in front of an IPv6 route or rule, as `ip -6` would list it.
fn family_flag(family: Family) -> &'static str {
    match family {
        Family::V4 => "",
        Family::V6 => "-6 ",
    }
}

impl Route {
    /// The route's metric: [`MAIN_DEFAULT_METRIC`] for the main table's default,
    /// the kernel's default for everything else.
    pub fn metric(&self) -> u32 {
        if self.table == MAIN_TABLE && self.dst.is_default() {
            MAIN_DEFAULT_METRIC
        } else {
            0
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", family_flag(self.dst.family()), self.dst)?;
        match &self.next {
            RouteNext::Dev { dev, src } => {
                write!(f, " dev {dev}")?;
                if let Some(src) = src {
                    write!(f, " src {src}")?;
                }
            }
            RouteNext::Gateway { gateway, dev } => write!(f, " via {gateway} dev {dev}")?,
            RouteNext::Multipath(hops) => {
                for hop in hops {
                    f.write_str(" nexthop")?;
                    if let Some(gateway) = hop.gateway {
                        write!(f, " via {gateway}")?;
                    }
                    write!(f, " dev {} weight {}", hop.dev, hop.weight)?;
                }
            }
        }
        write!(f, " table {}", table_name(self.table))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}pref {} ", family_flag(self.family), self.priority)?;
        match &self.selector {
            Selector::All => write!(f, "from all")?,
            Selector::From(net) => write!(f, "from {net}")?,
            Selector::To(net) => write!(f, "to {net}")?,
            Selector::Fwmark { mark, mask } => write!(f, "fwmark {mark:#x}/{mask:#x}")?,
            Selector::Local(matched) => write!(f, "{matched}")?,
        }
        write!(f, " lookup {}", table_name(self.table))?;
        if let Some(len) = self.suppress_prefixlength {
            write!(f, " suppress_prefixlength {len}")?;
        }
        Ok(())
    }
}
