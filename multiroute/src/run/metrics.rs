//! `[metrics] listen`: the daemon's state as OpenMetrics text (which Prometheus
//! scrapes natively) over a minimal HTTP/1.1 endpoint, `GET /metrics`. Each scrape
//! asks the daemon's loop for a fresh [`Snapshot`]; nothing is cached or counted
//! twice. Encoding is prometheus-client's.
use std::net::SocketAddr;

use prometheus_client::{
    encoding::{EncodeMetric, text::encode},
    metrics::{TypedMetric, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tracing::{debug, info};

use super::{
    control::{Incoming, Request, Response},
    http::{self, Reply},
    task::Task,
    view::UplinkView,
};
use crate::net::Family as IpFamily;

/// Everything one scrape shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub fail_open: bool,
    pub uplinks: Vec<UplinkView>,
    /// Datapath outcome counters by family ("ipv4", "ipv6") and name.
    pub datapath: Vec<(&'static str, &'static str, u64)>,
    /// Each hook's deliveries by outcome ("delivered", "failed").
    pub hooks: Vec<(String, &'static str, u64)>,
}

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// A labelled metric family, registered under `name`.
fn family<M>(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, M>
where
    M: EncodeMetric + TypedMetric + Default + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<Labels, M>::default();
    registry.register(name, help, family.clone());
    family
}

/// Every series a scrape shows, registered once per scrape.
struct Series {
    fail_open: Family<Labels, Gauge>,
    up: Family<Labels, Gauge>,
    up6: Family<Labels, Gauge>,
    weight: Family<Labels, Gauge>,
    flows: Family<Labels, Gauge>,
    packets: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    fast: Family<Labels, Counter>,
    changes: Family<Labels, Counter>,
    degraded: Family<Labels, Gauge>,
    budget_used: Family<Labels, Gauge>,
    budget_quota: Family<Labels, Gauge>,
    budget_end: Family<Labels, Gauge>,
    budget_exhausted: Family<Labels, Gauge>,
    rtt: Family<Labels, FloatGauge>,
    loss: Family<Labels, FloatGauge>,
    datapath: Family<Labels, Counter>,
    hooks: Family<Labels, Counter>,
}

impl Series {
    fn register(registry: &mut Registry) -> Self {
        Series {
            fail_open: family(
                registry,
                "fail_open",
                "1 while every uplink is down and LAN traffic follows the main table",
            ),
            up: family(registry, "uplink_up", "1 while the uplink takes traffic"),
            up6: family(
                registry,
                "uplink_ipv6_up",
                "1 while the uplink takes IPv6 traffic",
            ),
            weight: family(registry, "uplink_weight", "Weight in force"),
            flows: family(registry, "uplink_flows", "Flows tracked on the uplink"),
            packets: family(registry, "uplink_packets", "Packets steered to the uplink"),
            bytes: family(registry, "uplink_bytes", "Bytes steered to the uplink"),
            fast: family(
                registry,
                "uplink_fast_path_packets",
                "Packets the fast path forwarded for the uplink, both directions",
            ),
            changes: family(
                registry,
                "uplink_state_changes",
                "Transitions between up, degraded and down since load started",
            ),
            degraded: family(
                registry,
                "uplink_degraded",
                "1 while the uplink's side of the family is alive but over a quality limit",
            ),
            budget_used: family(
                registry,
                "uplink_budget_used_bytes",
                "Bytes both ways counted against the budget in its period",
            ),
            budget_quota: family(registry, "uplink_budget_quota_bytes", "The budget's quota"),
            budget_end: family(
                registry,
                "uplink_budget_period_end_seconds",
                "When the budget's period ends (Unix time)",
            ),
            budget_exhausted: family(
                registry,
                "uplink_budget_exhausted",
                "1 while the budget's quota is used up",
            ),
            rtt: family(
                registry,
                "probe_rtt_seconds",
                "Last probe round-trip time per target",
            ),
            loss: family(
                registry,
                "probe_loss_ratio",
                "Probe loss per target over the last probes",
            ),
            datapath: family(
                registry,
                "datapath_packets",
                "Packets the classifier handled, by outcome",
            ),
            hooks: family(
                registry,
                "hook_deliveries",
                "Hook deliveries by outcome (a failed one counts once, after its retries)",
            ),
        }
    }

    fn uplink(&self, u: &UplinkView) {
        let labels = vec![("uplink", u.name.clone())];
        self.up
            .get_or_create(&labels)
            .set(i64::from(u.up(IpFamily::V4)));
        self.up6
            .get_or_create(&labels)
            .set(i64::from(u.up(IpFamily::V6)));
        self.weight.get_or_create(&labels).set(i64::from(u.weight));
        self.flows.get_or_create(&labels).set(u.flows as i64);
        self.packets.get_or_create(&labels).inc_by(u.packets);
        self.bytes.get_or_create(&labels).inc_by(u.bytes);
        self.fast.get_or_create(&labels).inc_by(u.fast_packets);
        self.changes.get_or_create(&labels).inc_by(u.state_changes);
        if let Some(budget) = &u.budget {
            let gauge = |series: &Family<Labels, Gauge>, value: i64| {
                series.get_or_create(&labels).set(value);
            };
            let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            gauge(&self.budget_used, bytes(budget.used_bytes));
            gauge(&self.budget_quota, bytes(budget.quota_bytes));
            gauge(&self.budget_end, budget.period_end);
            gauge(&self.budget_exhausted, i64::from(budget.exhausted));
        }
        for (family, name) in [(IpFamily::V4, "ipv4"), (IpFamily::V6, "ipv6")] {
            let labels = vec![("uplink", u.name.clone()), ("family", name.to_owned())];
            self.degraded
                .get_or_create(&labels)
                .set(i64::from(u.degraded(family)));
        }
        for probe in u.all_probes() {
            let labels = vec![
                ("uplink", u.name.clone()),
                ("target", probe.target.to_string()),
            ];
            if let Some(ms) = probe.rtt_ms {
                self.rtt.get_or_create(&labels).set(ms / 1000.0);
            }
            self.loss
                .get_or_create(&labels)
                .set(probe.loss_percent / 100.0);
        }
    }
}

/// Renders a snapshot as OpenMetrics text.
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("multiroute");
    let series = Series::register(&mut registry);
    series
        .fail_open
        .get_or_create(&Vec::new())
        .set(i64::from(snapshot.fail_open));
    for u in &snapshot.uplinks {
        series.uplink(u);
    }
    for (family, outcome, value) in &snapshot.datapath {
        series
            .datapath
            .get_or_create(&vec![
                ("family", (*family).to_owned()),
                ("outcome", (*outcome).to_owned()),
            ])
            .inc_by(*value);
    }
    for (hook, outcome, value) in &snapshot.hooks {
        series
            .hooks
            .get_or_create(&vec![
                ("hook", hook.clone()),
                ("outcome", (*outcome).to_owned()),
            ])
            .inc_by(*value);
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// Serves `GET /metrics` on `listen`, asking the daemon through `requests`; the
/// accepting task joins `tasks`.
pub async fn serve(
    listen: SocketAddr,
    requests: mpsc::Sender<Incoming>,
    tasks: &mut JoinSet<Task>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    info!(%listen, "serving metrics at /metrics");
    tasks.spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            debug!(%peer, "metrics scrape");
            tokio::spawn(answer(stream, requests.clone()));
        }
        Task::Metrics
    });
    Ok(())
}

/// One request per connection, bounded in size and time.
async fn answer(mut stream: TcpStream, requests: mpsc::Sender<Incoming>) {
    let Some(head) = http::read_head(&mut stream).await else {
        return;
    };
    let reply = if head.method == "GET" && head.path == "/metrics" {
        match ask(&requests, Request::Metrics).await {
            Some(Response::Metrics { text }) => Reply::new(
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            _ => Reply::new("503 Service Unavailable", "text/plain", "shutting down\n"),
        }
    } else {
        Reply::new("404 Not Found", "text/plain", "metrics are at /metrics\n")
    };
    http::respond(&mut stream, reply).await;
}

/// Asks the daemon's loop; `None` when it is shutting down.
pub(super) async fn ask(requests: &mpsc::Sender<Incoming>, request: Request) -> Option<Response> {
    let (reply, answer) = oneshot::channel();
    requests.send(Incoming { request, reply }).await.ok()?;
    answer.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        plan::UplinkPlan,
        run::{health::TargetReport, report::UplinkReport, view::Counted},
    };

    /// A snapshot with every series in it: an uplink with probes and a budget,
    /// datapath counters and a hook.
    fn full() -> Snapshot {
        Snapshot {
            fail_open: false,
            uplinks: vec![UplinkView::new(
                &UplinkPlan {
                    weight: 3,
                    ..UplinkPlan::test("dsl", 0, true)
                },
                Some(1),
                Some(&UplinkReport {
                    name: "dsl".into(),
                    alive: true,
                    degraded: true,
                    weight: 3,
                    tier: 1,
                    new_flows: true,
                    since: 0.0,
                    reason: "ready".into(),
                    state_changes: 2,
                    probes: vec![TargetReport {
                        target: "192.0.2.1".parse().unwrap(),
                        up: true,
                        rtt_ms: Some(12.5),
                        loss_percent: 5.0,
                        mean_rtt_ms: Some(11.0),
                        degraded: None,
                    }],
                    alive6: false,
                    degraded6: false,
                    budget: Some(crate::run::report::BudgetReport {
                        used_bytes: 4_200_000,
                        quota_bytes: 5_000_000,
                        period_end: 1_800_000_000,
                        exhausted: false,
                        at_quota: "standby".into(),
                    }),
                    probes6: Vec::new(),
                }),
                Counted {
                    traffic: multiroute_ebpf::Traffic {
                        packets: 1000,
                        bytes: 64000,
                    },
                    flows: 42,
                    fast_packets: 900,
                },
            )],
            datapath: vec![("ipv4", "flow_hit", 958), ("ipv6", "flow_new", 7)],
            hooks: vec![("hook[0]".into(), "failed", 2)],
        }
    }

    #[test]
    fn snapshot_renders_every_series_with_its_value() {
        let text = render(&full());
        for line in [
            "multiroute_fail_open 0",
            "multiroute_uplink_up{uplink=\"dsl\"} 1",
            "multiroute_uplink_ipv6_up{uplink=\"dsl\"} 0",
            "multiroute_uplink_weight{uplink=\"dsl\"} 3",
            "multiroute_uplink_flows{uplink=\"dsl\"} 42",
            "multiroute_uplink_packets_total{uplink=\"dsl\"} 1000",
            "multiroute_uplink_bytes_total{uplink=\"dsl\"} 64000",
            "multiroute_uplink_fast_path_packets_total{uplink=\"dsl\"} 900",
            "multiroute_uplink_state_changes_total{uplink=\"dsl\"} 2",
            "multiroute_uplink_degraded{uplink=\"dsl\",family=\"ipv4\"} 1",
            "multiroute_uplink_budget_used_bytes{uplink=\"dsl\"} 4200000",
            "multiroute_uplink_budget_quota_bytes{uplink=\"dsl\"} 5000000",
            "multiroute_uplink_budget_period_end_seconds{uplink=\"dsl\"} 1800000000",
            "multiroute_uplink_budget_exhausted{uplink=\"dsl\"} 0",
            "multiroute_uplink_degraded{uplink=\"dsl\",family=\"ipv6\"} 0",
            "multiroute_probe_rtt_seconds{uplink=\"dsl\",target=\"192.0.2.1\"} 0.0125",
            "multiroute_probe_loss_ratio{uplink=\"dsl\",target=\"192.0.2.1\"} 0.05",
            "multiroute_datapath_packets_total{family=\"ipv4\",outcome=\"flow_hit\"} 958",
            "multiroute_datapath_packets_total{family=\"ipv6\",outcome=\"flow_new\"} 7",
            "multiroute_hook_deliveries_total{hook=\"hook[0]\",outcome=\"failed\"} 2",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    /// contrib/grafana/multiroute.json must name only metrics the daemon serves.
    #[test]
    fn every_metric_the_grafana_dashboard_names_is_served() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../contrib/grafana/multiroute.json"))
                .expect("the dashboard is JSON");
        let text = render(&full());
        let served: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.len() >= 10);
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                let named: Vec<&str> = expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|word| word.starts_with("multiroute_"))
                    .collect();
                assert!(
                    !named.is_empty(),
                    "{} names no metric: {expr}",
                    panel["title"]
                );
                for metric in named {
                    assert!(
                        served.contains(metric),
                        "{}: {metric} is not served:\n{text}",
                        panel["title"]
                    );
                }
            }
        }
    }
}
