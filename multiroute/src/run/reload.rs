//! SIGHUP: the config read again and moved to like any other change, and
//! `[datapath] fast_path` followed.
use tracing::{error, info, warn};

use super::{
    Daemon, DaemonError, FastPath, HealthBook, events::Event, setup::log_plan, thresholds,
};
use crate::{
    apply,
    config::{BalanceBy, Config},
};

impl Daemon {
    /// SIGHUP: re-read the config and move to it like to any other change: uplinks
    /// that stay keep their slot and flows, removed ones' flows move, new ones join
    /// the ring. A config that does not validate changes nothing.
    pub(super) async fn reload(&mut self) {
        let checked = async {
            let config = Config::load(&self.config_path)?;
            super::hooks::check_programs(&config, &self.config_path)?;
            // Interfaces the new config names must exist before anything changes.
            apply::plan(&self.kernel.nl, &config, &self.verdicts()).await?;
            Ok::<_, DaemonError>(config)
        };
        let config = match checked.await {
            Ok(config) => config,
            Err(err) => return error!("reload refused, keeping the running set-up: {err}"),
        };
        if thresholds(&config) != thresholds(&self.config) {
            self.health = HealthBook::new(thresholds(&config));
        }
        if config.health != self.config.health {
            // New timing: every prober restarts with it.
            self.probers.clear();
        }
        if self.config.balance.by == BalanceBy::Connection
            && config.balance.by != BalanceBy::Connection
        {
            // The affinity table is sized for the mode at load: the new grouping
            // holds from now on (each host or pair is placed by its own hash), and
            // remembering groups across uplink changes needs the table a restart
            // sizes for it — a restart moves no session.
            warn!(
                "[balance] by changed: new connections are grouped the new way now; restart multiroute (moves no session) so the groups are also remembered across uplink failures"
            );
        }
        if config.hooks != self.config.hooks {
            self.hooks =
                super::hooks::start(&config.hooks, &self.events.sender(), &self.config_path);
        }
        self.config = config;
        info!("configuration reloaded");
        let reason = format!("configuration reloaded from {}", self.config_path.display());
        self.events.emit(Event::new("reloaded", reason));
        self.reconcile(None).await;
        self.follow_fast_path();
        if let Err(err) = self
            .kernel
            .datapath
            .attach(&self.plan.datapath.lan, &self.plan.datapath.fast_replies)
        {
            error!("attaching to the LAN interfaces of the new config: {err}");
        }
        log_plan(&self.plan);
    }

    /// Starts or stops following conntrack as `[datapath] fast_path` says.
    pub(super) fn follow_fast_path(&mut self) {
        match (self.config.datapath.fast_path, self.fast_path.is_some()) {
            (true, false) => {
                let pin_path = self.config.routing.pin_path.clone();
                let filter = self.kernel.datapath.ends_filter();
                let filter = filter
                    .map_err(|err| warn!("the fast path's thread reads every session's end: {err}"))
                    .ok();
                self.fast_path = Some(FastPath::start(pin_path, &self.plan, filter));
            }
            (false, true) => self.fast_path = None,
            _ => {}
        }
    }
}
