//! The registry-wide fetch inside the VM (Eureka with `fetch: "delta"`, [`crate::registry::eureka::delta`]):
//! one request per registry and interval instead of one per service, dispatched by the poller VM;
//! each reply that brings the registry in line gives every configured service of the registry its
//! list, which goes through the keep-last-good rules ([`PollState::on_fetched`]) and is published
//! as a polled one is. An unusable reply keeps every service's membership and counts as a failed
//! refresh of each.
//!
//! [`PollState::on_fetched`]: crate::poller::PollState::on_fetched

use log::info;

use super::{Dispatch, Purpose, Vm};
use crate::config::{RegistryConfig, RegistryKind, ServiceConfig};
use crate::poller::{interval, jittered, RefreshOutcome};
use crate::registry::eureka::delta::{Fetch, Fetched, Fetcher, Mirror};
use crate::registry::HttpResponse;
use crate::store::Shared;

/// The fetcher of registry `ri` when it fetches the registry whole and some service uses it.
pub(super) fn fetcher(ri: usize, cfg: &RegistryConfig, services: &[ServiceConfig]) -> Option<Fetcher> {
    let RegistryKind::Eureka(e) = &cfg.kind else { return None };
    let every = e.delta_interval_ms?;
    let mine = services.iter().enumerate().filter(|(_, s)| s.registry == ri);
    let mirror = Mirror::new(mine.map(|(i, s)| (i, s.query.service.as_str(), &s.query.build)));
    let used = services.iter().any(|s| s.registry == ri);
    used.then(|| Fetcher::new(mirror, every))
}

impl Vm {
    /// The registry-wide fetches due at `now_ms` (poller VM only).
    pub(super) fn fetches_due(&mut self, now_ms: i64, out: &mut Vec<Dispatch>) {
        for (ri, reg) in self.registries.iter_mut().enumerate() {
            let Some(f) = reg.fetch.as_mut() else { continue };
            let RegistryKind::Eureka(e) = &reg.cfg.kind else { continue };
            let Some(fetch) = f.due(now_ms) else { continue };
            // logs and stats name the registry's first service
            let service = self.services.iter().position(|s| s.cfg.registry == ri).unwrap_or(0);
            let request = fetch.request(&e.endpoint, &e.prefix);
            out.push(Dispatch {
                service,
                purpose: Purpose::Fetch(ri, fetch),
                cluster: reg.cfg.cluster.clone(),
                request,
            });
        }
    }

    /// The host refused to dispatch the fetch of registry `ri`: every service of it counts a
    /// failed refresh; tried again after one refresh interval.
    pub(super) fn fetch_dispatch_failed(&mut self, ri: usize, now_ms: i64) {
        let retry = interval(&self.settings, &mut self.rng);
        if let Some(f) = self.registries.get_mut(ri).and_then(|r| r.fetch.as_mut()) {
            f.dispatch_failed(now_ms, retry);
        }
        for s in self.services.iter_mut().filter(|s| s.cfg.registry == ri) {
            s.poll.note_failure(now_ms);
            s.stats.refresh_failed += 1;
        }
    }

    /// The reply to a fetch of registry `ri`. Returns the first service of the registry whose
    /// list was published, and what happened to it (for the refresh-duration gauge).
    pub(super) fn on_fetch_reply(
        &mut self,
        shared: &dyn Shared,
        ri: usize,
        fetch: Fetch,
        resp: &HttpResponse<'_>,
        now_ms: i64,
    ) -> Option<(usize, RefreshOutcome)> {
        self.sync(shared, now_ms);
        let reg = self.registries.get_mut(ri)?;
        let RegistryKind::Eureka(e) = &reg.cfg.kind else { return None };
        let f = reg.fetch.as_mut()?;
        let next = jittered(f.interval_ms, &self.settings, &mut self.rng);
        let fetched = f.on_reply(fetch, resp, &e.endpoint, now_ms, next);
        let name = reg.cfg.name.clone();
        let st = &mut self.stats.eureka;
        match fetched {
            Fetched::Synced => {
                match fetch {
                    Fetch::Full => st.full_applied += 1,
                    Fetch::Delta => st.delta_applied += 1,
                }
                let lists = f.mirror.lists();
                let kept = f.mirror.len();
                if fetch == Fetch::Full {
                    info!("registry '{name}': full fetch, {kept} instances in the registry");
                }
                let mut first = None;
                let confirm_at = now_ms.saturating_add(interval(&self.settings, &mut self.rng));
                for (svc, parsed) in lists {
                    let Some(s) = self.services.get_mut(svc) else { continue };
                    let (outcome, publish) = s.poll.on_fetched(&s.cfg, &s.view.snap, parsed, now_ms);
                    if matches!(outcome, RefreshOutcome::Kept(_)) && s.poll.confirming() {
                        // a list held back is confirmed by the next fetch, within one refresh
                        if let Some(f) = self.registries.get_mut(ri).and_then(|r| r.fetch.as_mut()) {
                            f.expedite(confirm_at);
                        }
                    }
                    if let Some(snap) = publish {
                        self.publish(shared, svc, snap, now_ms);
                    }
                    self.account(svc, &outcome, now_ms);
                    first.get_or_insert((svc, outcome));
                }
                first
            }
            Fetched::Mismatch { theirs, ours } => {
                st.delta_hash_mismatch += 1;
                let theirs = theirs.unwrap_or_else(|| "none".into());
                self.log_limited(usize::MAX - ri, "eureka_hash", now_ms, || {
                    format!("registry '{name}': delta hash code {theirs} disagrees with {ours}; fetching the registry in full")
                });
                None
            }
            Fetched::Failed { error, full_next, .. } => {
                st.fetch_failed += 1;
                let what = if fetch == Fetch::Full { "full fetch" } else { "delta" };
                let then = if full_next { "; fetching in full next" } else { "" };
                let text = error.to_string();
                let first = self.services.iter().position(|s| s.cfg.registry == ri);
                for s in self.services.iter_mut().filter(|s| s.cfg.registry == ri) {
                    s.poll.note_failure(now_ms);
                    s.stats.refresh_failed += 1;
                }
                self.log_limited(first.unwrap_or(usize::MAX - ri), error.kind(), now_ms, || {
                    format!("registry '{name}': {what} failed, keeping the last good membership: {text}{then}")
                });
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::instance::State;
    use crate::poller::RefreshOutcome;
    use crate::registry::eureka::delta::Fetch;
    use crate::registry::HttpResponse;
    use crate::vm::testing::{World, NOW};
    use crate::vm::{Dispatch, Purpose};

    const CFG: &[u8] = br#"{"registries":{"e":{"type":"eureka","cluster":"eureka","authority":"e","fetch":"delta"}},
        "services":[{"name":"foo","registry":"e","registry_service":"FOO"},{"name":"users","registry":"e"},
                    {"name":"bar","registry":"e","registry_service":"BAR"}]}"#;

    fn rec(app: &str, id: &str, ip: &str, status: &str, action: &str) -> String {
        format!(
            r#"{{"instanceId":"{id}","app":"{app}","ipAddr":"{ip}","status":"{status}","port":{{"$":80}},"actionType":"{action}"}}"#
        )
    }

    fn body(hash: &str, recs: &[String]) -> String {
        format!(
            r#"{{"applications":{{"apps__hashcode":"{hash}","application":[{{"name":"X","instance":[{}]}}]}}}}"#,
            recs.join(",")
        )
    }

    /// The registry requests due at `now`.
    fn due(w: &mut World, now: i64) -> Vec<Dispatch> {
        let mut d = w.vm.on_tick(&w.shared, now);
        d.extend(w.vm.due(&w.shared, now));
        d.into_iter().filter(|d| matches!(d.purpose, Purpose::Registry(_) | Purpose::Fetch(..))).collect()
    }

    /// Sends the one request due at `now`, which must be `want`, and answers it with `body`.
    fn fetch(w: &mut World, now: i64, want: Fetch, body: &str) -> Option<(usize, RefreshOutcome)> {
        let d = due(w, now);
        assert_eq!(d.len(), 1, "one request for the whole registry: {d:?}");
        assert_eq!(d[0].purpose, Purpose::Fetch(0, want));
        let path = if want == Fetch::Full { "/eureka/apps" } else { "/eureka/apps/delta" };
        assert_eq!(d[0].request.header(":path"), Some(path));
        w.vm.dispatched(9, &d[0]);
        let resp = HttpResponse { status: Some(200), headers: &[], body: body.as_bytes(), body_size: body.len() };
        w.vm.on_call_reply(&w.shared, 9, &resp, now)
    }

    fn addrs(w: &World, svc: usize) -> Vec<String> {
        w.vm.services[svc].view.snap.members.iter().map(|m| m.addr.clone()).collect()
    }

    #[test]
    fn one_fetch_per_interval_for_every_service() {
        let mut w = World::new(CFG);
        let full = body(
            "UP_3_",
            &[
                rec("FOO", "f1", "10.0.0.1", "UP", "ADDED"),
                rec("USERS", "u1", "10.0.1.1", "UP", "ADDED"),
                rec("ZED", "z", "10.0.9.9", "UP", "ADDED"),
            ],
        );
        let out = fetch(&mut w, NOW, Fetch::Full, &full);
        assert!(matches!(out, Some((0, RefreshOutcome::Published { hosts: 1, .. }))), "{out:?}");
        assert_eq!((addrs(&w, 0), addrs(&w, 1)), (vec!["10.0.0.1:80".to_string()], vec!["10.0.1.1:80".to_string()]));
        assert!(addrs(&w, 2).is_empty());
        assert_eq!(w.vm.stats.eureka.full_applied, 1);
        // nothing until the interval (30 s +- 10 %), whatever the refresh interval
        for t in [1000, 10_000, 26_999] {
            assert!(due(&mut w, NOW + t).is_empty(), "at {t}");
        }
        // a delta: a registration and another application's change
        let t = NOW + 33_001;
        let d = body(
            "DOWN_1_UP_3_",
            &[rec("USERS", "u2", "10.0.1.2", "UP", "ADDED"), rec("ZED", "z", "10.0.9.9", "DOWN", "MODIFIED")],
        );
        fetch(&mut w, t, Fetch::Delta, &d);
        assert_eq!(addrs(&w, 1), ["10.0.1.1:80", "10.0.1.2:80"]);
        assert_eq!(w.vm.stats.eureka.delta_applied, 1);
        assert_eq!(w.vm.services.iter().map(|s| s.stats.refresh_ok).collect::<Vec<_>>(), [2, 2, 2]);
    }

    #[test]
    fn bad_replies_keep_the_membership_and_a_disagreement_fetches_in_full() {
        let mut w = World::new(CFG);
        let full = body("UP_1_", &[rec("FOO", "f1", "10.0.0.1", "UP", "ADDED")]);
        fetch(&mut w, NOW, Fetch::Full, &full);
        // garbage: kept, counted for every service, a full fetch at once (garbage again)
        let mut t = NOW + 33_001;
        assert!(fetch(&mut w, t, Fetch::Delta, "<html>").is_none());
        assert_eq!(addrs(&w, 0), ["10.0.0.1:80"]);
        assert_eq!(w.vm.services.iter().map(|s| s.stats.refresh_failed).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(fetch(&mut w, t, Fetch::Full, "{").is_none());
        assert_eq!((addrs(&w, 0), w.vm.stats.eureka.fetch_failed), (vec!["10.0.0.1:80".to_string()], 2));
        t += 33_001;
        fetch(&mut w, t, Fetch::Full, &full);
        // a delta whose hash disagrees: not applied, a full fetch goes out at once
        t += 33_001;
        let d = body("UP_5_", &[rec("FOO", "f2", "10.0.0.2", "UP", "ADDED")]);
        assert!(fetch(&mut w, t, Fetch::Delta, &d).is_none());
        assert_eq!((addrs(&w, 0).len(), w.vm.stats.eureka.delta_hash_mismatch), (1, 1));
        let full = body(
            "UP_3_",
            &[
                rec("FOO", "f1", "10.0.0.1", "UP", "ADDED"),
                rec("FOO", "f2", "10.0.0.2", "UP", "ADDED"),
                rec("FOO", "f3", "10.0.0.3", "UP", "ADDED"),
            ],
        );
        fetch(&mut w, t, Fetch::Full, &full);
        assert_eq!(addrs(&w, 0), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        // DELETED: gone at the next delta
        t += 33_001;
        fetch(&mut w, t, Fetch::Delta, &body("UP_2_", &[rec("FOO", "f3", "10.0.0.3", "UP", "DELETED")]));
        assert_eq!(addrs(&w, 0), ["10.0.0.1:80", "10.0.0.2:80"]);
    }

    /// Most instances of an application turn down at once: the list is held, confirmed by
    /// fetches within one refresh interval each, then applied. An application whose last instance
    /// left is held for `guard.reregister_ms` whatever the replies say (the registry may be
    /// being registered with again): the fetches keep their interval meanwhile.
    #[test]
    fn a_held_list_is_confirmed_sooner() {
        let mut w = World::new(CFG);
        let up = [
            rec("FOO", "f1", "10.0.0.1", "UP", "ADDED"),
            rec("FOO", "f2", "10.0.0.2", "UP", "ADDED"),
            rec("FOO", "f3", "10.0.0.3", "UP", "ADDED"),
        ];
        fetch(&mut w, NOW, Fetch::Full, &body("UP_3_", &up));
        let down = body(
            "DOWN_2_UP_1_",
            &[rec("FOO", "f1", "10.0.0.1", "DOWN", "MODIFIED"), rec("FOO", "f2", "10.0.0.2", "DOWN", "MODIFIED")],
        );
        let mut t = NOW + 33_001;
        let out = fetch(&mut w, t, Fetch::Delta, &down);
        assert!(matches!(out, Some((0, RefreshOutcome::Kept(_)))), "{out:?}");
        // the confirming fetches go out within one refresh interval (1 s + 10 %), not 30 s
        t += 1101;
        assert!(matches!(fetch(&mut w, t, Fetch::Delta, &down), Some((0, RefreshOutcome::Kept(_)))));
        let serving =
            |w: &World| w.vm.services[0].view.snap.members.iter().filter(|m| m.state == State::Serving).count();
        assert_eq!(serving(&w), 3, "held until confirmed");
        t += 1101;
        let out = fetch(&mut w, t, Fetch::Delta, &down);
        assert!(matches!(out, Some((0, RefreshOutcome::Published { hosts: 3, .. }))), "{out:?}");
        assert_eq!(serving(&w), 1, "applied after guard.confirm_refreshes replies");
        // the last instances of an application leave: held at the fetch interval
        let mut w = World::new(CFG);
        fetch(&mut w, NOW, Fetch::Full, &body("UP_3_", &up));
        let gone = body(
            "",
            &[
                rec("FOO", "f1", "10.0.0.1", "UP", "DELETED"),
                rec("FOO", "f2", "10.0.0.2", "UP", "DELETED"),
                rec("FOO", "f3", "10.0.0.3", "UP", "DELETED"),
            ],
        );
        let t = NOW + 33_001;
        let out = fetch(&mut w, t, Fetch::Delta, &gone);
        assert!(matches!(out, Some((0, RefreshOutcome::Kept(_)))), "{out:?}");
        assert!(due(&mut w, t + 26_999).is_empty(), "no fetch sooner than the interval");
        assert_eq!(addrs(&w, 0).len(), 3);
    }

    #[test]
    fn a_refused_dispatch_is_retried_and_counted() {
        let mut w = World::new(CFG);
        let d = due(&mut w, NOW);
        w.vm.dispatch_failed(&d[0], "BadArgument", NOW);
        assert_eq!(w.vm.services.iter().map(|s| s.stats.refresh_failed).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(due(&mut w, NOW + 500).is_empty());
        assert_eq!(due(&mut w, NOW + 1101).len(), 1);
    }
}
