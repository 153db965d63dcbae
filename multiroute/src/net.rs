//! Small address types the rest of the code speaks in.
use std::{fmt, net::Ipv4Addr, str::FromStr};

/// An IPv4 address with a prefix length. Parsed from `a.b.c.d` (a /32) or `a.b.c.d/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    pub const DEFAULT: Ipv4Net = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0);

    pub const fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        Self { addr, prefix_len }
    }

    pub fn host(addr: Ipv4Addr) -> Self {
        Self::new(addr, 32)
    }

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// The network this prefix belongs to (host bits cleared).
    pub fn network(self) -> Self {
        Self::new(
            Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            self.prefix_len,
        )
    }

    pub fn contains(self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network().addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix_len == 0 && self.addr.is_unspecified() {
            f.write_str("default")
        } else if self.prefix_len == 32 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix_len)
        }
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| "bad IPv4 address".to_owned())?;
        let prefix_len = match len {
            None => 32,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= 32)
                .ok_or_else(|| "prefix length must be 0-32".to_owned())?,
        };
        let net = Self::new(addr, prefix_len);
        if net.network() != net {
            return Err(format!("host bits set; did you mean {}?", net.network()));
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_and_prefixes() {
        assert_eq!(
            "192.0.2.7".parse(),
            Ok(Ipv4Net::host(Ipv4Addr::new(192, 0, 2, 7)))
        );
        let net: Ipv4Net = "198.51.100.0/24".parse().unwrap();
        assert!(net.contains(Ipv4Addr::new(198, 51, 100, 200)));
        assert!(!net.contains(Ipv4Addr::new(198, 51, 101, 1)));
        assert_eq!(net.to_string(), "198.51.100.0/24");
    }

    #[test]
    fn refuses_host_bits_and_bad_lengths() {
        assert!(
            "198.51.100.1/24"
                .parse::<Ipv4Net>()
                .unwrap_err()
                .contains("198.51.100.0/24")
        );
        assert!("198.51.100.0/33".parse::<Ipv4Net>().is_err());
        assert!("198.51.100".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn network_of_an_interface_address() {
        let addr = Ipv4Net::new(Ipv4Addr::new(142, 154, 64, 7), 24);
        assert_eq!(addr.network().to_string(), "142.154.64.0/24");
        assert_eq!(Ipv4Net::DEFAULT.to_string(), "default");
    }
}
