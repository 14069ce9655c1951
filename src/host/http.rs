//! HTTP context: routes each request by the current pick, answers locally when it must, and reads
//! the drain header on responses.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use log::info;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::root::Vm;
use super::{now_ms, property, HostShared};
use crate::config::Mode;
use crate::drain::local_reply;
use crate::runtime::{bump_gen, failed_attempts, mark_draining, mark_failed, membership_json, route, Route, Shared};

pub struct Http {
    vm: Rc<RefCell<Vm>>,
    /// The service this request was routed to, if any, and the addresses written for it.
    service: Option<usize>,
    written: String,
    /// Answered locally: the response is ours, not an upstream's.
    local: bool,
}

impl Http {
    pub fn new(vm: Rc<RefCell<Vm>>) -> Self {
        Http { vm, service: None, written: String::new(), local: false }
    }

    fn send(&mut self, status: u32, headers: Vec<(String, String)>, body: &str) -> Action {
        self.local = true;
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let _ = hostcalls::send_http_response(status, h, Some(body.as_bytes()));
        Action::Pause
    }

    fn header(name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name).ok().flatten()
    }

    /// The admin endpoints under the configured prefix, for loopback callers only. Without
    /// `use_remote_address`, Envoy takes `source.address` from `x-forwarded-for`, so a request
    /// that carries any forwarding header is refused too: a local operator's call has none.
    fn admin(&mut self, vm: &mut Vm, path: &str, now: i64) -> Action {
        let forwarded = ["x-forwarded-for", "forwarded", "x-real-ip", "x-envoy-external-address"].iter().any(|h| Self::header(h).is_some());
        let peer_is_loopback = property(vec!["source", "address"]).and_then(|a| a.parse::<SocketAddr>().ok()).is_some_and(|a| a.ip().is_loopback());
        if forwarded || !peer_is_loopback {
            vm.metrics.admin_denied.inc();
            return self.send(403, vec![("content-type".into(), "text/plain".into())], "lossless: admin endpoints answer loopback callers only\n");
        }
        let method = Self::header(":method").unwrap_or_default();
        let rest = path.get(vm.cfg.admin_prefix.len()..).unwrap_or_default();
        let rest = rest.split('?').next().unwrap_or_default();
        let json = vec![("content-type".to_string(), "application/json".to_string())];
        match (method.as_str(), rest) {
            ("GET", "/membership") => {
                let vm = &mut *vm;
                vm.view.sync(&vm.cfg, &HostShared, &vm.keys, now, &mut vm.rng);
                let body = membership_json(&vm.cfg, &mut vm.view, now, &mut vm.rng, vm.leader);
                self.send(200, json, &body)
            }
            ("POST", "/drain") | ("POST", "/undrain") if vm.cfg.mode == Mode::Inbound => {
                let on = rest == "/drain";
                HostShared.set(&vm.keys.self_drain(), if on { b"1" } else { b"0" }, None);
                bump_gen(&HostShared, &vm.keys);
                info!("local {} requested", if on { "drain" } else { "undrain" });
                self.send(200, json, &format!("{{\"draining\":{on}}}\n"))
            }
            _ => self.send(
                404,
                vec![("content-type".into(), "text/plain".into())],
                "lossless: unknown admin endpoint (GET /membership, POST /drain, POST /undrain)\n",
            ),
        }
    }
}

impl Context for Http {}

impl Http {
    /// Envoy retried this request (`x-envoy-attempt-count` > 1, with
    /// `include_attempt_count_in_response` on the route): the addresses it left failed. Mark them
    /// down for every VM for a while, ahead of the registry.
    fn mark_failed_attempts(&self, vm: &mut Vm) {
        if self.written.is_empty() || vm.cfg.drain.failed_host_ttl_ms <= 0 {
            return;
        }
        let attempts = hostcalls::get_map_value(MapType::HttpResponseHeaders, "x-envoy-attempt-count")
            .ok()
            .flatten()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(1);
        if attempts < 2 {
            return;
        }
        let Some(last) = property(vec!["upstream", "address"]) else { return };
        let written: Vec<String> = self.written.split(',').map(str::to_string).collect();
        let failed: Vec<&str> = failed_attempts(&written, attempts, &last).iter().map(String::as_str).collect();
        let now = now_ms();
        let n = mark_failed(&HostShared, &vm.keys, &vm.view, &failed, now, vm.cfg.drain.failed_host_ttl_ms);
        if n > 0 {
            vm.metrics.failed_host_marks.add(n as i64);
            info!("requests failed on {failed:?} and were retried elsewhere: left out for {} ms", vm.cfg.drain.failed_host_ttl_ms);
            vm.view.sync(&vm.cfg, &HostShared, &vm.keys, now, &mut vm.rng);
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let vm_rc = self.vm.clone();
        let Ok(mut guard) = vm_rc.try_borrow_mut() else {
            return Action::Continue;
        };
        let vm = &mut *guard;
        let now = now_ms();
        if let Some(path) = Self::header(":path") {
            if path.starts_with(&vm.cfg.admin_prefix)
                && path.get(vm.cfg.admin_prefix.len()..).is_some_and(|r| r.is_empty() || r.starts_with('/') || r.starts_with('?'))
            {
                return self.admin(vm, &path, now);
            }
        }
        vm.view.sync(&vm.cfg, &HostShared, &vm.keys, now, &mut vm.rng);
        // a client never chooses the upstream: drop whatever it sent in a routing header
        if vm.cfg.mode == Mode::Outbound {
            for h in &vm.route_headers {
                if Self::header(h).is_some() {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, h, None);
                    vm.metrics.client_header_stripped.inc();
                }
            }
        }
        let cluster = if vm.cfg.mode == Mode::Outbound { property(vec!["xds", "cluster_name"]) } else { None };
        let pin = vm.cfg.drain.pin_header.as_deref().and_then(Self::header);
        match route(&vm.cfg, &mut vm.view, cluster.as_deref(), pin.as_deref(), now, &mut vm.rng, &mut vm.scratch) {
            Route::PassThrough => Action::Continue,
            Route::Forward { service, value } => {
                self.service = Some(service);
                if let Some(sc) = vm.cfg.services.get(service) {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, &sc.header, Some(&value));
                }
                // counted locally, added to the stat on the next tick
                if let Some(n) = vm.pending_picks.get_mut(service) {
                    *n += 1;
                }
                self.written = value;
                Action::Continue
            }
            Route::Reject { service, reason } => {
                if let Some(m) = service.and_then(|s| vm.metrics.svc(s)) {
                    m.local_503(reason).inc();
                }
                let r = local_reply(reason, &vm.cfg.drain);
                self.send(r.status, r.headers, &r.body)
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.local {
            return Action::Continue;
        }
        let vm_rc = self.vm.clone();
        let Ok(mut guard) = vm_rc.try_borrow_mut() else {
            return Action::Continue;
        };
        let vm = &mut *guard;
        match vm.cfg.mode {
            Mode::Inbound => {
                // requests served while draining (in flight, or within the notify grace) tell the
                // caller with the drain header; its value is not a refusal reason, so a caller's
                // retry policy (which retries refusals only) never resends work that was done
                if vm.view.self_drain.draining() {
                    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, &vm.cfg.drain.header, Some(crate::drain::SERVED_WHILE_DRAINING));
                }
            }
            Mode::Outbound => {
                self.mark_failed_attempts(vm);
                if vm.cfg.drain.notify
                    && self.service.is_some()
                    && hostcalls::get_map_value(MapType::HttpResponseHeaders, &vm.cfg.drain.header).ok().flatten().is_some()
                {
                    if let Some(addr) = property(vec!["upstream", "address"]) {
                        if mark_draining(&HostShared, &vm.keys, &vm.view, &addr) {
                            vm.metrics.notify_marks.inc();
                            info!("upstream {addr} announced it is draining; no new requests go to it");
                            let now = now_ms();
                            vm.view.sync(&vm.cfg, &HostShared, &vm.keys, now, &mut vm.rng);
                        }
                    }
                }
            }
        }
        Action::Continue
    }
}
