//! One file per subcommand: each command's whole story in one place.
pub mod budget;
pub mod check;
pub mod events;
pub mod flows;
pub mod init;
pub mod load;
pub mod manual;
pub mod status;
pub mod unload;
pub mod weight;

use std::path::Path;

use anyhow::{Context as _, anyhow};
use multiroute::{
    apply::ApplyError,
    config::Config,
    run::{
        DaemonError,
        control::{self, Refusal, Request, Response},
    },
};

/// How a command failed, which decides the exit code (PRODUCT.md: 1 runtime, 2 usage
/// or config).
#[derive(Debug)]
pub enum Failure {
    Config(anyhow::Error),
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Config(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }

    pub fn error(&self) -> &anyhow::Error {
        match self {
            Failure::Config(err) | Failure::Runtime(err) => err,
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::Runtime(err)
    }
}

impl From<ApplyError> for Failure {
    fn from(err: ApplyError) -> Self {
        match err {
            // A config that names interfaces the host lacks is the config's problem.
            ApplyError::Plan(plan) => Failure::Config(plan.into()),
            other => Failure::Runtime(other.into()),
        }
    }
}

impl From<DaemonError> for Failure {
    fn from(err: DaemonError) -> Self {
        match err {
            DaemonError::Apply(apply) => apply.into(),
            DaemonError::Config(config) => Failure::Config(config.into()),
            other => Failure::Runtime(other.into()),
        }
    }
}

pub type CommandResult = Result<(), Failure>;

pub fn read_config(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|err| Failure::Config(err.into()))
}

/// Sends `request` to the `load` running for `config`, and returns its answer; a
/// refusal is the request's fault (exit 2) or the daemon's situation (exit 1).
pub fn ask_running(
    config_path: &Path,
    config: &Config,
    request: &Request,
) -> Result<Response, Failure> {
    let reply = control::ask(&config.control.socket, request)
        .context("asking the running multiroute")?
        .ok_or_else(|| {
            anyhow!(
                "multiroute is not running for {}; start it with `multiroute load`",
                config_path.display()
            )
        })?;
    match reply {
        Response::Refused(Refusal { error, usage }) => {
            let err = anyhow!("{error}");
            Err(if usage {
                Failure::Config(err)
            } else {
                Failure::Runtime(err)
            })
        }
        reply => Ok(reply),
    }
}

/// `name` must be one of the config's uplinks (exit 2 otherwise).
pub fn known_uplink(config_path: &Path, config: &Config, name: &str) -> Result<(), Failure> {
    config
        .uplink_position(name)
        .map(drop)
        .map_err(|unknown| Failure::Config(anyhow!("{}: {unknown}", config_path.display())))
}

/// The one-shot commands talk to the kernel from one thread; netlink is async.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    built(tokio::runtime::Builder::new_current_thread().enable_all())
}

/// `load`'s runtime: the daemon's loop runs on the main thread and the probers and
/// listeners on two workers, so a slow step in the loop (a netlink dump, a map
/// write, a re-plan) never delays a probe or makes it time out.
pub fn daemon_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    built(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all(),
    )
}

fn built(builder: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, Failure> {
    builder
        .build()
        .map_err(|err| Failure::Runtime(anyhow!("cannot start the async runtime: {err}")))
}
