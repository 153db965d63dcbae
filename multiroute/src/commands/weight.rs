//! `multiroute weight NAME N`: change one uplink's weight in the running `load`. New
//! flows follow at once; existing flows keep their uplink; `0` drains.
use std::path::Path;

use anyhow::anyhow;
use multiroute::{
    config::MAX_WEIGHT,
    run::control::{Request, Response},
};

use super::{CommandResult, Failure, ask_running, known_uplink, read_config};

pub fn run(config_path: &Path, name: &str, weight: u32) -> CommandResult {
    let config = read_config(config_path)?;
    known_uplink(config_path, &config, name)?;
    if weight > MAX_WEIGHT {
        return Err(Failure::Config(anyhow!(
            "weight {weight} is above the maximum of {MAX_WEIGHT}"
        )));
    }
    let request = Request::Weight {
        uplink: name.to_owned(),
        weight,
    };
    let previous = match ask_running(config_path, &config, &request)? {
        Response::Weight { previous, .. } => previous,
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
