//! The live status page in a real browser: Debian's headless Chromium opens it
//! from the LAN with the token, stays on it while an uplink fails, and the page
//! shows the change within 2 s; the page logs no console error, passes basic
//! accessibility checks, and a screenshot is kept in `target/test-artefacts/`.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    thread::sleep,
    time::{Duration, Instant},
};

use multiroute_tests::{Lab, LabOptions, SERVER, require_root, require_tool, stdout};

const TOKEN: &str = "lab-status-page-token";
const PAGE: &str = "http://100.64.0.1:9751";

/// Chromium in the lab's client namespace (the LAN), with a profile of its own.
fn chromium(lab: &Lab, args: &[&str]) -> Command {
    let profile = lab.dir.join("chromium").display().to_string();
    let mut command = Command::new("ip");
    command
        .args([
            "netns",
            "exec",
            &lab.client(),
            "chromium",
            "--headless",
            "--no-sandbox",
        ])
        .args([
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={profile}"))
        .args(args);
    command
}

fn artefacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artefacts");
    std::fs::create_dir_all(&dir).expect("creating target/test-artefacts");
    dir
}

#[test]
fn the_status_page_shows_a_failover_within_two_seconds_in_a_real_browser() {
    if !require_root!() || !require_tool!("chromium") {
        return;
    }
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: format!(
            "\n[health]\ntargets = [\"{SERVER}\"]\ninterval_ms = 200\ntimeout_ms = 200\n\n[web]\nlisten = \"100.64.0.1:9751\"\ntoken = \"{TOKEN}\"\n"
        ),
    })
    .expect("building the lab");
    lab.start_router().expect("starting multiroute");
    let client = lab.client();
    let code = |url: &str| {
        let out = lab
            .ns(
                &client,
                "curl",
                &["-s", "-o", "/dev/null", "-w", "%{http_code}", url],
            )
            .expect("curl");
        stdout(&out)
    };
    assert_eq!(code(&format!("{PAGE}/")), "401", "no token, no page");
    assert_eq!(code(&format!("{PAGE}/api/status")), "401");
    assert_eq!(code(&format!("{PAGE}/?token={TOKEN}")), "200");

    // The browser stays on the page; what it logs comes on its stderr.
    let mut browser = chromium(&lab, &[&format!("{PAGE}/?token={TOKEN}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium");
    let (lines, logged) = mpsc::channel();
    let stderr = browser.stderr.take().expect("its stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    let shown = |uplink: &str, state: &str, within: Duration, console: &mut Vec<String>| {
        let wanted = format!("multiroute page: {uplink} {state}");
        let deadline = Instant::now() + within;
        while let Ok((at, line)) =
            logged.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains("CONSOLE") {
                console.push(line.clone());
            }
            if line.contains(&wanted) {
                return Some(at);
            }
        }
        None
    };
    let mut console = Vec::new();
    shown("isp0", "up", Duration::from_secs(20), &mut console)
        .unwrap_or_else(|| panic!("the page never showed isp0 up: {console:#?}"));

    // The link goes down: the daemon knows at once, so what is measured is the
    // page (its polling and rendering), not the probes.
    let failed_at = Instant::now();
    lab.set_uplink_link(0, false).unwrap();
    let down = shown("isp0", "down", Duration::from_secs(5), &mut console)
        .unwrap_or_else(|| panic!("the page never showed isp0 down: {console:#?}"));
    let took = down.duration_since(failed_at).as_secs_f64();
    println!(
        "the page showed isp0 down {:.0} ms after the failure",
        took * 1000.0
    );
    assert!(took <= 2.0, "the page took {took:.2} s");
    // Let the events and charts render once more before the snapshot.
    sleep(Duration::from_millis(1500));
    let _ = browser.kill();
    let _ = browser.wait();
    while let Ok((_, line)) = logged.try_recv() {
        if line.contains("CONSOLE") {
            console.push(line);
        }
    }
    let errors: Vec<_> = console
        .iter()
        .filter(|l| l.contains(":ERROR:") || l.contains("Uncaught") || l.contains("console.error"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // The DOM as it stands, and a screenshot kept as an artefact.
    let url = format!("{PAGE}/?token={TOKEN}");
    let dom = chromium(&lab, &["--virtual-time-budget=3000", "--dump-dom", &url])
        .stderr(Stdio::null())
        .output()
        .expect("chromium --dump-dom");
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for needle in [
        r#"<html lang="en">"#,
        "<title>multiroute</title>",
        "<main>",
        r#"<th scope="col">State</th>"#,
        r#"data-uplink="isp0" data-state="down""#,
        r#"data-uplink="isp1" data-state="up""#,
    ] {
        assert!(
            dom.contains(needle),
            "{needle} missing from the page:\n{dom}"
        );
    }
    let charts = dom.matches("<svg").count();
    assert!(
        charts >= 6,
        "RTT, loss and traffic charts per uplink: {charts}"
    );
    assert_eq!(
        dom.matches("<svg").count(),
        dom.matches(r#"role="img" aria-label=""#).count(),
        "every chart is labelled"
    );
    let shot = artefacts().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let screenshot = format!("--screenshot={}", shot.display());
    let taken = chromium(
        &lab,
        &[
            "--virtual-time-budget=3000",
            "--window-size=1280,1000",
            &screenshot,
            &url,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status()
    .expect("chromium --screenshot");
    assert!(taken.success());
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    println!("screenshot: {} ({size} bytes)", shot.display());
    assert!(size > 10_000, "a screenshot of the page");
    lab.stop_and_unload().expect("stopping multiroute");
}
