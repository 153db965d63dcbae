//! A typed layer over rtnetlink: the rest of the code reads and writes [`Route`]s and
//! [`Rule`]s, never netlink attributes (`message` converts). Everything multiroute
//! adds carries [`PROTOCOL`], which is how `unload` finds it again after a crash.
pub mod conntrack;
mod message;

use futures::{StreamExt as _, TryStreamExt};
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage, address::AddressMessage, link::LinkMessage, route::RouteMessage,
    rule::RuleMessage,
};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use std::net::{Ipv4Addr, Ipv6Addr};

#[cfg(test)]
pub(crate) use message::test_default_route;
pub(crate) use message::{USER_HZ, route_destination, route_expires};
pub use message::{
    is_own_route, is_own_rule, parse_route, parse_rule, route_expires_secs, route_metric,
    route_table, rule_priority,
};
use message::{route_message, rule_message, set_table};

use crate::plan::{Observed, Route, Rule};

/// Route/rule protocol number that marks multiroute's own entries (`ip route show
/// proto 77`). Unassigned in iproute2's rt_protos.
pub const PROTOCOL: u8 = 77;

/// The input interface of the router's own traffic in routing rules (`iif lo`).
const LOOPBACK: &str = "lo";

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("netlink: {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("route {route} names interface {dev:?}, which does not exist")]
    UnknownDevice { route: String, dev: String },
}

pub struct Netlink {
    handle: Handle,
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

impl Netlink {
    /// Opens a netlink socket in the current network namespace. Must be called inside a
    /// tokio runtime: the connection runs as a task on it.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<LinkMessage>, NetlinkError> {
        let mut dump = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(link) = dump.try_next().await.map_err(request("listing links"))? {
            links.push(link);
        }
        Ok(links)
    }

    /// Every address, IPv4 and IPv6.
    pub async fn addresses(&self) -> Result<Vec<AddressMessage>, NetlinkError> {
        let mut dump = self.handle.address().get().execute();
        let mut addresses = Vec::new();
        while let Some(address) = dump
            .try_next()
            .await
            .map_err(request("listing addresses"))?
        {
            addresses.push(address);
        }
        Ok(addresses)
    }

    /// Every route of every table, IPv4 and IPv6.
    pub async fn routes(&self) -> Result<Vec<RouteMessage>, NetlinkError> {
        let queries = [
            RouteMessageBuilder::<Ipv4Addr>::new().table_id(0).build(),
            RouteMessageBuilder::<Ipv6Addr>::new().table_id(0).build(),
        ];
        let mut routes = Vec::new();
        for query in queries {
            let mut dump = self.handle.route().get(query).execute();
            while let Some(route) = dump.try_next().await.map_err(request("listing routes"))? {
                routes.push(route);
            }
        }
        Ok(routes)
    }

    /// Every rule, IPv4 and IPv6.
    pub async fn rules(&self) -> Result<Vec<RuleMessage>, NetlinkError> {
        let mut rules = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let mut dump = self.handle.rule().get(version).execute();
            while let Some(rule) = dump.try_next().await.map_err(request("listing rules"))? {
                rules.push(rule);
            }
        }
        Ok(rules)
    }

    /// Adds `route`, replacing a route with the same destination and metric.
    pub async fn replace_route(
        &self,
        route: &Route,
        observed: &Observed,
    ) -> Result<(), NetlinkError> {
        let message = route_message(route, observed)?;
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(request(format!("adding route {route}")))
    }

    /// Adds a route exactly as another program left it (used to save and restore the
    /// main table's default); an identical route already there is fine. Without
    /// `NLM_F_EXCL`: defaults of equal metric through other interfaces (two DHCP
    /// uplinks at metric 0) are kept beside it, not refused as "exists".
    pub async fn add_raw_route(
        &self,
        mut message: RouteMessage,
        table: u32,
    ) -> Result<(), NetlinkError> {
        set_table(&mut message, table);
        let mut add = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(message));
        add.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
        let mut handle = self.handle.clone();
        let added = async {
            let mut answers = handle.request(add)?;
            while let Some(answer) = answers.next().await {
                if let NetlinkPayload::Error(err) = answer.payload {
                    return Err(rtnetlink::Error::NetlinkError(err));
                }
            }
            Ok(())
        };
        match added.await {
            Err(err) if errno(&err) == Some(EEXIST) => Ok(()),
            other => other.map_err(request(format!("restoring a route into table {table}"))),
        }
    }

    /// Deletes a route; one already gone is fine.
    pub async fn delete_route(&self, message: RouteMessage) -> Result<(), NetlinkError> {
        match self.handle.route().del(message).execute().await {
            Err(err) if matches!(errno(&err), Some(ESRCH | ENOENT)) => Ok(()),
            other => other.map_err(request("deleting a route")),
        }
    }

    pub async fn add_rule(&self, rule: &Rule) -> Result<(), NetlinkError> {
        let mut request_ = self.handle.rule().add();
        *request_.message_mut() = rule_message(rule);
        match request_.execute().await {
            Err(err) if errno(&err) == Some(EEXIST) => Ok(()),
            other => other.map_err(request(format!("adding rule {rule}"))),
        }
    }

    /// Sets link `name` administratively up or down.
    pub async fn set_link(&self, name: &str, up: bool) -> Result<(), NetlinkError> {
        let link = rtnetlink::LinkUnspec::new_with_name(name);
        let message = if up { link.up() } else { link.down() }.build();
        let state = if up { "up" } else { "down" };
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(request(format!("setting {name} {state}")))
    }

    /// Deletes a rule; one already gone is fine.
    pub async fn delete_rule(&self, message: RuleMessage) -> Result<(), NetlinkError> {
        match self.handle.rule().del(message).execute().await {
            Err(err) if matches!(errno(&err), Some(ESRCH | ENOENT)) => Ok(()),
            other => other.map_err(request("deleting a rule")),
        }
    }
}
