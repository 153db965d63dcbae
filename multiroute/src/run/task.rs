//! The daemon's background tasks, named for the log when one ends.
/// The daemon's background tasks; one ending means the daemon lost a sense or a
/// voice, so it stops (and systemd restarts it) rather than run on half-deaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    ControlSocket,
    Metrics,
    Web,
    LinkEvents,
    NftEvents,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::ControlSocket => "the control socket listener",
            Task::Metrics => "the metrics listener",
            Task::Web => "the status page listener",
            Task::LinkEvents => "the netlink event listener",
            Task::NftEvents => "the nftables event listener",
        })
    }
}
