//! What ISPs speak to a customer's router, spoken by Debian's own daemons: router
//! advertisements from radvd for IPv6 and DHCP from dnsmasq for IPv4, the router's
//! uplinks configured by the kernel's SLAAC and by real DHCP clients. So the
//! router sees what it sees on real lines: RA defaults refreshed with every advert
//! and expiring when the adverts stop, defaults a DHCP client adds, replaces on a
//! renew and removes when its lease ends.
//!
//! Two DHCP clients, the two that home-router systems run: busybox's udhcpc
//! (OpenWrt's netifd, Alpine, most embedded firmware; Debian's `default.script`
//! does the configuring, with a default at metric 0) and dhcpcd (Raspberry Pi OS
//! and many Debian-based appliances; it configures by itself, with its default at
//! metric 1000 + ifindex and protocol dhcp).
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};

use super::{Lab, stdout, wait_until};

/// The lease dnsmasq grants (its minimum: it raises anything shorter to 2 min).
pub const LEASE_SECONDS: u64 = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpClient {
    Dhcpcd,
    Udhcpc,
}

impl Lab {
    /// Every ISP announces its /64 and itself as default router with radvd:
    /// adverts every 3–4 s, a router lifetime of `lifetime` seconds. The router's
    /// uplinks accept them (`accept_ra = 2`, as a forwarding host needs) and take
    /// SLAAC addresses; nothing IPv6 is set on them by hand. Returns once each
    /// uplink has its address and its RA default.
    pub fn add_ipv6_by_ra(&mut self, lifetime: u32) -> Result<()> {
        self.add_ipv6_links()?;
        let router = self.router();
        for n in 0..self.isps {
            self.ns(
                &router,
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.wan{n}.accept_ra=2")],
            )?;
            self.start_radvd(n, lifetime)?;
        }
        wait_until(Duration::from_secs(20), || {
            (0..self.isps).all(|n| {
                self.ra_gateway(n).is_ok_and(|gw| gw.is_some())
                    && self.slaac_address(n).is_ok_and(|a| a.is_some())
            })
        })
        .context("the router's uplinks did not take their RA defaults and SLAAC addresses")?;
        self.start_ipv6_server()
    }

    /// (Re)starts ISP `n`'s radvd.
    pub fn start_radvd(&mut self, n: usize, lifetime: u32) -> Result<()> {
        let config = self.dir.join(format!("radvd{n}.conf"));
        std::fs::write(
            &config,
            format!(
                "interface cpe {{\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  MaxRtrAdvInterval 4;\n  AdvDefaultLifetime {lifetime};\n  prefix 2001:db8:18:{n}::/64 {{ AdvOnLink on; AdvAutonomous on; }};\n}};\n"
            ),
        )
        .context("writing a radvd config")?;
        let pid = self.dir.join(format!("radvd{n}.pid"));
        let isp = self.isp(n);
        self.start_service(
            &format!("radvd{n}"),
            &isp,
            "radvd",
            &[
                "--nodaemon",
                "--config",
                &config.to_string_lossy(),
                "--pidfile",
                &pid.to_string_lossy(),
                "--logmethod",
                "stderr",
            ],
        )
    }

    /// ISP `n`'s router stops advertising without a goodbye (a crash: radvd sends
    /// a final advert with lifetime 0 only when it is stopped cleanly).
    pub fn stop_advertising(&mut self, n: usize) -> Result<()> {
        self.stop_service(&format!("radvd{n}"), libc::SIGKILL)
    }

    /// The router the kernel learned from ISP `n`'s adverts (its RA default).
    pub fn ra_gateway(&self, n: usize) -> Result<Option<String>> {
        let routes = self.router_json(&["-6", "-j", "route", "show", "default", "proto", "ra"])?;
        let wan = format!("wan{n}");
        Ok(routes
            .iter()
            .find(|route| route["dev"] == wan.as_str())
            .and_then(|route| route["gateway"].as_str().map(str::to_owned)))
    }

    /// The SLAAC address uplink `n` took from ISP `n`'s prefix, once usable.
    pub fn slaac_address(&self, n: usize) -> Result<Option<String>> {
        let links = self.router_json(&[
            "-6",
            "-j",
            "addr",
            "show",
            "dev",
            &format!("wan{n}"),
            "scope",
            "global",
            "-tentative",
        ])?;
        Ok(links
            .iter()
            .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
            .find_map(|info| info["local"].as_str().map(str::to_owned)))
    }

    /// ISP `n` hands out leases of 198.18.n.`hosts.0`–`hosts.1` with router
    /// 198.18.n.`router` (added to its side of the link if new), by dnsmasq. A
    /// request for an address it does not know is refused at once (authoritative),
    /// as an ISP that renumbered its customers answers.
    pub fn serve_dhcp(&mut self, n: usize, hosts: (u8, u8), router: u8) -> Result<()> {
        let isp = self.isp(n);
        let gateway = format!("198.18.{n}.{router}");
        let has_gateway = stdout(&self.ns(&isp, "ip", &["-4", "addr", "show", "dev", "cpe"])?)
            .contains(&format!("inet {gateway}/"));
        if !has_gateway {
            self.ns(
                &isp,
                "ip",
                &["addr", "add", &format!("{gateway}/24"), "dev", "cpe"],
            )?;
        }
        let file = |ext: &str| {
            self.dir
                .join(format!("dhcp{n}.{ext}"))
                .to_string_lossy()
                .into_owned()
        };
        let args = [
            "--keep-in-foreground".to_owned(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--port=0".into(),
            "--user=root".into(),
            "--bind-interfaces".into(),
            "--interface=cpe".into(),
            "--except-interface=lo".into(),
            "--dhcp-authoritative".into(),
            // Offers at once, without first pinging the address for 3 s.
            "--no-ping".into(),
            format!(
                "--dhcp-range=198.18.{n}.{},198.18.{n}.{},255.255.255.0,2m",
                hosts.0, hosts.1
            ),
            format!("--dhcp-option=option:router,{gateway}"),
            format!("--dhcp-leasefile={}", file("leases")),
            format!("--pid-file={}", file("pid")),
            "--log-dhcp".into(),
            format!("--log-facility={}", file("log")),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.start_service(&format!("dhcp{n}"), &isp, "dnsmasq", &args)?;
        // A request sent before the server listens is lost, and clients back off
        // for seconds before they send it again.
        wait_until(Duration::from_secs(5), || {
            self.ns(&isp, "ss", &["-Hlun", "sport = :67"])
                .is_ok_and(|out| !stdout(&out).trim().is_empty())
        })
        .context("dnsmasq did not listen for DHCP")
    }

    /// ISP `n`'s DHCP server goes away, forgetting its leases.
    pub fn stop_dhcp_server(&mut self, n: usize) -> Result<()> {
        self.stop_service(&format!("dhcp{n}"), libc::SIGTERM)?;
        let leases: PathBuf = self.dir.join(format!("dhcp{n}.leases"));
        match std::fs::remove_file(leases) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }

    /// Uplink `n` loses its static address and is configured by `client` from ISP
    /// `n`'s DHCP server instead; returns once it holds a lease. The client's hooks
    /// touch no file of the host: dhcpcd runs none (it configures addresses and
    /// routes itself; its run and lease directories are private to it), and
    /// udhcpc's script writes the router namespace's own resolv.conf
    /// (`/etc/netns/<namespace>/`, which `ip netns exec` mounts over the host's).
    pub fn start_dhcp_client(&mut self, n: usize, client: DhcpClient) -> Result<()> {
        let (router, wan) = (self.router(), format!("wan{n}"));
        self.ns(&router, "ip", &["-4", "addr", "flush", "dev", &wan])?;
        let netns_etc = self.netns_etc();
        std::fs::create_dir_all(&netns_etc).context("creating the router's /etc/netns")?;
        std::fs::write(netns_etc.join("resolv.conf"), "# the lab router's own\n")
            .context("writing the router's resolv.conf")?;
        let name = format!("dhcpc{n}");
        match client {
            DhcpClient::Dhcpcd => {
                let log = self.dir.join(format!("{name}.log"));
                let command = format!(
                    "mkdir -p /run/dhcpcd /var/lib/dhcpcd && mount -t tmpfs tmpfs /run/dhcpcd && mount -t tmpfs tmpfs /var/lib/dhcpcd && exec dhcpcd --nobackground --ipv4only --noarp --script /bin/true --config /dev/null --logfile {} {wan}",
                    log.display()
                );
                self.start_service(&name, &router, "sh", &["-c", &command])?;
            }
            DhcpClient::Udhcpc => {
                self.start_service(
                    &name,
                    &router,
                    "udhcpc",
                    &["-f", "-i", &wan, "-t", "10", "-T", "1"],
                )?;
            }
        }
        wait_until(Duration::from_secs(20), || {
            self.uplink_ipv4(n).is_ok_and(|a| a.is_some())
        })
        .with_context(|| format!("{client:?} on {wan} got no lease"))
    }

    /// Asks uplink `n`'s DHCP client to ask for its lease again now. dhcpcd is told
    /// to rebind (SIGHUP, `dhcpcd -n`): while renewing it listens only at its
    /// leased address and misses the broadcast NAK of a server that renumbered,
    /// until its rebind time. udhcpc renews (SIGUSR1) and hears the NAK.
    pub fn renew_lease(&self, n: usize, client: DhcpClient) -> Result<()> {
        let signal = match client {
            DhcpClient::Dhcpcd => libc::SIGHUP,
            DhcpClient::Udhcpc => libc::SIGUSR1,
        };
        self.signal_service(&format!("dhcpc{n}"), signal)
    }

    /// What ISP `n`'s DHCP server and the router's client for uplink `n` logged.
    pub fn dhcp_logs(&self, n: usize) -> String {
        let read = |name: String| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "server:\n{}\nclient:\n{}",
            read(format!("dhcp{n}.log")),
            read(format!("dhcpc{n}.log"))
        )
    }

    /// Uplink `n`'s IPv4 address, if it has one.
    pub fn uplink_ipv4(&self, n: usize) -> Result<Option<Ipv4Addr>> {
        let links = self.router_json(&["-4", "-j", "addr", "show", "dev", &format!("wan{n}")])?;
        Ok(links
            .iter()
            .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
            .find_map(|info| info["local"].as_str().and_then(|a| a.parse().ok())))
    }

    /// The default routes of the router's table `table`, as `ip -j` reports them.
    pub fn default_routes(&self, family: &str, table: &str) -> Result<Vec<serde_json::Value>> {
        self.router_json(&[family, "-j", "route", "show", "default", "table", table])
    }
}
