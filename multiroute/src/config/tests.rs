//! Every class of config error names the file, the key and the problem.
use std::path::Path;

use super::*;

const MINIMAL: &str = r#"
lan = ["lan0"]
[[uplink]]
name = "a"
interface = "wan0"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/multiroute/test.toml"))
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn defaults_are_those_of_the_contract() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.uplinks[0].weight, 1);
    assert_eq!(config.uplinks[0].gateway, Default::default());
    assert_eq!(config.health.targets, [ProbeTarget::Gateway]);
    assert_eq!(
        (config.health.interval_ms, config.health.timeout_ms),
        (500, 1000)
    );
    assert_eq!((config.health.down, config.health.up), (3, 3));
    assert_eq!(config.routing.table_base, 100);
    assert_eq!(config.routing.rule_priority, 10_000);
    assert_eq!(config.routing.fwmark_mask, 0xff00);
    assert!(config.routing.main_default);
    assert_eq!(config.routing.pin_path, Path::new("/sys/fs/bpf/multiroute"));
    assert_eq!(
        config.control.socket,
        Path::new("/run/multiroute/control.sock")
    );
    assert_eq!(
        (config.numbering().table(0), config.numbering().mark(0)),
        (101, 0x100)
    );
    assert_eq!(config.metrics.listen, None, "metrics are off by default");
    assert_eq!(config.numbering().capacity(), 64);
    assert_eq!(config.numbering().inbound_flag(), 0x8000);
}

#[test]
fn full_schema_parses() {
    let config = parse(
        r#"
lan = ["eth0", "eth3"]
[[uplink]]
name = "dsl"
interface = "eth1"
gateway = "192.0.2.1"
weight = 0
pin = ["198.51.100.0/24"]
pin_from = ["203.0.113.50"]
probe = ["gateway", "198.51.100.9"]
[health]
targets = ["198.18.0.1"]
interval_ms = 200
timeout_ms = 300
down = 2
up = 4
[routing]
table_base = 200
rule_priority = 20000
fwmark_mask = 0xf0
main_default = false
pin_path = "/run/mr/bpf"
[control]
socket = "/run/mr/ctl.sock"
[metrics]
listen = "127.0.0.1:9750"
"#,
    )
    .unwrap();
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9750".parse().unwrap())
    );
    assert_eq!(
        config.numbering().capacity(),
        7,
        "a 4-bit mask: 7 marks and the inbound flag"
    );
    assert_eq!(config.numbering().inbound_flag(), 0x80);
    let dsl = &config.uplinks[0];
    assert_eq!(dsl.weight, 0);
    assert_eq!(
        dsl.probe,
        [
            ProbeTarget::Gateway,
            ProbeTarget::Target(Target::Icmp("198.51.100.9".parse().unwrap()))
        ]
    );
    let pin_from = config
        .rules
        .iter()
        .find(|r| r.name == "dsl.pin_from")
        .expect("pin_from as a rule");
    assert_eq!(
        (pin_from.name.as_str(), pin_from.uplinks.as_slice()),
        ("dsl.pin_from", ["dsl".to_owned()].as_slice())
    );
    assert_eq!(pin_from.src[0].to_string(), "203.0.113.50");
    assert!(pin_from.dst.is_empty() && pin_from.proto.is_none());
    assert_eq!(
        (config.numbering().table(0), config.numbering().mark(0)),
        (201, 0x10)
    );
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let err = error(&format!("{MINIMAL}wieght = 3\n"));
    assert!(err.starts_with("/etc/multiroute/test.toml: "), "{err}");
    assert!(err.contains("wieght"), "{err}");
    let err = error(&format!("{MINIMAL}[routing]\ntable = 5\n"));
    assert!(err.contains("unknown field `table`"), "{err}");
}

#[test]
fn each_validation_error_names_its_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"lan = []
[[uplink]]
name = "a"
interface = "wan0""#,
            "lan:",
            "at least one",
        ),
        ("lan = [\"lan0\"]\n", "uplink:", "at least one"),
        (
            &MINIMAL.replace("\"a\"", "\"Bad Name\""),
            "uplink[0].name",
            "a-z",
        ),
        (
            &format!("{MINIMAL}gateway = \"192.0.2.256\"\n"),
            "uplink[0].gateway",
            "not an IPv4 address",
        ),
        (
            &format!("{MINIMAL}weight = -1\n"),
            "uplink[0].weight",
            "between 0 and 256",
        ),
        (
            &format!("{MINIMAL}pin = [\"198.51.100.1/24\"]\n"),
            "uplink[0].pin",
            "host bits",
        ),
        (
            &format!("{MINIMAL}probe = [\"gw\"]\n"),
            "uplink[0].probe",
            "is none of",
        ),
        (
            &format!("{MINIMAL}[[uplink]]\nname = \"a\"\ninterface = \"wan1\"\n"),
            "uplink.name",
            "used twice",
        ),
        (
            &format!("{MINIMAL}[[uplink]]\nname = \"b\"\ninterface = \"wan0\"\n"),
            "uplink.interface",
            "two uplinks",
        ),
        (
            &MINIMAL.replace("\"wan0\"", "\"lan0\""),
            "uplink.interface",
            "also a LAN interface",
        ),
        (
            &format!(
                "{MINIMAL}[routing]\nfwmark_mask = 0x1\n[[uplink]]\nname = \"b\"\ninterface = \"wan1\"\n"
            ),
            "routing.fwmark_mask",
            "too small",
        ),
        (
            &format!("{MINIMAL}[metrics]\nlisten = \"localhost\"\n"),
            "metrics.listen",
            "not an address:port",
        ),
        (
            &format!("{MINIMAL}[routing]\ntable_base = 252\n"),
            "routing.table_base",
            "253-255",
        ),
        (
            &format!("{MINIMAL}[routing]\nrule_priority = 32000\n"),
            "routing.rule_priority",
            "room",
        ),
        (
            &format!("{MINIMAL}[routing]\npin_path = \"bpf\"\n"),
            "routing.pin_path",
            "absolute",
        ),
        (
            &format!("{MINIMAL}[health]\ninterval_ms = 0\n"),
            "health.interval_ms",
            "between 1",
        ),
        (
            &format!("{MINIMAL}[health]\ntargets = []\n"),
            "health.targets",
            "at least one",
        ),
        (
            &MINIMAL.replace("\"lan0\"", "\"a/b\""),
            "lan[0]",
            "is not an interface name: 1-15 characters",
        ),
        (
            &format!(
                "{MINIMAL}pin = [{}]\n",
                (0..601)
                    .map(|i| format!("\"198.18.{}.{}\"", i / 256, i % 256))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "rule",
            "at most 600 fit",
        ),
        (
            &format!("{MINIMAL}[[rule]]\nuplinks = [\"nope\"]\n"),
            "rule[0].uplinks",
            "no uplink named \"nope\"",
        ),
        (
            &format!("{MINIMAL}[[rule]]\nuplinks = []\n"),
            "rule[0].uplinks",
            "at least one",
        ),
        (
            &format!("{MINIMAL}[[rule]]\nproto = \"icmp\"\ndst_port = 53\nuplinks = [\"a\"]\n"),
            "rule[0].proto",
            "ports only exist",
        ),
        (
            &format!("{MINIMAL}[[rule]]\ndst_port = \"6000-5000\"\nuplinks = [\"a\"]\n"),
            "rule[0].dst_port",
            "ends before it starts",
        ),
        (
            &format!("{MINIMAL}[[rule]]\nsrc_port = 70000\nuplinks = [\"a\"]\n"),
            "rule[0].src_port",
            "not a port",
        ),
        (
            &format!("{MINIMAL}[[rule]]\nproto = \"sctp\"\nuplinks = [\"a\"]\n"),
            "rule[0].proto",
            "protocol number",
        ),
        (
            &format!("{MINIMAL}[[rule]]\ndst = [\"2001:db8::1/32\"]\nuplinks = [\"a\"]\n"),
            "rule[0].dst",
            "did you mean 2001:db8::/32",
        ),
        (
            &MINIMAL.replace(
                "interface = \"wan0\"",
                "interface = \"wan0\"\nnat6 = \"nat64\"",
            ),
            "uplink[0].nat6",
            "\"masquerade\", \"npt\" or \"none\"",
        ),
        (
            &MINIMAL.replace(
                "interface = \"wan0\"",
                "interface = \"wan0\"\ngateway6 = \"192.0.2.1\"",
            ),
            "uplink[0].gateway6",
            "not an IPv6 address",
        ),
        (
            &MINIMAL.replace(
                "interface = \"wan0\"",
                "interface = \"wan0\"\nnpt_prefix = \"2001:db8:1::/64\"",
            ),
            "uplink[0].npt_prefix",
            "only applies with nat6 = \"npt\"",
        ),
        (
            &format!("{MINIMAL}[[rule]]\nuplinks = [\"a\", \"a\"]\n"),
            "rule[0].uplinks",
            "listed twice",
        ),
        (
            &format!(
                "{MINIMAL}{}",
                "[[rule]]\nuplinks = [\"a\"]\nproto = 6\n".repeat(65)
            ),
            "rule",
            "at most 64",
        ),
        ("lan = [\"x\"\n", "line", ""),
    ];
    for (text, key, problem) in cases {
        let err = error(text);
        assert!(
            err.contains(key) && err.contains(problem),
            "{key}/{problem}: got {err:?}"
        );
        assert!(!err.contains('\n') || err.lines().count() <= 6, "{err}");
    }
}

#[test]
fn mask_fits_exactly_as_many_uplinks_as_it_can_number() {
    let three = format!(
        "{MINIMAL}[[uplink]]\nname = \"b\"\ninterface = \"wan1\"\n[[uplink]]\nname = \"c\"\ninterface = \"wan2\"\n"
    );
    // 0x7 numbers marks 1..=3 below the inbound flag 0x4: three uplinks fit, mark 0
    // stays "unsteered".
    let config = parse(&format!("{three}[routing]\nfwmark_mask = 0x7\n")).unwrap();
    assert_eq!(
        (
            config.numbering().capacity(),
            config.numbering().inbound_flag()
        ),
        (3, 0x4)
    );
    assert_eq!(config.numbering().mark(2), 0x3);
    let four = format!("{three}[[uplink]]\nname = \"d\"\ninterface = \"wan3\"\n");
    assert!(error(&format!("{four}[routing]\nfwmark_mask = 0x7\n")).contains("too small"));
}

#[test]
fn unreadable_file_is_a_config_error() {
    let err = Config::load(Path::new("/nonexistent/multiroute.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/multiroute.toml: (file): cannot read it")
    );
}

#[test]
fn quality_limits_come_from_health_and_each_uplink_may_tighten_them() {
    let text = r#"
lan = ["lan0"]
[health]
max_loss_percent = 30
window = 10
[[uplink]]
name = "a"
interface = "wan0"
[[uplink]]
name = "lte"
interface = "wan1"
probe = ["192.0.2.1", "192.0.2.2"]
[uplink.health]
max_rtt_ms = 200
targets_needed = 2
"#;
    let config = parse(text).unwrap();
    let (a, lte) = (config.uplinks[0].quality, config.uplinks[1].quality);
    assert_eq!((a.max_loss_percent, a.window, a.max_rtt_ms), (30, 10, 500));
    assert_eq!((a.recover_loss_percent, a.recover_rtt_ms), (5, 250));
    assert_eq!(
        (lte.max_loss_percent, lte.max_rtt_ms, lte.recover_rtt_ms),
        (30, 200, 200),
        "an inherited recover limit is capped at the uplink's own max"
    );
    assert_eq!(lte.targets_needed, 2);
    assert_eq!(parse(MINIMAL).unwrap().health.quality, Quality::default());
}

#[test]
fn quality_limit_errors_name_their_key() {
    let cases = [
        ("[health]\nwindo = 5\n", "unknown field `windo`"),
        (
            "[health]\nmax_loss_percent = 0\n",
            "health.max_loss_percent: 0 must be between 1 and 100",
        ),
        (
            "[health]\nrecover_loss_percent = 30\n",
            "health.recover_loss_percent: 30 must be between 0 and 20",
        ),
        (
            "[health]\ntargets_needed = 2\n",
            "health.targets_needed: 2 targets needed, but uplink \"a\" is probed at 1",
        ),
        (
            "[uplink.health]\nrecover_rtt_ms = 900\n",
            "uplink[0].health.recover_rtt_ms: 900 must be between 1 and 500",
        ),
        (
            "[uplink.health]\ninterval_ms = 5\n",
            "unknown field `interval_ms`",
        ),
    ];
    for (extra, expected) in cases {
        let err = error(&format!("{MINIMAL}{extra}"));
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
}

#[test]
fn on_dead_is_a_word_or_an_absolute_argv() {
    let with = |extra: &str| parse(&format!("{MINIMAL}{extra}"));
    let renew = with("on_dead = \"renew\"\n").unwrap();
    assert_eq!(
        renew.uplinks[0].on_dead,
        Some(OnDead {
            action: DeadAction::Renew,
            after_ms: 30_000
        })
    );
    let command =
        with("on_dead = [\"/usr/local/bin/reset\", \"a\"]\non_dead_after_ms = 5000\n").unwrap();
    assert_eq!(
        command.uplinks[0].on_dead.as_ref().map(|d| &d.action),
        Some(&DeadAction::Command(vec![
            "/usr/local/bin/reset".into(),
            "a".into()
        ]))
    );
    for (extra, expected) in [
        (
            "on_dead = \"reboot\"\n",
            "uplink[0].on_dead: \"reboot\" must be",
        ),
        ("on_dead = [\"reset\"]\n", "must be an absolute path"),
        ("on_dead = []\n", "an empty command"),
        ("on_dead_after_ms = 5000\n", "only applies with on_dead"),
        (
            "on_dead = \"bounce\"\non_dead_after_ms = 10\n",
            "on_dead_after_ms: 10 must be between 1000",
        ),
    ] {
        let err = error(&format!("{MINIMAL}{extra}"));
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
}

#[test]
fn hooks_are_an_exec_or_a_url_for_known_events() {
    let hooks = parse(&format!(
        "{MINIMAL}\n[[hook]]\non = [\"down\", \"up\"]\nexec = [\"/usr/local/bin/notify\"]\n\n[[hook]]\nurl = \"http://192.0.2.5:8080/x?token=secret\"\ndebounce_ms = 10000\n"
    ))
    .unwrap()
    .hooks;
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0].on, ["down", "up"]);
    assert_eq!((hooks[0].timeout_ms, hooks[0].retries), (5000, 2));
    assert!(matches!(&hooks[1].action, HookAction::Url(url) if url.port == 8080));
    assert_eq!(hooks[1].debounce_ms, 10_000);
    for (extra, expected) in [
        (
            "on = [\"dwon\"]\nexec = [\"/x\"]\n",
            "hook[0].on: \"dwon\" is not an event",
        ),
        (
            "exec = [\"notify\"]\n",
            "hook[0].exec: \"notify\" must be an absolute path",
        ),
        ("\n", "give exactly one of exec or url"),
        (
            "exec = [\"/x\"]\nurl = \"http://a/\"\n",
            "give exactly one of exec or url",
        ),
        (
            "url = \"https://a/?token=secret\"\n",
            "https is not supported",
        ),
        ("url = \"http://a:99999/\"\n", "is not a port"),
    ] {
        let err = error(&format!("{MINIMAL}\n[[hook]]\n{extra}"));
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(
            !err.contains("secret"),
            "the URL's token in an error: {err}"
        );
    }
}

#[test]
fn the_status_page_needs_a_token_off_loopback_and_never_shows_it() {
    let web = |section: &str| parse(&format!("{MINIMAL}\n[web]\n{section}"));
    let local = web("listen = \"127.0.0.1:9751\"\n").unwrap().web;
    assert_eq!(local.listen, Some("127.0.0.1:9751".parse().unwrap()));
    assert_eq!(local.token, None);
    let lan = web("listen = \"192.168.0.1:9751\"\ntoken = \"0123456789abcdef\"\n").unwrap();
    assert_eq!(lan.web.token.as_deref(), Some("0123456789abcdef"));
    for (section, expected) in [
        ("listen = \"192.168.0.1:9751\"\n", "web.token: required"),
        (
            "listen = \"192.168.0.1\"\n",
            "web.listen: \"192.168.0.1\" is not an address:port",
        ),
        (
            "listen = \"127.0.0.1:1\"\ntoken = \"short secret\"\n",
            "web.token: must be at least 16",
        ),
    ] {
        let err = web(section).unwrap_err().to_string();
        assert!(err.contains(expected), "{section:?}: {err}");
        assert!(!err.contains("short secret"), "{err}");
    }
    assert_eq!(parse(MINIMAL).unwrap().web.listen, None, "off by default");
}

/// The keys a section of `text` accepts, as serde lists them when it meets an
/// unknown one (`section` is where the stray key goes, e.g. "[web]").
fn accepted_keys(text: &str) -> Vec<String> {
    let message = error(text);
    let listed = message
        .split_once("expected one of ")
        .map(|(_, list)| list)
        .or_else(|| message.split_once("expected ").map(|(_, list)| list))
        .unwrap_or_else(|| panic!("no list of keys in {message:?}"));
    // "`a`, `b` or `c`": the quoted words.
    listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_reference_names_exactly_the_keys_the_parser_accepts() {
    let uplink = "[[uplink]]\nname = \"a\"\ninterface = \"wan0\"\n";
    let probes = [
        ("", format!("lan = [\"lan0\"]\nstray = 1\n{uplink}")),
        ("uplink", format!("lan = [\"lan0\"]\n{uplink}stray = 1\n")),
        (
            "uplink.budget",
            format!(
                "lan = [\"lan0\"]\n{uplink}[uplink.budget]\nquota = \"1GB\"\nperiod = \"daily\"\nstray = 1\n"
            ),
        ),
        (
            "routing",
            format!("lan = [\"lan0\"]\n{uplink}[routing]\nstray = 1\n"),
        ),
        (
            "control",
            format!("lan = [\"lan0\"]\n{uplink}[control]\nstray = 1\n"),
        ),
        (
            "metrics",
            format!("lan = [\"lan0\"]\n{uplink}[metrics]\nstray = 1\n"),
        ),
        (
            "web",
            format!("lan = [\"lan0\"]\n{uplink}[web]\nstray = 1\n"),
        ),
        (
            "balance",
            format!("lan = [\"lan0\"]\n{uplink}[balance]\nstray = 1\n"),
        ),
        (
            "datapath",
            format!("lan = [\"lan0\"]\n{uplink}[datapath]\nstray = 1\n"),
        ),
        (
            "rule",
            format!("lan = [\"lan0\"]\n{uplink}[[rule]]\nuplinks = [\"a\"]\nstray = 1\n"),
        ),
        (
            "hook",
            format!("lan = [\"lan0\"]\n{uplink}[[hook]]\nurl = \"http://x/\"\nstray = 1\n"),
        ),
    ];
    let documented = |section: &str| -> Vec<String> {
        let mut names: Vec<String> = reference::ALL
            .iter()
            .filter(|key| key.section == section)
            .map(|key| key.name.to_owned())
            .collect();
        names.sort();
        names
    };
    for (section, text) in probes {
        let mut accepted = accepted_keys(&text);
        // Tables inside a table are sections of their own.
        accepted.retain(|name| {
            !matches!(
                (section, name.as_str()),
                (
                    "",
                    "uplink" | "health" | "routing" | "control" | "metrics" | "web"
                ) | ("", "balance" | "datapath" | "rule" | "hook")
                    | ("uplink", "health" | "budget")
            )
        });
        accepted.sort();
        assert_eq!(accepted, documented(section), "section {section:?}");
    }
    // [health] flattens the quality keys, so serde lists none; each documented key
    // must parse there, in [uplink.health] too for the quality ones, and a stray
    // one must not.
    for key in reference::ALL.iter().filter(|key| key.section == "health") {
        let value = match key.name {
            "targets" => "[\"gateway\"]".to_owned(),
            _ => key.default_number().to_string(),
        };
        let text = format!(
            "lan = [\"lan0\"]\n{uplink}[health]\n{} = {value}\n",
            key.name
        );
        assert!(parse(&text).is_ok(), "[health] {} = {value}", key.name);
        if reference::QUALITY.iter().any(|q| q.name == key.name) {
            let text = format!(
                "lan = [\"lan0\"]\n{uplink}[uplink.health]\n{} = {value}\n",
                key.name
            );
            assert!(parse(&text).is_ok(), "[uplink.health] {}", key.name);
        }
    }
    assert!(parse(&format!("lan = [\"lan0\"]\n{uplink}[health]\nstray = 1\n")).is_err());
}

#[test]
fn every_number_default_is_within_its_range() {
    for key in reference::ALL {
        if let reference::Kind::Number {
            default: Some(value),
            min,
            max,
        } = key.kind
        {
            assert!((min..=max).contains(&value), "{}.{}", key.section, key.name);
        }
    }
}

#[test]
fn the_packaged_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/multiroute.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = parse(&text).unwrap();
    assert_eq!(config.uplinks.len(), 3);
}
