//! The refresh path inside the VM: the registry request that is due, and a registry reply made
//! membership (keep-last-good rules, publish, stale marks pruned, generation bumped), with its
//! stats and logs.

use log::info;

use super::{Dispatch, Purpose, Vm};
use crate::marks;
use crate::membership::Snapshot;
use crate::poller::{interval, jittered, RefreshOutcome};
use crate::registry::{Call, HttpResponse};
use crate::service::{Registry, Service};
use crate::store::{bump_gen, Shared};

/// The registry request of service `i` (`s`, of registry `reg`) due at `now_ms`, if any.
pub(super) fn registry_due(i: usize, s: &mut Service, reg: &Registry, now_ms: i64) -> Option<Dispatch> {
    let (call, request) = s.poll.due(&reg.cfg, &reg.session, &s.cfg, now_ms)?;
    Some(Dispatch { service: i, purpose: Purpose::Registry(call), cluster: reg.cfg.cluster.clone(), request })
}

impl Vm {
    /// A registry reply to `call` of service `svc`: parsed, checked by the keep-last-good rules and
    /// published; returns the service and what happened.
    pub(super) fn on_registry_reply(
        &mut self,
        shared: &dyn Shared,
        svc: usize,
        call: Call,
        resp: &HttpResponse<'_>,
        now_ms: i64,
    ) -> Option<(usize, RefreshOutcome)> {
        self.sync(shared, now_ms);
        let interval_ms = self.poll_interval(svc);
        let s = self.services.get_mut(svc)?;
        let reg = self.registries.get_mut(s.cfg.registry)?;
        let (outcome, publish) =
            s.poll.on_reply(&reg.cfg, &mut reg.session, &s.cfg, &s.view.snap, call, resp, now_ms, interval_ms);
        if let Some(snap) = publish {
            self.publish(shared, svc, snap, now_ms);
        }
        self.account(svc, &outcome, now_ms);
        Some((svc, outcome))
    }

    /// The next (jittered) poll interval of service `svc`: the registry's `reconcile_interval_ms`
    /// while a push subscription feeds it, the refresh interval otherwise.
    fn poll_interval(&mut self, svc: usize) -> i64 {
        let reconcile = self.services.get(svc).and_then(|s| {
            let push = self.registries.get(s.cfg.registry)?.push.as_ref()?;
            push.live(svc).then(|| push.config().reconcile_interval_ms)
        });
        match reconcile {
            Some(ms) => jittered(ms, &self.settings, &mut self.rng),
            None => interval(&self.settings, &mut self.rng),
        }
    }

    /// Publishes `snap` as service `svc`'s membership: the snapshot to shared data, stale marks
    /// pruned, the generation bumped; this VM installs it.
    pub(super) fn publish(&mut self, shared: &dyn Shared, svc: usize, snap: Snapshot, now_ms: i64) {
        let Some(s) = self.services.get(svc) else { return };
        let key = self.keys.service(&s.cfg.name);
        let bytes = snap.encode();
        shared.set(&key, &bytes, None);
        crate::store::note_lineage(shared, &self.keys, svc);
        let services = &self.services;
        marks::prune(shared, &self.keys, |addr| {
            services.iter().enumerate().find_map(|(k, o)| {
                let members = if k == svc { &snap.members } else { &o.view.snap.members };
                crate::instance::find(members, addr)
            })
        });
        if let Some(prev) = self.services.get(svc).map(|s| &s.view.snap.members) {
            self.record_departures(shared, svc, prev, &snap.members, now_ms);
        }
        bump_gen(shared, &self.keys);
        // this VM routes by the snapshot it built, not by a decode of its own encoding: the
        // key is read back once for its CAS token, which stands for these bytes only
        let (stored, cas) = shared.get(&key);
        if let (Some(s), true) = (self.services.get_mut(svc), stored.as_deref() == Some(&bytes[..])) {
            s.view.install(snap, cas);
        }
        self.sync(shared, now_ms);
    }

    /// Stats and logs for a refresh outcome.
    pub(super) fn account(&mut self, svc: usize, outcome: &RefreshOutcome, now_ms: i64) {
        let Some(s) = self.services.get_mut(svc) else { return };
        let name = s.cfg.name.clone();
        let st = &mut s.stats;
        match outcome {
            RefreshOutcome::Published { version, hosts, skipped, protected, unroutable } => {
                st.refresh_ok += 1;
                st.instances_skipped += u64::from(*skipped);
                st.protect_threshold_hit += u64::from(*protected);
                let skipped = if *skipped > 0 { format!(", {skipped} malformed skipped") } else { String::new() };
                info!("service '{name}' membership v{version}: {hosts} instances{skipped}");
                self.log_unroutable(svc, &name, unroutable, now_ms);
            }
            RefreshOutcome::Same { skipped, unroutable } => {
                st.refresh_ok += 1;
                st.instances_skipped += u64::from(*skipped);
                self.log_unroutable(svc, &name, unroutable, now_ms);
            }
            // a superseded list is counted with the unchanged ones: it changed nothing
            RefreshOutcome::Unchanged | RefreshOutcome::Superseded => st.refresh_unchanged += 1,
            RefreshOutcome::LoggedIn => info!("logged in to the registry of service '{name}'"),
            RefreshOutcome::Again(why) => info!("service '{name}': {why}"),
            RefreshOutcome::Kept(hold) => {
                st.refresh_kept += 1;
                let kind = hold.kind();
                self.log_limited(svc, "kept", now_ms, || {
                    format!("service '{name}': registry list held back ({kind}), keeping the last good membership")
                });
            }
            RefreshOutcome::Failed(e) => {
                st.refresh_failed += 1;
                let (kind, text) = (e.kind(), e.to_string());
                self.log_limited(svc, kind, now_ms, || {
                    format!("service '{name}': refresh failed, keeping the last good membership: {text}")
                });
            }
        }
    }

    /// Names the instances refused for a host-name address (Envoy routes to IP literals only).
    fn log_unroutable(&mut self, svc: usize, name: &str, unroutable: &[String], now_ms: i64) {
        if unroutable.is_empty() {
            return;
        }
        let shown = unroutable.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let n = unroutable.len();
        self.log_limited(svc, "unroutable", now_ms, || {
            format!("service '{name}': {n} instance(s) refused, their address is a host name Envoy cannot route to (register the IP): {shown}")
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::RegistryError;
    use crate::store::{bump_gen, Shared};
    use crate::vm::testing::*;
    use crate::vm::Vm;
    use crate::{clock::Rng, config, poller::RefreshOutcome};

    #[test]
    fn poll_publish_route() {
        let mut w = World::new(CFG);
        assert_eq!(w.route("demo", None, NOW).unwrap(), "", "no membership yet: override_host fails open (no header)");
        assert!(matches!(w.refresh(THREE, NOW), RefreshOutcome::Published { version: 1, hosts: 3, .. }));
        // not due again before the interval (1 s +- 10 %)
        assert!(w.vm.on_tick(&w.shared, NOW + 500).is_empty());
        let value = w.route("demo", None, NOW).unwrap();
        assert_eq!(value.split(',').count(), 3, "primary + 2 fallbacks: {value}");
        assert_eq!(w.route("other", None, NOW).unwrap(), "", "another cluster is not routed");
        // the same list again publishes nothing
        assert!(matches!(w.refresh(THREE, NOW + 2000), RefreshOutcome::Same { .. }));
        // metadata is not part of the snapshot: a list with metadata is the same list
        let with_md = THREE.replace(r#""10.0.0.1:80""#, r#""10.0.0.1:80","metadata":{"zone":"a"}"#);
        assert!(matches!(w.refresh(&with_md, NOW + 4000), RefreshOutcome::Same { .. }));
        // a garbage reply keeps the membership
        assert!(matches!(w.refresh("<html>", NOW + 6000), RefreshOutcome::Failed(RegistryError::Parse(_))));
        assert_eq!(w.members().len(), 3);
        assert_eq!(w.vm.view.decodes, 0, "the publishing VM routes by the snapshot it built: no decode");
        assert_eq!(w.vm.services[0].stats.refresh_ok, 3);
        assert_eq!(w.vm.services[0].stats.refresh_failed, 1);
    }

    /// The poller routes by the snapshot it publishes without decoding it; another VM decodes
    /// it once and holds the same membership.
    #[test]
    fn publishing_vm_installs_its_own_snapshot() {
        let mut w = World::new(CFG);
        assert!(matches!(w.refresh(THREE, NOW), RefreshOutcome::Published { version: 1, hosts: 3, .. }));
        let two = r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.3:80","weight":7}]}"#;
        assert!(matches!(w.refresh(two, NOW + 2000), RefreshOutcome::Published { version: 2, hosts: 2, .. }));
        assert_eq!(w.vm.view.decodes, 0, "the publishing VM does not decode its own snapshot");
        let addrs: Vec<&str> = w.members().iter().map(|m| m.addr.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.3:80"], "the new membership is routed by");
        for k in 0..20 {
            let value = w.route("demo", None, NOW + 2000 + k).unwrap();
            assert!(!value.contains("10.0.0.2:80"), "a removed member is not routed to: {value}");
        }
        // what the poller holds is what every other VM decodes
        let mut other = Vm::new(config::parse(CFG).unwrap(), CFG, 2, Rng::new(2));
        other.sync(&w.shared, NOW + 2000);
        assert_eq!(other.view.decodes, 1);
        assert_eq!(other.services[0].view.snap, w.vm.services[0].view.snap);
        assert_eq!(other.services[0].view.members, w.vm.services[0].view.members);
        // a snapshot written by another VM is decoded as before
        let mut s3 = w.vm.services[0].view.snap.clone();
        s3.version += 1;
        s3.members.truncate(1);
        w.shared.set(&w.vm.keys.service("demo"), &s3.encode(), None);
        bump_gen(&w.shared, &w.vm.keys);
        w.vm.sync(&w.shared, NOW + 3000);
        assert_eq!(w.vm.view.decodes, 1);
        assert_eq!(w.members().len(), 1);
    }

    #[test]
    fn flapping_registry_keeps_the_set() {
        let mut w = World::new(CFG);
        let ten: Vec<String> = (1..=10).map(|k| format!(r#"{{"address":"10.0.0.{k}:80"}}"#)).collect();
        let full = format!(r#"{{"instances":[{}]}}"#, ten.join(","));
        let down: Vec<String> = (1..=10).map(|k| format!(r#"{{"address":"10.0.0.{k}:80","state":"down"}}"#)).collect();
        let all_down = format!(r#"{{"instances":[{}]}}"#, down.join(","));
        w.refresh(&full, NOW);
        let mut t = NOW;
        for body in [
            r#"{"instances":[]}"#,
            all_down.as_str(),
            "oops",
            full.as_str(),
            all_down.as_str(),
            r#"{"instances":[]}"#,
            full.as_str(),
        ] {
            t += 2000;
            w.refresh(body, t);
            assert_eq!(w.vm.services[0].view.balancer.serving(), 10, "after {body}");
        }
    }

    #[test]
    fn host_name_addresses_are_refused_by_name() {
        let mut w = World::new(CFG);
        let out = w.refresh(r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"orders.internal:80"}]}"#, NOW);
        let RefreshOutcome::Published { hosts, skipped, unroutable, .. } = out else { panic!("{out:?}") };
        assert_eq!((hosts, skipped, unroutable), (1, 1, vec!["orders.internal:80".to_string()]));
        assert_eq!(w.vm.services[0].stats.instances_skipped, 1);
    }

    /// The registry's bad days (docs/registry-bad-days.md) through the poller: after a failed
    /// refresh, a list that lacks members keeps them while they register again, for
    /// `guard.reregister_ms`; an empty one is never applied in that time; a list that lacks one
    /// while the registry answered all along is a departure, and the one that left stays out
    /// for `guard.departure_memory_ms` when an older view lists it again.
    #[test]
    fn the_registry_restarting_or_lagging_keeps_the_set() {
        let mut w = World::new(CFG);
        let two = r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.3:80"}]}"#;
        let addrs = |w: &World| w.members().iter().map(|m| m.addr.clone()).collect::<Vec<_>>();
        w.refresh(THREE, NOW);
        // down for a while, then back with part of the list: kept while it is registered again
        assert!(matches!(w.refresh("oops", NOW + 2000), RefreshOutcome::Failed(_)));
        assert!(matches!(w.refresh(two, NOW + 4000), RefreshOutcome::Same { .. }));
        assert_eq!(addrs(&w).len(), 3);
        // empty for longer than confirm_refreshes: still held
        for k in 0..10 {
            assert!(matches!(w.refresh(r#"{"instances":[]}"#, NOW + 6000 + 2000 * k), RefreshOutcome::Kept(_)));
        }
        assert_eq!(addrs(&w).len(), 3);
        // the window is over: what it lists applies
        assert!(matches!(w.refresh(two, NOW + 4000 + 120_000), RefreshOutcome::Published { hosts: 2, .. }));
        // an older view lists the one that left: it stays out for departure_memory_ms
        assert!(matches!(w.refresh(THREE, NOW + 130_000), RefreshOutcome::Same { .. }));
        assert_eq!(addrs(&w), ["10.0.0.1:80", "10.0.0.3:80"]);
        assert!(matches!(w.refresh(THREE, NOW + 124_000 + 30_000), RefreshOutcome::Published { hosts: 3, .. }));
        // a failure, then the same list as applied (not parsed again): the registry is back, and
        // a later departure applies at once
        assert!(matches!(w.refresh("oops", NOW + 160_000), RefreshOutcome::Failed(_)));
        assert!(matches!(w.refresh(THREE, NOW + 162_000), RefreshOutcome::Same { .. }));
        assert!(matches!(w.refresh(two, NOW + 164_000), RefreshOutcome::Published { hosts: 2, .. }));
    }

    #[test]
    fn a_deliberate_offline_applies_within_one_refresh() {
        // Nacos omits disabled instances: 2 of 3 disabled at once are gone at the next refresh
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        w.refresh(r#"{"instances":[{"address":"10.0.0.3:80"}]}"#, NOW + 2000);
        assert_eq!(w.members().len(), 1);
        for _ in 0..50 {
            assert_eq!(w.route("demo", None, NOW + 2000).unwrap(), "10.0.0.3:80");
        }
    }

    /// `CFG` with `from` replaced by `to`.
    fn changed(from: &str, to: &str) -> Vec<u8> {
        let text = String::from_utf8(CFG.to_vec()).unwrap();
        assert!(text.contains(from), "{from}");
        text.replace(from, to).into_bytes()
    }

    /// The VM of configuration `cfg`, started over the shared data of `w` (an LDS update in the
    /// same process), in a world of its own.
    fn successor(w: World, cfg: &[u8]) -> World {
        let mut vm = Vm::new(config::parse(cfg).unwrap(), cfg, 2, Rng::new(2));
        assert_ne!(vm.keys.prefix(), w.vm.keys.prefix(), "another configuration, other keys");
        vm.on_start(&w.shared);
        World { vm, shared: w.shared }
    }

    /// An LDS update that changes the filter's configuration but not the service's definition
    /// (here the refresh interval and the drain header's retry-after) starts from the previous
    /// configuration's membership and marks: before its first refresh, with the registry
    /// unreachable, it routes by the three members and keeps the draining one out.
    #[test]
    fn a_changed_configuration_starts_from_the_previous_membership_and_marks() {
        let mut w = World::new(CFG);
        assert!(matches!(w.refresh(THREE, NOW), RefreshOutcome::Published { version: 1, hosts: 3, .. }));
        assert!(crate::marks::mark_draining(&w.shared, &w.vm.keys, "10.0.0.2:80", None));
        let cfg = changed(
            r#""drain":{"pin_header":"x-pin"}"#,
            r#""drain":{"pin_header":"x-pin","retry_after_s":2},"refresh_interval_ms":3000"#,
        );
        let mut next = successor(w, &cfg);
        assert_eq!(next.vm.services[0].view.snap.version, 0, "nothing read before the first request");
        for k in 0..40 {
            let value = next.route("demo", None, NOW + 100 + k).unwrap();
            assert!(!value.is_empty(), "routed by the adopted membership, not failed open");
            assert!(!value.contains("10.0.0.2:80"), "the draining member stays out: {value}");
        }
        assert_eq!(next.members().len(), 3);
        assert_eq!(state_of(&next, "10.0.0.2:80"), crate::instance::State::Draining);
        // a failing registry keeps it; the registry's next list is decided against it
        assert!(matches!(next.refresh("<html>", NOW + 5000), RefreshOutcome::Failed(_)));
        assert_eq!(next.members().len(), 3);
        let two = r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.3:80"}]}"#;
        let out = next.refresh(two, NOW + 9000);
        assert!(
            !matches!(out, RefreshOutcome::Published { .. }),
            "the first list after a failure lacking a member keeps it: {out:?}"
        );
        assert_eq!(next.members().len(), 3);
    }

    /// A service whose definition changed (another registry service) is not carried over: the
    /// new configuration starts with no membership and fails open until its registry answers.
    #[test]
    fn a_changed_service_definition_starts_empty() {
        let mut w = World::new(CFG);
        assert!(matches!(w.refresh(THREE, NOW), RefreshOutcome::Published { .. }));
        let cfg = changed(r#""match_clusters":["demo"]"#, r#""match_clusters":["demo"],"registry_service":"other""#);
        let mut next = successor(w, &cfg);
        assert_eq!(next.route("demo", None, NOW + 100).unwrap(), "", "no membership: override_host fails open");
        assert!(next.members().is_empty());
        // nor is another registry's
        let mut w = World::new(CFG);
        assert!(matches!(w.refresh(THREE, NOW), RefreshOutcome::Published { .. }));
        let cfg = changed(r#""authority":"cp""#, r#""authority":"cp2""#);
        let mut next = successor(w, &cfg);
        assert_eq!(next.route("demo", None, NOW + 100).unwrap(), "");
    }

    /// A lineage key that names no configuration, or one whose snapshot does not decode, adopts
    /// nothing; an own snapshot is never overwritten.
    #[test]
    fn adoption_takes_only_a_valid_snapshot_of_another_configuration() {
        use crate::store::adopt;
        let w = World::new(CFG);
        let keys = &w.vm.keys;
        let lineage = keys.lineage(0).unwrap().to_string();
        let valid = |b: &[u8]| crate::membership::Snapshot::decode(b).is_ok();
        for pointer in ["", "elsewhere/", "lossless/0000000000000000/", keys.prefix()] {
            w.shared.set(&lineage, pointer.as_bytes(), None);
            assert_eq!(adopt(&w.shared, keys, &["demo"], valid), 0, "{pointer:?}");
        }
        let other = "lossless/00000000000000ff/";
        w.shared.set(&lineage, other.as_bytes(), None);
        w.shared.set(&format!("{other}svc/demo"), b"not a snapshot", None);
        assert_eq!(adopt(&w.shared, keys, &["demo"], valid), 0);
        assert!(w.shared.get(&keys.service("demo")).0.is_none());
        let snap = b"lossless-snapshot 4 1\n10.0.0.9:80 100 - 0 serving\n";
        w.shared.set(&format!("{other}svc/demo"), snap, None);
        assert_eq!(adopt(&w.shared, keys, &["demo"], valid), 1);
        assert_eq!(w.shared.get(&keys.service("demo")).0.as_deref(), Some(&snap[..]));
        // once it has its own, nothing is adopted again
        w.shared.set(&format!("{other}svc/demo"), b"lossless-snapshot 5 1\n", None);
        assert_eq!(adopt(&w.shared, keys, &["demo"], valid), 0);
        assert_eq!(w.shared.get(&keys.service("demo")).0.as_deref(), Some(&snap[..]));
    }
}
