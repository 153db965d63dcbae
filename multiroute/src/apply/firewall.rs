//! Installs `plan::nft`'s ruleset with `nft -f -`. nftables' netlink interface is a
//! bytecode VM with no stable Rust binding; `nft` is its supported front end and
//! applies a whole file as one transaction, so the table is replaced atomically.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use crate::plan::{FirewallPlan, nft};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft ({0}); install the nftables package")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused multiroute's ruleset: {0}")]
    Refused(String),
}

fn run(args: &[&str], input: &str) -> Result<std::process::Output, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(NftError::Spawn)?;
    }
    child.wait_with_output().map_err(NftError::Spawn)
}

fn checked(output: std::process::Output) -> Result<(), NftError> {
    if output.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}

/// Replaces multiroute's table with the plan's.
pub fn apply(plan: &FirewallPlan, config: &crate::config::Config) -> Result<(), NftError> {
    let ruleset = nft::ruleset(
        &plan.inbound,
        &plan.nat6,
        config.routing.fwmark_mask,
        config.numbering().inbound_flag(),
    );
    checked(run(&["-f", "-"], &ruleset)?)
}

/// Whether multiroute's table is there (a firewall reload that flushes the whole
/// ruleset takes it away).
pub fn present() -> Result<bool, NftError> {
    Ok(run(&["list", "table", "inet", nft::TABLE], "")?
        .status
        .success())
}

/// Removes multiroute's table; returns whether there was one.
pub fn remove() -> Result<bool, NftError> {
    if !present()? {
        return Ok(false);
    }
    checked(run(&["delete", "table", "inet", nft::TABLE], "")?)?;
    Ok(true)
}
