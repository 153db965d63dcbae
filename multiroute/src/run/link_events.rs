//! The kernel's own news about links and addresses (rtnetlink multicast): carrier
//! loss, an interface set down, an address removed or changed. Each wakes the daemon
//! to re-read the host and re-plan at once, without waiting for probes to time out.
use std::sync::Arc;

use futures::StreamExt;
use netlink_sys::{AsyncSocket, SocketAddr};
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_LINK};
use tokio::sync::Notify;

/// Subscribes to link and IPv4 address events. The returned `Notify` holds at most
/// one pending wake-up, so a burst of events costs one re-plan.
pub fn subscribe() -> std::io::Result<Arc<Notify>> {
    let (mut connection, _handle, mut messages) = rtnetlink::new_connection()?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))?;
    tokio::spawn(connection);
    let changed = Arc::new(Notify::new());
    let notify = changed.clone();
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            notify.notify_one();
        }
    });
    Ok(changed)
}
