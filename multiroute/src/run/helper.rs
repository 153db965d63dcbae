//! Running a helper program (an `on_dead` command, a DHCP client's control
//! tool, an exec hook): argv without a shell, killed at its timeout.
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

/// The longest an `on_dead` command or a DHCP client's tool may run.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What a helper is given.
#[derive(Default)]
pub struct Input<'a> {
    /// Added to its environment.
    pub env: Vec<(&'a str, String)>,
    /// Written to its stdin (closed otherwise).
    pub stdin: Option<Vec<u8>>,
}

/// Runs `argv` with `input`, killed after `timeout`; says how it went.
pub async fn run_bounded(
    argv: &[String],
    input: Input<'_>,
    timeout: Duration,
) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("an empty command")?;
    let run = async {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .envs(input.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(if input.stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let (Some(text), Some(mut stdin)) = (&input.stdin, child.stdin.take()) {
            // A program that does not read its stdin is fine.
            let _ = stdin.write_all(text).await;
        }
        child.wait_with_output().await
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(format!(
            "{program} ran over {} ms and was killed",
            timeout.as_millis()
        )),
        Ok(Err(err)) => Err(format!("cannot run {program}: {err}")),
        Ok(Ok(output)) if output.status.success() => Ok(format!("{} succeeded", argv.join(" "))),
        Ok(Ok(output)) => Err(format!(
            "{} failed ({}): {}",
            argv.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}
