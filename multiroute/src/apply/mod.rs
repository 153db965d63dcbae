//! Makes the kernel match a [`Plan`]: routes and rules over netlink, the classifier
//! and its maps over bpf(2). Every step is idempotent, so applying twice, or after a
//! crash half-way, converges; [`teardown`] removes all of it, also after SIGKILL.
pub mod datapath;
pub mod netlink;
pub mod routing;

use std::collections::BTreeSet;

use crate::{
    config::Config,
    plan::{Observed, Plan, PlanError},
};
use datapath::{Datapath, DatapathError, Maps};
use netlink::{Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// Reads the host and plans against it.
pub async fn plan(
    nl: &Netlink,
    config: &Config,
    dead: &BTreeSet<String>,
) -> Result<(Plan, Observed), ApplyError> {
    let observed = nl.observe(config.saved_default_table()).await?;
    let plan = Plan::build(config, &observed, dead)?;
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
    let mut datapath = Datapath::load(&config.routing.pin_path)?;
    Maps::open(&config.routing.pin_path)?.write_plan(plan)?;
    datapath.attach(&plan.lan)?;
    Ok(datapath)
}

/// What [`teardown`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub pins: usize,
    pub routing: usize,
}

/// Datapath first (steering stops), then rules and routes, then the main default is
/// restored.
pub async fn teardown(nl: &Netlink, config: &Config) -> Result<Removed, ApplyError> {
    let pins = datapath::remove(&config.routing.pin_path)?;
    let routing = routing::remove(nl, config).await?;
    Ok(Removed { pins, routing })
}
