//! The lab made dual-stack: IPv6 beside the IPv4 of [`Lab::new`], on the same
//! links, from the documentation ranges (2001:db8::/32, fd00::/8).
//!
//! ```text
//!  client ──lan0── router ──wanN── ispN ──inetN── inet (2001:db8:ff::10, HTTP :8080)
//!  fd00:64::2   fd00:64::1  2001:db8:18:N::2  ::1, fe80::1   2001:db8:19:N::1/::2
//! ```
//!
//! Each ISP's router answers at the link-local fe80::1, as an RA-announced router
//! does; the router's own IPv6 default goes via the first ISP's. NAT66 is
//! multiroute's own (`nat6`, masquerade by default), so the server sees the
//! uplink address a connection took, as for IPv4.
use std::net::Ipv6Addr;

use anyhow::Result;

use super::{Lab, SERVER_PORT, lab_script};

pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
/// The LAN client's IPv6 address.
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 2);
/// Every ISP's router on its customer link, as its RAs announce it.
pub const ISP_ROUTER6: &str = "fe80::1";

impl Lab {
    /// The IPv6 address uplink `n` has on the router (what the server sees).
    pub fn uplink_address6(n: usize) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0x18, n as u16, 0, 0, 0, 2)
    }

    /// The `[[uplink]]` table for dual-stack ISP `n`: ISP 0's IPv6 router is
    /// learned from the router's own IPv6 default, the others' are configured.
    pub fn dual_stack_block(n: usize, weight: u32) -> String {
        let mut block = Self::uplink_block(n, weight);
        if n > 0 {
            block += &format!("gateway6 = \"{ISP_ROUTER6}\"\n");
        }
        block
    }

    pub fn url6(&self, path: &str) -> String {
        format!("http://[{SERVER6}]:{SERVER_PORT}{path}")
    }

    /// Adds IPv6 to every link and an IPv6 server beside the IPv4 one, the
    /// router's uplinks configured by hand (static addresses, its own default via
    /// the first ISP). Addresses skip duplicate detection so they are usable at once.
    pub fn add_ipv6(&mut self) -> Result<()> {
        self.add_ipv6_links()?;
        let router = self.router();
        for n in 0..self.isps {
            self.addr6(
                &router,
                &format!("wan{n}"),
                &format!("{}/64", Self::uplink_address6(n)),
            )?;
            self.addr6(&self.isp(n), "cpe", &format!("{ISP_ROUTER6}/64"))?;
        }
        self.ns(
            &router,
            "ip",
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                ISP_ROUTER6,
                "dev",
                "wan0",
            ],
        )?;
        self.start_ipv6_server()
    }

    /// IPv6 on the LAN, at the ISPs and beyond them; the router's uplinks are left
    /// to the caller (by hand, or by the ISPs' router advertisements).
    pub(crate) fn add_ipv6_links(&mut self) -> Result<()> {
        let (client, router, inet) = (self.client(), self.router(), self.inet());
        for ns in self.namespaces() {
            self.ns(&ns, "sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        }
        self.addr6(&client, "eth0", &format!("{CLIENT6}/64"))?;
        self.addr6(&router, "lan0", "fd00:64::1/64")?;
        self.ns(
            &client,
            "ip",
            &["-6", "route", "add", "default", "via", "fd00:64::1"],
        )?;
        self.addr6(&inet, "lo", &format!("{SERVER6}/128"))?;
        for n in 0..self.isps {
            let isp = self.isp(n);
            self.addr6(&isp, "cpe", &format!("2001:db8:18:{n}::1/64"))?;
            self.addr6(&isp, "inet", &format!("2001:db8:19:{n}::1/64"))?;
            self.addr6(
                &inet,
                &format!("inet{n}"),
                &format!("2001:db8:19:{n}::2/64"),
            )?;
            self.ns(
                &isp,
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    "2001:db8:ff::/64",
                    "via",
                    &format!("2001:db8:19:{n}::2"),
                ],
            )?;
            self.ns(
                &inet,
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("2001:db8:18:{n}::/64"),
                    "via",
                    &format!("2001:db8:19:{n}::1"),
                ],
            )?;
        }
        Ok(())
    }

    /// The IPv6 HTTP server, reachable from the first ISP.
    pub(crate) fn start_ipv6_server(&mut self) -> Result<()> {
        let inet = self.inet();
        self.start_in(
            &inet,
            "python3",
            &[
                &lab_script("server.py"),
                &SERVER6.to_string(),
                &SERVER_PORT.to_string(),
            ],
        )?;
        self.wait_for_http(&self.isp(0), &self.url6("/"))
    }

    fn addr6(&self, ns: &str, dev: &str, cidr: &str) -> Result<()> {
        self.ns(ns, "ip", &["-6", "addr", "add", cidr, "dev", dev, "nodad"])
            .map(drop)
    }

    /// ISP `n`'s IPv6 breaks silently (its IPv4 keeps working): everything IPv6
    /// arriving at it, from either side, is dropped, its RA-announced router
    /// included.
    pub fn fail_ipv6(&self, n: usize) -> Result<()> {
        self.ns(
            &self.isp(n),
            "nft",
            &["add table ip6 outage6; add chain ip6 outage6 silence { type filter hook prerouting priority -300; policy drop; }"],
        )
        .map(drop)
    }

    /// ISP `n` routes `prefix` to the router's uplink address (as a delegated or
    /// routed prefix is), and the internet routes it to ISP `n`.
    pub fn route_ipv6_prefix(&self, n: usize, prefix: &str) -> Result<()> {
        let via_router = Self::uplink_address6(n).to_string();
        self.ns(
            &self.isp(n),
            "ip",
            &["-6", "route", "add", prefix, "via", &via_router],
        )?;
        let via_isp = format!("2001:db8:19:{n}::1");
        self.ns(
            &self.inet(),
            "ip",
            &["-6", "route", "add", prefix, "via", &via_isp],
        )
        .map(drop)
    }

    pub fn restore_ipv6(&self, n: usize) -> Result<()> {
        self.ns(&self.isp(n), "nft", &["delete table ip6 outage6"])
            .map(drop)
    }
}
