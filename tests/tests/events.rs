//! The event stream and hooks end to end: a failover seen by `events --follow`,
//! told to an exec hook (environment and JSON), POSTed to a URL hook, debounced,
//! and never delayed by a hook that hangs.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::Stdio,
    sync::mpsc,
    thread::sleep,
    time::{Duration, Instant},
};

use multiroute_tests::{Lab, LabOptions, SERVER, measure_outage, require_root, wall_clock};
use serde_json::Value;

/// Records every POST body, one per line, in the file named by argv[2].
const RECEIVER: &str = r#"
import http.server, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(sys.argv[2], "ab") as out:
            out.write(b"GET " + self.path.encode() + b"\n")
        self.send_response(200)
        self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[2], "ab") as out:
            out.write(self.path.encode() + b" " + body + b"\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
"#;

fn read(lab: &Lab, name: &str) -> String {
    std::fs::read_to_string(lab.dir.join(name)).unwrap_or_default()
}

#[test]
fn a_failover_is_an_event_for_followers_and_hooks_and_a_hanging_hook_delays_nothing() {
    if !require_root!() {
        return;
    }
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1],
        extra_config: String::new(),
    })
    .expect("building the lab");
    let dir = lab.dir.display().to_string();
    let ddns = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/hooks/ddns")
        .display()
        .to_string();
    let hooks = format!(
        r#"
[health]
targets = ["{SERVER}"]
interval_ms = 200
timeout_ms = 200

[[hook]]
on = ["down", "up"]
exec = ["/bin/sh", "-c", "env | grep ^MULTIROUTE_ | sort >> {dir}/hook.env; cat >> {dir}/hook.json; echo >> {dir}/hook.json"]

[[hook]]
exec = ["/bin/sleep", "60"]
timeout_ms = 1000
retries = 0

[[hook]]
on = ["down"]
url = "http://127.0.0.1:9760/notify?token=s3cret"

[[hook]]
on = ["down", "up"]
exec = ["{ddns}", "http://127.0.0.1:9760/nic/update?hostname=home&myip=", "{dir}"]

[[hook]]
on = ["down", "up"]
debounce_ms = 6000
exec = ["/bin/sh", "-c", "echo $MULTIROUTE_EVENT >> {dir}/debounced.log"]
"#
    );
    lab.write_config_with(
        &format!("{}{}", Lab::uplink_block(0, 1), Lab::uplink_block(1, 1)),
        &hooks,
    )
    .unwrap();
    let router = lab.router();
    let posted = lab.dir.join("posted.log").display().to_string();
    lab.start_in(&router, "python3", &["-c", RECEIVER, "9760", &posted])
        .expect("starting the URL hook's receiver");
    lab.start_router().expect("starting multiroute");

    // A follower, from before the failure.
    let config = lab.config.display().to_string();
    let binary = multiroute_tests::multiroute_bin().display().to_string();
    // Killed below, or with the lab's namespaces if the test fails first.
    let mut follower = std::process::Command::new("ip")
        .args(["netns", "exec", &router, &binary, "-c", &config])
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("events --follow");
    let (lines, followed) = mpsc::channel();
    let stdout = follower.stdout.take().expect("its stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });

    let client = lab.start_attempts(3.0, 20, 500).unwrap();
    sleep(Duration::from_millis(800));
    let t0 = wall_clock();
    let started = Instant::now();
    lab.fail_upstream(0).unwrap();
    let down = loop {
        let line = followed
            .recv_timeout(Duration::from_secs(2).saturating_sub(started.elapsed()))
            .expect("a down event within 2 s");
        let event: Value = serde_json::from_str(&line).expect("an event as JSON");
        if event["event"] == "down" && event["uplink"] == "isp0" {
            break event;
        }
    };
    println!(
        "followed after {:.0} ms: {down}",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(down["family"], "ipv4");
    assert_eq!(down["target"], SERVER.to_string());
    assert_eq!(
        (&down["previous"], &down["state"]),
        (&Value::from("up"), &Value::from("down"))
    );
    let outage = measure_outage(&Lab::attempts(client).unwrap(), t0).unwrap();
    println!(
        "failover with a hanging hook: {:.0} ms",
        outage.seconds * 1000.0
    );
    assert!(
        outage.seconds <= 1.0,
        "a hanging hook delayed the failover: {outage:?}"
    );

    lab.restore_upstream(0).unwrap();
    sleep(Duration::from_millis(1500));
    let env = read(&lab, "hook.env");
    for line in [
        "MULTIROUTE_EVENT=down",
        "MULTIROUTE_UPLINK=isp0",
        "MULTIROUTE_FAMILY=ipv4",
        "MULTIROUTE_STATE=down",
        "MULTIROUTE_PREVIOUS=up",
        "MULTIROUTE_ADDRESS=198.18.0.2",
        "MULTIROUTE_EVENT=up",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing:\n{env}");
    }
    let json: Vec<Value> = read(&lab, "hook.json")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("the event on stdin"))
        .collect();
    assert!(json.iter().any(|e| e["event"] == "down"), "{json:?}");
    let posts = read(&lab, "posted.log");
    assert!(
        posts
            .lines()
            .any(|l| l.starts_with("/notify?token=s3cret ") && l.contains(r#""event":"down""#)),
        "{posts}"
    );
    let log = lab.router_log();
    assert!(
        log.contains("hook failed: /bin/sleep ran over 1000 ms and was killed"),
        "{log}"
    );
    assert!(
        !log.contains("s3cret"),
        "a URL's secret leaked into the log:\n{log}"
    );

    let history = lab.multiroute(&["events", "--json"]);
    let told: Vec<Value> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["uplink"] == "isp0")
        .collect();
    let names: Vec<&str> = told.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["down", "failover", "up", "failback"], "{told:?}");
    // How many of its sessions moved with it: those the attempts had opened.
    let moved = told[1]["sessions"].as_u64().expect("a count");
    println!("failover: {}", told[1]["reason"]);
    assert!(moved > 0, "{}", told[1]);
    let human = String::from_utf8_lossy(&lab.multiroute(&["events"]).stdout).into_owned();
    assert!(human.contains(" down isp0 ipv4 (up → down): "), "{human}");

    // The dynamic-DNS example followed the uplink taking new flows: isp1 while
    // isp0 was down, isp0 again after.
    let updates: Vec<&str> = posts
        .lines()
        .filter_map(|l| l.strip_prefix("GET /nic/update?hostname=home&myip="))
        .collect();
    assert_eq!(updates, ["198.18.1.2", "198.18.0.2"], "{posts}");

    // Debounced: the down and the up ≈ 3 s later are one notification, the up,
    // when the down's 6 s window ends.
    sleep(Duration::from_secs(5));
    assert_eq!(read(&lab, "debounced.log"), "up\n");
    let _ = follower.kill();
    let _ = follower.wait();
    lab.stop_and_unload().expect("stopping multiroute");
}
