//! Traffic the lab's client makes and what it reports: new connections, streams,
//! DNS queries, attempts every few milliseconds, long-lived sessions and UDP
//! exchanges, and the outage measured from them.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{ECHO_PORT, Lab, SERVER, SERVER_PORT, lab_script};

/// One connection of [`Lab::start_attempts`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Attempt {
    /// Wall-clock start, seconds since the Unix epoch.
    pub start: f64,
    pub ok: bool,
    /// The uplink address the server saw.
    pub address: Option<String>,
}

/// One long-lived session of [`Lab::start_sessions`], as the client saw it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Session {
    /// Every source address the server saw for this session.
    pub addresses: Vec<String>,
    pub sent: u64,
    pub answered: u64,
    /// Why a TCP session broke (a reset, a close), or `None`.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct SessionsReport {
    pub tcp: Vec<Session>,
    pub udp: Vec<Session>,
}

impl Session {
    /// A TCP session that broke, or any session that never got an answer.
    pub fn broke(&self) -> bool {
        self.error.is_some() || self.answered == 0
    }
}

impl SessionsReport {
    pub fn all(&self) -> impl Iterator<Item = &Session> {
        self.tcp.iter().chain(&self.udp)
    }
    /// Sessions the server saw from more than one address.
    pub fn moved(&self) -> usize {
        self.all().filter(|s| s.addresses.len() > 1).count()
    }
    /// TCP sessions that broke, or any session that never got an answer.
    pub fn broken(&self) -> usize {
        self.all().filter(|s| s.broke()).count()
    }
    /// UDP messages without an answer.
    pub fn udp_lost(&self) -> u64 {
        self.udp
            .iter()
            .map(|s| s.sent - s.answered.min(s.sent))
            .sum()
    }
}

/// A running [`Lab::start_sessions`] client, its sessions all open.
pub struct RunningSessions {
    child: Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl RunningSessions {
    /// Waits for the client to end and reads what it saw.
    pub fn finish(mut self) -> Result<SessionsReport> {
        use std::io::BufRead as _;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("reading the sessions report")?;
        let status = self.child.wait().context("waiting for the client")?;
        ensure!(status.success(), "the sessions client failed ({status})");
        serde_json::from_str(&line).with_context(|| format!("parsing the sessions report {line:?}"))
    }
}

/// What a stream of [`Attempt`]s saw of an outage that began at `t0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    /// From `t0` until the first attempt after which every attempt succeeded.
    pub seconds: f64,
    pub failed: usize,
}

/// Finds when new connections succeed 100 % of the time again: the start of the
/// first attempt after the last failure. At least half a second of successes
/// (25 attempts at 20 ms) must follow, or the outage did not end in the window.
pub fn measure_outage(attempts: &[Attempt], t0: f64) -> Result<Outage> {
    let failed = attempts.iter().filter(|a| !a.ok).count();
    let recovered_at = match attempts.iter().rposition(|a| !a.ok) {
        Some(i) => {
            let tail = &attempts[i + 1..];
            ensure!(
                tail.len() >= 25,
                "only {} successful attempts follow the last failure",
                tail.len()
            );
            tail[0].start
        }
        None => t0,
    };
    Ok(Outage {
        seconds: (recovered_at - t0).max(0.0),
        failed,
    })
}

/// Seconds since the Unix epoch, comparable with [`Attempt::start`].
pub fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// What a run of [`Lab::connections`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connections {
    /// Connections answered through each uplink, by uplink index.
    pub hits: Vec<usize>,
    pub failures: usize,
    /// Distinct client ports used: a reused port is the same 5-tuple, the same flow.
    pub ports: usize,
}

impl Lab {
    /// `count` new connections from the LAN client, one after another.
    pub fn connections(&self, count: usize) -> Result<Connections> {
        let child = self.start_connections(count)?;
        self.finish_connections(child)
    }

    /// [`Lab::connections`] in the background.
    pub fn start_connections(&self, count: usize) -> Result<Child> {
        self.start_connections_to(&self.url("/"), count)
    }

    /// `count` new connections to `url` (the IPv6 server's, say), in the background.
    pub fn start_connections_to(&self, url: &str, count: usize) -> Result<Child> {
        self.spawn_client(&["count", url, &count.to_string(), "240"])
    }

    pub fn finish_connections(&self, child: Child) -> Result<Connections> {
        let output = child.wait_with_output().context("waiting for the client")?;
        ensure!(
            output.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("parsing the client's report")?;
        let mut hits = vec![0; self.isps];
        let seen = report["seen"]
            .as_object()
            .context("client report without `seen`")?;
        for (address, n) in seen {
            let n = n.as_u64().unwrap_or(0) as usize;
            match self.uplink_index(address) {
                Some(i) => hits[i] += n,
                None => bail!("the server saw an unexpected source {address}"),
            }
        }
        Ok(Connections {
            hits,
            failures: report["failures"].as_u64().unwrap_or(u64::MAX) as usize,
            ports: report["ports"].as_u64().unwrap_or(0) as usize,
        })
    }

    /// Starts a long download from the client in the background.
    pub fn start_stream(&self, seconds: u32) -> Result<Child> {
        self.start_stream_from(SERVER, seconds)
    }

    /// A long download from `server` (one of the server's addresses).
    pub fn start_stream_from(&self, server: Ipv4Addr, seconds: u32) -> Result<Child> {
        self.spawn_client(&[
            "stream",
            &format!("http://{server}:{SERVER_PORT}/stream?seconds={seconds}"),
        ])
    }

    /// `count` DNS queries for `name` from the client to `server`:
    /// (answers by address, failures).
    pub fn dns_queries(
        &self,
        server: &str,
        name: &str,
        count: usize,
    ) -> Result<(BTreeMap<String, u64>, u64)> {
        let out = self.ns(
            &self.client(),
            "python3",
            &[
                &lab_script("client.py"),
                "dns",
                server,
                name,
                &count.to_string(),
            ],
        )?;
        tally(&out.stdout, "answers")
    }

    /// A new connection from the client every `interval_ms`, each given
    /// `timeout_ms`, for `seconds`, in the background; [`Lab::attempts`] collects them.
    pub fn start_attempts(&self, seconds: f64, interval_ms: u32, timeout_ms: u32) -> Result<Child> {
        self.start_attempts_to(&self.url("/"), seconds, interval_ms, timeout_ms)
    }

    /// [`Lab::start_attempts`] against `url`.
    pub fn start_attempts_to(
        &self,
        url: &str,
        seconds: f64,
        interval_ms: u32,
        timeout_ms: u32,
    ) -> Result<Child> {
        self.spawn_client(&[
            "attempts",
            url,
            &seconds.to_string(),
            &(f64::from(interval_ms) / 1000.0).to_string(),
            &(f64::from(timeout_ms) / 1000.0).to_string(),
        ])
    }

    pub fn attempts(child: Child) -> Result<Vec<Attempt>> {
        let output = child.wait_with_output().context("waiting for the client")?;
        ensure!(
            output.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).context("parsing the attempts")
    }

    /// `tcp` long-lived TCP connections and `udp` UDP flows from the client to the
    /// server, each exchanging a numbered message every `interval_ms` for `seconds`
    /// after all are open; returns once they are.
    pub fn start_sessions(
        &self,
        tcp: usize,
        udp: usize,
        seconds: f64,
        interval_ms: u32,
    ) -> Result<RunningSessions> {
        self.start_sessions_to(&SERVER.to_string(), tcp, udp, seconds, interval_ms)
    }

    /// [`Lab::start_sessions`] to the server at `server` (its IPv6 address, say).
    pub fn start_sessions_to(
        &self,
        server: &str,
        tcp: usize,
        udp: usize,
        seconds: f64,
        interval_ms: u32,
    ) -> Result<RunningSessions> {
        use std::io::BufRead as _;
        let mut child = self.spawn_client(&[
            "sessions",
            server,
            &(SERVER_PORT + 2).to_string(),
            &tcp.to_string(),
            &udp.to_string(),
            &seconds.to_string(),
            &(f64::from(interval_ms) / 1000.0).to_string(),
        ])?;
        let mut stdout =
            std::io::BufReader::new(child.stdout.take().context("the client without stdout")?);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .context("waiting for the sessions to open")?;
        if !line.contains("\"open\"") {
            let _ = child.kill();
            let output = child.wait_with_output().context("waiting for the client")?;
            bail!(
                "the sessions did not open: {line}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(RunningSessions { child, stdout })
    }

    /// One UDP flow from the client to the echo server, a request every
    /// `interval_ms`, for `seconds`, in the background (stdout piped).
    pub fn start_udp(&self, seconds: f64, interval_ms: u32) -> Result<Child> {
        self.start_udp_in(&self.client(), ECHO_PORT, seconds, interval_ms)
    }

    /// The same from namespace `ns` (the router's own traffic from the router's) to
    /// the server's UDP `port`.
    pub fn start_udp_in(
        &self,
        ns: &str,
        port: u16,
        seconds: f64,
        interval_ms: u32,
    ) -> Result<Child> {
        self.spawn_script_in(
            ns,
            &[
                "udp",
                &SERVER.to_string(),
                &port.to_string(),
                &seconds.to_string(),
                &(f64::from(interval_ms) / 1000.0).to_string(),
            ],
        )
    }

    fn spawn_client(&self, args: &[&str]) -> Result<Child> {
        self.spawn_script_in(&self.client(), args)
    }

    fn spawn_script_in(&self, ns: &str, args: &[&str]) -> Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", ns, "python3", &lab_script("client.py")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the lab client")
    }
}

/// A lab client's JSON report `{<field>: {address: count}, "failures": n}`.
pub(crate) fn tally(stdout: &[u8], field: &str) -> Result<(BTreeMap<String, u64>, u64)> {
    let report: serde_json::Value =
        serde_json::from_slice(stdout).context("parsing the client's report")?;
    let counts = report[field]
        .as_object()
        .with_context(|| format!("client report without `{field}`"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    Ok((counts, report["failures"].as_u64().unwrap_or(u64::MAX)))
}
