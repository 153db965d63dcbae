//! Small address types the rest of the code speaks in: a prefix of either family,
//! and [`IpNet`] where a route or rule may be of either.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// What a prefix needs of its address type.
pub trait Address: Copy + Eq + Ord + fmt::Display + FromStr {
    const BITS: u8;
    const UNSPECIFIED: Self;
    /// "IPv4" or "IPv6", for messages.
    const FAMILY: &'static str;
    fn bits(self) -> u128;
    fn from_bits(bits: u128) -> Self;
}

impl Address for Ipv4Addr {
    const BITS: u8 = 32;
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    const FAMILY: &'static str = "IPv4";
    fn bits(self) -> u128 {
        u128::from(u32::from(self))
    }
    fn from_bits(bits: u128) -> Self {
        Ipv4Addr::from(bits as u32)
    }
}

impl Address for Ipv6Addr {
    const BITS: u8 = 128;
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    const FAMILY: &'static str = "IPv6";
    fn bits(self) -> u128 {
        u128::from(self)
    }
    fn from_bits(bits: u128) -> Self {
        Ipv6Addr::from(bits)
    }
}

/// An address with a prefix length. Parsed from an address (a host prefix) or
/// `address/length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net<A> {
    pub addr: A,
    pub prefix_len: u8,
}

pub type Ipv4Net = Net<Ipv4Addr>;
pub type Ipv6Net = Net<Ipv6Addr>;

impl Net<Ipv4Addr> {
    pub const DEFAULT: Ipv4Net = Net::new(Ipv4Addr::UNSPECIFIED, 0);
}

impl Net<Ipv6Addr> {
    pub const DEFAULT: Ipv6Net = Net::new(Ipv6Addr::UNSPECIFIED, 0);
}

impl<A> Net<A> {
    pub const fn new(addr: A, prefix_len: u8) -> Self {
        Self { addr, prefix_len }
    }
}

impl<A: Address> Net<A> {
    pub fn host(addr: A) -> Self {
        Self::new(addr, A::BITS)
    }

    /// The prefix's mask within the low `A::BITS` bits of a u128.
    fn mask(self) -> u128 {
        let all = u128::MAX >> (128 - u32::from(A::BITS));
        all & !(all.checked_shr(u32::from(self.prefix_len)).unwrap_or(0))
    }

    /// The network this prefix belongs to (host bits cleared).
    pub fn network(self) -> Self {
        Self::new(
            A::from_bits(self.addr.bits() & self.mask()),
            self.prefix_len,
        )
    }

    pub fn contains(self, addr: A) -> bool {
        addr.bits() & self.mask() == self.network().addr.bits()
    }

    /// `addr` of this prefix with its prefix bits replaced by `onto`'s (prefix
    /// translation, RFC 6296's mapping without its checksum neutrality); `None`
    /// when `addr` lies outside this prefix. `onto`'s length decides which bits
    /// are the prefix.
    pub fn translate(self, addr: A, onto: Self) -> Option<A> {
        let prefix = onto.mask();
        self.contains(addr)
            .then(|| A::from_bits((onto.addr.bits() & prefix) | (addr.bits() & !prefix)))
    }

    pub fn is_default(self) -> bool {
        self.prefix_len == 0 && self.addr == A::UNSPECIFIED
    }
}

impl<A: Address> fmt::Display for Net<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_default() {
            f.write_str("default")
        } else if self.prefix_len == A::BITS {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix_len)
        }
    }
}

impl<A: Address> FromStr for Net<A> {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: A = addr
            .parse()
            .map_err(|_| format!("bad {} address", A::FAMILY))?;
        let prefix_len = match len {
            None => A::BITS,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= A::BITS)
                .ok_or_else(|| format!("prefix length must be 0-{}", A::BITS))?,
        };
        let net = Self::new(addr, prefix_len);
        if net.network() != net {
            return Err(format!("host bits set; did you mean {}?", net.network()));
        }
        Ok(net)
    }
}

/// A prefix of either family: the destination of a route, the source of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpNet {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

impl IpNet {
    pub fn host(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(addr) => IpNet::V4(Ipv4Net::host(addr)),
            IpAddr::V6(addr) => IpNet::V6(Ipv6Net::host(addr)),
        }
    }

    pub fn addr(self) -> IpAddr {
        match self {
            IpNet::V4(net) => IpAddr::V4(net.addr),
            IpNet::V6(net) => IpAddr::V6(net.addr),
        }
    }

    /// The IPv6 prefix, if it is one.
    pub fn v6(self) -> Option<Ipv6Net> {
        match self {
            IpNet::V6(net) => Some(net),
            IpNet::V4(_) => None,
        }
    }

    /// The network this prefix belongs to (host bits cleared).
    pub fn network(self) -> Self {
        match self {
            IpNet::V4(net) => IpNet::V4(net.network()),
            IpNet::V6(net) => IpNet::V6(net.network()),
        }
    }

    pub fn prefix_len(self) -> u8 {
        match self {
            IpNet::V4(net) => net.prefix_len,
            IpNet::V6(net) => net.prefix_len,
        }
    }

    pub fn is_default(self) -> bool {
        match self {
            IpNet::V4(net) => net.is_default(),
            IpNet::V6(net) => net.is_default(),
        }
    }

    pub fn family(self) -> Family {
        match self {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// `other` lies inside this prefix (same family, at least as long).
    pub fn covers(self, other: IpNet) -> bool {
        match (self, other) {
            (IpNet::V4(outer), IpNet::V4(inner)) => {
                outer.prefix_len <= inner.prefix_len && outer.contains(inner.addr)
            }
            (IpNet::V6(outer), IpNet::V6(inner)) => {
                outer.prefix_len <= inner.prefix_len && outer.contains(inner.addr)
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    /// An address or prefix of either family, told apart by its ':'.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.contains(':') {
            text.parse().map(IpNet::V6)
        } else {
            text.parse().map(IpNet::V4)
        }
    }
}

impl From<Ipv4Net> for IpNet {
    fn from(net: Ipv4Net) -> Self {
        IpNet::V4(net)
    }
}

impl From<Ipv6Net> for IpNet {
    fn from(net: Ipv6Net) -> Self {
        IpNet::V6(net)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpNet::V4(net) => net.fmt(f),
            IpNet::V6(net) => net.fmt(f),
        }
    }
}

/// An address family: routes, rules and health are kept per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// "ipv4" / "ipv6", as status and metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// One value per address family, indexed by [`Family`]: routes, rules, rings and
/// health are kept per family, by one piece of code for both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerFamily<T> {
    pub v4: T,
    pub v6: T,
}

impl<T> PerFamily<T> {
    pub fn from_fn(mut f: impl FnMut(Family) -> T) -> Self {
        Self {
            v4: f(Family::V4),
            v6: f(Family::V6),
        }
    }

    pub fn map<U>(self, mut f: impl FnMut(Family, T) -> U) -> PerFamily<U> {
        PerFamily {
            v4: f(Family::V4, self.v4),
            v6: f(Family::V6, self.v6),
        }
    }

    /// Each family with its value, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (Family, &T)> {
        [(Family::V4, &self.v4), (Family::V6, &self.v6)].into_iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        [&self.v4, &self.v6].into_iter()
    }
}

impl<T> std::ops::Index<Family> for PerFamily<T> {
    type Output = T;
    fn index(&self, family: Family) -> &T {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

impl<T> std::ops::IndexMut<Family> for PerFamily<T> {
    fn index_mut(&mut self, family: Family) -> &mut T {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
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
    fn a_prefix_of_either_family_covers_only_its_own_family() {
        let v6: IpNet = "2001:db8:1::/48".parse().unwrap();
        let v4: IpNet = "100.64.0.0/10".parse().unwrap();
        let host = |text: &str| IpNet::host(text.parse().unwrap());
        assert!(v6.covers(host("2001:db8:1::7")));
        assert!(!v6.covers(host("2001:db8:2::7")));
        assert!(v4.covers(host("100.64.0.2")));
        assert!(!v4.covers(host("::ffff:100.64.0.2")), "no family crosses");
        assert!("2001:db8::1/129".parse::<IpNet>().is_err());
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

    #[test]
    fn a_prefix_translation_keeps_the_interface_identifier() {
        let lan: Ipv6Net = "fd00:64::/64".parse().unwrap();
        let outside: Ipv6Net = "2001:db8:18:100::/64".parse().unwrap();
        let host = "fd00:64::2:3".parse().unwrap();
        assert_eq!(
            lan.translate(host, outside),
            Some("2001:db8:18:100::2:3".parse().unwrap())
        );
        assert_eq!(
            lan.translate("fd00:65::2".parse().unwrap(), outside),
            None,
            "outside the LAN's prefix"
        );
    }

    #[test]
    fn ipv6_prefixes() {
        let net: Ipv6Net = "2001:db8:1::/48".parse().unwrap();
        assert!(net.contains("2001:db8:1:ff::1".parse().unwrap()));
        assert!(!net.contains("2001:db8:2::1".parse().unwrap()));
        let addr = Ipv6Net::new("2001:db8:1:2::7".parse().unwrap(), 64);
        assert_eq!(addr.network().to_string(), "2001:db8:1:2::/64");
        assert_eq!(Ipv6Net::host(Ipv6Addr::LOCALHOST).to_string(), "::1");
        assert!(
            "2001:db8::1/64"
                .parse::<Ipv6Net>()
                .unwrap_err()
                .contains("2001:db8::/64")
        );
        assert!("2001:db8::/129".parse::<Ipv6Net>().is_err());
        assert!("192.0.2.1".parse::<Ipv6Net>().unwrap_err().contains("IPv6"));
        assert_eq!(
            Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).to_string(),
            "default"
        );
    }
}
