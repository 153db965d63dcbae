//! `multiroute init [--write PATH]`: a first config proposed from what the host
//! shows — every interface with a default route, a point-to-point peer or a DHCP
//! client of its own becomes an uplink, every other addressed one a LAN — with
//! comments saying what was guessed and why. It never overwrites a file.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, anyhow};
use multiroute::{
    config::{
        DEFAULT_PATH, Numbering,
        reference::{self as key, Key},
    },
    net::{Family, IpNet},
    netlink::Netlink,
    observe,
    plan::{Interface, RouteOrigin},
    run::dhcp_client,
};

use super::{CommandResult, Failure, runtime};

pub fn run(write: Option<&Path>) -> CommandResult {
    let observed = runtime()?.block_on(async {
        let nl = Netlink::connect().context("connecting to the kernel")?;
        let defaults = Numbering::new(
            key::TABLE_BASE.default_number() as u32,
            key::FWMARK_MASK.default_number() as u32,
        );
        observe::host(&nl, defaults.saved_default_table())
            .await
            .context("reading the host's interfaces and routes")
    })?;
    // One look at /proc for every interface's DHCP client.
    let processes = dhcp_client::processes();
    let interfaces: BTreeMap<String, Host> = observed
        .iter()
        .map(|(name, iface)| {
            let host = Host {
                iface: iface.clone(),
                dhcp_client: dhcp_client::client_of(&processes, name),
            };
            (name.clone(), host)
        })
        .collect();
    let text = propose(&interfaces);
    let Some(path) = write else {
        print!("{text}");
        return Ok(());
    };
    create(path, &text)?;
    println!("wrote {}; what check thinks of it:", path.display());
    super::check::run(path, false)
}

/// Writes `text` to a new file at `path`, refusing one that exists.
fn create(path: &Path, text: &str) -> CommandResult {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::AlreadyExists => Failure::Config(anyhow!(
                "{} exists; init never overwrites a config (move it away or --write elsewhere)",
                path.display()
            )),
            _ => Failure::Runtime(anyhow!("creating {}: {err}", path.display())),
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One interface as init sees it.
struct Host {
    iface: Interface,
    /// The DHCP client started for it (udhcpc, dhcpcd), if one runs.
    dhcp_client: Option<&'static str>,
}

impl Host {
    fn has_default(&self) -> bool {
        Family::ALL
            .into_iter()
            .any(|family| self.iface.gateway[family].is_some() || self.iface.default_dev[family])
    }

    fn is_uplink(&self) -> bool {
        self.has_default() || self.iface.peer.is_some() || self.dhcp_client.is_some()
    }

    fn has_address(&self) -> bool {
        Family::ALL
            .into_iter()
            .any(|family| !self.iface.addresses[family].is_empty())
    }
}

/// The proposed config's text.
fn propose(interfaces: &BTreeMap<String, Host>) -> String {
    let mut ordered: Vec<(&String, &Host)> = interfaces
        .iter()
        .filter(|(name, _)| name.as_str() != "lo")
        .collect();
    ordered.sort_by_key(|(_, host)| host.iface.index);
    let uplinks: Vec<_> = ordered.iter().filter(|(_, h)| h.is_uplink()).collect();
    let lans: Vec<_> = ordered
        .iter()
        .filter(|(_, h)| !h.is_uplink() && h.has_address())
        .collect();
    let mut text = format!(
        "# A first config proposed by `multiroute init` from what this host shows.\n\
         # Read it, change what it guessed wrong, then `multiroute check -c {DEFAULT_PATH}`.\n\
         # Every key, its default and its range: man 5 multiroute.toml\n\n"
    );
    for (name, host) in &lans {
        let _ = writeln!(
            text,
            "# LAN {name}: {}, no default route through it.",
            addresses(&host.iface)
        );
    }
    if lans.is_empty() {
        text += "# No LAN found: every interface with an address is an uplink. Name yours.\n";
    }
    let names: Vec<String> = lans.iter().map(|(name, _)| format!("{name:?}")).collect();
    let _ = writeln!(text, "lan = [{}]", names.join(", "));
    for (name, host) in &uplinks {
        uplink(&mut text, name, host);
    }
    if uplinks.is_empty() {
        text += "\n# No uplink found: no interface has a default route, a point-to-point peer\n\
                 # or a DHCP client. Add an [[uplink]] per line (man 5 multiroute.toml).\n";
    }
    let shown = |key: &Key| format!("{} = {}", key.name, key.default_number());
    let _ = write!(
        text,
        "\n# How the uplinks are probed: their gateways (or peers), by ICMP echo. An uplink\n\
         # is dead after `down` lost probes in a row, alive again after `up` answered.\n\
         [health]\ntargets = {}\n{}\n{}\n{}\n{}\n",
        key::TARGETS.default_text(),
        shown(&key::INTERVAL_MS),
        shown(&key::TIMEOUT_MS),
        shown(&key::DOWN),
        shown(&key::UP),
    );
    text
}

/// One `[[uplink]]` with the comments that say why.
fn uplink(text: &mut String, interface: &str, host: &Host) {
    let iface = &host.iface;
    let _ = writeln!(text, "\n# {interface}: {}.", addresses(iface));
    if let Some(peer) = iface.peer {
        let _ = writeln!(
            text,
            "# Point-to-point (pppd, an LTE modem in raw-IP mode): probed at its peer {peer}."
        );
    }
    for family in Family::ALL {
        if let Some(gateway) = iface.gateway[family] {
            let _ = writeln!(
                text,
                "# {} default via {gateway}, {}; learned, not written, so a new one is followed.",
                family.name(),
                origin(iface.default_origin[family], host.dhcp_client)
            );
        } else if iface.default_dev[family] {
            let _ = writeln!(text, "# {} default through the link itself.", family.name());
        }
    }
    if !host.has_default() && iface.peer.is_none() {
        let _ = writeln!(
            text,
            "# Its DHCP client ({}) runs but no default route shows its gateway yet: set\n\
             # `gateway` if it stays so (check says).",
            host.dhcp_client.unwrap_or("?")
        );
    }
    let name = uplink_name(interface);
    let _ = writeln!(
        text,
        "[[uplink]]\nname = {name:?}\ninterface = {interface:?}\nweight = {}  # its share of new flows; equal until you say",
        key::WEIGHT.default_number()
    );
}

/// Who installed a default, for its comment.
fn origin(origin: Option<RouteOrigin>, client: Option<&str>) -> String {
    match (origin, client) {
        (Some(RouteOrigin::Dhcp), _) => "from DHCP".into(),
        (Some(RouteOrigin::RouterAdvertisement), _) => "from router advertisements".into(),
        (_, Some(client)) => format!("from DHCP ({client})"),
        _ => "set by hand or by a script".into(),
    }
}

/// An interface's name made a valid uplink name (a-z, 0-9, _ and -, 15 at most).
fn uplink_name(interface: &str) -> String {
    interface
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '-',
        })
        .take(15)
        .collect()
}

/// "100.64.0.1/24 (private), 2001:db8::1/64" or "no address".
fn addresses(iface: &Interface) -> String {
    let listed: Vec<String> = Family::ALL
        .into_iter()
        .flat_map(|family| iface.addresses[family].iter())
        .map(|net| match is_private(*net) {
            true => format!("{net} (private)"),
            false => net.to_string(),
        })
        .collect();
    match (listed.is_empty(), iface.peer) {
        (true, _) => "no address".into(),
        (false, Some(peer)) => format!("{} peer {peer}", listed.join(", ")),
        (false, None) => listed.join(", "),
    }
}

/// RFC 1918, shared (RFC 6598) and unique-local addresses: a LAN's, not an ISP's.
fn is_private(net: IpNet) -> bool {
    match net.addr() {
        IpAddr::V4(a) => a.is_private() || in_shared(a),
        IpAddr::V6(a) => is_unique_local(a),
    }
}

fn in_shared(a: Ipv4Addr) -> bool {
    let [first, second, ..] = a.octets();
    first == 100 && (64..128).contains(&second)
}

fn is_unique_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xfe00 == 0xfc00
}

#[cfg(test)]
mod tests {
    use multiroute::net::{Net, PerFamily};

    use super::*;

    fn host(index: u32, address: &str, gateway: Option<&str>) -> Host {
        // An interface's address keeps its host bits, as the kernel reports it.
        let (addr, len) = address.split_once('/').expect("address/len");
        let (addr, len): (IpAddr, u8) = (
            addr.parse().expect("an address"),
            len.parse().expect("a length"),
        );
        let net = match addr {
            IpAddr::V4(a) => IpNet::V4(Net::new(a, len)),
            IpAddr::V6(a) => IpNet::V6(Net::new(a, len)),
        };
        let mut iface = Interface {
            index,
            up: true,
            ..Interface::default()
        };
        iface.addresses[Family::of(net.addr())].push(net);
        iface.gateway = PerFamily {
            v4: gateway.map(|g| g.parse().expect("a gateway")),
            v6: None,
        };
        iface.default_origin.v4 = gateway.map(|_| RouteOrigin::Dhcp);
        Host {
            iface,
            dhcp_client: None,
        }
    }

    #[test]
    fn uplinks_have_a_way_out_and_lans_the_rest() {
        let mut hosts = BTreeMap::new();
        hosts.insert("lo".to_owned(), host(1, "127.0.0.1/8", None));
        hosts.insert("eth0".to_owned(), host(2, "192.168.1.1/24", None));
        hosts.insert(
            "eth1".to_owned(),
            host(3, "203.0.113.7/24", Some("203.0.113.1")),
        );
        let mut ppp = host(4, "198.51.100.2/32", None);
        ppp.iface.peer = Some(Ipv4Addr::new(198, 51, 100, 1));
        hosts.insert("ppp0".to_owned(), ppp);
        let mut lte = host(5, "100.80.0.9/30", None);
        lte.dhcp_client = Some("udhcpc");
        hosts.insert("wwan0.1".to_owned(), lte);
        let text = propose(&hosts);
        assert!(text.contains("lan = [\"eth0\"]\n"), "{text}");
        assert!(
            text.contains("# LAN eth0: 192.168.1.1/24 (private)"),
            "{text}"
        );
        for (name, interface) in [("eth1", "eth1"), ("ppp0", "ppp0"), ("wwan0-1", "wwan0.1")] {
            assert!(
                text.contains(&format!("name = {name:?}\ninterface = {interface:?}\n")),
                "{text}"
            );
        }
        assert!(
            text.contains("ipv4 default via 203.0.113.1, from DHCP"),
            "{text}"
        );
        assert!(text.contains("probed at its peer 198.51.100.1"), "{text}");
        assert!(text.contains("Its DHCP client (udhcpc) runs"), "{text}");
        assert!(!text.contains("\"lo\""), "{text}");
        let parsed = multiroute::config::Config::parse(&text, Path::new("proposed.toml"));
        assert!(
            parsed.is_ok_and(|config| config.uplinks.len() == 3),
            "{text}"
        );
        // The uplinks in interface order.
        let at = |name: &str| text.find(&format!("interface = {name:?}")).unwrap();
        assert!(at("eth1") < at("ppp0") && at("ppp0") < at("wwan0.1"));
    }
}
