//! The running `load`: one loop that owns the plan and reacts to everything that
//! can change it — probe results ([`prober`] → [`health`]), link, address, route and
//! rule events ([`link_events`]), signals and control requests ([`control`]). Every
//! reaction is the same step: re-read the host, re-plan with the uplinks health
//! declares dead, and [`apply::update`] the kernel to the new plan.
//!
//! Stopping the daemon (SIGTERM, SIGINT) stops only the control plane: routing and
//! the datapath stay and keep every session where it is, so a restart or an upgrade
//! moves nothing. `multiroute unload` removes everything.
mod announce;
mod answers;
mod budget;
pub mod control;
pub mod dhcp_client;
mod error;
pub mod events;
pub mod fast_path;
pub mod health;
mod helper;
pub mod hooks;
mod housekeeping;
mod http;
pub mod link_events;
pub mod metrics;
pub mod nft_events;
pub mod probe;
pub mod prober;
mod reload;
pub mod report;
mod setup;
mod silence;
pub mod states;
mod task;
pub mod view;
mod web;
mod zombie;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use sd_notify::NotifyState;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinSet,
};
use tracing::{error, info, warn};

use crate::{
    apply::{self, ApplyError, Kernel},
    config::Config,
    netlink::Netlink,
    plan::{Condition, Observed, Plan, Verdicts},
};
pub use error::DaemonError;
use error::os;
use fast_path::FastPath;
use health::{Change, HealthBook, Thresholds};
use prober::{ProbeResult, Prober, Timing};
pub use report::{DaemonReport, RuleReport, UplinkReport};
use setup::{log_plan, log_takeover, prepare_host};
use states::{States, Transition};
pub use task::Task;

pub struct Daemon {
    config_path: PathBuf,
    config: Config,
    plan: Plan,
    /// Netlink, the datapath and its maps. The datapath keeps the loaded
    /// program's handle until teardown; the pinned links keep it attached on
    /// their own.
    kernel: Kernel,
    health: HealthBook,
    probers: BTreeMap<String, Prober>,
    next_ident: u16,
    states: States,
    results: mpsc::Sender<ProbeResult>,
    incoming_results: mpsc::Receiver<ProbeResult>,
    /// The kernel holds the running plan: the last apply and check succeeded.
    ready: bool,
    /// When a default route a gateway was learned from runs out (an RA lifetime):
    /// the host is read again then, as nothing announces it.
    recheck_at: Option<Instant>,
    /// Follows conntrack for the fast path, while `[datapath] fast_path` is on.
    fast_path: Option<FastPath>,
    /// Metered uplinks' byte counts, kept in the state directory.
    meters: budget::Meters,
    /// When the meters were last written to their file (none yet since start).
    meters_saved: Option<Instant>,
    /// Dead uplinks' `on_dead` actions: when each is due, which one runs.
    zombies: zombie::Zombies,
    /// What happened, for `events`, its followers and the hooks.
    events: events::EventLog,
    /// The `[[hook]]`s following the events.
    hooks: hooks::Hooks,
    /// Each uplink's figures over the last minutes, for the status page.
    history: web::History,
}

/// How often the daemon checks that the kernel still holds its plan.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

fn thresholds(config: &Config) -> Thresholds {
    Thresholds {
        down: config.health.down,
        up: config.health.up,
    }
}

/// What the previous daemon held as not carrying, less the uplinks that only
/// stood by on a backup tier in `trusting` (the plan with none dead): alive, so
/// not to be presumed dead.
fn presumed_dead(config: &Config, trusting: &Plan) -> Result<BTreeSet<String>, DaemonError> {
    let held = apply::datapath::not_carrying(&config.routing.pin_path).map_err(ApplyError::from)?;
    let standing_by = |name: &str| {
        let uplink = name.split_once('/').map_or(name, |(uplink, _)| uplink);
        trusting.uplink(uplink).is_some_and(|u| u.standby)
    };
    Ok(held.into_iter().filter(|name| !standing_by(name)).collect())
}

impl Daemon {
    /// Applies the config (every uplink trusted until probed) and starts probing.
    /// On failure the host is left as it was.
    pub async fn start(config_path: PathBuf, config: Config) -> Result<Self, DaemonError> {
        hooks::check_programs(&config, &config_path)?;
        let nl = Netlink::connect().map_err(ApplyError::from)?;
        let pin_path = &config.routing.pin_path;
        let running = !apply::datapath::attached_interfaces(pin_path)
            .map_err(ApplyError::from)?
            .is_empty();
        // A restart keeps the previous daemon's verdicts: an uplink it had found
        // dead gets no new flows until probes bring it back.
        // Budgets used up before a restart stay so from the first plan on.
        let meters = budget::Meters::load(&config.control.state_dir)?;
        let exhausted = budget::exhausted(&config, &meters);
        let verdicts = |dead| Verdicts {
            dead,
            degraded: BTreeSet::new(),
            exhausted: exhausted.clone(),
        };
        let (trusting, observed) = apply::plan(&nl, &config, &verdicts(BTreeSet::new())).await?;
        let presumed_dead = if running {
            presumed_dead(&config, &trusting)?
        } else {
            BTreeSet::new()
        };
        let plan = if presumed_dead.is_empty() {
            trusting
        } else {
            apply::replan(&config, &observed, &verdicts(presumed_dead.clone()))?
        };
        prepare_host(&nl, &config).await?;
        let applied = apply::apply(&nl, &config, &plan, &observed, running).await;
        let (datapath, maps, takeover) = match applied {
            Ok(applied) => applied,
            Err(err) => {
                // A half-applied set-up helps nobody; a running one stays untouched
                // (the next `load` or `unload` converges either way).
                if !running && let Err(cleanup) = apply::teardown(&nl, &config).await {
                    error!("cleaning up after the failed load also failed: {cleanup}");
                }
                return Err(err.into());
            }
        };
        log_takeover(&takeover);
        let (results, incoming_results) = mpsc::channel(256);
        let states = States::start(&plan, SystemTime::now());
        let mut daemon = Daemon {
            kernel: Kernel { nl, datapath, maps },
            config_path,
            health: HealthBook::new(thresholds(&config)),
            config,
            plan,
            probers: BTreeMap::new(),
            // Distinct echo identifiers per daemon and per prober.
            next_ident: std::process::id() as u16,
            states,
            results,
            incoming_results,
            ready: true,
            recheck_at: None,
            fast_path: None,
            meters,
            meters_saved: None,
            zombies: zombie::Zombies::default(),
            events: events::EventLog::default(),
            hooks: hooks::Hooks::default(),
            history: web::History::default(),
        };
        daemon.hooks = hooks::start(
            &daemon.config.hooks,
            &daemon.events.sender(),
            &daemon.config_path,
        );
        daemon.recheck_when_expiring(&observed);
        log_plan(&daemon.plan);
        daemon.sync_probers();
        daemon.health.presume_down(&presumed_dead);
        daemon.follow_fast_path();
        Ok(daemon)
    }

    /// Runs until SIGTERM/SIGINT, then stops the control plane and leaves routing
    /// and the datapath in place: sessions keep their uplinks across a restart.
    pub async fn run(mut self) -> Result<(), DaemonError> {
        let mut terminate = signal(SignalKind::terminate()).map_err(os("handling SIGTERM"))?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(os("handling SIGINT"))?;
        let mut hangup = signal(SignalKind::hangup()).map_err(os("handling SIGHUP"))?;
        let mut tasks = JoinSet::new();
        let links = link_events::subscribe(&mut tasks).map_err(os("subscribing to link events"))?;
        let nft =
            nft_events::subscribe(&mut tasks).map_err(os("subscribing to nftables events"))?;
        let (request_tx, mut requests) = mpsc::channel(16);
        let _socket = control::listen(
            &self.config.control.socket,
            request_tx.clone(),
            self.events.sender(),
            &mut tasks,
        )?;
        if let Some(listen) = self.config.metrics.listen {
            metrics::serve(listen, request_tx.clone(), &mut tasks)
                .await
                .map_err(os("listening for metrics scrapes"))?;
        }
        web::serve(&self.config.web, request_tx, &mut tasks)
            .await
            .map_err(os("listening for the status page"))?;
        info!(
            config = %self.config_path.display(),
            "multiroute is running; SIGHUP reloads, SIGTERM stops (steering stays), `multiroute unload` removes everything"
        );
        notify_systemd(&[NotifyState::Ready]);
        self.notify_status();
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut chores = tokio::time::interval(budget::READ_EVERY);
        chores.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                _ = terminate.recv() => break None,
                _ = interrupt.recv() => break None,
                _ = hangup.recv() => self.reload().await,
                () = links.notified() => self.reconcile(None).await,
                () = nft.notified() => self.restore_nft_table(),
                Some(result) = self.incoming_results.recv() => {
                    let change = self.health.record(
                        &result.uplink,
                        result.target,
                        (result.outcome, result.cadence),
                        Instant::now(),
                    );
                    if change.is_some() {
                        self.reconcile(change).await;
                    }
                }
                Some(incoming) = requests.recv() => self.answer(incoming).await,
                _ = resync.tick() => self.resync().await,
                _ = chores.tick() => self.housekeeping().await,
                () = until(self.recheck_at) => self.reconcile(None).await,
                Some(ended) = tasks.join_next() => {
                    break Some(match ended {
                        Ok(task) => task,
                        Err(_) => Task::LinkEvents,
                    })
                }
            }
        };
        notify_systemd(&[NotifyState::Stopping]);
        self.meter().await;
        self.save_meters();
        self.probers.clear();
        self.fast_path = None;
        tasks.abort_all();
        info!(
            "stopped; routing and the datapath stay in place and keep every session on its uplink, without health checks: `multiroute load` resumes, `multiroute unload` removes everything"
        );
        match ended {
            None => Ok(()),
            Some(task) => Err(DaemonError::TaskEnded(task)),
        }
    }

    /// Something changed in nftables: if it took multiroute's table (a firewall
    /// reload flushing the ruleset), put it back now. Its own loads wake this too;
    /// they find the table there.
    fn restore_nft_table(&mut self) {
        match apply::restore_nft_table(&self.config, &self.plan) {
            Ok(false) => {}
            Ok(true) => warn!(
                "put back the nftables table inet {} (something flushed it, a firewall reload?)",
                crate::plan::nft::TABLE
            ),
            Err(err) => error!("could not put back the nftables table: {err}"),
        }
    }

    /// Re-reads the host and moves the kernel to the plan for it; `change` is the
    /// probe verdict that prompted this, if one did.
    async fn reconcile(&mut self, change: Option<Change>) {
        match apply::plan(&self.kernel.nl, &self.config, &self.verdicts()).await {
            Ok((plan, observed)) => {
                self.recheck_when_expiring(&observed);
                self.move_to(plan, &observed, change).await
            }
            Err(err) => {
                error!("could not follow a change on the host, will retry on the next one: {err}")
            }
        }
    }

    /// Moves the kernel from the running plan to `plan`, then records and logs
    /// what changed.
    async fn move_to(&mut self, plan: Plan, observed: &Observed, change: Option<Change>) {
        let started = Instant::now();
        let update = self
            .kernel
            .update(&self.config, &self.plan, &plan, observed)
            .await;
        let updated = match update {
            Ok(updated) => updated,
            Err(err) => {
                self.ready = false;
                error!("could not follow a change on the host, will retry on the next one: {err}");
                return;
            }
        };
        self.ready = true;
        let elapsed = started.elapsed();
        if plan == self.plan && updated.routing > 0 {
            warn!(
                "put back what something else removed or changed: {} rules or routes",
                updated.routing
            );
        }
        match (self.plan.ha_backup(), plan.ha_backup()) {
            (false, true) => info!(
                "standby: no uplink has its address (a VRRP peer holds them); steering nothing until they arrive"
            ),
            (true, false) => info!("active: uplink addresses arrived"),
            _ => {}
        }
        let old = std::mem::replace(&mut self.plan, plan);
        if let Some(fast_path) = &self.fast_path {
            fast_path.follow_plan(&self.plan);
        }
        let transitions = self.record_transitions(change.as_ref(), elapsed);
        self.announce(&old, &transitions, &updated.flushed);
        for flush in updated.flushed {
            info!(
                uplink = %flush.uplink,
                address = %flush.address,
                entries = flush.entries,
                "flushed the conntrack entries NATed to the uplink's old address"
            );
        }
        if updated.seeded > 0 {
            info!(
                sessions = updated.seeded,
                "put the sessions conntrack NATs to the arrived addresses on their uplinks"
            );
        }
        if updated.returned > 0 {
            info!(
                flows = updated.returned,
                "moved flows back to the uplink their policy rule prefers"
            );
        }
        self.sync_probers();
    }

    /// The periodic check: a host change no event announced gets a full re-plan;
    /// otherwise whatever someone removed of the running plan is put back.
    async fn resync(&mut self) {
        let (plan, observed) =
            match apply::plan(&self.kernel.nl, &self.config, &self.verdicts()).await {
                Ok(planned) => planned,
                Err(err) => return error!("checking the set-up failed, will retry: {err}"),
            };
        self.recheck_when_expiring(&observed);
        if plan != self.plan {
            return self.move_to(plan, &observed, None).await;
        }
        let repaired = self.kernel.repair(&self.config, &plan, &observed).await;
        match repaired {
            Ok(repaired) => {
                self.ready = true;
                if !repaired.is_empty() {
                    let what = repaired.join(", ");
                    warn!(
                        "put back what something else removed or changed (a firewall reload flushing nftables, a deleted rule or route): {what}"
                    );
                    self.events
                        .emit(events::Event::new("repaired", format!("put back: {what}")));
                }
            }
            Err(err) => {
                self.ready = false;
                error!("checking the set-up failed, will retry: {err}");
            }
        }
    }

    /// Reads the host again just after the soonest learned default runs out, so an
    /// ISP router that stopped advertising loses its uplink's gateway on time.
    fn recheck_when_expiring(&mut self, observed: &Observed) {
        // The kernel counts lifetimes in 10 ms ticks: a little later, it has run out.
        self.recheck_at = observed
            .default_expiry
            .map(|left| Instant::now() + left + Duration::from_millis(50));
    }

    /// Logs and remembers every uplink whose liveness changed with the new plan.
    fn record_transitions(
        &mut self,
        change: Option<&Change>,
        elapsed: Duration,
    ) -> Vec<Transition> {
        let applied_ms = elapsed.as_secs_f64() * 1000.0;
        let transitions = self.states.follow(&self.plan, change, SystemTime::now());
        for Transition {
            uplink,
            condition,
            reason,
            ..
        } in &transitions
        {
            match condition {
                Condition::Up => info!(%uplink, %reason, applied_ms, "uplink up"),
                Condition::Degraded => warn!(
                    %uplink, %reason, applied_ms,
                    "uplink DEGRADED: no new flows while a good uplink of its tier has them"
                ),
                Condition::Down => warn!(%uplink, %reason, applied_ms, "uplink DOWN"),
            }
        }
        self.notify_status();
        if self.plan.fail_open() {
            error!(
                "ALL UPLINKS ARE DOWN: failing open, LAN traffic follows the main table's original default"
            );
        }
        transitions
    }

    /// One line for `systemctl status`.
    fn notify_status(&self) {
        let up = self.plan.uplinks.iter().filter(|u| u.alive.v4).count();
        let line = if self.plan.fail_open() {
            "ALL UPLINKS DOWN: failing open".to_owned()
        } else {
            format!("{up}/{} uplinks up", self.plan.uplinks.len())
        };
        notify_systemd(&[NotifyState::Status(&line)]);
    }

    /// Starts, restarts or stops probers so each ready uplink is probed at its
    /// current address and targets.
    fn sync_probers(&mut self) {
        let timing = Timing {
            timeout: Duration::from_millis(self.config.health.timeout_ms),
            burst: self.config.health.down,
        };
        let wanted = prober::wanted(&self.config, &self.plan);
        self.probers
            .retain(|name, prober| wanted.get(name) == Some(&prober.spec));
        for (name, spec) in &wanted {
            if self.probers.contains_key(name) {
                continue;
            }
            self.next_ident = self.next_ident.wrapping_add(1);
            match prober::spawn(spec.clone(), timing, self.next_ident, self.results.clone()) {
                Ok(prober) => {
                    self.probers.insert(name.clone(), prober);
                }
                Err(err) => error!(uplink = %name, "cannot start probing: {err}"),
            }
        }
        self.health.track(
            &wanted
                .into_iter()
                .map(|(name, spec)| (name, spec.watch))
                .collect(),
        );
    }
}

/// Completes at `deadline`, never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Tells systemd (`Type=notify`) about our state; a no-op outside systemd.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        warn!("cannot notify systemd: {err}");
    }
}
