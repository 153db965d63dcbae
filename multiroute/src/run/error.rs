//! Why the daemon could not start or had to stop.
use super::task::Task;
use crate::{apply::ApplyError, config::ConfigError, path_error::PathError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{0}; move it away to count the budgets afresh")]
    State(#[from] super::budget::StateError),
    #[error("{0}")]
    Host(String),
    #[error("{0} stopped unexpectedly; the datapath keeps steering, restart multiroute")]
    TaskEnded(Task),
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub(super) fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Os { what, source }
}
