//! An I/O failure on a named path, with what multiroute was doing there.
use std::{
    io,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}: {source}")]
pub struct PathError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

impl PathError {
    /// For `map_err`: `fs::remove_file(p).map_err(PathError::at(p, "removing a pin"))`.
    pub fn at(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> PathError {
        let path = path.to_owned();
        move |source| PathError { path, what, source }
    }
}
