//! The `multiroute` command line: parses arguments, sets up logging, dispatches to
//! one file per subcommand, and turns failures into one line and an exit code.
mod commands;

use std::{io::IsTerminal, path::PathBuf};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use multiroute::{config::DEFAULT_PATH, net::IpNet};

#[derive(Parser)]
#[command(
    name = "multiroute",
    version,
    about = "Per-session multi-WAN routing over NATed uplinks"
)]
struct Cli {
    /// Config file of the instance to act on.
    #[arg(short = 'c', long = "config", global = true, default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Change one uplink's weight in the running `load` (0 drains it).
    Weight {
        /// The uplink's `name` from the config.
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
        #[arg(long)]
        uplink: Option<String>,
        /// Only flows from this LAN address or prefix.
        #[arg(long)]
        src: Option<IpNet>,
        /// Only flows to this address or prefix.
        #[arg(long)]
        dst: Option<IpNet>,
    },
}

#[derive(Subcommand)]
enum BudgetAction {
    /// Start the uplink's count again at 0 (a new data pack); it carries traffic
    /// again if it was exhausted.
    Reset {
        /// The uplink's `name` from the config.
        name: String,
    },
}

fn main() {
    // The long version names the commit and map layout, known only at run time here.
    let version: &'static str = Box::leak(multiroute::version().into_boxed_str());
    let cli = Cli::command().version(version).get_matches();
    let cli = Cli::from_arg_matches(&cli).unwrap_or_else(|err| err.exit());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in journald or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MULTIROUTE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Load => commands::load::run(&cli.config),
        Command::Unload => commands::unload::run(&cli.config),
        Command::Status { json } => commands::status::run(&cli.config, json),
        Command::Check { plan } => commands::check::run(&cli.config, plan),
        Command::Weight { name, weight } => commands::weight::run(&cli.config, &name, weight),
        Command::Events { json, follow } => commands::events::run(&cli.config, json, follow),
        Command::Budget {
            action: BudgetAction::Reset { name },
        } => commands::budget::reset(&cli.config, &name),
        Command::Flows {
            json,
            uplink,
            src,
            dst,
        } => commands::flows::run(
            &cli.config,
            json,
            &commands::flows::Filter { uplink, src, dst },
        ),
    };
    if let Err(failure) = result {
        eprintln!("multiroute: {:#}", failure.error());
        std::process::exit(failure.exit_code());
    }
}
