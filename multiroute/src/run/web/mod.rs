//! `[web]`: a read-only live status page served by the daemon itself — uplinks
//! with state, reason and addresses, RTT, loss and traffic over the last minutes as
//! plain SVG, the latest events, flows per uplink. One embedded page polls
//! `/api/status` every second; no CDN, nothing to install. With a `token` the page
//! is opened once as `/?token=…`, which sets a cookie; without one it answers 401.
//! Nothing on it changes state, and it never reaches the control socket.
use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::SystemTime,
};

use serde::Serialize;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinSet,
};
use tracing::{debug, info};

use super::{
    control::{Incoming, Request, Response},
    http::{self, Head, Reply},
    metrics::ask,
    task::Task,
};
use crate::config::WebConfig;

const PAGE: &str = include_str!("page.html");
const COOKIE: &str = "multiroute_token";
/// Samples kept per uplink: five minutes at one a second.
const SAMPLES: usize = 300;

/// One moment of an uplink: (Unix seconds, RTT ms, loss %, bytes both ways),
/// the RTT null while nothing answers. A tuple: the page reads it as an array.
type Sample = (f64, Option<f64>, f64, u64);

/// Each uplink's figures over the last minutes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History(BTreeMap<String, VecDeque<Sample>>);

impl History {
    pub fn sample(&mut self, uplink: &str, rtt_ms: Option<f64>, loss_percent: f64, bytes: u64) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let samples = self.0.entry(uplink.to_owned()).or_default();
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back((now, rtt_ms, loss_percent, bytes));
    }

    /// Forgets uplinks not in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.0.retain(|name, _| keep(name));
    }
}

/// Serves the page on `[web] listen`; the accepting task joins `tasks`.
pub async fn serve(
    web: &WebConfig,
    requests: mpsc::Sender<Incoming>,
    tasks: &mut JoinSet<Task>,
) -> std::io::Result<()> {
    let Some(listen) = web.listen else {
        return Ok(());
    };
    let listener = TcpListener::bind(listen).await?;
    info!(%listen, "serving the status page at /");
    let token: Option<Arc<str>> = web.token.as_deref().map(Arc::from);
    tasks.spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(answer(stream, peer, requests.clone(), token.clone()));
        }
        Task::Web
    });
    Ok(())
}

/// Compares in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether the request carries the token: in its query (the first visit) or
/// its cookie. Without a configured token (a loopback address) everyone may.
fn allowed(head: &Head, token: Option<&str>) -> (bool, bool) {
    let Some(token) = token else {
        return (true, false);
    };
    let by_query = head.query_value("token").is_some_and(|t| same(t, token));
    let by_cookie = head.cookie_value(COOKIE).is_some_and(|t| same(t, token));
    (by_query || by_cookie, by_query)
}

async fn answer(
    mut stream: TcpStream,
    peer: SocketAddr,
    requests: mpsc::Sender<Incoming>,
    token: Option<Arc<str>>,
) {
    let Some(head) = http::read_head(&mut stream).await else {
        return;
    };
    debug!(%peer, path = %head.path, "status page request");
    let (allowed, first_visit) = allowed(&head, token.as_deref());
    let reply = match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/" | "/api/status") if !allowed => Reply::new(
            "401 Unauthorized",
            "text/plain; charset=utf-8",
            "open the page as /?token=… with the token of [web] in the config\n",
        ),
        ("GET", "/") => {
            let mut reply = Reply::new("200 OK", "text/html; charset=utf-8", PAGE);
            reply.headers.push("Content-Security-Policy: default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'".into());
            if let (true, Some(token)) = (first_visit, &token) {
                reply.headers.push(format!(
                    "Set-Cookie: {COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
                ));
            }
            reply
        }
        ("GET", "/api/status") => match ask(&requests, Request::Page).await {
            Some(Response::Page { status }) => Reply::new(
                "200 OK",
                "application/json",
                serde_json::to_vec(&status).unwrap_or_default(),
            ),
            _ => Reply::new("503 Service Unavailable", "text/plain", "shutting down\n"),
        },
        ("GET", _) => Reply::new("404 Not Found", "text/plain", "the page is at /\n"),
        _ => Reply::new(
            "405 Method Not Allowed",
            "text/plain",
            "the page is read-only\n",
        ),
    };
    http::respond(&mut stream, reply).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(query: &str, cookie: Option<&str>) -> Head {
        Head {
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            cookie: cookie.map(str::to_owned),
        }
    }

    #[test]
    fn the_token_comes_in_the_query_once_then_in_the_cookie() {
        let token = Some("0123456789abcdef");
        assert_eq!(
            allowed(&head("token=0123456789abcdef", None), token),
            (true, true)
        );
        let cookie = Some("multiroute_token=0123456789abcdef");
        assert_eq!(allowed(&head("", cookie), token), (true, false));
        assert_eq!(allowed(&head("token=wrong", None), token), (false, false));
        assert_eq!(allowed(&head("", None), token), (false, false));
        assert_eq!(
            allowed(&head("", None), None),
            (true, false),
            "loopback, no token"
        );
    }
}
