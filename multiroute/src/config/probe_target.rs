//! Health targets as the config writes them: `"gateway"`, an address (ICMP echo),
//! `"tcp://ADDR:PORT"` (a connect that completes or is refused answers) or
//! `"dns://ADDR"` (any answer to a query for `.` NS). LTE carriers often drop ICMP;
//! the other kinds still see whether the uplink carries traffic.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use crate::net::Family;

use serde::{Deserialize, Serialize};

/// A target as the config lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeTarget {
    /// The uplink's gateway (its peer on a point-to-point link), by ICMP echo.
    Gateway,
    Target(Target),
}

/// One concrete target of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Target {
    /// ICMP or ICMPv6 echo.
    Icmp(IpAddr),
    Tcp(SocketAddr),
    Dns(IpAddr),
}

impl Target {
    /// The family it is probed over: it judges that family of its uplink.
    pub fn family(self) -> Family {
        Family::of(match self {
            Target::Icmp(address) | Target::Dns(address) => address,
            Target::Tcp(socket) => socket.ip(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Icmp(address) => write!(f, "{address}"),
            Target::Tcp(socket) => write!(f, "tcp://{socket}"),
            Target::Dns(IpAddr::V6(address)) => write!(f, "dns://[{address}]"),
            Target::Dns(address) => write!(f, "dns://{address}"),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parsed = if let Some(rest) = text.strip_prefix("tcp://") {
            rest.parse().ok().map(Target::Tcp)
        } else if let Some(rest) = text.strip_prefix("dns://") {
            let bare = rest
                .strip_prefix('[')
                .and_then(|inner| inner.strip_suffix(']'))
                .unwrap_or(rest);
            bare.parse().ok().map(Target::Dns)
        } else {
            text.parse().ok().map(Target::Icmp)
        };
        parsed.ok_or_else(|| {
            format!(
                "{text:?} is none of \"gateway\", an IPv4 or IPv6 address, \"tcp://ADDRESS:PORT\" (\"tcp://[IPv6]:PORT\") or \"dns://ADDRESS\""
            )
        })
    }
}

impl From<Target> for String {
    fn from(target: Target) -> String {
        target.to_string()
    }
}

impl TryFrom<String> for Target {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl FromStr for ProbeTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "gateway" => Ok(ProbeTarget::Gateway),
            other => other.parse().map(ProbeTarget::Target),
        }
    }
}

impl ProbeTarget {
    /// The concrete target for probing `family`, with `gateway` standing for the
    /// uplink's gateway of that family (or its point-to-point peer); `None` for
    /// "gateway" on a link that has neither, and for targets of the other family.
    pub fn resolve(self, family: Family, gateway: Option<IpAddr>) -> Option<Target> {
        match self {
            ProbeTarget::Gateway => gateway.map(Target::Icmp),
            ProbeTarget::Target(target) => (target.family() == family).then_some(target),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_and_prints_as_written() {
        for text in [
            "198.51.100.9",
            "tcp://198.51.100.9:443",
            "dns://198.51.100.53",
            "2001:db8::9",
            "tcp://[2001:db8::9]:443",
            "dns://[2001:db8::53]",
        ] {
            let target: Target = text.parse().unwrap();
            assert_eq!(target.to_string(), text);
        }
        assert_eq!("gateway".parse(), Ok(ProbeTarget::Gateway));
        for bad in [
            "tcp://198.51.100.9",
            "dns://example",
            "udp://192.0.2.1:53",
            "2001:db8::1/64",
        ] {
            assert!(bad.parse::<ProbeTarget>().is_err(), "{bad}");
        }
    }
}
