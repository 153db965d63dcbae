//! `multiroute budget reset NAME`: a new data pack for a metered uplink. Its count
//! starts again at 0 in the running `load` (and in its state file); an uplink that
//! was exhausted carries traffic again.
use std::path::Path;

use anyhow::anyhow;
use multiroute::run::control::{Request, Response};

use super::{CommandResult, Failure, ask_running, known_uplink, read_config};

pub fn reset(config_path: &Path, name: &str) -> CommandResult {
    let config = read_config(config_path)?;
    known_uplink(config_path, &config, name)?;
    let request = Request::BudgetReset {
        uplink: name.to_owned(),
    };
    match ask_running(config_path, &config, &request)? {
        Response::BudgetReset { previous, .. } => {
            println!("{name}: budget count reset (it had used {previous})");
            Ok(())
        }
        other => Err(Failure::Runtime(anyhow!(
            "the running multiroute answered something else: {other:?}"
        ))),
    }
}
