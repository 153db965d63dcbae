//! Running a helper program (an `on_dead` command, a DHCP client's control
//! tool): argv without a shell, stdin closed, killed at [`TIMEOUT`].
use std::time::Duration;

/// The longest a helper may run before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `argv` with `env` added to its environment; says how it went.
pub async fn run_bounded(argv: &[String], env: &[(&str, &str)]) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("an empty command")?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(TIMEOUT, child).await {
        Err(_) => Err(format!(
            "{program} ran over {} s and was killed",
            TIMEOUT.as_secs()
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
