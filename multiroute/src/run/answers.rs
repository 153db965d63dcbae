//! The daemon's answers on the control socket: its report (`status`), a live
//! weight change, the metrics scrape and the plan in force.
use std::time::SystemTime;

use tracing::info;

use super::{
    Daemon,
    control::{self, Incoming, Request, Response},
    metrics,
    report::{BudgetReport, DaemonReport, RuleReport, UplinkReport},
    view::UplinkView,
};
use crate::{
    apply::datapath::Maps,
    config::MAX_WEIGHT,
    net::Family,
    plan::{Condition, health_name},
};

impl Daemon {
    pub(super) async fn answer(&mut self, incoming: Incoming) {
        let reply = match incoming.request {
            Request::Status => Response::Status(self.report()),
            Request::Weight { uplink, weight } => self.set_weight(&uplink, weight).await,
            Request::Metrics => Response::Metrics {
                text: metrics::render(&self.metrics().await),
            },
            Request::Plan => Response::Plan {
                lines: self.plan.lines(),
            },
            Request::BudgetReset { uplink } => self.reset_budget(&uplink).await,
            Request::Page => Response::Page {
                status: self.page().await,
            },
            Request::Events { .. } => Response::Events {
                events: self.events.recent(),
            },
        };
        // The asker may have gone away; nothing to do then.
        let _ = incoming.reply.send(reply);
    }

    /// `multiroute weight`: live until the next reload or restart (the file's
    /// weights win then).
    async fn set_weight(&mut self, name: &str, weight: u32) -> Response {
        if weight > MAX_WEIGHT {
            return control::refusal(&format!("weight {weight} is above {MAX_WEIGHT}"), true);
        }
        let index = match self.config.uplink_position(name) {
            Ok(index) => index,
            Err(unknown) => return control::refusal(&unknown.to_string(), true),
        };
        let uplink = &mut self.config.uplinks[index];
        let previous = std::mem::replace(&mut uplink.weight, weight);
        info!(uplink = name, previous, weight, "weight changed");
        if weight == 0 && previous > 0 {
            let reason = "weight 0: no new flows, its flows stay";
            self.events
                .emit(super::events::Event::about("drained", name, reason));
        }
        self.reconcile(None).await;
        Response::Weight {
            uplink: name.to_owned(),
            previous,
            weight,
        }
    }

    /// The status page's JSON: the uplinks' views, the latest events (newest
    /// first) and each uplink's figures over the last minutes.
    async fn page(&self) -> serde_json::Value {
        let report = self.report();
        let events: Vec<_> = self.events.recent().into_iter().rev().take(30).collect();
        serde_json::json!({
            "version": report.version,
            "fail_open": report.fail_open,
            "standby": report.standby,
            "uplinks": self.views(report).await,
            "events": events,
            "history": self.history,
        })
    }

    /// Every uplink's view, its flows counted off the loop's thread.
    async fn views(&self, report: DaemonReport) -> Vec<UplinkView> {
        // Walking a full flow table takes hundreds of thousands of bpf(2) calls: off
        // the loop's thread, on a handle of its own.
        let pin_path = self.config.routing.pin_path.clone();
        let plan = self.plan.clone();
        tokio::task::spawn_blocking(move || {
            let maps = Maps::open(&pin_path).ok();
            UplinkView::all(&plan, Some(&report), maps.as_ref())
        })
        .await
        .unwrap_or_default()
    }

    async fn metrics(&self) -> metrics::Snapshot {
        let report = self.report();
        let fail_open = report.fail_open;
        let uplinks = self.views(report).await;
        metrics::Snapshot {
            fail_open,
            uplinks,
            hooks: self.hooks.counts(),
            datapath: (0..multiroute_ebpf::family::COUNT)
                .zip(multiroute_ebpf::family::NAMES)
                .flat_map(|(family, name)| {
                    self.kernel
                        .maps
                        .counters(family)
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |(counter, value)| (name, counter.name(), value))
                })
                .collect(),
        }
    }

    fn budget_report(&self, name: &str) -> Option<BudgetReport> {
        let budget = self
            .config
            .uplinks
            .iter()
            .find(|u| u.name == name)?
            .budget
            .as_ref()?;
        let tz = jiff::tz::TimeZone::system();
        let meter = self.meters.uplinks.get(name);
        Some(BudgetReport {
            used_bytes: meter.map_or(0, |m| m.used),
            quota_bytes: budget.quota,
            period_end: meter.map_or(0, |m| m.period_end(budget, &tz)),
            exhausted: meter.is_some_and(|m| m.exhausted(budget)),
            at_quota: format!("{:?}", budget.at_quota).to_lowercase(),
        })
    }

    fn report(&self) -> DaemonReport {
        let active = self.plan.active_tier();
        let uplinks = self
            .plan
            .uplinks
            .iter()
            .filter_map(|u| {
                let state = self.states.get(&u.name)?;
                Some(UplinkReport {
                    name: u.name.clone(),
                    alive: state.condition != Condition::Down,
                    degraded: state.condition == Condition::Degraded,
                    weight: u.weight,
                    tier: u.tier,
                    new_flows: u.takes_new_flows(Family::V4, active),
                    since: state
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64(),
                    reason: state.reason.clone(),
                    state_changes: state.changes,
                    probes: self.health.report(&u.name),
                    alive6: u.alive.v6,
                    degraded6: u.degraded.v6,
                    probes6: self.health.report(&health_name(&u.name, Family::V6)),
                    budget: self.budget_report(&u.name),
                })
            })
            .collect();
        let rules = self
            .plan
            .rule_uses
            .iter()
            .map(|used| RuleReport {
                name: used.name.clone(),
                using: used.using_name.clone(),
            })
            .collect();
        DaemonReport {
            version: crate::version(),
            ready: self.ready,
            fail_open: self.plan.fail_open(),
            standby: self.plan.ha_backup(),
            uplinks,
            rules,
        }
    }
}
