//! nftables' own news (the `NFNLGRP_NFTABLES` netlink group): every table, chain or
//! rule added or deleted by anyone. A firewall reload that flushes the whole
//! ruleset takes multiroute's inbound-symmetry table with it; between then and its
//! return, replies of port-forwarded connections would leave through whatever
//! uplink the classifier hashed them to. Hearing of it at once shortens that gap
//! from the periodic check's 5 s to the time an `nft -f` takes.
use std::sync::Arc;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use tokio::{io::unix::AsyncFd, sync::Notify, task::JoinSet};

use super::task::Task;

/// `NFNLGRP_NFTABLES` in linux/netfilter/nfnetlink.h.
const NFNLGRP_NFTABLES: u32 = 7;

/// Subscribes to nftables events; the listening task joins `tasks`. The returned
/// `Notify` holds at most one pending wake-up, so a burst (a whole ruleset loaded)
/// costs one check.
pub fn subscribe(tasks: &mut JoinSet<Task>) -> std::io::Result<Arc<Notify>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.add_membership(NFNLGRP_NFTABLES)?;
    socket.set_non_blocking(true)?;
    // SAFETY: the AsyncFd owns the socket, whose descriptor stays open and the same
    // until the AsyncFd is dropped.
    let socket = unsafe { AsyncFd::register(socket) }.map_err(std::io::Error::from)?;
    let changed = Arc::new(Notify::new());
    let notify = changed.clone();
    tasks.spawn(async move {
        // The message itself does not matter, only that something changed; an
        // overrun (a big ruleset loaded at once) says so too.
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let Ok(mut ready) = socket.readable().await else {
                break;
            };
            let received = ready.try_io(|socket| {
                let mut chunk = &mut buffer[..];
                socket.get_ref().recv(&mut chunk, 0)
            });
            match received {
                // Spurious readiness: wait again.
                Err(_would_block) => continue,
                Ok(Ok(_)) => {}
                Ok(Err(err)) if err.raw_os_error() == Some(libc::ENOBUFS) => {}
                Ok(Err(err)) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(_)) => break,
            }
            notify.notify_one();
        }
        Task::NftEvents
    });
    Ok(changed)
}
