//! Runtime control, end to end: live weights, `flows` and `status` against what the
//! server saw, reload adding and removing uplinks, restart adoption under load.
use std::{
    collections::{BTreeMap, BTreeSet},
    thread::sleep,
    time::Duration,
};

use multiroute_tests::{Lab, LabOptions, percent, require_root, stdout, wait_until};

fn lab(weights: &[u32]) -> Lab {
    Lab::new(&LabOptions {
        weights: weights.to_vec(),
        extra_config: String::new(),
    })
    .expect("building the lab")
}

fn multiroute_ok(lab: &Lab, args: &[&str]) -> String {
    let out = lab.multiroute(args);
    assert!(
        out.status.success(),
        "multiroute {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// Every flow as (proto, src, sport, dst, dport) → uplink.
fn flow_table(lab: &Lab) -> BTreeMap<String, String> {
    lab.flows(&[])
        .expect("flows --json")
        .iter()
        .map(|f| {
            let key = format!(
                "{} {}:{} {}:{}",
                f["proto"], f["src"], f["src_port"], f["dst"], f["dst_port"]
            );
            (key, f["uplink"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

fn per_uplink(table: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for uplink in table.values() {
        *counts.entry(uplink.clone()).or_default() += 1;
    }
    counts
}

/// The uplink index that received most of the bytes since `before`.
fn busiest(lab: &Lab, before: &[u64]) -> usize {
    let after = lab.uplink_rx_bytes().unwrap();
    (0..after.len())
        .max_by_key(|&i| after[i] - before[i])
        .unwrap_or(0)
}

#[test]
fn weight_changes_apply_to_new_flows_only() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1]);
    lab.start_router().unwrap();
    let before = lab.uplink_rx_bytes().unwrap();
    let stream = lab.start_stream(10).unwrap();
    sleep(Duration::from_secs(1));
    let carrier = busiest(&lab, &before);

    let out = multiroute_ok(&lab, &["weight", "isp0", "3"]);
    assert!(out.contains("weight 1 -> 3"), "{out}");
    let seen = lab.connections(2000).unwrap();
    assert_eq!(seen.failures, 0);
    let share = percent(seen.hits[0], 2000);
    println!("weight isp0 3, isp1 1: isp0 took {share:.2}% of 2000 new connections (want 75%)");
    assert!((share - 75.0).abs() <= 3.0, "{:?}", seen.hits);

    // status and flows agree with each other and with the server.
    let status = lab.status().unwrap();
    assert_eq!(status["uplinks"][0]["weight"], 3);
    let table = flow_table(&lab);
    let counts = per_uplink(&table);
    for (i, uplink) in status["uplinks"].as_array().unwrap().iter().enumerate() {
        let name = uplink["name"].as_str().unwrap();
        let flows = counts.get(name).copied().unwrap_or(0);
        assert_eq!(uplink["flows"].as_u64().unwrap() as usize, flows, "{name}");
        // A reused client port is the same flow; the stream adds one.
        assert!(
            flows <= seen.hits[i] + 1,
            "{name}: {flows} flows, {:?}",
            seen.hits
        );
    }
    assert_eq!(
        table.len(),
        seen.ports + 1,
        "one flow per 5-tuple plus the stream"
    );
    let isp1_only = lab.flows(&["--uplink", "isp1"]).unwrap();
    assert_eq!(isp1_only.len(), counts["isp1"]);
    assert!(isp1_only.iter().all(|f| f["uplink"] == "isp1"));
    let from_client = lab.flows(&["--src", "100.64.0.2/32"]).unwrap();
    assert_eq!(from_client.len(), table.len());
    assert!(
        from_client
            .iter()
            .all(|f| f["packets"].as_u64().unwrap() >= 1)
    );

    // Draining the stream's uplink: no new flow uses it, the stream carries on. A
    // connection that reuses the 5-tuple of an earlier one is that flow, not a new
    // one, so it keeps its uplink: compare the flow table, not the server's counts.
    let name = format!("isp{carrier}");
    let before_drain = flow_table(&lab);
    multiroute_ok(&lab, &["weight", &name, "0"]);
    let seen = lab.connections(300).unwrap();
    assert_eq!(seen.failures, 0);
    let after_drain = flow_table(&lab);
    let new_on_drained: Vec<_> = after_drain
        .iter()
        .filter(|(key, uplink)| **uplink == name && !before_drain.contains_key(*key))
        .collect();
    assert!(
        new_on_drained.is_empty(),
        "{name} is drained: {new_on_drained:?}"
    );
    let new_flows = after_drain.len() - before_drain.len();
    println!(
        "{name} drained: {new_flows} new flows, none on it; {} connections reused an earlier flow on it",
        seen.hits[carrier]
    );
    assert!(
        new_flows > 0 && seen.hits[1 - carrier] >= new_flows,
        "{:?}",
        seen.hits
    );
    let status = lab.status().unwrap();
    assert_eq!(status["uplinks"][carrier]["state"], "drained");
    let output = stream.wait_with_output().unwrap();
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let after = lab.uplink_rx_bytes().unwrap();
    assert!(
        after[carrier] - before[carrier] >= report["bytes"].as_u64().unwrap(),
        "the whole transfer stayed on {name}"
    );

    let unknown = lab.multiroute(&["weight", "nope", "1"]);
    assert_eq!(unknown.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("isp0, isp1") && err.lines().count() == 1,
        "{err}"
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn reload_moves_only_the_removed_uplinks_flows() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1, 1]);
    lab.write_uplinks(&[(0, 1), (1, 1)], "").unwrap();
    lab.start_router().unwrap();
    let seen = lab.connections(600).unwrap();
    assert_eq!(seen.hits[2], 0, "isp2 is not configured yet");
    let before = flow_table(&lab);

    // isp0 goes, isp2 comes.
    lab.write_uplinks(&[(1, 1), (2, 1)], "").unwrap();
    lab.signal_router(libc::SIGHUP).unwrap();
    wait_until(Duration::from_secs(5), || {
        lab.status().is_ok_and(|s| {
            let names: Vec<_> = s["uplinks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["name"].clone())
                .collect();
            names == ["isp1", "isp2"]
        })
    })
    .expect("the reload takes effect");
    let after = flow_table(&lab);
    let mut moved = 0;
    for (key, uplink) in &before {
        match uplink.as_str() {
            "isp1" => assert_eq!(after.get(key), Some(uplink), "isp1's flow {key} stays"),
            _ => moved += usize::from(after.get(key) != Some(uplink)),
        }
    }
    println!(
        "reload: {} flows on isp1 untouched, {moved} of isp0's released",
        before.values().filter(|u| *u == "isp1").count()
    );
    let rules = stdout(&lab.ns(&lab.router(), "ip", &["rule"]).unwrap());
    assert!(
        rules.contains("fwmark 0x200/0xff00 lookup 102"),
        "isp1 keeps its mark and table: {rules}"
    );
    assert!(
        rules.contains("fwmark 0x300/0xff00 lookup 103"),
        "isp2 takes a fresh slot: {rules}"
    );
    assert!(
        !rules.contains("lookup 101"),
        "isp0's rules are gone: {rules}"
    );
    lab.assert_kernel_matches_plan().unwrap();

    let seen = lab.connections(600).unwrap();
    assert_eq!(seen.failures, 0);
    assert_eq!(
        seen.hits[0], 0,
        "nothing uses the removed uplink: {:?}",
        seen.hits
    );
    let share = percent(seen.hits[2], 600);
    assert!(
        (share - 50.0).abs() <= 7.0,
        "isp2 takes its share: {:?}",
        seen.hits
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn sigkill_under_load_loses_no_connection_and_restart_moves_no_flow() {
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1]);
    lab.start_router().unwrap();
    let client = lab.start_connections(3000).unwrap();
    sleep(Duration::from_secs(1));
    lab.stop_router(libc::SIGKILL).unwrap();
    let seen = lab.finish_connections(client).unwrap();
    assert_eq!(seen.failures, 0, "the pinned datapath kept steering");
    let before = flow_table(&lab);
    assert_eq!(before.len(), seen.ports, "one flow per 5-tuple");

    lab.start_router().unwrap();
    let after = flow_table(&lab);
    let moved = before
        .iter()
        .filter(|(k, u)| after.get(*k) != Some(u))
        .count();
    println!(
        "SIGKILL during 3000 connections: 0 failed; load again adopted {} of {} flows, {moved} moved",
        after.len(),
        before.len()
    );
    assert_eq!(after.len(), before.len());
    assert_eq!(moved, 0);
    assert_eq!(
        lab.classifiers(),
        1,
        "the old program was replaced behind the pinned link, not stacked"
    );
    let out = lab.multiroute(&["load"]);
    assert_eq!(out.status.code(), Some(1), "a second load is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already running") && err.contains("PID"),
        "{err}"
    );
    assert_eq!(lab.connections(200).unwrap().failures, 0);
    let used: BTreeSet<_> = after.values().collect();
    assert_eq!(used.len(), 2, "both uplinks carry flows: {used:?}");
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn metrics_endpoint_shows_what_status_shows() {
    if !require_root!() {
        return;
    }
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 2],
        extra_config: "\n[metrics]\nlisten = \"127.0.0.1:9750\"\n".into(),
    })
    .expect("building the lab");
    lab.start_router().unwrap();
    assert_eq!(lab.connections(300).unwrap().failures, 0);
    let status = lab.status().unwrap();
    let scrape = lab
        .ns(
            &lab.router(),
            "curl",
            &["-sSf", "--max-time", "5", "http://127.0.0.1:9750/metrics"],
        )
        .expect("scraping the metrics endpoint");
    let text = stdout(&scrape);
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(value("multiroute_fail_open"), 0.0);
    for uplink in status["uplinks"].as_array().unwrap() {
        let name = uplink["name"].as_str().unwrap();
        let series = |metric: &str| format!("multiroute_{metric}{{uplink=\"{name}\"}}");
        assert_eq!(value(&series("uplink_up")), 1.0);
        assert_eq!(
            value(&series("uplink_weight")),
            uplink["weight"].as_f64().unwrap()
        );
        assert_eq!(
            value(&series("uplink_flows")),
            uplink["flows"].as_f64().unwrap()
        );
        assert_eq!(
            value(&series("uplink_packets_total")),
            uplink["packets"].as_f64().unwrap()
        );
        assert_eq!(
            value(&series("uplink_bytes_total")),
            uplink["bytes"].as_f64().unwrap()
        );
        assert_eq!(value(&series("uplink_state_changes_total")), 0.0);
        // The default target is the gateway: answered, so an RTT and no loss.
        // (surge-ping can read a veth round trip as 0: it stamps a reply when its
        // receive loop wakes, which may be before the echo was sent.)
        let gateway = uplink["gateway"].as_str().unwrap();
        let probe = format!("{{uplink=\"{name}\",target=\"{gateway}\"}}");
        assert!(value(&format!("multiroute_probe_rtt_seconds{probe}")) >= 0.0);
        assert_eq!(value(&format!("multiroute_probe_loss_ratio{probe}")), 0.0);
    }
    assert!(
        value("multiroute_datapath_packets_total{family=\"ipv4\",outcome=\"flow_new\"}")
            >= 300.0 * 0.9
    );
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let missing = lab.ns(
        &lab.router(),
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:9750/",
        ],
    );
    assert_eq!(stdout(&missing.unwrap()), "404");
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contrib/multiroute.service"
    ))
    .expect("contrib/multiroute.service");
    if which("systemd-analyze").is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing and CI=true forbids skipping"
        );
        eprintln!("SKIPPED systemd_unit_verifies: systemd-analyze is not installed");
        return;
    }
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}");
    }
    // Verify it as installed, with the binary we just built in place.
    let dir = std::env::temp_dir().join(format!("mr-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("multiroute.service");
    let bin = multiroute_tests::multiroute_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/multiroute", &bin.to_string_lossy()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.exists())
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_full_flow_table_scraped_in_a_loop_causes_no_false_transition() {
    if !require_root!() {
        return;
    }
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: "\n[metrics]\nlisten = \"127.0.0.1:9750\"\n\n[health]\ninterval_ms = 200\ntimeout_ms = 200\ndown = 3\nup = 3\n".into(),
    })
    .expect("building the lab");
    lab.start_router().unwrap();
    let mut maps = multiroute::apply::datapath::Maps::open(&lab.pin_path()).unwrap();
    let flows = multiroute_ebpf::FLOW_TABLE_SIZE;
    for i in 0..flows {
        let key = multiroute_ebpf::FlowKey::wire(
            u32::from_ne_bytes([192, 0, 2, (i % 250) as u8]),
            (i >> 8) as u16,
            u32::from_ne_bytes([198, 51, 100, 7]),
            443u16.to_be(),
            6,
        );
        let flow = multiroute_ebpf::Flow {
            uplink: (i % 2) as u16,
            ..Default::default()
        };
        maps.v4.insert(&key, &flow).unwrap();
    }
    let start = std::time::Instant::now();
    let mut scrapes = 0;
    while start.elapsed() < Duration::from_secs(30) {
        lab.ns(
            &lab.router(),
            "curl",
            &[
                "-sSf",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "http://127.0.0.1:9750/metrics",
            ],
        )
        .expect("scraping");
        scrapes += 1;
    }
    let status = lab.status().unwrap();
    let changes: Vec<_> = status["uplinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["state_changes"].as_u64().unwrap())
        .collect();
    println!("{scrapes} scrapes of a {flows}-flow table in 30 s; state changes {changes:?}");
    assert!(scrapes >= 3, "scrapes finish: {scrapes}");
    assert_eq!(changes, [0, 0], "{}", lab.router_log());
    assert!(
        !lab.router_log().contains("uplink DOWN"),
        "{}",
        lab.router_log()
    );
    lab.stop_and_unload().expect("stopping multiroute");
}

#[test]
fn an_oversized_control_request_is_refused_without_buffering_it() {
    use std::io::{BufRead, Write};
    if !require_root!() {
        return;
    }
    let mut lab = lab(&[1, 1]);
    lab.start_router().unwrap();
    let pid = lab.router_pid().unwrap();
    let before = rss_kib(pid);
    let stream = std::os::unix::net::UnixStream::connect(lab.dir.join("control.sock")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let writer = stream.try_clone().unwrap();
    // 20 MiB without a newline, as fast as the daemon takes it.
    let flood = std::thread::spawn(move || {
        let mut writer = writer;
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0usize;
        while written < 20 << 20 && writer.write_all(&chunk).is_ok() {
            written += chunk.len();
        }
        written
    });
    let mut reply = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut reply)
        .unwrap();
    let written = flood.join().unwrap();
    let after = rss_kib(pid);
    println!("refused after {written} bytes written: {reply}; RSS {before} → {after} KiB");
    assert!(reply.contains("request longer than 65536 bytes"), "{reply}");
    assert!(
        after < before + 4096,
        "the daemon did not buffer the flood: {before} → {after} KiB"
    );
    assert_eq!(lab.status().unwrap()["ready"], true, "still answering");
    lab.stop_and_unload().expect("stopping multiroute");
}
