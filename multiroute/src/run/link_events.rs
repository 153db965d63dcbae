//! The kernel's own news about links, addresses, routes and rules (rtnetlink
//! multicast): carrier loss, an interface set down, an address removed or changed, a
//! DHCP client or PPP daemon replacing its default route, someone deleting one of
//! multiroute's rules or routes. Each wakes the daemon to re-read the host and
//! re-plan (and so put back what went missing) at once, without waiting for probes
//! to time out or for the periodic check.
use std::sync::Arc;

use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{RouteNetlinkMessage, route::RouteProtocol};
use netlink_sys::{AsyncSocket, SocketAddr};
use rtnetlink::constants::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
};
use tokio::{sync::Notify, task::JoinSet};

use super::task::Task;

use crate::netlink::PROTOCOL;

/// `RTNLGRP_IPV6_RULE` (19) as a legacy group bit; rtnetlink names no constant.
const RTMGRP_IPV6_RULE: u32 = 1 << (19 - 1);

/// Subscribes to link, address, route and rule events of both families (an RA
/// renumbering an uplink or changing its router is followed like a DHCP renew);
/// the listening tasks
/// join `tasks`. The returned `Notify` holds at most one pending wake-up, so a
/// burst of events costs one re-plan.
pub fn subscribe(tasks: &mut JoinSet<Task>) -> std::io::Result<Arc<Notify>> {
    let (mut connection, _handle, mut messages) = rtnetlink::new_connection()?;
    connection.socket_mut().socket_mut().bind(&SocketAddr::new(
        0,
        RTMGRP_LINK
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV4_RULE
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV6_ROUTE
            | RTMGRP_IPV6_RULE,
    ))?;
    tasks.spawn(async move {
        connection.await;
        Task::LinkEvents
    });
    let changed = Arc::new(Notify::new());
    let notify = changed.clone();
    tasks.spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if !is_own_new_route(&message) {
                notify.notify_one();
            }
        }
        Task::LinkEvents
    });
    Ok(changed)
}

/// Routes multiroute adds are consequences of a re-plan, not causes. One of its
/// routes deleted may be someone else's doing, so that wakes the daemon (after its
/// own deletions the re-plan finds nothing to do).
fn is_own_new_route(message: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
    match &message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
            route.header.protocol == RouteProtocol::Other(PROTOCOL)
        }
        _ => false,
    }
}
