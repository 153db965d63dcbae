//! What the daemon says and does about the host as it starts: the host's conflicts
//! and warnings, the sysctls it sets, how it took over the running sessions, and
//! each uplink's readiness.
use tracing::{info, warn};

use super::error::DaemonError;
use crate::{
    apply::{self, ApplyError, sysctl},
    config::Config,
    net::Family,
    netlink::Netlink,
    observe,
    plan::{Plan, Readiness, host},
};

/// Refuses a host with rules in multiroute's range, warns about what will not work,
/// and sets the sysctls multiroute needs (recorded for `unload`).
pub(super) async fn prepare_host(nl: &Netlink, config: &Config) -> Result<(), DaemonError> {
    let facts = observe::host::facts(nl, config)
        .await
        .map_err(ApplyError::from)?;
    let assessment = host::assess(config, &facts);
    if let Some(conflict) = assessment.conflicts.first() {
        return Err(DaemonError::Host(conflict.clone()));
    }
    for warning in &assessment.warnings {
        warn!("{warning}");
    }
    for change in &assessment.changes {
        info!(
            "setting {} = {} (was {}): {}; restored on unload",
            change.key, change.to, change.from, change.why
        );
    }
    sysctl::apply_sysctls(config, &assessment.changes)?;
    Ok(())
}

pub(super) fn log_takeover(takeover: &apply::Takeover) {
    let how = if takeover.adopted {
        "adopted the running datapath and its flow table"
    } else {
        "took over the host's running sessions"
    };
    info!(
        seeded = takeover.seeded,
        resolved = takeover.resolved,
        forgotten = takeover.forgotten,
        "{how}: sessions NATed to an uplink keep it"
    );
}

pub(super) fn log_plan(plan: &Plan) {
    for uplink in &plan.uplinks {
        match (
            &uplink.readiness.v4,
            uplink.readiness.v4.problem(Family::V4),
        ) {
            (Readiness::Ready { address, gateway }, _) => info!(
                uplink = %uplink.name,
                interface = %uplink.interface,
                address = %address,
                gateway = %gateway,
                table = uplink.table,
                mark = format_args!("{:#x}", uplink.mark),
                weight = uplink.weight,
                "uplink ready"
            ),
            (_, problem) => warn!(
                uplink = %uplink.name,
                interface = %uplink.interface,
                "uplink not ready: {}",
                problem.unwrap_or_default()
            ),
        }
    }
    for route in plan.routing.main_default.values().flatten() {
        info!(%route, "main table default");
    }
}
