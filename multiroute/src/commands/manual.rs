//! `multiroute manual DIR` (hidden, for packagers): the man pages — multiroute(8),
//! one per subcommand, multiroute.toml(5) from the config reference — and the
//! bash, zsh and fish completions, all generated from the definitions they
//! describe.
use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};
use multiroute::config::{
    EVENT_NAMES,
    reference::{self, Key, Kind},
};

use super::CommandResult;

pub fn write(dir: &Path) -> CommandResult {
    let man8 = dir.join("man/man8");
    let man5 = dir.join("man/man5");
    let completions = dir.join("completions");
    for sub in [&man8, &man5, &completions] {
        std::fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
    }
    let mut command = crate::cli::command().disable_help_subcommand(true);
    command.build();
    command_pages(&command, &man8)?;
    let config_page = man5.join("multiroute.toml.5");
    std::fs::write(&config_page, config_manual())
        .with_context(|| format!("writing {}", config_page.display()))?;
    // The scripts ask `multiroute` itself (COMPLETE=shell), which reads the
    // config for uplink names.
    let shells: [(&dyn EnvCompleter, &str); 3] = [
        (&Bash, "multiroute"),
        (&Zsh, "_multiroute"),
        (&Fish, "multiroute.fish"),
    ];
    for (shell, file) in shells {
        let mut script = Vec::new();
        shell
            .write_registration(
                "COMPLETE",
                "multiroute",
                "multiroute",
                "multiroute",
                &mut script,
            )
            .context("writing a completion script")?;
        let path = completions.join(file);
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "wrote the man pages and completions under {}",
        dir.display()
    );
    Ok(())
}

/// multiroute(8) and multiroute-SUB(8) for every visible subcommand, nested ones
/// too (multiroute-budget-reset).
fn command_pages(command: &clap::Command, dir: &Path) -> CommandResult {
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        command_pages(sub, dir)?;
    }
    clap_mangen::Man::new(command.clone())
        .section("8")
        .manual("multiroute")
        .generate_to(dir)
        .with_context(|| format!("writing the man page of {}", command.get_name()))?;
    Ok(())
}

/// multiroute.toml(5): every key of [`reference::ALL`] under its section.
fn config_manual() -> String {
    let mut page = String::new();
    let version = env!("CARGO_PKG_VERSION");
    let _ = writeln!(
        page,
        ".TH MULTIROUTE.TOML 5 \"\" \"multiroute {version}\" \"multiroute\"\n\
         .SH NAME\nmultiroute.toml \\- the multiroute config file\n\
         .SH DESCRIPTION\n\
         A TOML file, /etc/multiroute/multiroute.toml unless \\fB\\-c\\fR names another. \
         Unknown keys, values out of range and impossible combinations are errors: \
         \\fBmultiroute check\\fR names the file, the key and the problem in one line, and \
         \\fBload\\fR refuses to start. \\fBmultiroute init\\fR proposes a first file from the host."
    );
    for (section, about) in reference::SECTIONS {
        let title = match *section {
            "" => "TOP LEVEL".to_owned(),
            "uplink" | "rule" | "hook" => format!("[[{section}]]"),
            other => format!("[{other}]"),
        };
        let _ = writeln!(page, ".SH {}\n{}", escape(&title), escape(about));
        for key in reference::ALL.iter().filter(|key| key.section == *section) {
            key_entry(&mut page, key);
        }
    }
    let _ = writeln!(
        page,
        ".SH EVENTS\nThe names [[hook]] on takes: {}.\n\
         .SH EXAMPLE\nThe package installs a commented example in \
         /usr/share/doc/multiroute/examples/multiroute.toml.\n\
         .SH SEE ALSO\n\\fBmultiroute\\fR(8), \\fBmultiroute\\-check\\fR(8), \\fBmultiroute\\-init\\fR(8)",
        EVENT_NAMES.join(", ")
    );
    page
}

fn key_entry(page: &mut String, key: &Key) {
    let (shown, range) = match &key.kind {
        Kind::Number { default, min, max } => (
            default.map(|value| value.to_string()),
            Some(format!("A whole number from {min} to {max}.")),
        ),
        Kind::Flag { default } => (Some(default.to_string()), Some("true or false.".into())),
        Kind::Choice { default, .. } => (
            default.map(|value| format!("{value:?}")),
            Some(format!("One of {}.", key.choices())),
        ),
        Kind::Text { default, form } => (
            default.map(|value| match value.starts_with('[') {
                true => value.to_owned(),
                false => format!("{value:?}"),
            }),
            Some(format!("Form: {form}.")),
        ),
    };
    let heading = match shown {
        Some(value) => format!("\\fB{}\\fR = {}", escape(key.name), escape(&value)),
        None => format!("\\fB{}\\fR", escape(key.name)),
    };
    let _ = writeln!(page, ".TP\n{heading}\n{}", escape(key.about));
    if let Some(range) = range {
        let _ = writeln!(page, "{}", escape(&range));
    }
}

/// Text made safe for roff: backslashes and hyphens escaped, no line starting
/// with a control character.
fn escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    match escaped.starts_with(['.', '\'']) {
        true => format!("\\&{escaped}"),
        false => escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_manual_has_every_key_with_its_default_and_range() {
        let page = config_manual();
        for key in reference::ALL {
            assert!(
                page.contains(&format!("\\fB{}\\fR", escape(key.name))),
                "{} missing",
                key.name
            );
        }
        assert!(page.contains("\\fBinterval_ms\\fR = 500\n"));
        assert!(page.contains("A whole number from 0 to 256."));
        assert!(page.contains("One of \"connection\", \"addresses\" or \"source\"."));
    }
}
