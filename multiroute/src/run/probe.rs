//! One probe of each kind, always sent *through* one uplink: every socket is bound to
//! the uplink's interface (SO_BINDTODEVICE) and address, so the `from <address>`
//! rule routes it into the uplink's table and only an answer arriving on that
//! interface counts. A probe can never succeed via another uplink.
//!
//! - ICMP echo (`"198.51.100.9"`, `"2001:db8::9"`, `"gateway"`): a raw socket
//!   shared by the uplink's echo targets (ICMPv6 for an IPv6 uplink side).
//! - TCP (`"tcp://ADDR:PORT"`): a connect that completes *or is refused* answers —
//!   either way the far end replied through this uplink.
//! - DNS (`"dns://ADDR"`): a query for `.` NS over UDP; any reply with the query's
//!   id answers, whatever its rcode.
use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use surge_ping::{Client, ICMP, PingIdentifier, PingSequence};
use tokio::net::{TcpSocket, UdpSocket};
use tracing::debug;

use crate::config::Target;

/// What every kind does: send one probe, wait at most `timeout`, and give the
/// round-trip time, or `None` when no answer came.
pub trait Probe: Send + Sync {
    fn probe(&self, sequence: u16, timeout: Duration) -> ProbeFuture<'_>;
}

pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Option<Duration>> + Send + 'a>>;

/// The uplink every probe leaves through, and its address of the probes' family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Through {
    pub interface: String,
    pub address: IpAddr,
}

/// The probes of one uplink, one per target; the ICMP ones share a raw socket.
pub fn for_targets(
    targets: &[Target],
    through: &Through,
    ident: u16,
) -> io::Result<Vec<(Target, Arc<dyn Probe>)>> {
    let mut icmp: Option<Client> = None;
    let mut probes = Vec::new();
    for &target in targets {
        let probe: Arc<dyn Probe> = match target {
            Target::Icmp(address) => {
                let client = match &icmp {
                    Some(client) => client.clone(),
                    None => icmp.insert(icmp_client(through)?).clone(),
                };
                Arc::new(Echo {
                    client,
                    address,
                    ident: PingIdentifier(ident),
                })
            }
            Target::Tcp(socket) => Arc::new(Connect {
                through: through.clone(),
                socket,
            }),
            Target::Dns(address) => Arc::new(Query {
                through: through.clone(),
                server: SocketAddr::new(address, 53),
            }),
        };
        probes.push((target, probe));
    }
    Ok(probes)
}

fn icmp_client(through: &Through) -> io::Result<Client> {
    // Raw, not an unprivileged ping socket: those need `ping_group_range`, which is
    // closed in a fresh network namespace, and they rewrite the echo identifier.
    let kind = match through.address {
        IpAddr::V4(_) => ICMP::V4,
        IpAddr::V6(_) => ICMP::V6,
    };
    let config = surge_ping::Config::builder()
        .kind(kind)
        .sock_type_hint(socket2::Type::RAW)
        .interface(&through.interface)
        .bind(SocketAddr::new(through.address, 0))
        .build();
    Client::new(&config)
}

const PAYLOAD: &[u8] = b"multiroute health probe";

struct Echo {
    client: Client,
    address: IpAddr,
    ident: PingIdentifier,
}

impl Probe for Echo {
    fn probe(&self, sequence: u16, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let mut pinger = self.client.pinger(self.address, self.ident).await;
            pinger.timeout(timeout);
            match pinger.ping(PingSequence(sequence), PAYLOAD).await {
                Ok((_, rtt)) => Some(rtt),
                Err(err) => {
                    debug!(target = %self.address, "echo lost: {err}");
                    None
                }
            }
        })
    }
}

struct Connect {
    through: Through,
    socket: SocketAddr,
}

impl Probe for Connect {
    fn probe(&self, _sequence: u16, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let attempt = async {
                let socket = match self.socket {
                    SocketAddr::V4(_) => TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => TcpSocket::new_v6()?,
                };
                socket.bind_device(Some(self.through.interface.as_bytes()))?;
                socket.bind(SocketAddr::new(self.through.address, 0))?;
                socket.connect(self.socket).await.map(drop)
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(())) => Some(started.elapsed()),
                // A reset came back through this uplink: the path works.
                Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    Some(started.elapsed())
                }
                Ok(Err(err)) => {
                    debug!(target = %self.socket, "connect failed: {err}");
                    None
                }
                Err(_) => None,
            }
        })
    }
}

struct Query {
    through: Through,
    server: SocketAddr,
}

/// A query for `.` NS with id `id`, recursion desired.
fn root_ns_query(id: u16) -> Vec<u8> {
    let mut query = Vec::with_capacity(17);
    query.extend_from_slice(&id.to_be_bytes());
    // Flags: RD; one question, no other records.
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    // QNAME "." (the root), QTYPE NS (2), QCLASS IN (1).
    query.extend_from_slice(&[0, 0, 2, 0, 1]);
    query
}

impl Probe for Query {
    fn probe(&self, sequence: u16, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let attempt = async {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(self.server),
                    socket2::Type::DGRAM,
                    Some(socket2::Protocol::UDP),
                )?;
                socket.bind_device(Some(self.through.interface.as_bytes()))?;
                socket.bind(&SocketAddr::new(self.through.address, 0).into())?;
                socket.set_nonblocking(true)?;
                let socket = UdpSocket::from_std(socket.into())?;
                socket.connect(self.server).await?;
                socket.send(&root_ns_query(sequence)).await?;
                let mut reply = [0u8; 512];
                loop {
                    let len = socket.recv(&mut reply).await?;
                    if len >= 2 && reply[..2] == sequence.to_be_bytes() {
                        return io::Result::Ok(());
                    }
                }
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(())) => Some(started.elapsed()),
                Ok(Err(err)) => {
                    debug!(target = %self.server, "query failed: {err}");
                    None
                }
                Err(_) => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_probe_asks_for_the_roots_name_servers() {
        assert_eq!(
            root_ns_query(0x1234),
            [
                0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1
            ]
        );
    }
}
