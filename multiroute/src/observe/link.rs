//! An interface's own numbers from sysfs (under `ip netns exec`, the namespace's
//! own): its index and traffic counters, read where a netlink dump would cost more
//! than the number.
/// `/sys/class/net/<interface>/<name>` as a number (`ifindex`,
/// `statistics/rx_packets`, …); `None` when the interface or the file is gone.
pub fn number(interface: &str, name: &str) -> Option<u64> {
    std::fs::read_to_string(path(interface, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Where sysfs keeps `name` of `interface`.
pub fn path(interface: &str, name: &str) -> String {
    format!("/sys/class/net/{interface}/{name}")
}

/// Bytes received and sent, together.
pub fn bytes(interface: &str) -> Option<u64> {
    let rx = number(interface, "statistics/rx_bytes")?;
    Some(rx.saturating_add(number(interface, "statistics/tx_bytes")?))
}
