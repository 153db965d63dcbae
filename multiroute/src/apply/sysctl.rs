//! The sysctls `load` changes (see `plan::host::assess`): the old values are
//! recorded next to the lock file first, so `unload` restores them even after a
//! crash.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::{
    config::Config, observe::host::sysctl_path, path_error::PathError, plan::host::SysctlChange,
};

/// Where `load` records the values it changed: beside the lock file.
pub fn record_path(config: &Config) -> PathBuf {
    crate::instance::beside_socket(&config.control.socket, ".sysctl")
}

/// Applies `changes`, recording each original value first. A record left by a
/// crashed `load` is kept: it holds the values from before multiroute.
pub fn apply_sysctls(config: &Config, changes: &[SysctlChange]) -> Result<(), PathError> {
    let record = record_path(config);
    let mut originals: BTreeMap<String, u8> = read_record(&record);
    for change in changes {
        originals.entry(change.key.clone()).or_insert(change.from);
    }
    if !changes.is_empty() {
        write_record(&record, &originals)?;
    }
    for change in changes {
        let path = sysctl_path(&change.key);
        std::fs::write(&path, change.to.to_string())
            .map_err(PathError::at(&path, "setting a sysctl"))?;
    }
    Ok(())
}

/// Puts back every sysctl `load` changed; returns how many.
pub fn restore_sysctls(config: &Config) -> Result<usize, PathError> {
    let record = record_path(config);
    let originals = read_record(&record);
    for (key, value) in &originals {
        let path = sysctl_path(key);
        match std::fs::write(&path, value.to_string()) {
            // An interface that went away took its sysctl with it.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            other => other.map_err(PathError::at(&path, "restoring a sysctl"))?,
        }
    }
    match std::fs::remove_file(&record) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(PathError::at(&record, "removing the sysctl record")(err))
        }
        _ => Ok(originals.len()),
    }
}

fn read_record(path: &Path) -> BTreeMap<String, u8> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

fn write_record(path: &Path, originals: &BTreeMap<String, u8>) -> Result<(), PathError> {
    let text = serde_json::to_string(originals).unwrap_or_default();
    std::fs::write(path, text).map_err(PathError::at(path, "recording sysctls"))
}
