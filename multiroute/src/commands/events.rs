//! `multiroute events [--json] [--follow]`: what the running `load` did, oldest
//! first, then (with `--follow`) each new event as it happens, like `ip monitor`.
use std::path::Path;

use anyhow::anyhow;
use multiroute::run::{
    control::{self, Request, Response},
    events::Event,
};

use super::{CommandResult, Failure, ask_running, read_config};

pub fn run(config_path: &Path, json: bool, follow: bool) -> CommandResult {
    let config = read_config(config_path)?;
    let print = |event: &Event| {
        if json {
            println!("{}", serde_json::to_string(event).unwrap_or_default());
        } else {
            println!("{}", line(event));
        }
    };
    if !follow {
        let request = Request::Events { follow: false };
        return match ask_running(config_path, &config, &request)? {
            Response::Events { events } => {
                events.iter().for_each(print);
                Ok(())
            }
            other => Err(Failure::Runtime(anyhow!(
                "the running multiroute answered something else: {other:?}"
            ))),
        };
    }
    let request = Request::Events { follow: true };
    let listening = control::follow(&config.control.socket, &request, |reply| {
        match reply {
            Response::Events { events } => events.iter().for_each(print),
            Response::Event(event) => print(&event),
            _ => return false,
        }
        true
    })
    .map_err(|err| Failure::Runtime(err.into()))?;
    if listening {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow!(
            "multiroute is not running for {}; start it with `multiroute load`",
            config_path.display()
        )))
    }
}

/// "2026-12-02 03:48:56 down isp0 ipv4 (up → down): 203.0.113.10 missed 3 probes".
fn line(event: &Event) -> String {
    let time = jiff::Timestamp::from_microsecond((event.time * 1e6) as i64)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default();
    let mut words = vec![time, event.event.clone()];
    words.extend(event.uplink.clone());
    words.extend(event.family.clone());
    if let (Some(previous), Some(state)) = (&event.previous, &event.state) {
        words.push(format!("({previous} → {state})"));
    }
    format!("{}: {}", words.join(" "), event.reason)
}
