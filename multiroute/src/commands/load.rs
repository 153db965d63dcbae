//! `multiroute load`: validate, set everything up, then run in the foreground until
//! SIGTERM/SIGINT (remove everything) or SIGHUP (re-read the config, apply the
//! difference).
use std::{collections::BTreeSet, path::Path};

use anyhow::Context as _;
use multiroute::{
    apply::{self, datapath::Datapath, netlink::Netlink},
    config::Config,
    instance::InstanceLock,
    plan::{Plan, Readiness},
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use super::{CommandResult, Failure, read_config, runtime};

pub fn run(config_path: &Path) -> CommandResult {
    let config = read_config(config_path)?;
    let _lock = InstanceLock::acquire(&config.control.socket)
        .map_err(|err| Failure::Runtime(err.into()))?;
    runtime()?.block_on(serve(config_path, config))
}

async fn serve(config_path: &Path, mut config: Config) -> CommandResult {
    let nl = Netlink::connect().context("connecting to the kernel")?;
    let dead = BTreeSet::new();
    let (plan, observed) = apply::plan(&nl, &config, &dead).await?;
    let mut datapath = match apply::apply(&nl, &config, &plan, &observed).await {
        Ok(datapath) => datapath,
        Err(err) => {
            // Leave the host as it was: a half-applied set-up helps nobody.
            if let Err(cleanup) = apply::teardown(&nl, &config).await {
                error!("cleaning up after the failed load also failed: {cleanup}");
            }
            return Err(err.into());
        }
    };
    report(&plan);
    info!(config = %config_path.display(), "multiroute is running; SIGHUP reloads, SIGTERM stops");

    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => match reload(&nl, config_path, &dead).await {
                Ok((new_config, new_datapath)) => {
                    config = new_config;
                    datapath = new_datapath;
                }
                Err(err) => error!("reload failed, keeping the running set-up: {err:#}"),
            },
        }
    }
    info!("stopping: removing everything multiroute set up");
    drop(datapath);
    let removed = apply::teardown(&nl, &config)
        .await
        .context("removing multiroute's set-up")?;
    info!(pins = removed.pins, routing = removed.routing, "removed");
    Ok(())
}

async fn reload(
    nl: &Netlink,
    config_path: &Path,
    dead: &BTreeSet<String>,
) -> anyhow::Result<(Config, Datapath)> {
    let config = Config::load(config_path)?;
    let (plan, observed) = apply::plan(nl, &config, dead).await?;
    let datapath = apply::apply(nl, &config, &plan, &observed).await?;
    info!("configuration reloaded");
    report(&plan);
    Ok((config, datapath))
}

fn report(plan: &Plan) {
    for uplink in &plan.uplinks {
        match &uplink.readiness {
            Readiness::Ready { address, gateway } => info!(
                uplink = %uplink.name,
                interface = %uplink.interface,
                address = %address,
                gateway = %gateway,
                table = uplink.table,
                mark = format_args!("{:#x}", uplink.mark),
                weight = uplink.weight,
                "uplink ready"
            ),
            Readiness::NoAddress => warn!(
                uplink = %uplink.name,
                interface = %uplink.interface,
                "uplink has no IPv4 address; it carries no traffic until it gets one"
            ),
            Readiness::NoGateway { address } => warn!(
                uplink = %uplink.name,
                interface = %uplink.interface,
                address = %address,
                "uplink has no gateway: set `gateway` in the config or give the interface a default route"
            ),
        }
    }
    if let Some(route) = &plan.main_default {
        info!(%route, "main table default");
    }
}
