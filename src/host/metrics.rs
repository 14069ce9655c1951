//! Envoy stats (`define_metric`). Envoy shows them as `wasmcustom.lossless.<service>.<name>`;
//! counters of all worker VMs add up in one stat.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::drain::Reason;
use crate::runtime::HostCounts;

#[derive(Debug, Clone, Copy, Default)]
pub struct Metric(Option<u32>);

impl Metric {
    fn define(kind: MetricType, name: &str) -> Metric {
        Metric(hostcalls::define_metric(kind, name).ok())
    }
    pub fn inc(self) {
        self.add(1)
    }
    pub fn add(self, n: i64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::increment_metric(id, n);
        }
    }
    pub fn set(self, v: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, v);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ServiceMetrics {
    pub refresh_ok: Metric,
    pub refresh_failed: Metric,
    pub refresh_kept: Metric,
    pub refresh_unchanged: Metric,
    pub instances_skipped: Metric,
    pub protected: Metric,
    pub picks: Metric,
    pub local_503: [Metric; 4],
    pub hosts_total: Metric,
    pub hosts_serving: Metric,
    pub hosts_warming: Metric,
    pub hosts_draining: Metric,
    pub hosts_down: Metric,
    pub version: Metric,
    /// How long the last applied refresh took in the poller (parse, guard, publish), µs.
    pub refresh_us: Metric,
}

impl ServiceMetrics {
    pub fn new(svc: &str) -> Self {
        let c = |n: &str| Metric::define(MetricType::Counter, &format!("lossless.{svc}.{n}"));
        let g = |n: &str| Metric::define(MetricType::Gauge, &format!("lossless.{svc}.{n}"));
        ServiceMetrics {
            refresh_ok: c("refresh_ok"),
            refresh_failed: c("refresh_failed"),
            refresh_kept: c("refresh_kept"),
            refresh_unchanged: c("refresh_unchanged"),
            instances_skipped: c("instances_skipped"),
            protected: c("protect_threshold_hit"),
            picks: c("picks"),
            local_503: Reason::ALL.map(|r| c(&format!("local_503.{}", r.as_str()))),
            hosts_total: g("hosts_total"),
            hosts_serving: g("hosts_serving"),
            hosts_warming: g("hosts_warming"),
            hosts_draining: g("hosts_draining"),
            hosts_down: g("hosts_down"),
            version: g("snapshot_version"),
            refresh_us: g("refresh_duration_us"),
        }
    }

    pub fn local_503(&self, r: Reason) -> Metric {
        let i = Reason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.local_503.get(i).copied().unwrap_or_default()
    }

    pub fn hosts(&self, c: HostCounts, version: u64) {
        self.hosts_total.set(c.total);
        self.hosts_serving.set(c.serving);
        self.hosts_warming.set(c.warming);
        self.hosts_draining.set(c.draining);
        self.hosts_down.set(c.down);
        self.version.set(version);
    }
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub services: Vec<ServiceMetrics>,
    pub notify_marks: Metric,
    pub failed_host_marks: Metric,
    pub admin_denied: Metric,
    pub client_header_stripped: Metric,
    pub dispatch_failed: Metric,
}

impl Metrics {
    pub fn new(services: &[String]) -> Self {
        let c = |n: &str| Metric::define(MetricType::Counter, &format!("lossless.{n}"));
        Metrics {
            services: services.iter().map(|s| ServiceMetrics::new(s)).collect(),
            notify_marks: c("notify_marks"),
            failed_host_marks: c("failed_host_marks"),
            admin_denied: c("admin_denied"),
            client_header_stripped: c("client_header_stripped"),
            dispatch_failed: c("dispatch_failed"),
        }
    }

    pub fn svc(&self, i: usize) -> Option<&ServiceMetrics> {
        self.services.get(i)
    }
}
