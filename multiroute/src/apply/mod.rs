//! Makes the kernel match a [`Plan`]: routes and rules over netlink, the classifier
//! and its maps over bpf(2). Every step is idempotent, so applying twice, or after a
//! crash half-way, converges; [`teardown`] removes all of it, also after SIGKILL.
pub mod datapath;
pub mod firewall;
pub mod routing;
pub mod sysctl;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::netlink::conntrack::{self, ConntrackError};

use crate::netlink::{Netlink, NetlinkError};
use crate::{
    config::Config,
    net::Family,
    plan::{Observed, Plan, PlanError, Verdicts},
};
use datapath::{Datapath, DatapathError, Maps};
use firewall::NftError;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Conntrack(#[from] ConntrackError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Io(#[from] crate::path_error::PathError),
}

/// Reads the host (and the slots a running datapath holds) and plans against it.
pub async fn plan(
    nl: &Netlink,
    config: &Config,
    verdicts: &Verdicts,
) -> Result<(Plan, Observed), ApplyError> {
    let observed = crate::observe::host(nl, config.numbering().saved_default_table()).await?;
    let plan = replan(config, &observed, verdicts)?;
    Ok((plan, observed))
}

/// Plans against a host already read, with the slots a running datapath holds.
pub fn replan(
    config: &Config,
    observed: &Observed,
    verdicts: &Verdicts,
) -> Result<Plan, ApplyError> {
    let slots = datapath::read_slots(&config.routing.pin_path)?;
    Ok(Plan::build(config, observed, verdicts, &slots)?)
}

/// What `load` found and did when it took over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Takeover {
    /// A pinned, attached datapath was running (a restart): it was adopted with its
    /// flow table.
    pub adopted: bool,
    /// Running sessions written into the flow table from conntrack.
    pub seeded: usize,
    /// Flows seen while taking over that were resolved to their NAT binding's uplink.
    pub resolved: usize,
    /// Pending flows conntrack had no NAT binding for (LAN-local, the router's own):
    /// forgotten, so their next packet is a new flow.
    pub forgotten: usize,
}

/// Brings up routing and the datapath without moving a running session, on a
/// fresh host as on one where a previous `load` left its datapath running
/// (`adopt`: its links are pinned and attached).
///
/// Tables, rules and the inbound marks go first: they only route packets that
/// carry a mark, come from an uplink's address or arrive on an uplink, so they
/// change nothing for traffic that is already flowing. On a fresh host the
/// classifier then starts with a ring that holds no uplink: every flow it sees is
/// remembered as pending and passes unmarked, so it keeps following the host's
/// routing and its NAT binding. Conntrack then tells which uplink each running
/// session is NATed to and the flow table learns it; only then does the real ring
/// steer new flows, the few flows seen meanwhile are resolved the same way, and
/// last the main table's default becomes the weighted multipath route (before,
/// it would have moved unmarked traffic).
pub async fn apply(
    nl: &Netlink,
    config: &Config,
    plan: &Plan,
    observed: &Observed,
    adopt: bool,
) -> Result<(Datapath, Maps, Takeover), ApplyError> {
    let pin_path = &config.routing.pin_path;
    // The main table's lookup stays in front of the marks until the classifier
    // leaves its destinations unmarked (see `Plan::rules_main_first`).
    let guarded = plan.routing.rules_main_first(config.routing.rule_priority);
    routing::sync_tables(nl, config, &plan.routing, observed).await?;
    routing::sync_rules(nl, config, &guarded).await?;
    firewall::apply(&plan.firewall, config)?;
    let mut datapath = Datapath::load(pin_path, plan.datapath.balance_by)?;
    let mut maps = Maps::open(pin_path)?;
    maps.write_uplinks(plan)?;
    let mut takeover = Takeover {
        adopted: adopt,
        ..Takeover::default()
    };
    if !adopt {
        // Left from a `load` that died before attaching: nothing may match yet.
        maps.write_policy(&crate::plan::Policy::default())?;
        maps.write_pending_rings()?;
    }
    // Before the classifier sees a packet: a flow to a direct destination must
    // never carry a mark, which would skip the main table's lookup.
    maps.write_direct(&plan.datapath.direct)?;
    datapath.attach(&plan.datapath.lan, &plan.datapath.fast_replies)?;
    takeover.seeded = seed_from_conntrack(&mut maps, plan).await?;
    maps.write_rings(&plan.datapath.ring)?;
    maps.write_policy(&plan.datapath.policy)?;
    (takeover.resolved, takeover.forgotten) = resolve_pending(&mut maps, plan).await?;
    routing::sync_rules(nl, config, &plan.routing.rules).await?;
    routing::sync_main_default(nl, config, &plan.routing, observed).await?;
    Ok((datapath, maps, takeover))
}

/// Runs a blocking conntrack request off the async runtime's threads.
async fn off_thread<T: Send + 'static>(
    request: impl FnOnce() -> Result<T, ConntrackError> + Send + 'static,
) -> Result<T, ApplyError> {
    let answer = tokio::task::spawn_blocking(request)
        .await
        .map_err(|err| ConntrackError::Socket(std::io::Error::other(err)))?;
    Ok(answer?)
}

/// Writes every session conntrack NATs to one of `slot_of`'s addresses into the
/// flow table of its family on that address's slot, as `seeding` says. Returns
/// how many.
async fn seed_sessions(
    maps: &mut Maps,
    slot_of: &BTreeMap<IpAddr, u32>,
    seeding: datapath::Seeding,
) -> Result<usize, ApplyError> {
    let by = maps.balance_by()?;
    let mut seeded = 0;
    if slot_of.keys().any(IpAddr::is_ipv4) {
        let sessions = off_thread(conntrack::nated_sessions).await?;
        seeded += maps.v4.seed(&sessions, slot_of, seeding, by)?;
    }
    if slot_of.keys().any(IpAddr::is_ipv6) {
        let sessions = off_thread(conntrack::nated_sessions).await?;
        seeded += maps.v6.seed(&sessions, slot_of, seeding, by)?;
    }
    Ok(seeded)
}

/// Writes every session conntrack NATs to an uplink's address (of either family)
/// into the flow tables (flows the datapath already placed are left alone).
/// Returns how many.
async fn seed_from_conntrack(maps: &mut Maps, plan: &Plan) -> Result<usize, ApplyError> {
    let slot_of = plan
        .uplinks
        .iter()
        .flat_map(|u| Family::ALL.map(|family| Some((u.address(family)?, u.slot))))
        .flatten()
        .collect();
    seed_sessions(maps, &slot_of, datapath::Seeding::FillGaps).await
}

/// How often [`resolve_pending`] asks conntrack before it gives up on a flow: a
/// packet seen by the classifier is in conntrack microseconds later, so a second
/// look only covers one that was still on its way through the stack.
const RESOLVE_ROUNDS: usize = 3;

/// Resolves the flows the datapath remembered as pending while taking over to the
/// uplink their NAT binding names; forgets those conntrack has no binding for.
/// Returns (resolved, forgotten).
async fn resolve_pending(maps: &mut Maps, plan: &Plan) -> Result<(usize, usize), ApplyError> {
    // Each walk lists both tables; the last one's keys are what is forgotten.
    let pending = |maps: &Maps| (maps.v4.pending(), maps.v6.pending());
    let count = |(v4, v6): &(Vec<_>, Vec<_>)| v4.len() + v6.len();
    let mut resolved = 0;
    let mut left = pending(maps);
    for round in 0..RESOLVE_ROUNDS {
        if count(&left) == 0 {
            break;
        }
        if round > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        seed_from_conntrack(maps, plan).await?;
        let now = pending(maps);
        resolved += count(&left).saturating_sub(count(&now));
        left = now;
    }
    let forgotten = count(&left);
    let (v4, v6) = left;
    for key in &v4 {
        maps.v4.forget(key)?;
    }
    for key in &v6 {
        maps.v6.forget(key)?;
    }
    Ok((resolved, forgotten))
}

/// Conntrack entries removed for an uplink that stopped carrying traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    pub uplink: String,
    /// The address of the family that stopped (an uplink's IPv6 can stop alone).
    pub address: IpAddr,
    pub entries: usize,
}

/// What a running set-up writes through: netlink, the loaded datapath (its
/// program handle and link pins) and its maps.
pub struct Kernel {
    pub nl: Netlink,
    pub datapath: Datapath,
    pub maps: Maps,
}

impl Kernel {
    /// Moves a running set-up from `previous` to `plan` (liveness, addresses, links).
    ///
    /// When an uplink stops being alive the datapath hears first (new flows avoid it,
    /// its flows move on their next packet), then routing (its nexthop leaves the main
    /// default), then the conntrack entries NATed to its address go, so the moved
    /// flows are NATed afresh. Otherwise routing goes first, so no mark ever points at
    /// a table that is not there yet.
    pub async fn update(
        &mut self,
        config: &Config,
        previous: &Plan,
        plan: &Plan,
        observed: &Observed,
    ) -> Result<Updated, ApplyError> {
        let (nl, maps) = (&self.nl, &mut self.maps);
        let (before, now) = (carried_addresses(previous), carried_addresses(plan));
        let stopped: Vec<_> = before.difference(&now).cloned().collect();
        let arrived: Vec<_> = now.difference(&before).cloned().collect();
        let mut seeded = 0;
        let routing = if stopped.is_empty() {
            let changed = routing::apply(nl, config, &plan.routing, observed).await?;
            if !arrived.is_empty() {
                maps.write_uplinks(plan)?;
                seeded = seed_arrived(maps, plan, &arrived).await?;
            }
            maps.write_plan(plan)?;
            changed
        } else {
            maps.write_plan(plan)?;
            let changed = routing::apply(nl, config, &plan.routing, observed).await?;
            seeded = seed_arrived(maps, plan, &arrived).await?;
            changed
        };
        if plan.firewall != previous.firewall {
            firewall::apply(&plan.firewall, config)?;
        }
        let mut flushed = Vec::new();
        // Only while the address is still here: one that left the host (keepalived
        // moved it to the VRRP peer, a lease ended) takes its sessions with it — the
        // peer carries them on, synced by conntrackd, and a delete here would be synced
        // there too. (The kernel itself forgets sessions masqueraded to a removed
        // address.)
        let still_here = |uplink: &str, address: IpAddr| {
            previous
                .uplink(uplink)
                .and_then(|u| observed.get(&u.interface))
                .is_some_and(|iface| iface.has_address(address))
        };
        for (uplink, address) in stopped {
            if !still_here(&uplink, address) {
                continue;
            }
            let entries = off_thread(move || conntrack::flush_nated_to(address)).await?;
            flushed.push(Flushed {
                uplink,
                address,
                entries,
            });
        }
        let returned = return_rule_flows(maps, previous, plan).await?;
        Ok(Updated {
            routing,
            flushed,
            returned,
            seeded,
        })
    }
}

/// When a policy rule's uplink changes to a live one — its preferred uplink carries
/// traffic again — the flows the rule placed elsewhere go to it: their flow entries
/// are pointed at it, then their conntrack entries (NATed to the other uplink's
/// address) are deleted so their next packet is NATed afresh. Returns how many
/// flows moved.
async fn return_rule_flows(
    maps: &mut Maps,
    previous: &Plan,
    plan: &Plan,
) -> Result<usize, ApplyError> {
    let changed: BTreeMap<u8, u32> = plan
        .rule_uses
        .iter()
        .zip(&previous.rule_uses)
        .enumerate()
        .filter(|(_, (now, before))| now.name == before.name && now.using != before.using)
        .filter_map(|(index, (now, _))| Some((u8::try_from(index).ok()?, now.using?)))
        .collect();
    if changed.is_empty() {
        return Ok(0);
    }
    let moved = maps.v4.move_rule_flows(&changed)?;
    let moved6 = maps.v6.move_rule_flows(&changed)?;
    let count = moved.len() + moved6.len();
    if !moved.is_empty() {
        off_thread(move || conntrack::flush_flows(&moved)).await?;
    }
    if !moved6.is_empty() {
        off_thread(move || conntrack::flush_flows(&moved6)).await?;
    }
    Ok(count)
}

/// What [`update`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Updated {
    /// Routes and rules added or removed; with an unchanged plan, what someone
    /// else had removed and was put back.
    pub routing: usize,
    pub flushed: Vec<Flushed>,
    /// Flows a policy rule moved back to the uplink it uses again.
    pub returned: usize,
    /// Sessions put on an uplink whose address arrived (see `seed_arrived`).
    pub seeded: usize,
}

/// Each uplink that carries traffic, with the address it carries it from, per
/// family. What leaves this set between two plans stopped (dead, down, removed,
/// readdressed, standing by on a backup tier); what joins it arrived.
fn carried_addresses(plan: &Plan) -> BTreeSet<(String, IpAddr)> {
    plan.uplinks
        .iter()
        .flat_map(|u| Family::ALL.map(|family| (u, family)))
        .filter(|(u, family)| u.carries(*family))
        .filter_map(|(u, family)| Some((u.name.clone(), u.address(family)?)))
        .collect()
}

/// An uplink began carrying traffic from an address — most often because its
/// address arrived: a VRRP backup taking over (keepalived moved the address here,
/// conntrackd already put the peer's sessions into this kernel's table), a DHCP
/// lease, a redial. Every session conntrack NATs to such an address is put on that
/// uplink in the flow table, replacing what the table held, before the ring sends
/// new flows there: the NAT binding decides the uplink, whatever the hash says.
async fn seed_arrived(
    maps: &mut Maps,
    plan: &Plan,
    arrived: &[(String, IpAddr)],
) -> Result<usize, ApplyError> {
    let slot_of: BTreeMap<_, _> = arrived
        .iter()
        .filter_map(|(name, address)| Some((*address, plan.uplink(name)?.slot)))
        .collect();
    if slot_of.is_empty() {
        return Ok(0);
    }
    seed_sessions(maps, &slot_of, datapath::Seeding::Replace).await
}

impl Kernel {
    /// Puts back what someone else removed or changed of the running plan — a firewall
    /// reload flushing every nftables table, an admin deleting a rule or a link pin, a
    /// map write that failed half-way. Returns what it had to repair, in words.
    pub async fn repair(
        &mut self,
        config: &Config,
        plan: &Plan,
        observed: &Observed,
    ) -> Result<Vec<String>, ApplyError> {
        let (nl, datapath, maps) = (&self.nl, &mut self.datapath, &mut self.maps);
        let mut repaired = Vec::new();
        let routing = routing::apply(nl, config, &plan.routing, observed).await?;
        if routing > 0 {
            repaired.push(format!("{routing} rules or routes"));
        }
        if restore_nft_table(config, plan)? {
            repaired.push(format!(
                "the nftables table inet {}",
                crate::plan::nft::TABLE
            ));
        }
        let attached = datapath::attached_interfaces(&config.routing.pin_path)?;
        if plan
            .datapath
            .lan
            .iter()
            .any(|(name, _)| !attached.contains(name))
        {
            datapath.attach(&plan.datapath.lan, &plan.datapath.fast_replies)?;
            repaired.push("the classifier's link pins".to_owned());
        }
        let maps_differ = maps.differences(plan)?;
        if !maps_differ.is_empty() {
            maps.write_plan(plan)?;
            repaired.push(format!("the datapath maps ({})", maps_differ.join("; ")));
        }
        Ok(repaired)
    }
}

/// Puts multiroute's nftables table back if something took it (a firewall reload
/// flushing the ruleset); returns whether it had to.
pub fn restore_nft_table(config: &Config, plan: &Plan) -> Result<bool, ApplyError> {
    if plan.firewall.is_empty() || firewall::present()? {
        return Ok(false);
    }
    firewall::apply(&plan.firewall, config)?;
    Ok(true)
}

/// What [`teardown`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub pins: usize,
    pub routing: usize,
    /// Sysctls put back to their values from before `load`.
    pub sysctls: usize,
}

/// Datapath first (steering stops), then the nftables table, rules and routes, then
/// the main default is restored, then the sysctls `load` changed.
pub async fn teardown(nl: &Netlink, config: &Config) -> Result<Removed, ApplyError> {
    let pins = datapath::remove(&config.routing.pin_path)?;
    let nft = usize::from(firewall::remove()?);
    let routing = routing::remove(nl, config).await? + nft;
    let sysctls = sysctl::restore_sysctls(config)?;
    Ok(Removed {
        pins,
        routing,
        sysctls,
    })
}
