//! What can go wrong with the datapath, each with the path or map it concerns.
use std::{
    io,
    path::{Path, PathBuf},
};

use crate::path_error::PathError;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("loading the classifier (pins under {path}): {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map {name}: batch update: {source}")]
    Batch {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the running datapath's maps under {path} have layout {held}; this multiroute needs layout {wanted} and cannot adopt them: run `multiroute unload` (sessions keep their NAT bindings; the next load puts them back on their uplinks from conntrack), then `multiroute load`"
    )]
    Layout {
        path: PathBuf,
        held: u32,
        wanted: u32,
    },
    #[error("{what}: {source}")]
    Link {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub(crate) fn io_error(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> DatapathError {
    let at = PathError::at(path, what);
    move |source| DatapathError::Io(at(source))
}

pub(crate) fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map {
        name,
        source: Box::new(source),
    }
}
