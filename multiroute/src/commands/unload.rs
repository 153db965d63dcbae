//! `multiroute unload`: remove everything multiroute set up for this config, whether a
//! `load` is running (it is asked to stop), exited, or was killed.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use multiroute::{apply, instance, netlink::Netlink};
use tracing::info;

use super::{CommandResult, read_config, runtime};

/// How long a running `load` gets to clean up after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(config_path: &Path) -> CommandResult {
    let config = read_config(config_path)?;
    let socket = &config.control.socket;
    if let Some(pid) = instance::running(socket) {
        info!(pid, "asking the running multiroute to stop");
        stop(pid, || instance::running(socket).is_some())?;
    }
    runtime()?.block_on(async {
        let nl = Netlink::connect().context("connecting to the kernel")?;
        let removed = apply::teardown(&nl, &config)
            .await
            .context("removing multiroute's set-up")?;
        instance::remove_lock_file(socket);
        if removed == apply::Removed::default() {
            println!("nothing to remove");
        } else {
            println!(
                "removed {} pinned objects and {} routes/rules/tables, restored {} sysctls; main default restored",
                removed.pins, removed.routing, removed.sysctls
            );
        }
        Ok(())
    })
}

fn stop(pid: u32, still_running: impl Fn() -> bool) -> anyhow::Result<()> {
    let pid_t = i32::try_from(pid).context("PID out of range")?;
    // SAFETY: plain kill(2); the PID comes from the lock its holder wrote.
    if unsafe { libc::kill(pid_t, libc::SIGTERM) } != 0 {
        bail!(
            "cannot signal multiroute (PID {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let start = Instant::now();
    while still_running() {
        if start.elapsed() > STOP_TIMEOUT {
            bail!(
                "multiroute (PID {pid}) did not stop within {STOP_TIMEOUT:?}; kill it and run unload again"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
