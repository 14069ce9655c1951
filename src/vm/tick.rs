//! The tick and the calls it dispatches: the poller lease, what is due (registry requests,
//! probes, registration steps), the host's acceptance or refusal of each call, and the path each
//! reply goes to.

use log::info;

use super::{checks, refresh, Dispatch, Purpose, Vm, LEASE_TTL_MS};
use crate::poller::{interval, RefreshOutcome};
use crate::registration::{Answer, Online};
use crate::registry::HttpResponse;
use crate::store::{take_poller_lease, Shared};

impl Vm {
    /// The periodic work: take or renew the poller lease, sync the view, and (as the poller) the
    /// registry requests that are due.
    pub fn on_tick(&mut self, shared: &dyn Shared, now_ms: i64) -> Vec<Dispatch> {
        let polls = take_poller_lease(shared, &self.keys, self.vm_id, now_ms, LEASE_TTL_MS);
        if polls != self.poller {
            self.poller = polls;
            for s in &mut self.services {
                s.poll.reset();
                s.prober.reset();
            }
            for f in self.registries.iter_mut().filter_map(|r| r.fetch.as_mut()) {
                f.reset();
            }
            self.stall.reset_probes();
            self.pending.clear();
            if polls {
                info!("this VM now polls the registry");
                if self.online.is_some() {
                    self.online = Some(Online::resume(shared.get(&self.keys.online()).0.as_deref()));
                }
            }
        }
        self.sync(shared, now_ms);
        self.capture_tick(shared, now_ms);
        self.stall_tick(shared, now_ms);
        if let Some(o) = self.online.as_mut() {
            self.stats.online.add(std::mem::take(&mut o.stats));
        }
        self.due(shared, now_ms)
    }

    /// The registry requests, health-check and stall probes and registration steps due at
    /// `now_ms` (none unless this VM is the poller).
    pub fn due(&mut self, shared: &dyn Shared, now_ms: i64) -> Vec<Dispatch> {
        if !self.poller {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, s) in self.services.iter_mut().enumerate() {
            let Some(reg) = self.registries.get(s.cfg.registry) else { continue };
            // a registry fetched whole is asked once for all its services (`fetches_due`)
            if reg.fetch.is_none() {
                out.extend(refresh::registry_due(i, s, reg, now_ms));
            }
            checks::probes_due(i, s, shared, &self.keys, now_ms, &mut self.rng, &mut out);
        }
        self.fetches_due(now_ms, &mut out);
        self.stall_probes_due(now_ms, &mut out);
        self.online_due(shared, now_ms, &mut out);
        out
    }

    /// The host accepted `d` under `token`.
    pub fn dispatched(&mut self, token: u32, d: &Dispatch) {
        self.pending.insert(token, (d.service, d.purpose.clone()));
    }

    /// The host refused to dispatch `d` (`why`, for the log): retried after one interval.
    pub fn dispatch_failed(&mut self, d: &Dispatch, why: &str, now_ms: i64) {
        self.stats.dispatch_failed += 1;
        if let Purpose::Fetch(ri, _) = d.purpose {
            self.fetch_dispatch_failed(ri, now_ms);
        }
        let retry = interval(&self.settings, &mut self.rng);
        let Some(s) = self.services.get_mut(d.service) else { return };
        match &d.purpose {
            Purpose::Registry(_) => {
                s.poll.dispatch_failed(now_ms, retry);
                s.stats.refresh_failed += 1;
            }
            Purpose::Probe(addr) => s.prober.dispatch_failed(addr),
            Purpose::StallProbe(addr) => self.stall.probe_dispatch_failed(addr, now_ms),
            Purpose::Fetch(..) => {}
            Purpose::Online(step) => {
                let draining = self.view.self_drain.draining();
                if let (Some(ib), Some(o)) = (&self.settings.inbound, self.online.as_mut()) {
                    if let Some(reg) = &ib.registration {
                        o.on_answer(reg, *step, Answer::Failed(format!("cannot dispatch: {why}")), draining, now_ms);
                    }
                }
            }
        }
        let (name, cluster) = (s.cfg.name.clone(), d.cluster.clone());
        self.log_limited(d.service, "dispatch", now_ms, || {
            format!("cannot call cluster '{cluster}' for service '{name}': {why} (is the cluster defined?)")
        });
    }

    /// The largest body the reply to `token` may have (the glue fetches no more; probes: none).
    pub fn max_body(&self, token: u32) -> usize {
        match self.pending.get(&token) {
            Some((svc, Purpose::Registry(_))) => self
                .services
                .get(*svc)
                .and_then(|s| self.registries.get(s.cfg.registry))
                .map_or(0, |r| r.cfg.kind.endpoint().max_body_bytes),
            Some((_, Purpose::Fetch(ri, _))) => {
                self.registries.get(*ri).map_or(0, |r| r.cfg.kind.endpoint().max_body_bytes)
            }
            Some((_, Purpose::Online(_))) => 64 * 1024,
            _ => 0,
        }
    }

    /// The reply to a dispatched call arrived for `token`. A registry reply is parsed, checked by
    /// the keep-last-good rules and published: returns the service and what happened. A probe's
    /// answer decides its instance's health (returns `None`, like an unknown token).
    pub fn on_call_reply(
        &mut self,
        shared: &dyn Shared,
        token: u32,
        resp: &HttpResponse<'_>,
        now_ms: i64,
    ) -> Option<(usize, RefreshOutcome)> {
        match self.pending.remove(&token)? {
            (svc, Purpose::Registry(call)) => self.on_registry_reply(shared, svc, call, resp, now_ms),
            (_, Purpose::Fetch(ri, fetch)) => self.on_fetch_reply(shared, ri, fetch, resp, now_ms),
            (svc, Purpose::Probe(addr)) => {
                self.on_probe_reply(shared, svc, &addr, resp.status, now_ms);
                None
            }
            (svc, Purpose::StallProbe(addr)) => {
                self.on_stall_probe_reply(shared, svc, &addr, resp.status, now_ms);
                None
            }
            (_, Purpose::Online(step)) => {
                self.on_online_reply(shared, step, resp, now_ms);
                None
            }
        }
    }
}
