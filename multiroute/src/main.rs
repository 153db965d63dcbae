//! The `multiroute` command line: parses arguments, sets up logging, dispatches to
//! one file per subcommand, and turns failures into one line and an exit code.
mod cli;
mod commands;

use std::io::IsTerminal;

use clap::FromArgMatches as _;
use cli::{BudgetAction, Cli, Command};

fn main() {
    // A shell asking for completions (COMPLETE=bash …) is answered, and we exit.
    clap_complete::CompleteEnv::with_factory(cli::command).complete();
    let cli = Cli::from_arg_matches(&cli::command().get_matches()).unwrap_or_else(|err| err.exit());
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
        Command::Init { write } => commands::init::run(write.as_deref()),
        Command::Manual { dir } => commands::manual::write(&dir),
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
