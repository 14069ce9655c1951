//! Envoy stats (`define_metric`): the counters and gauges [`crate::stats`] names. Envoy shows
//! them as `wasmcustom.lossless.<service>.<name>`; counters of all worker VMs add up in one stat.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::stats::{
    CaptureStats, CorrectionStats, ServiceGauges, ServiceStats, Stats, CORRECTION_GAUGE, GAUGE_NAMES,
    REFRESH_DURATION_GAUGE,
};

fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

fn add(ids: &[Option<u32>], deltas: &[u64]) {
    for (id, n) in ids.iter().zip(deltas) {
        if let (Some(id), true) = (id, *n > 0) {
            let _ = hostcalls::increment_metric(*id, i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
}

/// Metric ids of one service.
pub struct ServiceMetrics {
    counters: Vec<Option<u32>>,
    gauges: Vec<Option<u32>>,
}

/// Metric ids of the filter and of every service (in service order).
pub struct Metrics {
    counters: Vec<Option<u32>>,
    services: Vec<ServiceMetrics>,
    /// `lossless.push_connected`: registries whose push session is set up (the poller's count).
    push_connected: Option<u32>,
    /// Transparent mode: the capture's counters, and each corrected service's counters and gauge
    /// (by service index).
    capture: Vec<Option<u32>>,
    corrections: Vec<(usize, Vec<Option<u32>>, Option<u32>)>,
}

impl Metrics {
    pub fn new<'a>(services: impl Iterator<Item = &'a str>) -> Self {
        Metrics {
            counters: Stats::NAMES.iter().map(|n| define(MetricType::Counter, &format!("lossless.{n}"))).collect(),
            services: services
                .map(|svc| ServiceMetrics {
                    counters: ServiceStats::NAMES
                        .iter()
                        .map(|n| define(MetricType::Counter, &format!("lossless.{svc}.{n}")))
                        .collect(),
                    gauges: GAUGE_NAMES
                        .iter()
                        .map(|n| define(MetricType::Gauge, &format!("lossless.{svc}.{n}")))
                        .collect(),
                })
                .collect(),
            push_connected: define(MetricType::Gauge, "lossless.push_connected"),
            capture: Vec::new(),
            corrections: Vec::new(),
        }
    }

    /// Sets the `push_connected` gauge.
    pub fn push_connected(&self, n: u64) {
        if let Some(id) = self.push_connected {
            let _ = hostcalls::record_metric(id, n);
        }
    }

    /// Defines transparent mode's metrics: the capture's counters, and those of each corrected
    /// service (`(index, name)`).
    pub fn with_transparent<'a>(mut self, corrected: impl Iterator<Item = (usize, &'a str)>) -> Self {
        self.capture =
            CaptureStats::NAMES.iter().map(|n| define(MetricType::Counter, &format!("lossless.{n}"))).collect();
        self.corrections = corrected
            .map(|(i, svc)| {
                let counters = CorrectionStats::NAMES
                    .iter()
                    .map(|n| define(MetricType::Counter, &format!("lossless.{svc}.{n}")))
                    .collect();
                (i, counters, define(MetricType::Gauge, &format!("lossless.{svc}.{CORRECTION_GAUGE}")))
            })
            .collect();
        self
    }

    /// Adds transparent mode's counts since the last flush: the capture's, then each corrected
    /// service's (`(index, counts)`).
    pub fn flush_transparent(&self, capture: [u64; 3], services: impl Iterator<Item = (usize, [u64; 7])>) {
        add(&self.capture, &capture);
        for (i, deltas) in services {
            if let Some((_, ids, _)) = self.corrections.iter().find(|(k, _, _)| *k == i) {
                add(ids, &deltas);
            }
        }
    }

    /// Sets the redirected-share gauge of corrected service `i` (per mille).
    pub fn correction_share(&self, i: usize, permille: u64) {
        if let Some((_, _, Some(id))) = self.corrections.iter().find(|(k, _, _)| *k == i) {
            let _ = hostcalls::record_metric(*id, permille);
        }
    }

    /// Adds what was counted since the last flush.
    pub fn flush(&self, stats: &mut Stats, services: impl Iterator<Item = (usize, [u64; 28])>) {
        add(&self.counters, &stats.take());
        for (i, deltas) in services {
            if let Some(m) = self.services.get(i) {
                add(&m.counters, &deltas);
            }
        }
    }

    /// Sets the tick's gauges of service `i`: host counts, snapshot version, overload protection.
    pub fn service_gauges(&self, i: usize, g: &ServiceGauges) {
        self.gauges(i, &g.values());
    }

    /// Sets the refresh-duration gauge of service `i` (µs).
    pub fn refresh_us(&self, i: usize, us: u64) {
        if let Some(Some(id)) = self.services.get(i).and_then(|m| m.gauges.get(REFRESH_DURATION_GAUGE)) {
            let _ = hostcalls::record_metric(*id, us);
        }
    }

    fn gauges(&self, i: usize, values: &[u64]) {
        if let Some(m) = self.services.get(i) {
            for (id, v) in m.gauges.iter().zip(values) {
                if let Some(id) = id {
                    let _ = hostcalls::record_metric(*id, *v);
                }
            }
        }
    }
}
