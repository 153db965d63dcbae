//! Every config key: its section, its default, its range and what it means. One
//! source for the parser's defaults, `check`'s range errors and the
//! `multiroute.toml(5)` manual, so the three cannot drift apart.

/// One key of the config file.
pub struct Key {
    /// The table it sits in: "" for the top level, "uplink", "uplink.health", …
    pub section: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    /// What it means, one or two sentences (the manual's text).
    pub about: &'static str,
}

/// The value a key takes.
pub enum Kind {
    /// A whole number in `min..=max`; `default` None means unset (`about` says
    /// what unset does).
    Number {
        default: Option<i64>,
        min: i64,
        max: i64,
    },
    Flag {
        default: bool,
    },
    /// One of `choices`, as a string.
    Choice {
        default: Option<&'static str>,
        choices: &'static [&'static str],
    },
    /// Free-form text whose shape `form` describes (the same words `check` uses).
    Text {
        default: Option<&'static str>,
        form: &'static str,
    },
}

impl Key {
    /// The default of a [`Kind::Number`] key (0 for any other, which no caller asks).
    pub const fn default_number(&self) -> i64 {
        match self.kind {
            Kind::Number {
                default: Some(value),
                ..
            } => value,
            _ => 0,
        }
    }

    /// The default of a [`Kind::Text`] key as the file writes it ("" for none).
    pub const fn default_text(&self) -> &'static str {
        match self.kind {
            Kind::Text {
                default: Some(text),
                ..
            } => text,
            _ => "",
        }
    }

    /// `value` if it is within the key's range, else the problem as `check` says it.
    pub fn number(&self, value: i64) -> Result<u32, String> {
        let (min, max) = self.range();
        self.number_within(value, min, max)
    }

    /// [`Key::number`] with a narrower upper end that another key sets (a
    /// recover limit under its max).
    pub fn number_within(&self, value: i64, min: i64, max: i64) -> Result<u32, String> {
        u32::try_from(value)
            .ok()
            .filter(|v| (min..=max).contains(&i64::from(*v)))
            .ok_or_else(|| format!("{value} must be between {min} and {max}"))
    }

    /// The range of a [`Kind::Number`] key.
    pub const fn range(&self) -> (i64, i64) {
        match self.kind {
            Kind::Number { min, max, .. } => (min, max),
            _ => (0, 0),
        }
    }

    /// `"one", "two" or "three"` for a [`Kind::Choice`] key.
    pub fn choices(&self) -> String {
        let Kind::Choice { choices, .. } = self.kind else {
            return String::new();
        };
        let quoted: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
        match quoted.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    /// The problem with `value` for a [`Kind::Choice`] key, as `check` says it.
    pub fn not_a_choice(&self, value: &str) -> String {
        format!("{value:?} must be {}", self.choices())
    }

    /// The shape a [`Kind::Text`] key's value must have ("" for any other kind).
    pub const fn form(&self) -> &'static str {
        match self.kind {
            Kind::Text { form, .. } => form,
            _ => "",
        }
    }

    /// What `check` says of `value`, which is not of the key's form.
    pub fn not_of_form(&self, value: &str) -> String {
        format!("{value:?} is not {}", self.form())
    }
}

const fn number(
    section: &'static str,
    name: &'static str,
    default: Option<i64>,
    min: i64,
    max: i64,
    about: &'static str,
) -> Key {
    Key {
        section,
        name,
        kind: Kind::Number { default, min, max },
        about,
    }
}

const fn text(
    section: &'static str,
    name: &'static str,
    default: Option<&'static str>,
    form: &'static str,
    about: &'static str,
) -> Key {
    Key {
        section,
        name,
        kind: Kind::Text { default, form },
        about,
    }
}

const fn choice(
    section: &'static str,
    name: &'static str,
    default: Option<&'static str>,
    choices: &'static [&'static str],
    about: &'static str,
) -> Key {
    Key {
        section,
        name,
        kind: Kind::Choice { default, choices },
        about,
    }
}

const fn flag(
    section: &'static str,
    name: &'static str,
    default: bool,
    about: &'static str,
) -> Key {
    Key {
        section,
        name,
        kind: Kind::Flag { default },
        about,
    }
}

/// The most flows' share one uplink can be given (0 drains it).
pub const MAX_WEIGHT: u32 = 256;
/// Tiers 1 (preferred, the default) to this.
pub const MAX_TIER: u32 = 255;
const HOUR_MS: i64 = 3_600_000;

pub const INTERFACE_FORM: &str = "an interface name: 1-15 characters, no '/' or spaces";
pub const UPLINK_NAME_FORM: &str = "1-15 characters of a-z, 0-9, _ or -";

pub const LAN: Key = text(
    "",
    "lan",
    None,
    "a list of interface names",
    "Required. The LAN interfaces: the classifier attaches to their ingress, and new flows arriving on them are spread over the uplinks.",
);

pub const UPLINK_NAME: Key = text(
    "uplink",
    "name",
    None,
    UPLINK_NAME_FORM,
    "Required, unique. How the uplink is called in commands, status, metrics and events.",
);
pub const UPLINK_INTERFACE: Key = text(
    "uplink",
    "interface",
    None,
    INTERFACE_FORM,
    "Required, unique. The interface the uplink's traffic leaves by (an Ethernet port, ppp0, wwan0, a WireGuard tunnel).",
);
pub const GATEWAY: Key = text(
    "uplink",
    "gateway",
    None,
    "an IPv4 address",
    "The next hop. Unset: learned from the interface (a DHCP client's default route); none on a point-to-point link.",
);
pub const GATEWAY6: Key = text(
    "uplink",
    "gateway6",
    None,
    "an IPv6 address",
    "The IPv6 next hop. Unset: learned from the default route a router advertisement installed.",
);
pub const NAT6: Key = choice(
    "uplink",
    "nat6",
    Some("masquerade"),
    &["masquerade", "npt", "none"],
    "How LAN IPv6 sources leave by this uplink: masquerade to its address, network prefix translation to npt_prefix, or unchanged.",
);
pub const NPT_PREFIX: Key = text(
    "uplink",
    "npt_prefix",
    None,
    "an IPv6 prefix such as \"2001:db8:1:100::/64\"",
    "For nat6 = \"npt\": the prefix LAN sources are mapped into. Unset: the prefix delegated on the interface.",
);
pub const WEIGHT: Key = number(
    "uplink",
    "weight",
    Some(1),
    0,
    MAX_WEIGHT as i64,
    "The uplink's share of new flows among the live uplinks of its tier. 0 drains it: no new flows, running ones stay.",
);
pub const TIER: Key = number(
    "uplink",
    "tier",
    Some(1),
    1,
    MAX_TIER as i64,
    "Lower is preferred: new flows use the best tier with a live uplink; a higher tier is a backup.",
);
pub const PIN: Key = text(
    "uplink",
    "pin",
    None,
    "a list of addresses or prefixes",
    "Destinations that always use this uplink while it is alive (an ISP's own DNS or mail servers).",
);
pub const PIN_FROM: Key = text(
    "uplink",
    "pin_from",
    None,
    "a list of addresses or prefixes",
    "LAN sources that always use this uplink while it is alive.",
);
pub const PROBE: Key = text(
    "uplink",
    "probe",
    None,
    "a list of probe targets",
    "This uplink's health targets instead of [health] targets: \"gateway\", an address (ICMP echo), \"tcp://ADDRESS:PORT\" or \"dns://ADDRESS\".",
);
pub const ON_DEAD_FORM: &str =
    "\"renew\", \"bounce\" or a command such as [\"/usr/local/bin/reset-modem\", \"lte\"]";
pub const ON_DEAD: Key = text(
    "uplink",
    "on_dead",
    None,
    ON_DEAD_FORM,
    "What to do about an uplink dead for on_dead_after_ms: ask its DHCP client to renew, take its link down and up, or run a program (no shell). Unset: nothing.",
);
pub const ON_DEAD_AFTER_MS: Key = number(
    "uplink",
    "on_dead_after_ms",
    Some(30_000),
    1_000,
    86_400_000,
    "How long the uplink is dead before on_dead acts; each further attempt waits twice as long (at most an hour).",
);

pub const TARGETS: Key = text(
    "health",
    "targets",
    Some("[\"gateway\"]"),
    "a list of probe targets",
    "Where every uplink is probed through itself: \"gateway\", an address (ICMP echo), \"tcp://ADDRESS:PORT\" or \"dns://ADDRESS\".",
);
pub const INTERVAL_MS: Key = number(
    "health",
    "interval_ms",
    Some(500),
    1,
    HOUR_MS,
    "One probe per target per interval.",
);
pub const TIMEOUT_MS: Key = number(
    "health",
    "timeout_ms",
    Some(1000),
    1,
    HOUR_MS,
    "A probe unanswered this long counts as lost (an answer up to four times later still counts for the RTT).",
);
pub const DOWN: Key = number(
    "health",
    "down",
    Some(3),
    1,
    1000,
    "Lost probes in a row that make a target dead (more on a line that was already lossy).",
);
pub const UP: Key = number(
    "health",
    "up",
    Some(3),
    1,
    1000,
    "Answered probes in a row that bring a dead target back.",
);

/// The quality limits: in [health], and per uplink in [uplink.health].
pub const MAX_LOSS_PERCENT: Key = number(
    "health",
    "max_loss_percent",
    Some(20),
    1,
    100,
    "Loss over the last window probes of a target above this makes it degraded: the uplink takes no new flows while a good one of its tier is alive.",
);
pub const MAX_RTT_MS: Key = number(
    "health",
    "max_rtt_ms",
    Some(500),
    1,
    HOUR_MS,
    "A mean round trip over the window above this makes the target degraded.",
);
pub const RECOVER_LOSS_PERCENT: Key = number(
    "health",
    "recover_loss_percent",
    Some(5),
    0,
    100,
    "A degraded target is good again once its loss stays at or under this (at most max_loss_percent) for half a window.",
);
pub const RECOVER_RTT_MS: Key = number(
    "health",
    "recover_rtt_ms",
    Some(250),
    1,
    HOUR_MS,
    "…and its mean round trip at or under this (at most max_rtt_ms).",
);
pub const WINDOW: Key = number(
    "health",
    "window",
    Some(20),
    1,
    1000,
    "Probes per target the quality is judged over.",
);
pub const TARGETS_NEEDED: Key = number(
    "health",
    "targets_needed",
    Some(1),
    1,
    64,
    "Targets that must be up for the uplink to be alive (and good for it to be good).",
);
pub const MIN_STATE_MS: Key = number(
    "health",
    "min_state_ms",
    Some(5000),
    0,
    HOUR_MS,
    "A quality verdict holds at least this long before it can change again.",
);
pub const QUALITY: [Key; 7] = [
    MAX_LOSS_PERCENT,
    MAX_RTT_MS,
    RECOVER_LOSS_PERCENT,
    RECOVER_RTT_MS,
    WINDOW,
    TARGETS_NEEDED,
    MIN_STATE_MS,
];

pub const QUOTA: Key = text(
    "uplink.budget",
    "quota",
    None,
    "a size such as \"50GB\", \"500MiB\" or a number of bytes",
    "Required. Bytes per period, both directions together, as the interface counts them.",
);
pub const PERIOD: Key = choice(
    "uplink.budget",
    "period",
    None,
    &["monthly", "weekly", "daily"],
    "Required. How often the count starts again, at local midnight.",
);
pub const RESET_DAY: Key = number(
    "uplink.budget",
    "reset_day",
    Some(1),
    1,
    31,
    "The day a period starts: of the month (1-31, the last day in a shorter month) or of the week (1 = Monday to 7).",
);
pub const WARN_PERCENT: Key = text(
    "uplink.budget",
    "warn_percent",
    Some("[75, 95]"),
    "a list of percentages from 1 to 99",
    "Shares of the quota announced once each per period (log, events, hooks).",
);
pub const AT_QUOTA: Key = choice(
    "uplink.budget",
    "at_quota",
    Some("standby"),
    &["standby", "stop", "warn"],
    "What a used-up quota does: the uplink becomes a last-resort backup, carries nothing more, or is only announced.",
);
pub const STANDBY_INTERVAL_MS: Key = number(
    "uplink.budget",
    "standby_interval_ms",
    None,
    1,
    HOUR_MS,
    "How often its targets are probed while it takes no new flows. Unset: [health] interval_ms.",
);

pub const TABLE_BASE: Key = number(
    "routing",
    "table_base",
    Some(100),
    1,
    u32::MAX as i64,
    "Uplink i uses routing table table_base + i + 1; the tables must avoid 253-255 (default, main, local).",
);
pub const RULE_PRIORITY: Key = number(
    "routing",
    "rule_priority",
    Some(10_000),
    1,
    32_765 - 1000,
    "multiroute's ip rules live in rule_priority to rule_priority + 999.",
);
pub const FWMARK_MASK: Key = number(
    "routing",
    "fwmark_mask",
    Some(0xff00),
    1,
    u32::MAX as i64,
    "The bits of the packet mark multiroute owns: contiguous from the lowest set bit, enough for the uplinks' numbers plus one.",
);
pub const MAIN_DEFAULT: Key = flag(
    "routing",
    "main_default",
    true,
    "Replace the main table's default route with a weighted multipath route over the live uplinks (restored on unload), for the router's own traffic.",
);
pub const PIN_PATH: Key = text(
    "routing",
    "pin_path",
    Some("/sys/fs/bpf/multiroute"),
    "an absolute path on a bpffs (mounted if missing)",
    "Where the datapath's programs and maps are pinned, so a restart adopts them.",
);

pub const SOCKET: Key = text(
    "control",
    "socket",
    Some("/run/multiroute/control.sock"),
    "an absolute path",
    "The running load's root-only control socket (status, weight, flows, events).",
);
pub const STATE_DIR: Key = text(
    "control",
    "state_dir",
    Some("/var/lib/multiroute"),
    "an absolute path",
    "Where state that outlives a restart is kept (the budgets' counts).",
);

pub const METRICS_LISTEN: Key = text(
    "metrics",
    "listen",
    None,
    "an address:port such as \"127.0.0.1:9750\"",
    "Serve Prometheus metrics at /metrics. Unset: no metrics server.",
);
pub const WEB_LISTEN: Key = text(
    "web",
    "listen",
    None,
    "an address:port such as \"192.168.0.1:9751\"",
    "Serve the live status page. Unset: no page.",
);
pub const WEB_TOKEN: Key = text(
    "web",
    "token",
    None,
    "at least 16 characters of A-Z, a-z, 0-9, - or _",
    "The page's password; required when listen is not a loopback address.",
);

pub const BALANCE_BY: Key = choice(
    "balance",
    "by",
    Some("connection"),
    &["connection", "addresses", "source"],
    "What one choice of uplink covers: each connection, each LAN host and server pair, or each LAN host.",
);
pub const FAILBACK: Key = choice(
    "balance",
    "failback",
    Some("keep"),
    &["keep", "move"],
    "When a better tier recovers, flows on a backup tier stay there or move back.",
);

pub const FAST_PATH: Key = flag(
    "datapath",
    "fast_path",
    true,
    "Established sessions skip the rule walk and netfilter: the datapath rewrites and forwards them itself.",
);

pub const RULE_NAME: Key = text(
    "rule",
    "name",
    None,
    "1-32 characters without spaces",
    "A label for status and flows. Unset: rule[N].",
);
pub const PROTO: Key = text(
    "rule",
    "proto",
    None,
    "\"tcp\", \"udp\", \"icmp\" or a protocol number 1-255",
    "Match this protocol only. Unset: any.",
);
pub const SRC: Key = text(
    "rule",
    "src",
    None,
    "a list of addresses or prefixes, IPv4 or IPv6",
    "Match these LAN sources only. Unset: any.",
);
pub const DST: Key = text(
    "rule",
    "dst",
    None,
    "a list of addresses or prefixes, IPv4 or IPv6",
    "Match these destinations only. Unset: any.",
);
pub const SRC_PORT: Key = text(
    "rule",
    "src_port",
    None,
    "a port or a range such as \"1024-65535\"",
    "Match these source ports (tcp and udp) only.",
);
pub const DST_PORT: Key = text(
    "rule",
    "dst_port",
    None,
    "a port or a range such as \"5060-5061\"",
    "Match these destination ports (tcp and udp) only.",
);
pub const RULE_UPLINKS: Key = text(
    "rule",
    "uplinks",
    None,
    "a list of uplink names",
    "Required. The first live one carries the matching new flows; with none alive they are balanced as usual.",
);

pub const HOOK_ON: Key = text(
    "hook",
    "on",
    Some("[]"),
    "a list of event names",
    "The events that run the hook (EVENTS below lists them). Empty: every event.",
);
pub const HOOK_EXEC: Key = text(
    "hook",
    "exec",
    None,
    "a command such as [\"/usr/local/bin/notify\", \"--all\"]",
    "A program to run (no shell) with the event as MULTIROUTE_* variables and JSON on its standard input. Exactly one of exec and url.",
);
pub const HOOK_URL: Key = text(
    "hook",
    "url",
    None,
    "an http:// URL",
    "POST the event's JSON here.",
);
pub const HOOK_TIMEOUT_MS: Key = number(
    "hook",
    "timeout_ms",
    Some(5000),
    0,
    600_000,
    "A run or request taking longer is ended and counts as failed.",
);
pub const HOOK_RETRIES: Key = number(
    "hook",
    "retries",
    Some(2),
    0,
    10,
    "Further attempts after a failure, a second apart and then longer.",
);
pub const HOOK_DEBOUNCE_MS: Key = number(
    "hook",
    "debounce_ms",
    Some(0),
    0,
    HOUR_MS,
    "Wait this long after an event; a newer one for the same uplink replaces it.",
);

/// Every key, in the manual's order.
pub const ALL: &[&Key] = &[
    &LAN,
    &UPLINK_NAME,
    &UPLINK_INTERFACE,
    &GATEWAY,
    &GATEWAY6,
    &NAT6,
    &NPT_PREFIX,
    &WEIGHT,
    &TIER,
    &PIN,
    &PIN_FROM,
    &PROBE,
    &ON_DEAD,
    &ON_DEAD_AFTER_MS,
    &QUOTA,
    &PERIOD,
    &RESET_DAY,
    &WARN_PERCENT,
    &AT_QUOTA,
    &STANDBY_INTERVAL_MS,
    &TARGETS,
    &INTERVAL_MS,
    &TIMEOUT_MS,
    &DOWN,
    &UP,
    &QUALITY[0],
    &QUALITY[1],
    &QUALITY[2],
    &QUALITY[3],
    &QUALITY[4],
    &QUALITY[5],
    &QUALITY[6],
    &TABLE_BASE,
    &RULE_PRIORITY,
    &FWMARK_MASK,
    &MAIN_DEFAULT,
    &PIN_PATH,
    &SOCKET,
    &STATE_DIR,
    &METRICS_LISTEN,
    &WEB_LISTEN,
    &WEB_TOKEN,
    &BALANCE_BY,
    &FAILBACK,
    &FAST_PATH,
    &RULE_NAME,
    &PROTO,
    &SRC,
    &DST,
    &SRC_PORT,
    &DST_PORT,
    &RULE_UPLINKS,
    &HOOK_ON,
    &HOOK_EXEC,
    &HOOK_URL,
    &HOOK_TIMEOUT_MS,
    &HOOK_RETRIES,
    &HOOK_DEBOUNCE_MS,
];

/// What each section is, for the manual (sections in the order of [`ALL`]).
pub const SECTIONS: &[(&str, &str)] = &[
    ("", "The top level."),
    ("uplink", "One [[uplink]] table per broadband line."),
    (
        "uplink.budget",
        "A metered uplink's data budget, under its [[uplink]].",
    ),
    (
        "health",
        "How every uplink is probed. The quality keys (max_loss_percent to min_state_ms) may also be set per uplink in an [uplink.health] table under its [[uplink]].",
    ),
    ("routing", "Tables, rules and marks multiroute uses."),
    ("control", "The running load's control socket and state."),
    ("metrics", "Prometheus metrics."),
    ("web", "The live status page."),
    ("balance", "How new flows are spread."),
    ("datapath", "The eBPF datapath."),
    (
        "rule",
        "[[rule]] tables: policy rules, first match wins, in file order.",
    ),
    (
        "hook",
        "[[hook]] tables: programs or URLs told about events.",
    ),
];
