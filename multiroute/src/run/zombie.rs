//! `on_dead`: an uplink dead for `on_dead_after_ms` gets its action — its DHCP
//! lease renewed, its link bounced, or the user's command — then again after
//! twice as long each time (at most an hour apart) while it stays dead. Actions
//! run as tasks of their own, bounded by [`super::helper::TIMEOUT`], so they never delay
//! health checks or a failover; each start and outcome is logged.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::helper::{Input, TIMEOUT, run_bounded};
use crate::{
    config::{DeadAction, OnDead},
    netlink::Netlink,
};

/// A bounced link stays down this long, so the modem or peer notices.
const BOUNCE_DOWN: Duration = Duration::from_secs(2);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// When one dead uplink is due for its next attempt.
#[derive(Debug, Default)]
pub struct Backoff {
    dead_since: Option<Instant>,
    next: Option<Instant>,
    attempts: u32,
}

impl Backoff {
    /// Whether to act now: the uplink is `dead` and its next attempt is due.
    pub fn due(&mut self, dead: bool, after: Duration, now: Instant) -> bool {
        if !dead {
            *self = Backoff::default();
            return false;
        }
        let since = *self.dead_since.get_or_insert(now);
        let next = *self.next.get_or_insert(since + after);
        if now < next {
            return false;
        }
        self.attempts += 1;
        let wait = after
            .saturating_mul(1 << self.attempts.min(20))
            .min(MAX_BACKOFF);
        self.next = Some(now + wait);
        true
    }
}

/// Every uplink's backoff and running action.
#[derive(Default)]
pub struct Zombies {
    backoff: BTreeMap<String, Backoff>,
    running: BTreeMap<String, JoinHandle<()>>,
}

impl Zombies {
    /// Acts for `uplink` (on `interface`) if it is dead and due; an action still
    /// running is left to finish first.
    pub fn tend(&mut self, uplink: &str, interface: &str, on_dead: &OnDead, dead: bool) {
        let after = Duration::from_millis(on_dead.after_ms);
        let backoff = self.backoff.entry(uplink.to_owned()).or_default();
        let busy = self
            .running
            .get(uplink)
            .is_some_and(|task| !task.is_finished());
        if busy || !backoff.due(dead, after, Instant::now()) {
            return;
        }
        let (uplink, interface, action) = (
            uplink.to_owned(),
            interface.to_owned(),
            on_dead.action.clone(),
        );
        info!(%uplink, attempt = backoff.attempts, "uplink still dead: {}", describe(&action));
        let task = tokio::spawn({
            let uplink = uplink.clone();
            async move {
                match act(&uplink, &interface, &action).await {
                    Ok(done) => info!(%uplink, "on_dead: {done}"),
                    Err(problem) => warn!(%uplink, "on_dead failed: {problem}"),
                }
            }
        });
        self.running.insert(uplink, task);
    }

    /// Forgets uplinks no longer configured with an action.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.backoff.retain(|name, _| keep(name));
        self.running.retain(|name, _| keep(name));
    }
}

fn describe(action: &DeadAction) -> String {
    match action {
        DeadAction::Renew => "renewing its DHCP lease".into(),
        DeadAction::Bounce => "bouncing its link".into(),
        DeadAction::Command(argv) => format!("running {argv:?}"),
    }
}

async fn act(uplink: &str, interface: &str, action: &DeadAction) -> Result<String, String> {
    match action {
        DeadAction::Renew => super::dhcp_client::renew(interface).await,
        DeadAction::Bounce => {
            let nl = Netlink::connect().map_err(|err| err.to_string())?;
            nl.set_link(interface, false)
                .await
                .map_err(|err| err.to_string())?;
            tokio::time::sleep(BOUNCE_DOWN).await;
            nl.set_link(interface, true)
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!(
                "{interface} was down for {} s, up again",
                BOUNCE_DOWN.as_secs()
            ))
        }
        DeadAction::Command(argv) => {
            let env = vec![
                ("MULTIROUTE_UPLINK", uplink.to_owned()),
                ("MULTIROUTE_INTERFACE", interface.to_owned()),
            ];
            let input = Input { env, stdin: None };
            run_bounded(argv, input, TIMEOUT).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acts_after_the_delay_then_backs_off_and_resets_when_alive() {
        let (t0, after) = (Instant::now(), Duration::from_secs(30));
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut backoff = Backoff::default();
        assert!(!backoff.due(true, after, at(0)));
        assert!(!backoff.due(true, after, at(29)));
        assert!(backoff.due(true, after, at(30)), "dead for 30 s");
        assert!(!backoff.due(true, after, at(31)));
        assert!(!backoff.due(true, after, at(89)));
        assert!(backoff.due(true, after, at(90)), "then 60 s later");
        assert!(backoff.due(true, after, at(210)), "then 120 s later");
        assert!(!backoff.due(false, after, at(211)), "alive: forgotten");
        assert!(!backoff.due(true, after, at(212)));
        assert!(
            backoff.due(true, after, at(242)),
            "a new outage starts over"
        );
    }
}
