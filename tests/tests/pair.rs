//! Two routers, one gateway (contrib/ha): keepalived moves the LAN gateway and the
//! uplink addresses, conntrackd syncs the sessions, multiroute on the new master
//! puts every synced session on the uplink it is NATed to before it steers. A
//! router failover, and the failback, must move and break no session.
use multiroute_tests::{pair::failover_round, require_root};

/// Runs a round and checks what must hold whatever the advert interval, and that
/// the switches took less than VRRP's own bounds for it (`failover`, `failback`,
/// in seconds) plus half a second for ARP and the 20 ms attempts' granularity.
fn round(advert_int: f64, failover: f64, failback: f64) {
    let round = failover_round(advert_int).expect("the failover round");
    println!(
        "router failover (advert_int {advert_int} s): new connections after {:.0} ms ({} failed), \
         failback after {:.0} ms ({} failed); sessions: {} of {} moved, {} broken, {} UDP replies \
         lost meanwhile; {} sessions seeded on B",
        round.failover_s * 1000.0,
        round.failed[0],
        round.failback_s * 1000.0,
        round.failed[1],
        round.moved,
        round.sessions,
        round.broken,
        round.udp_lost,
        round.seeded
    );
    assert_eq!(round.sessions, 250);
    assert_eq!(round.moved, 0, "each session keeps its public address");
    assert_eq!(round.broken, 0, "no session breaks");
    assert!(
        round.seeded >= 250,
        "B put the synced sessions on their uplinks"
    );
    assert!(
        round.failover_s < failover + 0.5,
        "failover {:.2} s",
        round.failover_s
    );
    assert!(
        round.failback_s < failback + 0.5,
        "failback {:.2} s",
        round.failback_s
    );
}

#[test]
fn a_router_failover_and_failback_move_and_break_no_session() {
    if !require_root!() {
        return;
    }
    // VRRP's own bounds: the backup takes over after three missed adverts plus its
    // skew ((256 - 100) / 256 s); router A, back, waits three adverts plus its own
    // skew (0.41 s) before it preempts.
    round(1.0, 3.6, 3.41);
}

#[test]
fn faster_adverts_switch_routers_faster_still_without_losing_a_session() {
    if !require_root!() {
        return;
    }
    // The same bounds at 0.3 s adverts.
    round(0.3, 1.08, 1.02);
}
