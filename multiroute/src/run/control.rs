//! The running `load`'s control socket: a Unix socket (mode 0600, root only) that
//! speaks one JSON request and one JSON reply per line (an events follower gets a
//! line per event after its reply). The daemon's loop answers every request
//! itself, so a reply always shows one consistent state.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot},
    task::JoinSet,
};
use tracing::debug;

use super::{events::Event, task::Task};
use crate::path_error::PathError;

/// The longest request line the daemon reads; a longer one is refused and the
/// connection closed, so a client cannot make the daemon buffer without limit.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// State, weight, health and timing of every uplink.
    Status,
    /// Change one uplink's weight; new flows follow at once, existing flows stay.
    Weight { uplink: String, weight: u32 },
    /// The metrics text (OpenMetrics), as a JSON string.
    Metrics,
    /// The plan in force, as [`crate::plan::Plan::lines`].
    Plan,
    /// A metered uplink's count starts again at 0 (a new data pack).
    BudgetReset { uplink: String },
    /// What the status page shows (its JSON).
    Page,
    /// The recent events; with `follow`, then each new one as it happens (one
    /// `event` reply per line) until the asker hangs up.
    Events {
        #[serde(default)]
        follow: bool,
    },
}

/// The daemon's answer to one request: the same type on both ends of the socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Status(super::report::DaemonReport),
    Weight {
        uplink: String,
        previous: u32,
        weight: u32,
    },
    Metrics {
        text: String,
    },
    Plan {
        lines: Vec<String>,
    },
    Page {
        status: serde_json::Value,
    },
    Events {
        events: Vec<Event>,
    },
    Event(Event),
    BudgetReset {
        uplink: String,
        /// What it had used, in words ("4.2 MB of 5.0 MB (84 %)").
        previous: String,
    },
    Refused(Refusal),
}

/// The daemon's answer to a request it could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub error: String,
    /// The request itself was wrong (exit 2), not the daemon's situation.
    pub usage: bool,
}

/// A request and where its answer goes.
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{path}: permission denied: the control socket is root-only")]
    PermissionDenied { path: PathBuf },
    #[error("{path}: the running multiroute sent an unreadable reply: {problem}")]
    BadReply { path: PathBuf, problem: String },
}

/// The bound socket; removed when dropped.
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket (replacing a stale one: the caller holds the instance lock, so
/// no live daemon owns it) and serves it; the accepting task joins `tasks`.
pub fn listen(
    path: &Path,
    requests: mpsc::Sender<Incoming>,
    events: broadcast::Sender<Event>,
    tasks: &mut JoinSet<Task>,
) -> Result<ControlSocket, PathError> {
    let at = |what| PathError::at(path, what);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(PathError::at(dir, "creating the socket directory"))?;
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(at("removing a stale control socket")(err));
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(at("binding the control socket"))?;
    let socket = ControlSocket {
        path: path.to_owned(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(at("restricting the control socket to root"))?;
    tasks.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, requests.clone(), events.clone()));
        }
        Task::ControlSocket
    });
    Ok(socket)
}

async fn serve(
    stream: UnixStream,
    requests: mpsc::Sender<Incoming>,
    events: broadcast::Sender<Event>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        match Box::pin(limited).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.len() > MAX_REQUEST {
            let refusal = refusal(
                &format!("request longer than {MAX_REQUEST} bytes; closing the connection"),
                true,
            );
            let _ = write.write_all(&line_of(&refusal)).await;
            break;
        }
        let request = serde_json::from_slice::<Request>(&line);
        // Subscribed before the history is taken, so no event falls between.
        let follow =
            matches!(request, Ok(Request::Events { follow: true })).then(|| events.subscribe());
        let answer = match request {
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                if requests.send(Incoming { request, reply }).await.is_err() {
                    return;
                }
                answer
                    .await
                    .unwrap_or_else(|_| refusal("shutting down", false))
            }
            Err(err) => refusal(&format!("bad request: {err}"), true),
        };
        let seen = match &answer {
            Response::Events { events } => events.last().map_or(0, |e| e.seq),
            _ => 0,
        };
        if write.write_all(&line_of(&answer)).await.is_err() {
            return;
        }
        if let Some(mut new) = follow {
            stream_events(&mut new, seen, &mut write).await;
            return;
        }
    }
    debug!("control connection closed");
}

/// Writes each event after `seen` as it comes, until the asker hangs up or the
/// daemon stops. A follower too slow for the stream misses what it lagged.
async fn stream_events(
    new: &mut broadcast::Receiver<Event>,
    seen: u64,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) {
    loop {
        let event = match new.recv().await {
            Ok(event) if event.seq > seen => event,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if write
            .write_all(&line_of(&Response::Event(event)))
            .await
            .is_err()
        {
            return;
        }
    }
}

pub fn refusal(error: &str, usage: bool) -> Response {
    Response::Refused(Refusal {
        error: error.to_owned(),
        usage,
    })
}

/// One reply on the wire: JSON and a newline.
fn line_of(response: &Response) -> Vec<u8> {
    // A Response is plain data: serializing it cannot fail.
    let mut line = serde_json::to_vec(response).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Connects to the daemon behind `path` and sends `request`. `Ok(None)`: no daemon
/// listens there.
fn send(
    path: &Path,
    request: &Request,
) -> Result<Option<std::os::unix::net::UnixStream>, ControlError> {
    let at = |what| PathError::at(path, what);
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ControlError::PermissionDenied {
                path: path.to_owned(),
            });
        }
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(err) => return Err(at("connecting to the control socket")(err).into()),
    };
    let timeout = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(at("setting control socket timeouts"))?;
    let mut text = serde_json::to_string(request).map_err(|err| bad_reply(path, err))?;
    text.push('\n');
    stream
        .write_all(text.as_bytes())
        .map_err(at("writing to the control socket"))?;
    Ok(Some(stream))
}

fn bad_reply(path: &Path, problem: impl std::fmt::Display) -> ControlError {
    ControlError::BadReply {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

/// Sends one request to the daemon behind `path` and waits (bounded) for its reply.
/// `Ok(None)`: no daemon listens there.
pub fn ask(path: &Path, request: &Request) -> Result<Option<Response>, ControlError> {
    let Some(stream) = send(path, request)? else {
        return Ok(None);
    };
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(PathError::at(path, "reading from the control socket"))?;
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|err| bad_reply(path, err))
}

/// Sends `request` and hands every reply line to `each` until the daemon hangs up
/// (or `each` returns false). `Ok(false)`: no daemon listens there.
pub fn follow(
    path: &Path,
    request: &Request,
    mut each: impl FnMut(Response) -> bool,
) -> Result<bool, ControlError> {
    let Some(stream) = send(path, request)? else {
        return Ok(false);
    };
    // A follower waits for events as long as they take.
    stream
        .set_read_timeout(None)
        .map_err(PathError::at(path, "setting control socket timeouts"))?;
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(PathError::at(path, "reading from the control socket"))?;
        let reply = serde_json::from_str(&line).map_err(|err| bad_reply(path, err))?;
        if !each(reply) {
            break;
        }
    }
    Ok(true)
}
