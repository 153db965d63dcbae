//! Makes the kernel match a [`Plan`]: routes and rules over netlink, the classifier
//! and its maps over bpf(2). Every step is idempotent, so applying twice, or after a
//! crash half-way, converges; [`teardown`] removes all of it, also after SIGKILL.
pub mod conntrack;
pub mod datapath;
pub mod host;
pub mod netlink;
pub mod nftables;
pub mod routing;

use std::{collections::BTreeSet, net::Ipv4Addr};

use conntrack::ConntrackError;

use crate::{
    config::Config,
    plan::{Observed, Plan, PlanError},
};
use datapath::{Datapath, DatapathError, Maps};
use netlink::{Netlink, NetlinkError};
use nftables::NftError;

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
    dead: &BTreeSet<String>,
) -> Result<(Plan, Observed), ApplyError> {
    let observed = nl.observe(config.saved_default_table()).await?;
    let slots = datapath::read_slots(&config.routing.pin_path)?;
    let plan = Plan::build(config, &observed, dead, &slots)?;
    Ok((plan, observed))
}

/// Routing first, datapath second: marks are only set once the rules that give them
/// meaning exist.
pub async fn apply(
    nl: &Netlink,
    config: &Config,
    plan: &Plan,
    observed: &Observed,
) -> Result<Datapath, ApplyError> {
    routing::apply(nl, config, plan, observed).await?;
    nftables::apply(&plan.inbound, config.routing.fwmark_mask)?;
    let mut datapath = Datapath::load(&config.routing.pin_path)?;
    Maps::open(&config.routing.pin_path)?.write_plan(plan, None)?;
    datapath.attach(&plan.lan)?;
    Ok(datapath)
}

/// Conntrack entries removed for an uplink that stopped carrying traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    pub uplink: String,
    pub address: Ipv4Addr,
    pub entries: usize,
}

/// Moves a running set-up from `previous` to `plan` (liveness, addresses, links).
///
/// When an uplink stops being alive the datapath hears first (new flows avoid it,
/// its flows move on their next packet), then routing (its nexthop leaves the main
/// default), then the conntrack entries NATed to its address go, so the moved
/// flows are NATed afresh. Otherwise routing goes first, so no mark ever points at
/// a table that is not there yet.
pub async fn update(
    nl: &Netlink,
    config: &Config,
    maps: &mut Maps,
    previous: &Plan,
    plan: &Plan,
    observed: &Observed,
) -> Result<Vec<Flushed>, ApplyError> {
    let stopped = stopped_addresses(previous, plan);
    if stopped.is_empty() {
        routing::apply(nl, config, plan, observed).await?;
        maps.write_plan(plan, Some(&previous.ring))?;
    } else {
        maps.write_plan(plan, Some(&previous.ring))?;
        routing::apply(nl, config, plan, observed).await?;
    }
    if plan.inbound != previous.inbound {
        nftables::apply(&plan.inbound, config.routing.fwmark_mask)?;
    }
    let mut flushed = Vec::new();
    for (uplink, address) in stopped {
        let entries = tokio::task::spawn_blocking(move || conntrack::flush_nated_to(address))
            .await
            .map_err(|err| ConntrackError::Socket(std::io::Error::other(err)))??;
        flushed.push(Flushed {
            uplink,
            address,
            entries,
        });
    }
    Ok(flushed)
}

/// Uplinks that carried traffic from an address under `previous` and no longer do
/// from that address under `plan`: dead, down, removed, or readdressed.
fn stopped_addresses(previous: &Plan, plan: &Plan) -> Vec<(String, Ipv4Addr)> {
    previous
        .uplinks
        .iter()
        .filter(|old| old.alive)
        .filter_map(|old| {
            let address = old.address()?;
            let still = plan
                .uplinks
                .iter()
                .any(|new| new.name == old.name && new.alive && new.address() == Some(address));
            (!still).then(|| (old.name.clone(), address))
        })
        .collect()
}

/// Puts back what someone else removed or changed of the running plan — a firewall
/// reload flushing every nftables table, an admin deleting a rule or a link pin.
/// Returns how many things it had to repair.
pub async fn repair(
    nl: &Netlink,
    config: &Config,
    datapath: &mut Datapath,
    plan: &Plan,
    observed: &Observed,
) -> Result<usize, ApplyError> {
    let mut repaired = routing::apply(nl, config, plan, observed).await?;
    if !plan.inbound.is_empty() && !nftables::present()? {
        nftables::apply(&plan.inbound, config.routing.fwmark_mask)?;
        repaired += 1;
    }
    let attached = datapath::attached_interfaces(&config.routing.pin_path)?;
    if plan.lan.iter().any(|(name, _)| !attached.contains(name)) {
        datapath.attach(&plan.lan)?;
        repaired += 1;
    }
    Ok(repaired)
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
    let nft = usize::from(nftables::remove()?);
    let routing = routing::remove(nl, config).await? + nft;
    let sysctls = host::restore_sysctls(config)?;
    Ok(Removed {
        pins,
        routing,
        sysctls,
    })
}
