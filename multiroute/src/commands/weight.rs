//! `multiroute weight NAME N`: change one uplink's weight in the running `load`. New
//! flows follow at once; existing flows keep their uplink; `0` drains.
use std::path::Path;

use anyhow::{Context as _, anyhow};
use multiroute::{
    config::MAX_WEIGHT,
    run::control::{self, Refusal, Request, Response},
};

use super::{CommandResult, Failure, read_config};

pub fn run(config_path: &Path, name: &str, weight: u32) -> CommandResult {
    let config = read_config(config_path)?;
    config
        .uplink_position(name)
        .map_err(|unknown| Failure::Config(anyhow!("{}: {unknown}", config_path.display())))?;
    if weight > MAX_WEIGHT {
        return Err(Failure::Config(anyhow!(
            "weight {weight} is above the maximum of {MAX_WEIGHT}"
        )));
    }
    let request = Request::Weight {
        uplink: name.to_owned(),
        weight,
    };
    let reply = control::ask(&config.control.socket, &request)
        .context("asking the running multiroute")?
        .ok_or_else(|| {
            anyhow!(
                "multiroute is not running for {}; start it with `multiroute load`",
                config_path.display()
            )
        })?;
    let previous = match reply {
        Response::Weight { previous, .. } => previous,
        Response::Refused(Refusal { error, usage }) => {
            let err = anyhow!("{error}");
            return Err(if usage {
                Failure::Config(err)
            } else {
                Failure::Runtime(err)
            });
        }
        other => {
            return Err(Failure::Runtime(anyhow!(
                "the running multiroute answered something else: {other:?}"
            )));
        }
    };
    let drained = if weight == 0 {
        " (drained: no new flows)"
    } else {
        ""
    };
    println!(
        "{name}: weight {previous} -> {weight}{drained}; new flows follow now, existing flows keep their uplink"
    );
    Ok(())
}
