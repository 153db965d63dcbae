//! `multiroute load`: validate, set everything up (or adopt what a previous `load`
//! left running), then run in the foreground until SIGTERM/SIGINT (stop the control
//! plane, leave steering in place) or SIGHUP (re-read the config, apply the
//! difference). The daemon itself lives in the library's `run` module.
use std::path::Path;

use multiroute::{instance::InstanceLock, run::Daemon};

use super::{CommandResult, Failure, daemon_runtime, read_config};

pub fn run(config_path: &Path) -> CommandResult {
    let config = read_config(config_path)?;
    let _lock = InstanceLock::acquire(&config.control.socket)
        .map_err(|err| Failure::Runtime(err.into()))?;
    daemon_runtime()?.block_on(async {
        let daemon = Daemon::start(config_path.to_owned(), config).await?;
        daemon.run().await?;
        Ok(())
    })
}
