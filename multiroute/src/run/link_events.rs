//! The kernel's own news about links, addresses and routes (rtnetlink multicast):
//! carrier loss, an interface set down, an address removed or changed, a DHCP client
//! or PPP daemon replacing its default route. Each wakes the daemon to re-read the
//! host and re-plan at once, without waiting for probes to time out.
use std::sync::Arc;

use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{RouteNetlinkMessage, route::RouteProtocol};
use netlink_sys::{AsyncSocket, SocketAddr};
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK};
use tokio::sync::Notify;

use crate::apply::netlink::PROTOCOL;

/// Subscribes to link, IPv4 address and IPv4 route events. The returned `Notify`
/// holds at most one pending wake-up, so a burst of events costs one re-plan.
pub fn subscribe() -> std::io::Result<Arc<Notify>> {
    let (mut connection, _handle, mut messages) = rtnetlink::new_connection()?;
    connection.socket_mut().socket_mut().bind(&SocketAddr::new(
        0,
        RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE,
    ))?;
    tokio::spawn(connection);
    let changed = Arc::new(Notify::new());
    let notify = changed.clone();
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if !is_own_route(&message) {
                notify.notify_one();
            }
        }
    });
    Ok(changed)
}

/// multiroute's own route changes are consequences of a re-plan, not causes.
fn is_own_route(message: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
    match &message.payload {
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route),
        ) => route.header.protocol == RouteProtocol::Other(PROTOCOL),
        _ => false,
    }
}
