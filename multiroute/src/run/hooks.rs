//! `[[hook]]`s: each one follows the event stream in a task of its own, off the
//! health and failover path. An event it is `on` is delivered at once, or — with
//! `debounce_ms` — once per uplink per window, the latest. Each delivery is a task
//! too (a hook that hangs delays nothing, not even its own next event), bounded by
//! `timeout_ms`, retried with backoff, and its outcome logged (a URL only by its
//! host and port: its path may carry a token).
use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::broadcast,
    task::JoinHandle,
    time::Instant,
};
use tracing::{info, warn};

use super::{
    events::Event,
    helper::{Input, run_bounded},
};
use crate::config::{Hook, HookAction, HttpUrl};

/// What every exec hook gets besides the event.
type Context = Arc<Vec<(&'static str, String)>>;

/// Deliveries per hook name: (delivered, failed).
type Counts = Arc<Mutex<BTreeMap<String, (u64, u64)>>>;

/// The hooks' tasks and what they delivered; dropping it stops the hooks
/// (deliveries under way finish).
#[derive(Default)]
pub struct Hooks {
    tasks: Vec<JoinHandle<()>>,
    counts: Counts,
}

impl Drop for Hooks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Hooks {
    /// (hook, outcome, deliveries) for the metrics.
    pub fn counts(&self) -> Vec<(String, &'static str, u64)> {
        let counts = self.counts.lock().map(|c| c.clone()).unwrap_or_default();
        counts
            .into_iter()
            .flat_map(|(hook, (ok, failed))| {
                [(hook.clone(), "delivered", ok), (hook, "failed", failed)]
            })
            .collect()
    }
}

/// Starts one task per hook, following `events`; an exec hook also learns
/// `config` (`MULTIROUTE_CONFIG`) and this program (`MULTIROUTE_BIN`), to ask
/// the daemon more.
pub fn start(hooks: &[Hook], events: &broadcast::Sender<Event>, config: &Path) -> Hooks {
    let counts = Counts::default();
    let program = std::env::current_exe().unwrap_or_default();
    let context: Context = Arc::new(vec![
        ("MULTIROUTE_CONFIG", config.display().to_string()),
        ("MULTIROUTE_BIN", program.display().to_string()),
    ]);
    let tasks = hooks
        .iter()
        .enumerate()
        .map(|(i, hook)| {
            let (hook, events) = (hook.clone(), events.subscribe());
            tokio::spawn(follow(i, hook, events, counts.clone(), context.clone()))
        })
        .collect();
    Hooks { tasks, counts }
}

fn wanted(hook: &Hook, event: &Event) -> bool {
    hook.on.is_empty() || hook.on.contains(&event.event)
}

async fn follow(
    index: usize,
    hook: Hook,
    mut events: broadcast::Receiver<Event>,
    counts: Counts,
    context: Context,
) {
    let name = format!("hook[{index}]");
    let debounce = Duration::from_millis(hook.debounce_ms);
    // Per uplink: the latest event waiting for its window to end, and when.
    let mut waiting: BTreeMap<Option<String>, (Event, Instant)> = BTreeMap::new();
    loop {
        let due = waiting.values().map(|(_, at)| *at).min();
        tokio::select! {
            received = events.recv() => match received {
                Ok(event) if wanted(&hook, &event) => {
                    if debounce.is_zero() {
                        deliver(&name, &hook, event, &counts, &context);
                    } else {
                        let at = waiting
                            .get(&event.uplink)
                            .map_or(Instant::now() + debounce, |(_, at)| *at);
                        waiting.insert(event.uplink.clone(), (event, at));
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(
                        hook = %name,
                        missed,
                        "events came faster than the hook keeps up; some were skipped"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = sleep_until(due) => {
                let now = Instant::now();
                let ready: Vec<_> = waiting
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in ready {
                    if let Some((event, _)) = waiting.remove(&key) {
                        deliver(&name, &hook, event, &counts, &context);
                    }
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Delivers `event` in a task of its own, retrying with backoff.
fn deliver(name: &str, hook: &Hook, event: Event, counts: &Counts, context: &Context) {
    let (name, hook, counts) = (name.to_owned(), hook.clone(), counts.clone());
    let context = context.clone();
    tokio::spawn(async move {
        let delivered = attempt(&name, &hook, &event, &context).await;
        if let Ok(mut counts) = counts.lock() {
            let (ok, failed) = counts.entry(name).or_default();
            *if delivered { ok } else { failed } += 1;
        }
    });
}

/// Tries `hook` with `event` up to `retries` more times; whether it got through.
async fn attempt(name: &str, hook: &Hook, event: &Event, context: &Context) -> bool {
    let timeout = Duration::from_millis(hook.timeout_ms);
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(6))).await;
        }
        let outcome = match &hook.action {
            HookAction::Exec(argv) => run_bounded(argv, input(event, context), timeout).await,
            HookAction::Url(url) => post(url, event, timeout).await,
        };
        match outcome {
            Ok(done) => {
                info!(
                    hook = %name, event = %event.event, seq = event.seq,
                    "hook delivered: {done}"
                );
                return true;
            }
            Err(problem) => {
                warn!(
                    hook = %name, event = %event.event, seq = event.seq, attempt,
                    "hook failed: {problem}"
                )
            }
        }
    }
    false
}

/// The event as an exec hook gets it: `MULTIROUTE_*` variables (never read by a
/// shell: the program is exec'd) and the JSON on stdin.
fn input(event: &Event, context: &Context) -> Input<'static> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let number = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_default();
    Input {
        env: vec![
            ("MULTIROUTE_EVENT", event.event.clone()),
            ("MULTIROUTE_SEQ", event.seq.to_string()),
            ("MULTIROUTE_TIME", format!("{:.3}", event.time)),
            ("MULTIROUTE_UPLINK", text(&event.uplink)),
            ("MULTIROUTE_FAMILY", text(&event.family)),
            ("MULTIROUTE_STATE", text(&event.state)),
            ("MULTIROUTE_PREVIOUS", text(&event.previous)),
            ("MULTIROUTE_REASON", event.reason.clone()),
            ("MULTIROUTE_ADDRESS", text(&event.address)),
            ("MULTIROUTE_TARGET", text(&event.target)),
            ("MULTIROUTE_RTT_MS", number(event.rtt_ms)),
            ("MULTIROUTE_LOSS_PERCENT", number(event.loss_percent)),
        ]
        .into_iter()
        .chain(context.iter().cloned())
        .collect(),
        stdin: serde_json::to_vec(event).ok(),
    }
}

/// POSTs the event's JSON; a 2xx answer is success.
async fn post(url: &HttpUrl, event: &Event, timeout: Duration) -> Result<String, String> {
    let body = serde_json::to_vec(event).map_err(|err| err.to_string())?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: multiroute\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            url.path,
            url.host,
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        let mut answer = Vec::new();
        stream.take(4096).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let where_to = url.redacted();
    let answer = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => {
            return Err(format!(
                "{where_to}: no answer within {} ms",
                timeout.as_millis()
            ));
        }
        Ok(Err(err)) => return Err(format!("{where_to}: {err}")),
        Ok(Ok(answer)) => answer,
    };
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_default();
    if status.starts_with('2') {
        Ok(format!("{where_to} answered {status}"))
    } else {
        Err(format!("{where_to} answered {status:?}"))
    }
}

/// Every exec hook's program exists and is executable: a one-line config error
/// from `check`, `load` and a reload otherwise.
pub fn check_programs(
    config: &crate::config::Config,
    file: &std::path::Path,
) -> Result<(), crate::config::ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    for (i, hook) in config.hooks.iter().enumerate() {
        let HookAction::Exec(argv) = &hook.action else {
            continue;
        };
        let program = argv.first().map(String::as_str).unwrap_or_default();
        let problem = match std::fs::metadata(program) {
            Err(err) => format!("{program}: {err}"),
            Ok(meta) if !meta.is_file() => format!("{program} is not a file"),
            Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
                format!("{program} is not executable")
            }
            Ok(_) => continue,
        };
        return Err(crate::config::ConfigError {
            file: file.to_owned(),
            key: format!("hook[{i}].exec"),
            problem,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn config(exec: &str) -> Config {
        let text = format!(
            "lan = [\"lan0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"wan0\"\n[[hook]]\nexec = [\"{exec}\"]\n"
        );
        Config::parse(&text, Path::new("/etc/multiroute/test.toml")).unwrap()
    }

    #[test]
    fn an_exec_hook_must_be_an_executable_file() {
        let file = Path::new("/etc/multiroute/test.toml");
        assert!(super::check_programs(&config("/bin/sh"), file).is_ok());
        let missing = super::check_programs(&config("/nonexistent/notify"), file).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("/etc/multiroute/test.toml: hook[0].exec: /nonexistent/notify: "),
            "{missing}"
        );
        let directory = super::check_programs(&config("/etc"), file).unwrap_err();
        assert!(
            directory.to_string().ends_with("/etc is not a file"),
            "{directory}"
        );
        let text = std::env::temp_dir().join(format!("multiroute-hook-{}", std::process::id()));
        std::fs::write(&text, "not a program").unwrap();
        std::fs::set_permissions(&text, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let plain = super::check_programs(&config(&text.display().to_string()), file).unwrap_err();
        std::fs::remove_file(&text).unwrap();
        assert!(plain.to_string().ends_with("is not executable"), "{plain}");
    }
}
