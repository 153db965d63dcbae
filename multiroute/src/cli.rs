//! The command line's definition: what `--help`, the man pages and the shell
//! completions are all generated from.
use std::{ffi::OsStr, path::PathBuf};

use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
use multiroute::{
    config::{Config, DEFAULT_PATH},
    net::IpNet,
};

/// Exit codes, files and signals: the man page's and `--help`'s closing text.
const AFTER_HELP: &str = "\
Exit status: 0 success, 1 runtime failure, 2 usage or config error.

Files: /etc/multiroute/multiroute.toml (the config, multiroute.toml(5)), \
/var/lib/multiroute (state kept across restarts), /run/multiroute/control.sock \
(the running load's control socket), /sys/fs/bpf/multiroute (the pinned datapath).

Signals to load: SIGHUP re-reads the config and applies the difference; SIGTERM and \
SIGINT stop it and leave steering in place, so a restart or an upgrade moves no \
session (unload removes everything).";

#[derive(Parser)]
#[command(
    name = "multiroute",
    version,
    about = "Per-session multi-WAN routing over NATed uplinks",
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    /// Config file of the instance to act on.
    #[arg(short = 'c', long = "config", global = true, default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Set up tables, rules, routes and the datapath, then run in the foreground.
    Load,
    /// Remove everything multiroute set up (also after a crash); idempotent.
    Unload,
    /// Show each uplink's state, addresses, table, flows and traffic.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config and the host without changing anything.
    Check {
        /// Also print the rules and routes multiroute wants (the running load's
        /// plan when one runs), in `ip` syntax.
        #[arg(long)]
        plan: bool,
    },
    /// Propose a first config from this host's interfaces, addresses and routes.
    Init {
        /// Write it to this file (never over an existing one) instead of printing it.
        #[arg(long, value_name = "PATH")]
        write: Option<PathBuf>,
    },
    /// Change one uplink's weight in the running `load` (0 drains it).
    Weight {
        /// The uplink's `name` from the config.
        #[arg(add = ArgValueCompleter::new(uplink_names))]
        name: String,
        /// New weight, 0-256. Live until the next reload or restart.
        weight: u32,
    },
    /// What the running `load` did: transitions, failovers, budgets, reloads.
    Events {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Then each new event as it happens, until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// A metered uplink's data budget.
    Budget {
        #[command(subcommand)]
        action: BudgetAction,
    },
    /// List the tracked flows and the uplink each one uses.
    Flows {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Only flows on this uplink.
        #[arg(long, add = ArgValueCompleter::new(uplink_names))]
        uplink: Option<String>,
        /// Only flows from this LAN address or prefix.
        #[arg(long)]
        src: Option<IpNet>,
        /// Only flows to this address or prefix.
        #[arg(long)]
        dst: Option<IpNet>,
    },
    /// Write the man pages and shell completions into DIR (for packagers).
    #[command(hide = true)]
    Manual { dir: PathBuf },
}

#[derive(Subcommand)]
pub enum BudgetAction {
    /// Start the uplink's count again at 0 (a new data pack); it carries traffic
    /// again if it was exhausted.
    Reset {
        /// The uplink's `name` from the config.
        #[arg(add = ArgValueCompleter::new(uplink_names))]
        name: String,
    },
}

/// The command with its long version (the commit and map layout, known only at
/// run time here).
pub fn command() -> clap::Command {
    let version: &'static str = Box::leak(multiroute::version().into_boxed_str());
    Cli::command().version(version)
}

/// The uplink names of the config the command line being completed names (its
/// `-c`), or of the default config; none when it cannot be read.
fn uplink_names(current: &OsStr) -> Vec<CompletionCandidate> {
    let current = current.to_string_lossy();
    let path = config_in_words(std::env::args().skip_while(|word| word != "--"));
    let Ok(config) = Config::load(&path) else {
        return Vec::new();
    };
    config
        .uplinks
        .into_iter()
        .filter(|uplink| uplink.name.starts_with(current.as_ref()))
        .map(|uplink| CompletionCandidate::new(uplink.name))
        .collect()
}

/// The `-c PATH`, `-cPATH`, `--config PATH` or `--config=PATH` among `words`.
fn config_in_words(words: impl Iterator<Item = String>) -> PathBuf {
    let mut words = words.peekable();
    let mut found = PathBuf::from(DEFAULT_PATH);
    while let Some(word) = words.next() {
        if word == "-c" || word == "--config" {
            if let Some(path) = words.next_if(|next| !next.is_empty()) {
                found = path.into();
            }
        } else if let Some(path) = word
            .strip_prefix("--config=")
            .or_else(|| word.strip_prefix("-c").filter(|p| !p.is_empty()))
        {
            found = path.into();
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> PathBuf {
        config_in_words(line.split(' ').map(str::to_owned))
    }

    #[test]
    fn completion_reads_the_config_the_line_names() {
        assert_eq!(words("-- multiroute weight "), PathBuf::from(DEFAULT_PATH));
        assert_eq!(
            words("-- multiroute -c /a.toml weight "),
            PathBuf::from("/a.toml")
        );
        assert_eq!(
            words("-- multiroute weight --config=/b.toml "),
            PathBuf::from("/b.toml")
        );
        assert_eq!(
            words("-- multiroute -c/c.toml weight i"),
            PathBuf::from("/c.toml")
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }
}
