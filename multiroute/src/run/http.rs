//! The little HTTP/1.1 the daemon speaks itself (metrics, the status page): one
//! request per connection, its head bounded in size and time, then one response.
use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// The most of a request head read.
const MAX_HEAD: usize = 8192;

/// What a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path without its query.
    pub path: String,
    pub query: String,
    /// The `Cookie` header's value, if any.
    pub cookie: Option<String>,
}

impl Head {
    /// The value of `name` in the query (`?token=…`), undecoded.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    }

    /// The value of cookie `name`.
    pub fn cookie_value(&self, name: &str) -> Option<&str> {
        self.cookie
            .as_deref()?
            .split(';')
            .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
    }
}

fn parse(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request = lines.next()?.split(' ');
    let (method, target) = (request.next()?, request.next()?);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let cookie = lines.take_while(|l| !l.is_empty()).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("cookie")
            .then(|| value.trim().to_owned())
    });
    Some(Head {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        cookie,
    })
}

/// Reads a request head within 5 s; `None` for a slow, oversized or garbled one.
pub async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()?;
    parse(&head)
}

/// A response: status line, content type, extra header lines, body.
pub struct Reply<'a> {
    pub status: &'a str,
    pub content_type: &'a str,
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

impl<'a> Reply<'a> {
    pub fn new(status: &'a str, content_type: &'a str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

pub async fn respond(stream: &mut TcpStream, reply: Reply<'_>) {
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    for header in &reply.headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&reply.body).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_gives_its_path_query_and_cookies() {
        let head = parse(
            b"GET /api/status?token=abc&x=1 HTTP/1.1\r\nHost: r\r\nCookie: a=1; multiroute_token=abc\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (head.method.as_str(), head.path.as_str()),
            ("GET", "/api/status")
        );
        assert_eq!(head.query_value("token"), Some("abc"));
        assert_eq!(head.cookie_value("multiroute_token"), Some("abc"));
        assert_eq!(head.cookie_value("b"), None);
        assert!(parse(b"\xff\xfe").is_none());
    }
}
