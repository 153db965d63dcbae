//! The daemon's once-a-second chores ([`budget::READ_EVERY`]). Metered uplinks:
//! each one's interface counter is read into its meter; crossing a warning or the
//! quota is logged, and a used-up quota (or a new period, or `budget reset`)
//! re-plans; the meters are written to the state directory every [`SAVE_EVERY`],
//! on every such change and on stop. Dead uplinks with an `on_dead` action get it
//! when due ([`super::zombie`]).
use std::time::{Duration, Instant};

use jiff::Zoned;
use tracing::{error, info, warn};

use super::{
    Daemon,
    budget::{self, BudgetEvent, exhausted},
    control::{self, Response},
    events::Event,
};
use crate::{
    config::AtQuota,
    observe::link,
    plan::{Condition, Verdicts},
};

/// At most this much counting is lost to a power cut.
const SAVE_EVERY: Duration = Duration::from_secs(30);

impl Daemon {
    /// What health checks and the budgets conclude.
    pub(super) fn verdicts(&self) -> Verdicts {
        Verdicts {
            exhausted: exhausted(&self.config, &self.meters),
            ..self.health.verdicts()
        }
    }

    /// The chores of one tick.
    pub(super) async fn housekeeping(&mut self) {
        self.meter().await;
        self.tend_zombies();
        self.sample_history();
    }

    /// Each uplink's best probe figures and byte counter now, for the page.
    fn sample_history(&mut self) {
        self.history
            .retain(|name| self.config.uplinks.iter().any(|u| u.name == name));
        for uplink in &self.config.uplinks {
            let (rtt, loss) = super::health::best(&self.health.report(&uplink.name));
            let bytes = link::bytes(&uplink.interface).unwrap_or(0);
            self.history
                .sample(&uplink.name, rtt, loss.unwrap_or(0.0), bytes);
        }
    }

    /// Gives each dead uplink its `on_dead` action when due.
    fn tend_zombies(&mut self) {
        let names: Vec<&str> = self
            .config
            .uplinks
            .iter()
            .filter(|u| u.on_dead.is_some())
            .map(|u| u.name.as_str())
            .collect();
        self.zombies.retain(|name| names.contains(&name));
        for uplink in &self.config.uplinks {
            let Some(on_dead) = &uplink.on_dead else {
                continue;
            };
            let dead = self
                .states
                .get(&uplink.name)
                .is_some_and(|state| state.condition == Condition::Down);
            self.zombies
                .tend(&uplink.name, &uplink.interface, on_dead, dead);
        }
    }

    /// Reads every budgeted uplink's counter into its meter.
    pub(super) async fn meter(&mut self) {
        let now = Zoned::now();
        let before = exhausted(&self.config, &self.meters);
        let mut changed = false;
        for uplink in &self.config.uplinks {
            let Some(budget) = &uplink.budget else {
                continue;
            };
            let Some(reading) = budget::read(&uplink.interface) else {
                continue;
            };
            let meter = self.meters.meter(&uplink.name, budget, &now);
            for event in meter.advance(budget, reading, &now) {
                changed = true;
                let used = meter.describe(budget);
                let name = uplink.name.as_str();
                // Each crossing is logged and told to the event stream alike.
                let (event, reason) = match event {
                    BudgetEvent::NewPeriod => {
                        info!(
                            uplink = name,
                            "budget: a new period begins, counting from 0"
                        );
                        continue;
                    }
                    BudgetEvent::Warning { percent } => {
                        warn!(uplink = name, %used, "budget warning: {percent} % of the quota used");
                        (
                            "budget_warning",
                            format!("{percent} % of the quota used: {used}"),
                        )
                    }
                    BudgetEvent::Exhausted => {
                        let action = match budget.at_quota {
                            AtQuota::Standby => {
                                "standby: it carries traffic only while no other uplink is alive"
                            }
                            AtQuota::Stop => {
                                "stopped: it carries nothing until `budget reset` or the next period"
                            }
                            AtQuota::Warn => "warn only: it carries on",
                        };
                        warn!(uplink = name, %used, "budget EXHAUSTED: {action}");
                        let reason =
                            format!("quota used up: {used}; at_quota = {:?}", budget.at_quota);
                        ("exhausted", reason)
                    }
                };
                self.events.emit(Event::about(event, name, reason));
            }
        }
        // The first reading after a start is kept at once: what passed while no
        // daemon ran (a crash, an upgrade) must not wait for the next save.
        let due = self
            .meters_saved
            .is_none_or(|at| at.elapsed() >= SAVE_EVERY);
        if changed || due {
            self.save_meters();
        }
        if exhausted(&self.config, &self.meters) != before {
            self.reconcile(None).await;
        }
    }

    pub(super) fn save_meters(&mut self) {
        if self.meters.uplinks.is_empty() {
            return;
        }
        match self.meters.save() {
            Ok(()) => self.meters_saved = Some(Instant::now()),
            Err(err) => error!("could not keep the budget counts: {err}"),
        }
    }

    /// `multiroute budget reset`: a new data pack.
    pub(super) async fn reset_budget(&mut self, name: &str) -> Response {
        let uplink = match self.config.uplink_position(name) {
            Ok(index) => &self.config.uplinks[index],
            Err(unknown) => return control::refusal(&unknown.to_string(), true),
        };
        let Some(budget) = uplink.budget.clone() else {
            return control::refusal(&format!("uplink {name:?} has no [uplink.budget]"), true);
        };
        let meter = self.meters.meter(name, &budget, &Zoned::now());
        let previous = meter.describe(&budget);
        meter.reset();
        info!(uplink = name, %previous, "budget reset: counting from 0");
        self.save_meters();
        self.reconcile(None).await;
        Response::BudgetReset {
            uplink: name.to_owned(),
            previous,
        }
    }
}
