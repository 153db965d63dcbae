//! Faults the lab injects: silent upstream outages, flapping probes, links going
//! down, and uplinks turned into point-to-point links.
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result, ensure};
use multiroute::net::Family;

use crate::Lab;

/// The port of the LAN host's service [`Lab::serve_inbound`] forwards.
pub const FORWARDED_PORT: u16 = 8000;
/// The port of the router's own service.
pub const ROUTER_PORT: u16 = 8001;

impl Lab {
    /// Turns ISP `n`'s link into a point-to-point one, as pppd or an LTE modem in
    /// raw-IP mode leaves it: no ARP (the same MAC on both ends), `A peer B/32`
    /// addresses, and a `default dev` route in the router's main table (metric 200,
    /// behind the lab's default). The uplink's config then names no gateway.
    pub fn make_point_to_point(&self, n: usize) -> Result<()> {
        let (router, isp) = (self.router(), self.isp(n));
        let wan = format!("wan{n}");
        let (local, peer) = (format!("198.18.{n}.2"), format!("198.18.{n}.1"));
        let mac = format!("02:00:00:00:0{n}:01");
        for (ns, dev, address, other) in [
            (&router, wan.as_str(), &local, &peer),
            (&isp, "cpe", &peer, &local),
        ] {
            self.ns(ns, "ip", &["addr", "flush", "dev", dev])?;
            self.ns(
                ns,
                "ip",
                &["link", "set", dev, "arp", "off", "address", &mac],
            )?;
            self.ns(
                ns,
                "ip",
                &[
                    "addr",
                    "add",
                    address,
                    "peer",
                    &format!("{other}/32"),
                    "dev",
                    dev,
                ],
            )?;
        }
        self.ns(
            &router,
            "ip",
            &["route", "add", "default", "dev", &wan, "metric", "200"],
        )
        .map(drop)
    }

    /// Replaces the link to ISP `n` with a new one (a new ifindex, counters from
    /// 0), addressed as before: what a reboot leaves of an interface.
    pub fn replug_uplink(&self, n: usize) -> Result<()> {
        let (router, isp, wan) = (self.router(), self.isp(n), format!("wan{n}"));
        self.ns(&router, "ip", &["link", "del", &wan])?;
        self.veth(&router, &wan, &isp, "cpe")?;
        self.addr(&router, &wan, &format!("{}/24", Self::uplink_address(n)))?;
        self.addr(&isp, "cpe", &format!("198.18.{n}.1/24"))
    }

    /// The `[[uplink]]` table for point-to-point ISP `n`: no gateway.
    pub fn point_to_point_block(n: usize, weight: u32) -> String {
        format!("\n[[uplink]]\nname = \"isp{n}\"\ninterface = \"wan{n}\"\nweight = {weight}\n")
    }

    /// ISP `n` silently stops forwarding: its gateway still answers ARP and ping from
    /// the router, nothing beyond it does.
    pub fn fail_upstream(&self, n: usize) -> Result<()> {
        self.drop_forwarded(n, "")
    }

    /// ISP `n` silently drops what it would forward that `matching` (an nft match,
    /// `tcp dport 8080`; empty: everything) selects, until [`Lab::restore_upstream`].
    pub fn drop_forwarded(&self, n: usize, matching: &str) -> Result<()> {
        self.ns(
            &self.isp(n),
            "nft",
            &[&format!("add table ip outage; add chain ip outage forward {{ type filter hook forward priority 0; }}; add rule ip outage forward {matching} drop")],
        )
        .map(drop)
    }

    /// ISP `n` drops `percent` % of what the router sends beyond it, at random
    /// (a bad line), until [`Lab::restore_upstream`].
    pub fn lose_upstream(&self, n: usize, percent: u32) -> Result<()> {
        self.drop_forwarded(
            n,
            &format!("iifname \"cpe\" numgen random mod 100 < {percent}"),
        )
    }

    /// ISP `n` sends what it forwards to the internet at `mbit` Mbit/s through a
    /// queue of `queue_ms` (a DSL modem's buffer: bufferbloat once the upload is
    /// saturated).
    pub fn shape_upstream(&self, n: usize, mbit: u32, queue_ms: u32) -> Result<()> {
        let (rate, latency) = (format!("{mbit}mbit"), format!("{queue_ms}ms"));
        self.ns(
            &self.isp(n),
            "tc",
            &[
                "qdisc", "replace", "dev", "inet", "root", "tbf", "rate", &rate, "burst", "32kb",
                "latency", &latency,
            ],
        )
        .map(drop)
    }

    pub fn restore_upstream(&self, n: usize) -> Result<()> {
        self.ns(&self.isp(n), "nft", &["delete table ip outage"])
            .map(drop)
    }

    /// ISP `n` drops every other ICMP echo request it forwards: the router's probes
    /// beyond the gateway see 50 % loss, alternating.
    pub fn flap_probes(&self, n: usize) -> Result<()> {
        self.ns(
            &self.isp(n),
            "nft",
            &["add table ip flap; add chain ip flap forward { type filter hook forward priority 0; }; add rule ip flap forward icmp type echo-request numgen inc mod 2 == 0 drop"],
        )
        .map(drop)
    }

    /// Sets the router's uplink interface `wan<n>` up or down.
    pub fn set_uplink_link(&self, n: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.ns(
            &self.router(),
            "ip",
            &["link", "set", &format!("wan{n}"), state],
        )
        .map(drop)
    }

    /// Services reachable from the internet on every uplink address of `family`: a
    /// web server on the LAN host at [`FORWARDED_PORT`], port-forwarded by the
    /// router's own firewall (DNAT on every `wan*`), and one on the router itself
    /// at [`ROUTER_PORT`].
    pub fn serve_inbound(&mut self, family: Family) -> Result<()> {
        let (client, table, any): (IpAddr, _, _) = match family {
            Family::V4 => (crate::CLIENT.into(), "ip", "0.0.0.0"),
            Family::V6 => (crate::ipv6::CLIENT6.into(), "ip6", "::"),
        };
        self.start_http_server(&self.client(), &client.to_string(), FORWARDED_PORT)?;
        self.start_http_server(&self.router(), any, ROUTER_PORT)?;
        let target = SocketAddr::new(client, FORWARDED_PORT);
        self.ns(
            &self.router(),
            "nft",
            &[&format!(
                "add table {table} forward; add chain {table} forward pre {{ type nat hook prerouting priority -100; }}; \
                 add rule {table} forward pre iifname \"wan*\" tcp dport {FORWARDED_PORT} dnat to {target}"
            )],
        )
        .map(drop)
    }

    /// `count` connections from the internet to both services of
    /// [`Lab::serve_inbound`] at each uplink's address of `family`; fails if any
    /// failed.
    pub fn connect_inbound(&self, family: Family, count: usize) -> Result<()> {
        for n in 0..self.isps {
            let address: IpAddr = match family {
                Family::V4 => Self::uplink_address(n).into(),
                Family::V6 => Self::uplink_address6(n).into(),
            };
            for (port, what) in [
                (FORWARDED_PORT, "port-forwarded to the LAN host"),
                (ROUTER_PORT, "the router's own"),
            ] {
                let service = SocketAddr::new(address, port);
                let (seen, failures) =
                    self.count_from(&self.inet(), &format!("http://{service}/"), count, None)?;
                println!(
                    "{count} connections to {service} ({what}): {failures} failed, server saw {seen:?}"
                );
                ensure!(failures == 0, "{what} via isp{n}: {failures} failed");
            }
        }
        Ok(())
    }

    /// Every ISP drops and counts packets of `family` from another ISP's customer
    /// addresses (BCP 38, as real ISPs do): a reply leaving through the wrong
    /// uplink is lost, and counted.
    pub fn enforce_source_addresses(&self, family: Family) -> Result<()> {
        for n in 0..self.isps {
            let (table, saddr, customers, own) = match family {
                Family::V4 => (
                    "ip",
                    "ip saddr",
                    "198.18.0.0/16",
                    Self::uplink_address(n).to_string(),
                ),
                Family::V6 => (
                    "ip6",
                    "ip6 saddr",
                    "2001:db8:18::/48",
                    Self::uplink_address6(n).to_string(),
                ),
            };
            self.ns(
                &self.isp(n),
                "nft",
                &[&format!(
                    "add table {table} bcp38; add chain {table} bcp38 forward {{ type filter hook forward priority 0; }}; \
                     add rule {table} bcp38 forward {saddr} {customers} {saddr} != {own} counter drop"
                )],
            )?;
        }
        Ok(())
    }

    /// Packets of `family` each ISP dropped for carrying another ISP's customer
    /// address (see [`Lab::enforce_source_addresses`]).
    pub fn foreign_sources(&self, family: Family) -> Result<Vec<u64>> {
        let table = match family {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        (0..self.isps)
            .map(|n| {
                let out = self.ns(&self.isp(n), "nft", &["list", "table", table, "bcp38"])?;
                crate::stdout(&out)
                    .split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .context("a counter in the bcp38 table")
            })
            .collect()
    }
}
