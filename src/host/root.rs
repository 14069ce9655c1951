//! Root context: configuration, the poller's tick, registry calls.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::http::Http;
use super::metrics::Metrics;
use super::{now_ms, now_us, HostShared};
use crate::clock::Rng;
use crate::config::{self, Config};
use crate::registry::{Call, HttpResponse};
use crate::runtime::{host_counts, try_lead, Keys, Poller, RefreshOutcome, View};

/// How often every VM ticks (lease renewal, poll schedule, gauges).
const TICK_MS: u64 = 100;
/// A poller that stops renewing its lease is replaced after this long.
const LEASE_TTL_MS: i64 = 2000;
/// The same registry complaint is logged at most once per this period.
const LOG_EVERY_MS: i64 = 10_000;

/// Everything one VM knows; shared by its root context and its HTTP contexts.
pub struct Vm {
    pub cfg: Config,
    pub keys: Keys,
    pub view: View,
    pub poller: Poller,
    pub rng: Rng,
    pub metrics: Metrics,
    pub leader: bool,
    /// Every routing header of every service, stripped from client requests.
    pub route_headers: Vec<String>,
    pub scratch: Vec<usize>,
    /// Picks per service not yet added to the `picks` stat (one host call per tick, not per request).
    pub pending_picks: Vec<i64>,
    pending: HashMap<u32, (usize, Call)>,
    /// Per (service, kind): when it was last logged and how many were suppressed since.
    last_log: HashMap<(usize, &'static str), (i64, u64)>,
}

impl Vm {
    fn flush_picks(&mut self) {
        for (i, n) in self.pending_picks.iter_mut().enumerate() {
            if *n > 0 {
                if let Some(m) = self.metrics.svc(i) {
                    m.picks.add(*n);
                }
                *n = 0;
            }
        }
    }

    fn log_limited(&mut self, svc: usize, kind: &'static str, now: i64, msg: impl FnOnce() -> String) {
        let entry = self.last_log.entry((svc, kind)).or_insert((i64::MIN, 0));
        if now.saturating_sub(entry.0) >= LOG_EVERY_MS {
            let extra = if entry.1 > 0 { format!(" ({} similar messages suppressed)", entry.1) } else { String::new() };
            *entry = (now, 0);
            warn!("{}{}", msg(), extra);
        } else {
            entry.1 += 1;
        }
    }

    fn poll(&mut self, now: i64) {
        let due = self.poller.due(&mut self.cfg, now);
        for (svc, call, req) in due {
            let cluster = self.cfg.services.get(svc).and_then(|s| self.cfg.registries.get(s.registry)).map(|r| r.cluster.clone()).unwrap_or_default();
            let headers: Vec<(&str, &str)> = req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            match hostcalls::dispatch_http_call(&cluster, headers, req.body.as_deref(), vec![], Duration::from_millis(req.timeout_ms)) {
                Ok(token) => {
                    self.pending.insert(token, (svc, call));
                }
                Err(status) => {
                    self.metrics.dispatch_failed.inc();
                    if let Some(m) = self.metrics.svc(svc) {
                        m.refresh_failed.inc();
                    }
                    self.poller.dispatch_failed(&self.cfg, svc, now, &mut self.rng);
                    let name = self.cfg.services.get(svc).map(|s| s.name.clone()).unwrap_or_default();
                    self.log_limited(svc, "dispatch", now, || {
                        format!("cannot call registry cluster '{cluster}' for service '{name}': {status:?} (is the cluster defined?)")
                    });
                }
            }
        }
    }

    fn on_reply(&mut self, token: u32, body_size: usize) {
        let Some((svc, call)) = self.pending.remove(&token) else {
            return;
        };
        let now = now_ms();
        let headers = hostcalls::get_map(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse::<u16>().ok());
        let cap = self.cfg.services.get(svc).and_then(|s| self.cfg.registries.get(s.registry)).map(|r| r.kind.endpoint().max_body_bytes).unwrap_or(0);
        // an oversize body is never copied into the VM
        let body = if body_size > 0 && body_size <= cap {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
        } else {
            Vec::new()
        };
        let resp = HttpResponse { status, headers: &headers, body: &body, body_size };
        let shared = HostShared;
        self.view.sync(&self.cfg, &shared, &self.keys, now, &mut self.rng);
        let started = now_us();
        let outcome = self.poller.on_reply(&mut self.cfg, &self.view, &shared, &self.keys, svc, call, &resp, now, &mut self.rng);
        // parse + keep-last-good + publish, in the poller's VM
        let took_us = now_us().saturating_sub(started);
        let name = self.cfg.services.get(svc).map(|s| s.name.clone()).unwrap_or_default();
        let m = self.metrics.svc(svc).cloned().unwrap_or_default();
        match &outcome {
            RefreshOutcome::Published { version, hosts, skipped, protected } => {
                m.refresh_ok.inc();
                m.refresh_us.set(took_us);
                m.instances_skipped.add(i64::from(*skipped));
                if *protected {
                    m.protected.inc();
                }
                info!(
                    "service '{name}' membership v{version}: {hosts} instances{} (parsed and published in {} ms)",
                    if *skipped > 0 { format!(", {skipped} malformed skipped") } else { String::new() },
                    took_us as f64 / 1000.0
                );
                self.view.sync(&self.cfg, &shared, &self.keys, now, &mut self.rng);
            }
            RefreshOutcome::Same { skipped } => {
                m.refresh_ok.inc();
                m.refresh_us.set(took_us);
                m.instances_skipped.add(i64::from(*skipped));
            }
            RefreshOutcome::Unchanged => m.refresh_unchanged.inc(),
            RefreshOutcome::LoggedIn => info!("logged in to the registry of service '{name}'"),
            RefreshOutcome::Kept(hold) => {
                m.refresh_kept.inc();
                let hold = *hold;
                self.log_limited(svc, "kept", now, || format!("service '{name}': registry list held back ({}), keeping the last good membership", hold.kind()));
            }
            RefreshOutcome::Failed(e) => {
                m.refresh_failed.inc();
                let kind = e.kind();
                let text = e.to_string();
                self.log_limited(svc, kind, now, || format!("service '{name}': refresh failed, keeping the last good membership: {text}"));
            }
        }
        // a login or a blocking query goes on at once
        self.poll(now);
    }

    fn gauges(&self, now: i64) {
        for (i, sv) in self.view.services.iter().enumerate() {
            if let Some(m) = self.metrics.svc(i) {
                m.hosts(host_counts(&sv.members, now), sv.snap.version);
            }
        }
    }
}

pub struct Root {
    vm_id: u64,
    vm: Option<Rc<RefCell<Vm>>>,
}

impl Root {
    pub fn new() -> Self {
        // a VM id from WASI randomness: pointers and context ids are equal across worker VMs
        Root { vm_id: Rng::from_entropy().next_u64(), vm: None }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        if let Some(vm) = &self.vm {
            if let Ok(mut vm) = vm.try_borrow_mut() {
                vm.on_reply(token_id, body_size);
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        let cfg = match config::parse_with_env(&bytes, &|name| std::env::var(name).ok()) {
            Ok(c) => c,
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        let mut route_headers: Vec<String> = cfg.services.iter().map(|s| s.header.clone()).collect();
        route_headers.sort();
        route_headers.dedup();
        let names: Vec<String> = cfg.services.iter().map(|s| s.name.clone()).collect();
        let vm = Vm {
            keys: Keys::new(&bytes),
            view: View::new(&cfg),
            poller: Poller::new(cfg.services.len()),
            rng: Rng::from_entropy(),
            metrics: Metrics::new(&names),
            leader: false,
            route_headers,
            scratch: Vec::with_capacity(17),
            pending_picks: vec![0; names.len()],
            pending: HashMap::new(),
            last_log: HashMap::new(),
            cfg,
        };
        info!("configured {} service(s) in {:?} mode", names.len(), vm.cfg.mode);
        self.vm = Some(Rc::new(RefCell::new(vm)));
        let _ = hostcalls::set_tick_period(Duration::from_millis(TICK_MS));
        true
    }

    fn on_tick(&mut self) {
        let Some(vm) = &self.vm else { return };
        let Ok(mut vm) = vm.try_borrow_mut() else { return };
        let now = now_ms();
        let leads = try_lead(&HostShared, &vm.keys, self.vm_id, now, LEASE_TTL_MS);
        if leads != vm.leader {
            vm.leader = leads;
            vm.poller.reset();
            vm.pending.clear();
            if leads {
                info!("this VM now polls the registry");
            }
        }
        let vm = &mut *vm;
        vm.view.sync(&vm.cfg, &HostShared, &vm.keys, now, &mut vm.rng);
        vm.flush_picks();
        if vm.leader {
            vm.poll(now);
            vm.gauges(now);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.vm.as_ref().map(|vm| Box::new(Http::new(vm.clone())) as Box<dyn HttpContext>)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
