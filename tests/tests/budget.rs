//! A metered uplink end to end: a download crosses its quota, the warnings are
//! logged, it stands by (new flows elsewhere), and its count survives a SIGKILL and
//! a simulated reboot (state file kept, kernel state and interface counters gone)
//! until `budget reset` starts it again.
use std::{thread::sleep, time::Duration};

use multiroute_tests::{Lab, LabOptions, SERVER2, require_root, wait_until};
use serde_json::Value;

const QUOTA: u64 = 3_000_000;

/// isp1's entry in `status --json`.
fn isp1(lab: &Lab) -> Value {
    lab.status().expect("status --json")["uplinks"][1].clone()
}

fn used(lab: &Lab) -> u64 {
    isp1(lab)["budget"]["used_bytes"].as_u64().unwrap_or(0)
}

/// Kills `load` without letting it save or tidy up, then starts it again.
fn crash_and_load(lab: &mut Lab) {
    lab.stop_router(libc::SIGKILL).expect("SIGKILL");
    lab.start_router().expect("load after the crash");
}

#[test]
fn a_metered_uplink_stands_by_at_its_quota_and_keeps_its_count_across_crashes() {
    if !require_root!() {
        return;
    }
    // isp1 is metered; a rule sends the download to SERVER2 through it.
    let blocks = format!(
        "{}{}[uplink.budget]\nquota = \"3MB\"\nperiod = \"monthly\"\nreset_day = 1\nwarn_percent = [50, 90]\nat_quota = \"standby\"\n",
        Lab::uplink_block(0, 1),
        Lab::uplink_block(1, 1)
    );
    let rule = format!(
        "\n[[rule]]\nname = \"metered\"\ndst = [\"{SERVER2}\"]\nuplinks = [\"isp1\", \"isp0\"]\n"
    );
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: String::new(),
    })
    .expect("building the lab");
    lab.write_config_with(&blocks, &rule).unwrap();
    lab.start_router().expect("starting multiroute");
    let fresh = isp1(&lab);
    assert_eq!(fresh["budget"]["quota_bytes"], QUOTA, "{fresh}");
    assert!(used(&lab) < QUOTA / 10, "{fresh}");

    // Standing by moves the download off isp1 the moment the quota is crossed:
    // it may end early, as a TCP session on a dead uplink would.
    let download = lab.start_stream_from(SERVER2, 2).expect("a download");
    download.wait_with_output().expect("the download");
    wait_until(Duration::from_secs(5), || {
        isp1(&lab)["state"] == "exhausted"
    })
    .unwrap_or_else(|_| {
        panic!(
            "isp1 is not exhausted: {}\n{}",
            isp1(&lab),
            lab.router_log()
        )
    });
    let exhausted = isp1(&lab);
    println!("after the download: {exhausted}");
    let log = lab.router_log();
    for line in [
        "budget warning: 50 % of the quota used",
        "budget warning: 90 % of the quota used",
        "budget EXHAUSTED: standby",
    ] {
        assert!(log.contains(line), "{line:?} missing from the log:\n{log}");
    }
    assert_eq!(exhausted["budget"]["exhausted"], true);
    let reason = exhausted["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("budget used up: "), "{reason}");
    assert_eq!(exhausted["new_flows"], false);
    let human = String::from_utf8_lossy(&lab.multiroute(&["status"]).stdout).into_owned();
    assert!(human.contains("isp1 budget: "), "{human}");
    assert!(human.contains("(EXHAUSTED)"), "{human}");

    // Standing by: new flows, the rule's too, leave through isp0.
    let spread = lab.connections(100).unwrap();
    assert_eq!(spread.hits, [100, 0], "{spread:?}");
    let status = lab.status().unwrap();
    assert_eq!(status["rules"][0]["using"], "isp0", "{status}");

    let counted = used(&lab);
    crash_and_load(&mut lab);
    let after_crash = used(&lab);
    println!("used {counted} before SIGKILL, {after_crash} after load");
    assert!(after_crash >= counted, "the count survives a crash");
    assert_eq!(isp1(&lab)["state"], "exhausted");

    // A reboot: the kernel state and the interface (its counters) are gone, the
    // state file is kept.
    lab.stop_router(libc::SIGKILL).unwrap();
    let unload = lab.multiroute(&["unload"]);
    assert!(unload.status.success());
    lab.replug_uplink(1).unwrap();
    lab.start_router().expect("load after the reboot");
    let after_reboot = used(&lab);
    println!("used {after_reboot} after the simulated reboot");
    assert!(after_reboot >= after_crash, "the count survives a reboot");
    assert_eq!(isp1(&lab)["state"], "exhausted");
    let spread = lab.connections(100).unwrap();
    assert_eq!(spread.hits, [100, 0], "still standing by: {spread:?}");

    // A new data pack.
    let reset = lab.multiroute(&["budget", "reset", "isp1"]);
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    sleep(Duration::from_millis(200));
    let back = isp1(&lab);
    assert_eq!(back["state"], "up", "{back}");
    assert!(used(&lab) < QUOTA / 10, "{back}");
    let spread = lab.connections(200).unwrap();
    assert!(
        spread.hits[1] > 40,
        "isp1 takes new flows again: {spread:?}"
    );
    let unknown = lab.multiroute(&["budget", "reset", "isp0"]);
    assert_eq!(unknown.status.code(), Some(2), "isp0 has no budget");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("has no [uplink.budget]"));
    lab.stop_and_unload().expect("stopping multiroute");
}
