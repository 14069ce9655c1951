//! Root context: configuration, the tick, registry calls.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::grpc::{self, HostGrpc};
use super::http::Http;
use super::metrics::Metrics;
use super::{header_pairs, now_ms, now_us, Envoy};
use crate::clock::Rng;
use crate::config;
use crate::headers::Headers;
use crate::poller::RefreshOutcome;
use crate::push::Grpc;
use crate::registry::HttpResponse;
use crate::vm::{Dispatch, Vm, TICK_MS};

pub struct Root {
    vm: Option<Rc<RefCell<Vm>>>,
    metrics: Option<Metrics>,
}

impl Root {
    pub fn new() -> Self {
        Root { vm: None, metrics: None }
    }

    /// Dispatches registry requests.
    fn dispatch(vm: &mut Vm, due: Vec<Dispatch>, now: i64) {
        for d in due {
            let headers: Vec<(&str, &str)> = d.request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            match hostcalls::dispatch_http_call(
                &d.cluster,
                headers,
                d.request.body.as_deref(),
                vec![],
                Duration::from_millis(d.request.timeout_ms),
            ) {
                Ok(token) => vm.dispatched(token, &d),
                Err(status) => vm.dispatch_failed(&d, &format!("{status:?}"), now),
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(Ok(mut vm)) = self.vm.as_ref().map(|v| v.try_borrow_mut()) else { return };
        let now = now_ms();
        // a reply header that is not UTF-8 is read lossily, never a reason to stop the VM
        let headers: Vec<(String, String)> = Headers::from_wire(header_pairs(MapType::HttpCallResponseHeaders))
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse::<u16>().ok());
        // an oversize body is never copied into the VM
        let body = if body_size > 0 && body_size <= vm.max_body(token_id) {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
        } else {
            Vec::new()
        };
        let resp = HttpResponse { status, headers: &headers, body: &body, body_size };
        let started = now_us();
        let done = vm.on_call_reply(&Envoy, token_id, &resp, now);
        let took_us = now_us().saturating_sub(started);
        if let (Some((svc, outcome)), Some(m)) = (done, &self.metrics) {
            if matches!(outcome, RefreshOutcome::Published { .. } | RefreshOutcome::Same { .. }) {
                m.refresh_us(svc, took_us);
            }
        }
        // a login or a blocking query goes on at once
        let due = vm.due(&Envoy, now);
        Self::dispatch(&mut vm, due, now);
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(Ok(mut vm)) = self.vm.as_ref().map(|v| v.try_borrow_mut()) else { return };
        let now = now_ms();
        // an oversize or unreadable answer is a failed call
        let (status, body) = match grpc::received(response_size, vm.push_max_message()) {
            Some(b) => (status_code, b),
            None => (status_code.max(8), Vec::new()),
        };
        vm.on_grpc_reply(&Envoy, &HostGrpc, token_id, status, &body, now);
        let due = vm.due(&Envoy, now);
        Self::dispatch(&mut vm, due, now);
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        let Some(Ok(mut vm)) = self.vm.as_ref().map(|v| v.try_borrow_mut()) else { return };
        let now = now_ms();
        match grpc::received(message_size, vm.push_max_message()) {
            Some(body) => {
                vm.on_grpc_message(&Envoy, &HostGrpc, token_id, &body, now);
            }
            // a message that cannot be read cannot be acknowledged: the session starts over
            None => {
                HostGrpc.cancel(token_id);
                vm.on_grpc_close(&Envoy, &HostGrpc, token_id, 8, now);
            }
        }
        let due = vm.due(&Envoy, now);
        Self::dispatch(&mut vm, due, now);
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        let Some(Ok(mut vm)) = self.vm.as_ref().map(|v| v.try_borrow_mut()) else { return };
        let now = now_ms();
        vm.on_grpc_close(&Envoy, &HostGrpc, token_id, status_code, now);
        let due = vm.due(&Envoy, now);
        Self::dispatch(&mut vm, due, now);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                error!("cannot read the plugin configuration: {e:?}");
                return false;
            }
        };
        let cfg = match config::parse_with_env(&bytes, &|name| std::env::var(name).ok()) {
            Ok(c) => c,
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        let (n, mode) = (cfg.services.len(), cfg.settings.mode);
        self.metrics = Some(Metrics::new(cfg.services.iter().map(|s| s.name.as_str())).with_transparent(
            cfg.services.iter().enumerate().filter(|(_, s)| s.transparent.is_some()).map(|(i, s)| (i, s.name.as_str())),
        ));
        // a VM id from WASI randomness: pointers and context ids are equal across worker VMs
        let mut vm = Vm::new(cfg, &bytes, Rng::from_entropy().next_u64(), Rng::from_entropy());
        vm.on_start(&Envoy);
        info!("configured {n} service(s) in {mode:?} mode");
        self.vm = Some(Rc::new(RefCell::new(vm)));
        if let Err(e) = hostcalls::set_tick_period(Duration::from_millis(TICK_MS.unsigned_abs())) {
            warn!("cannot set the tick period: {e:?}; registry refresh and stats are off");
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(Ok(mut vm)) = self.vm.as_ref().map(|v| v.try_borrow_mut()) else { return };
        let now = now_ms();
        let mut due = vm.on_tick(&Envoy, now);
        if vm.push_tick(&Envoy, &HostGrpc, now) {
            // a push session that went down makes its polls due at once
            due.extend(vm.due(&Envoy, now));
        }
        Self::dispatch(&mut vm, due, now);
        if let Some(m) = &self.metrics {
            let vm = &mut *vm;
            m.flush(&mut vm.stats, vm.services.iter_mut().map(|s| s.stats.take()).enumerate());
            if vm.poller {
                m.push_connected(vm.push_connected());
                for (i, g) in vm.gauges(now) {
                    m.service_gauges(i, &g);
                }
                for (i, permille) in vm.correction_gauges() {
                    m.correction_share(i, permille);
                }
            }
            if let Some(cap) = vm.capture.as_mut() {
                let capture = cap.stats.take();
                let services = vm.services.iter_mut().enumerate();
                m.flush_transparent(
                    capture,
                    services.filter_map(|(i, s)| Some((i, s.correction.as_mut()?.stats.take()))),
                );
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.vm.as_ref().map(|vm| Box::new(Http::new(vm.clone())) as Box<dyn HttpContext>)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
