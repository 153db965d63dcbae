//! `multiroute load`: validate, set everything up, then run in the foreground until
//! SIGTERM/SIGINT (remove everything) or SIGHUP (re-read the config, apply the
//! difference). The daemon itself lives in the library's `run` module.
use std::path::Path;

use multiroute::{instance::InstanceLock, run::Daemon};
use tracing::info;

use super::{CommandResult, Failure, read_config, runtime};

pub fn run(config_path: &Path) -> CommandResult {
    let config = read_config(config_path)?;
    let _lock = InstanceLock::acquire(&config.control.socket)
        .map_err(|err| Failure::Runtime(err.into()))?;
    runtime()?.block_on(async {
        let daemon = Daemon::start(config_path.to_owned(), config).await?;
        let removed = daemon.run().await?;
        info!(
            pins = removed.pins,
            routing = removed.routing,
            sysctls = removed.sysctls,
            "removed"
        );
        Ok(())
    })
}
