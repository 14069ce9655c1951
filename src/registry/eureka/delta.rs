//! Eureka's registry-wide fetch as Eureka's own client runs it (Netflix eureka-client
//! `DiscoveryClient.fetchRegistry`): one full `GET {prefix}/apps` first, then one
//! `GET {prefix}/apps/delta` per interval for every application of the registry at once, each delta
//! checked by the reconcile hash code and a full fetch again when it disagrees.
//!
//! - **The delta** (`ApplicationsResource.getContainerDifferential`, built by
//!   `AbstractInstanceRegistry.getApplicationDeltas`) lists every instance of *any* application
//!   that changed in the last 3 minutes (`recentlyChangedQueue`, `retentionTimeInMSInDeltaQueue`),
//!   each with its current `InstanceInfo` and an `actionType`: `ADDED` and `MODIFIED` replace the
//!   instance of that id, `DELETED` removes it (`DiscoveryClient.updateDelta`); a record without a
//!   known `actionType` is left alone, as there.
//! - **The hash** (`applications.apps__hashcode`) is the server's whole registry after the delta,
//!   counted by status: `STATUS_count_` for each status present, in name order, e.g.
//!   `DOWN_1_UP_12_` (`Applications.getReconcileHashCode`, `populateInstanceCountMap`). The client
//!   applies the delta, counts its own registry the same way, and when the two differ (or the delta
//!   carries none) fetches the full registry (`reconcileAndLogDifference`). A delta the server
//!   refuses (any status but 200; 403 when `disableDelta` is set) is replaced by a full fetch too
//!   (`getAndUpdateDelta`).
//!
//! Counting needs every instance of the registry, not only the configured applications': an
//! instance of another application that changes status moves the hash too, and a `MODIFIED`
//! record does not say what the status was before. So [`Mirror`] keeps, for every instance, a
//! 64-bit key (FNV-1a of the application's name and the instance's id) and its status: about 20
//! to 40 bytes an instance in the map (10,000 instances: 0.2 to 0.4 MB). Two instances whose keys
//! collide (odds about n² / 2⁶⁵) would be counted once: the hash then disagrees on every delta and
//! every fetch is a full one, which is slower but still right. The configured applications'
//! instances are kept in full, per service (the service's metadata keys and defaults), as the
//! membership a per-application fetch would give.
//!
//! An instance's id is its `instanceId`, else its `hostName` (`InstanceInfo.getId`; an AWS data
//! center's own id is not read: such instances register an `instanceId` in practice). Its
//! application is its `app`, upper-cased as Eureka's codec reads it. Its status for the hash is
//! `status` read as `InstanceStatus.toEnum` reads it (`UNKNOWN` for any other name), `UP` when
//! missing (the codec's builder default).

use std::hash::Hasher;

use serde::de::IgnoredAny;

use super::{instance, meta_keys, EachInst, Inst, Top};
use crate::clock::{FastMap, Fnv};
use crate::instance::BuildOptions;
use crate::registry::de::{read_with, Batch, Loose, Meta, Rec, Records, With};
use crate::registry::{check_common, get_request, Endpoint, HttpRequest, HttpResponse, Parsed, RegistryError};

/// The server keeps a change in its delta for 3 minutes (`retentionTimeInMSInDeltaQueue`), purged
/// every 30 s, and may answer from a response cache up to 30 s old: when the last fetch that
/// brought the registry in line was sent longer ago than this, the next one is a full fetch (ms).
pub const DELTA_HORIZON_MS: i64 = 120_000;

/// Eureka's `InstanceStatus`, in the order of its names (the hash lists them so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Down,
    OutOfService,
    Starting,
    Unknown,
    Up,
}

impl Status {
    const ALL: [Status; 5] = [Status::Down, Status::OutOfService, Status::Starting, Status::Unknown, Status::Up];

    fn name(self) -> &'static str {
        match self {
            Status::Down => "DOWN",
            Status::OutOfService => "OUT_OF_SERVICE",
            Status::Starting => "STARTING",
            Status::Unknown => "UNKNOWN",
            Status::Up => "UP",
        }
    }

    /// `status` as Eureka's client reads it: a name (any case), `UNKNOWN` for anything else, `UP`
    /// when absent.
    fn of(v: &Loose<'_>) -> Status {
        let Some(s) = v.as_str() else {
            return if v.is_none() { Status::Up } else { Status::Unknown };
        };
        Status::ALL.into_iter().find(|st| s.eq_ignore_ascii_case(st.name())).unwrap_or(Status::Unknown)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A delta record's `actionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// `ADDED` or `MODIFIED` (both replace), and every record of a full fetch.
    Put,
    Deleted,
    /// None or another: left alone.
    Other,
}

/// The key of an instance: FNV-1a of its application and id.
fn key(app: &str, id: &str) -> u64 {
    let mut h = Fnv::default();
    for b in app.bytes() {
        h.write_u8(b.to_ascii_uppercase());
    }
    h.write_u8(0xff);
    h.write(id.as_bytes());
    h.finish()
}

/// One configured application: the services it feeds and its instances as each reads them.
#[derive(Debug, Clone)]
struct App {
    /// Upper-cased.
    name: String,
    /// The services it feeds (their indexes, as the caller gave them) and how each reads a record.
    services: Vec<(usize, BuildOptions)>,
    /// Instance id -> one record per service, in `services` order.
    members: FastMap<String, Vec<Rec>>,
}

/// What one record of a reply says.
#[derive(Debug)]
struct Change {
    key: u64,
    status: Status,
    action: Action,
    /// A configured application's record: its index, the instance id and the record per service.
    member: Option<(usize, String, Vec<Rec>)>,
}

/// The registry as far as lossless keeps it: every instance's status (for the hash) and the
/// configured applications' instances.
#[derive(Debug, Clone)]
pub struct Mirror {
    status: FastMap<u64, Status>,
    counts: [u32; 5],
    apps: Vec<App>,
}

impl Mirror {
    /// A mirror for `services`: (index, application name, build options) of each configured
    /// service of the registry.
    pub fn new<'s>(services: impl IntoIterator<Item = (usize, &'s str, &'s BuildOptions)>) -> Mirror {
        let mut apps: Vec<App> = Vec::new();
        for (i, name, build) in services {
            let name = name.to_ascii_uppercase();
            match apps.iter_mut().find(|a| a.name == name) {
                Some(a) => a.services.push((i, build.clone())),
                None => apps.push(App { name, services: vec![(i, build.clone())], members: FastMap::default() }),
            }
        }
        Mirror { status: FastMap::default(), counts: [0; 5], apps }
    }

    /// The reconcile hash code of what is kept (`Applications.getReconcileHashCode`).
    pub fn hash_code(&self) -> String {
        let mut out = String::new();
        for st in Status::ALL {
            let n = self.counts.get(st.index()).copied().unwrap_or(0);
            if n > 0 {
                out.push_str(st.name());
                out.push('_');
                out.push_str(&n.to_string());
                out.push('_');
            }
        }
        out
    }

    /// Instances kept, of every application.
    pub fn len(&self) -> usize {
        self.status.len()
    }

    pub fn is_empty(&self) -> bool {
        self.status.is_empty()
    }

    /// The membership of every configured service, as (service index, list).
    pub fn lists(&self) -> Vec<(usize, Parsed)> {
        let mut out = Vec::new();
        for app in &self.apps {
            for (k, (svc, _)) in app.services.iter().enumerate() {
                let mut batch = Batch::default();
                for recs in app.members.values() {
                    if let Some(r) = recs.get(k) {
                        batch.add(r.clone());
                    }
                }
                out.push((*svc, batch.finish()));
            }
        }
        out.sort_by_key(|(svc, _)| *svc);
        out
    }

    /// Reads the records of a reply (`/apps` or `/apps/delta`) and its hash code, without changing
    /// anything. `full`: every record counts as put, whatever its `actionType` (a full reply is the
    /// registry as it is, as the client stores it).
    fn read(&self, body: &[u8], full: bool) -> Result<(Vec<Change>, Option<String>), RegistryError> {
        let mut keys: Vec<&str> = Vec::new();
        for app in &self.apps {
            for (_, b) in &app.services {
                for k in meta_keys(b) {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
        }
        let mut changes = Vec::new();
        let apps = &self.apps;
        let mut each = |i: &Inst<'_>, m: &Meta<'_>| {
            changes.push(change(apps, i, m, full));
            Rec::Ignored
        };
        let mut records = Records::new(&keys, "metadata", &mut each as EachInst<'_, '_>);
        let mut top = Top { records: &mut records, app: None, apps: None, hash: None };
        read_with(body, With::<IgnoredAny, _>::new(&mut top))?;
        // `/apps` and `/apps/delta` answer `applications`; an `application` is no registry
        let Some((_, ok)) = top.apps else {
            return Err(RegistryError::Parse("missing \"applications\"".into()));
        };
        ok.map_err(|m| RegistryError::Parse(m.into()))?;
        let hash = top.hash;
        drop(records);
        Ok((changes, hash))
    }

    /// A full reply (`GET {prefix}/apps`) replaces everything kept. Nothing changes when it is
    /// not readable.
    pub fn replace(&mut self, body: &[u8]) -> Result<(), RegistryError> {
        let (changes, _) = self.read(body, true)?;
        self.status.clear();
        self.counts = [0; 5];
        for app in &mut self.apps {
            app.members.clear();
        }
        self.apply(changes);
        Ok(())
    }

    /// A delta reply (`GET {prefix}/apps/delta`) applied: returns the server's hash code and
    /// this mirror's after the delta (equal: in line). Nothing changes when it is not readable.
    pub fn apply_delta(&mut self, body: &[u8]) -> Result<(Option<String>, String), RegistryError> {
        let (changes, theirs) = self.read(body, false)?;
        self.apply(changes);
        Ok((theirs, self.hash_code()))
    }

    fn apply(&mut self, changes: Vec<Change>) {
        for c in changes {
            match c.action {
                Action::Put => {
                    if let Some(old) = self.status.insert(c.key, c.status) {
                        self.count(old, false);
                    }
                    self.count(c.status, true);
                    if let Some((a, id, recs)) = c.member {
                        if let Some(app) = self.apps.get_mut(a) {
                            app.members.insert(id, recs);
                        }
                    }
                }
                Action::Deleted => {
                    if let Some(old) = self.status.remove(&c.key) {
                        self.count(old, false);
                    }
                    if let Some((a, id, _)) = c.member {
                        if let Some(app) = self.apps.get_mut(a) {
                            app.members.remove(&id);
                        }
                    }
                }
                Action::Other => {}
            }
        }
    }

    fn count(&mut self, st: Status, up: bool) {
        if let Some(n) = self.counts.get_mut(st.index()) {
            *n = if up { n.saturating_add(1) } else { n.saturating_sub(1) };
        }
    }
}

/// What a record says (see the module doc for the id, the application and the status).
fn change(apps: &[App], i: &Inst<'_>, m: &Meta<'_>, full: bool) -> Change {
    let app = i.app.as_str().unwrap_or_default();
    let id = i.instance_id.as_str().filter(|s| !s.is_empty()).or(i.host_name.as_str()).unwrap_or_default();
    let action = match i.action_type.as_str() {
        _ if full => Action::Put,
        Some("ADDED" | "MODIFIED") => Action::Put,
        Some("DELETED") => Action::Deleted,
        _ => Action::Other,
    };
    let member = apps.iter().position(|a| a.name.eq_ignore_ascii_case(app)).and_then(|k| {
        let a = apps.get(k)?;
        let recs = match action {
            Action::Put => a.services.iter().map(|(_, b)| instance(i, m, b)).collect(),
            _ => Vec::new(),
        };
        Some((k, id.to_string(), recs))
    });
    Change { key: key(app, id), status: Status::of(&i.status), action, member }
}

/// Which request a fetch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// `GET {prefix}/apps`.
    Full,
    /// `GET {prefix}/apps/delta`.
    Delta,
}

impl Fetch {
    /// The request, with `Accept: application/json`.
    pub fn request(self, ep: &Endpoint, prefix: &str) -> HttpRequest {
        let path = match self {
            Fetch::Full => format!("{prefix}/apps"),
            Fetch::Delta => format!("{prefix}/apps/delta"),
        };
        get_request(ep, path)
    }
}

/// What a fetch's reply did.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// The mirror is in line with the server (a full reply, or a delta whose hash agrees): the
    /// configured services' lists are [`Mirror::lists`].
    Synced,
    /// A delta whose hash disagrees (the server's, ours): a full fetch follows at once.
    Mismatch { theirs: Option<String>, ours: String },
    /// The reply is unusable: nothing changed; the membership stays as it is. `full_next`: the
    /// next fetch is a full one (a delta the server refused or that could not be read), at once
    /// when `at_once`.
    Failed { error: RegistryError, full_next: bool, at_once: bool },
}

/// One registry's fetches: the mirror, and when the next request is due.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub mirror: Mirror,
    /// The mirror is in line as of a fetch sent at this time (`None`: a full fetch is due).
    synced_at: Option<i64>,
    /// The request in flight, and when it was sent.
    in_flight: Option<(Fetch, i64)>,
    next_due_ms: i64,
    /// The fetch interval (ms): `registry_fetch_interval_ms`.
    pub interval_ms: u64,
}

impl Fetcher {
    pub fn new(mirror: Mirror, interval_ms: u64) -> Fetcher {
        Fetcher { mirror, synced_at: None, in_flight: None, next_due_ms: 0, interval_ms }
    }

    /// The fetch due at `now_ms`, if any; marks it in flight. A full one first, after the hash
    /// disagreed, after a delta that could not be used, and when the last sync is older than
    /// [`DELTA_HORIZON_MS`]; a delta otherwise.
    pub fn due(&mut self, now_ms: i64) -> Option<Fetch> {
        if self.in_flight.is_some() || now_ms < self.next_due_ms {
            return None;
        }
        let fresh = self.synced_at.is_some_and(|t| now_ms.saturating_sub(t) <= DELTA_HORIZON_MS);
        let f = if fresh { Fetch::Delta } else { Fetch::Full };
        self.in_flight = Some((f, now_ms));
        Some(f)
    }

    /// The poller lease moved: forget what is in flight, fetch in full at once (another VM may
    /// have fetched meanwhile; this mirror may be old).
    pub fn reset(&mut self) {
        self.in_flight = None;
        self.next_due_ms = 0;
        self.synced_at = None;
    }

    /// The request could not be dispatched: tried again after `retry_ms`.
    pub fn dispatch_failed(&mut self, now_ms: i64, retry_ms: i64) {
        self.in_flight = None;
        self.next_due_ms = now_ms.saturating_add(retry_ms);
    }

    /// The next fetch goes out at `at_ms` at the latest (a list was held back: a fetch confirms
    /// it sooner).
    pub fn expedite(&mut self, at_ms: i64) {
        self.next_due_ms = self.next_due_ms.min(at_ms);
    }

    /// The reply to `fetch`; `interval_ms`: the next (jittered) interval.
    pub fn on_reply(
        &mut self,
        fetch: Fetch,
        resp: &HttpResponse<'_>,
        ep: &Endpoint,
        now_ms: i64,
        interval_ms: i64,
    ) -> Fetched {
        let sent = match self.in_flight.take() {
            Some((f, t)) if f == fetch => t,
            _ => now_ms,
        };
        self.next_due_ms = now_ms.saturating_add(interval_ms);
        let failed = |error, full_next, at_once| Fetched::Failed { error, full_next, at_once };
        let out = match fetch {
            Fetch::Full => match check_common(resp, ep, &[]).and_then(|()| self.mirror.replace(resp.body)) {
                Ok(()) => Fetched::Synced,
                Err(e) => failed(e, true, false),
            },
            Fetch::Delta => match check_common(resp, ep, &[]) {
                // the server's rule: no delta, a full fetch (getAndUpdateDelta)
                Err(e @ RegistryError::Status(..)) => failed(e, true, true),
                // it did not answer: the delta's 3 minutes still hold what changed
                Err(e) => failed(e, false, false),
                Ok(()) => match self.mirror.apply_delta(resp.body) {
                    Ok((theirs, ours)) if theirs.as_deref() == Some(ours.as_str()) => Fetched::Synced,
                    Ok((theirs, ours)) => Fetched::Mismatch { theirs, ours },
                    Err(e) => failed(e, true, true),
                },
            },
        };
        match &out {
            Fetched::Synced => self.synced_at = Some(sent),
            Fetched::Mismatch { .. } | Fetched::Failed { full_next: true, .. } => {
                self.synced_at = None;
                if matches!(out, Fetched::Mismatch { .. } | Fetched::Failed { at_once: true, .. }) {
                    self.next_due_ms = now_ms;
                }
            }
            Fetched::Failed { .. } => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::State;

    const FULL: &[u8] = include_bytes!("../../../../shared/fixtures/registry/eureka-apps-full-steeltoe.json");
    const DELTA: &[u8] = include_bytes!("../../../../shared/fixtures/registry/eureka-apps-delta-steeltoe.json");
    const CAPTURED: &[u8] = include_bytes!("../../../../shared/fixtures/registry/eureka-apps-captured.json");

    const NOW: i64 = 1_800_000_000_000;

    /// One instance record of application `app`.
    fn rec(app: &str, id: &str, ip: &str, status: &str, action: &str) -> String {
        format!(
            r#"{{"instanceId":"{id}","hostName":"h-{id}","app":"{app}","ipAddr":"{ip}","status":"{status}","port":{{"$":8080,"@enabled":"true"}},"actionType":"{action}"}}"#
        )
    }

    /// An `/apps` or `/apps/delta` body: applications by name with their records.
    fn body(hash: &str, apps: &[(&str, Vec<String>)]) -> Vec<u8> {
        let apps: Vec<String> =
            apps.iter().map(|(n, recs)| format!(r#"{{"name":"{n}","instance":[{}]}}"#, recs.join(","))).collect();
        format!(
            r#"{{"applications":{{"versions__delta":"1","apps__hashcode":"{hash}","application":[{}]}}}}"#,
            apps.join(",")
        )
        .into_bytes()
    }

    /// A mirror for service 0 on `FOO` and service 1 on `users` (lower case, as configured).
    fn mirror() -> Mirror {
        let b = BuildOptions::default();
        Mirror::new([(0, "FOO", &b), (1, "users", &b)])
    }

    fn addrs(m: &Mirror, svc: usize) -> Vec<(String, State)> {
        let lists = m.lists();
        let (_, p) = lists.iter().find(|(s, _)| *s == svc).unwrap();
        p.instances.iter().map(|i| (i.addr.clone(), i.state)).collect()
    }

    fn ep() -> Endpoint {
        Endpoint { authority: "eureka:8761".into(), timeout_ms: 2000, max_body_bytes: 1 << 20 }
    }

    fn ok(body: &[u8]) -> HttpResponse<'_> {
        HttpResponse { status: Some(200), headers: &[], body, body_size: body.len() }
    }

    /// Captured from the real server (`tests/fixtures/registry/eureka-apps-delta-captured.txt`):
    /// the full registry, the delta that followed four changes (an `OUT_OF_SERVICE`, a cancel, a
    /// registration, a `STARTING` instance registered again as `UP` in an application no service
    /// uses), and the full registry after them.
    #[test]
    fn captured_delta_brings_the_registry_in_line() {
        const BEFORE: &[u8] = include_bytes!("../../../tests/fixtures/registry/eureka-apps-before-captured.json");
        const DELTA: &[u8] = include_bytes!("../../../tests/fixtures/registry/eureka-apps-delta-captured.json");
        const AFTER: &[u8] = include_bytes!("../../../tests/fixtures/registry/eureka-apps-after-captured.json");
        let b = BuildOptions::default();
        let new = || Mirror::new([(0, "ORDERS", &b), (1, "USERS", &b)]);
        let mut m = new();
        m.replace(BEFORE).unwrap();
        assert_eq!(m.hash_code(), "STARTING_1_UP_3_", "the server's own apps__hashcode of that reply");
        assert_eq!(m.len(), 4);
        let serving = |a: &str| (a.to_string(), State::Serving);
        assert_eq!(addrs(&m, 0), [serving("10.1.0.1:8080"), serving("10.1.0.2:8080")]);
        assert_eq!(addrs(&m, 1), [serving("10.2.0.1:8080")]);
        let (theirs, ours) = m.apply_delta(DELTA).unwrap();
        assert_eq!((theirs.as_deref(), ours.as_str()), (Some("OUT_OF_SERVICE_1_UP_3_"), "OUT_OF_SERVICE_1_UP_3_"));
        assert_eq!(
            addrs(&m, 0),
            [serving("10.1.0.1:8080"), ("10.1.0.2:8080".to_string(), State::Draining), serving("10.1.0.3:8080")]
        );
        assert!(addrs(&m, 1).is_empty(), "the cancel");
        // what the delta built is what the full registry after it says
        let mut after = new();
        after.replace(AFTER).unwrap();
        assert_eq!((after.hash_code(), after.lists(), after.len()), (m.hash_code(), m.lists(), m.len()));
        // the start time the instance registered is read through the delta as through a full reply
        let lists = m.lists();
        let first = lists.first().and_then(|(_, p)| p.instances.first()).unwrap();
        assert_eq!((first.start_ms, first.warmup_ms), (Some(1_800_000_000_000), 60_000));
    }

    #[test]
    fn hash_code_as_eureka_writes_it() {
        let mut m = mirror();
        assert_eq!(m.hash_code(), "");
        let b = body(
            "",
            &[
                (
                    "FOO",
                    vec![
                        rec("FOO", "a", "10.0.0.1", "UP", "ADDED"),
                        rec("FOO", "b", "10.0.0.2", "OUT_OF_SERVICE", "ADDED"),
                    ],
                ),
                (
                    "BAR",
                    vec![
                        rec("BAR", "c", "10.0.0.3", "UP", "ADDED"),
                        rec("BAR", "d", "10.0.0.4", "down", "ADDED"),
                        rec("BAR", "e", "10.0.0.5", "STARTING", "ADDED"),
                        rec("BAR", "f", "10.0.0.6", "WHATEVER", "ADDED"),
                    ],
                ),
            ],
        );
        m.replace(&b).unwrap();
        // status names in order, each with its count (Applications.getReconcileHashCode)
        assert_eq!(m.hash_code(), "DOWN_1_OUT_OF_SERVICE_1_STARTING_1_UNKNOWN_1_UP_2_");
        assert_eq!(m.len(), 6);
        // a record without status is UP (the codec's builder default)
        let b = br#"{"applications":{"application":{"name":"X","instance":{"instanceId":"x","app":"X","ipAddr":"10.0.0.9","port":80}}}}"#;
        m.replace(b).unwrap();
        assert_eq!(m.hash_code(), "UP_1_");
    }

    #[test]
    fn fixtures_full_replies_agree_with_their_own_hash() {
        for (full, want) in [(FULL, "UP_1_"), (CAPTURED, "UP_1_")] {
            let mut m = mirror();
            m.replace(full).unwrap();
            let (_, theirs) = m.read(full, true).unwrap();
            assert_eq!((m.hash_code().as_str(), theirs.as_deref()), (want, Some(want)));
        }
        // the Steeltoe full reply: FOO is configured, its one instance is service 0's member
        let mut m = mirror();
        m.replace(FULL).unwrap();
        assert_eq!(addrs(&m, 0), [("192.168.56.1:8080".to_string(), State::Serving)]);
        assert!(addrs(&m, 1).is_empty());
        // the captured reply holds EUREKACONSUMER only: counted, nobody's member
        let mut m = mirror();
        m.replace(CAPTURED).unwrap();
        assert_eq!((m.len(), addrs(&m, 0).len()), (1, 0));
    }

    #[test]
    fn delta_fixture_applies_and_agrees() {
        let mut f = Fetcher::new(mirror(), 30_000);
        assert_eq!(f.due(NOW), Some(Fetch::Full), "the first fetch is a full one");
        assert_eq!(f.on_reply(Fetch::Full, &ok(FULL), &ep(), NOW, 30_000), Fetched::Synced);
        assert_eq!(f.due(NOW + 29_999), None, "not before the interval");
        assert_eq!(f.due(NOW + 30_000), Some(Fetch::Delta));
        // FOO's instance MODIFIED, the same id: replaced, still one UP
        assert_eq!(f.on_reply(Fetch::Delta, &ok(DELTA), &ep(), NOW + 30_000, 30_000), Fetched::Synced);
        assert_eq!(f.mirror.hash_code(), "UP_1_");
        assert_eq!(addrs(&f.mirror, 0), [("192.168.56.1:8080".to_string(), State::Serving)]);
    }

    #[test]
    fn added_modified_deleted() {
        let mut m = mirror();
        m.replace(&body("", &[("FOO", vec![rec("FOO", "a", "10.0.0.1", "UP", "ADDED")])])).unwrap();
        // a new instance of a configured application, lower-case app name in the record
        let d = body("UP_2_", &[("USERS", vec![rec("users", "u1", "10.0.1.1", "UP", "ADDED")])]);
        assert_eq!(m.apply_delta(&d).unwrap(), (Some("UP_2_".into()), "UP_2_".into()));
        assert_eq!(addrs(&m, 1), [("10.0.1.1:8080".to_string(), State::Serving)]);
        // MODIFIED: the status moves in the membership and in the count
        let d = body(
            "OUT_OF_SERVICE_1_UP_1_",
            &[("USERS", vec![rec("USERS", "u1", "10.0.1.1", "OUT_OF_SERVICE", "MODIFIED")])],
        );
        assert_eq!(m.apply_delta(&d).unwrap().1, "OUT_OF_SERVICE_1_UP_1_");
        assert_eq!(addrs(&m, 1), [("10.0.1.1:8080".to_string(), State::Draining)]);
        // DELETED: gone from both; deleting it again changes nothing
        let d = body("UP_1_", &[("USERS", vec![rec("USERS", "u1", "10.0.1.1", "OUT_OF_SERVICE", "DELETED")])]);
        assert_eq!(m.apply_delta(&d).unwrap().1, "UP_1_");
        assert_eq!(m.apply_delta(&d).unwrap().1, "UP_1_");
        assert!(addrs(&m, 1).is_empty());
        assert_eq!(addrs(&m, 0).len(), 1);
        // cancelled and registered again in one delta (the queue's order): the last record wins
        let d = body(
            "UP_2_",
            &[("FOO", vec![rec("FOO", "b", "10.0.0.2", "UP", "DELETED"), rec("FOO", "b", "10.0.0.2", "UP", "ADDED")])],
        );
        assert_eq!(m.apply_delta(&d).unwrap().1, "UP_2_");
        assert_eq!(addrs(&m, 0).len(), 2);
        // a record without a known actionType is left alone (DiscoveryClient.updateDelta)
        let d = body("UP_2_", &[("FOO", vec![rec("FOO", "c", "10.0.0.3", "UP", "")])]);
        assert_eq!(m.apply_delta(&d).unwrap().1, "UP_2_");
        assert_eq!(addrs(&m, 0).len(), 2);
    }

    #[test]
    fn another_applications_change_moves_only_the_hash() {
        let mut m = mirror();
        let foo = rec("FOO", "a", "10.0.0.1", "UP", "ADDED");
        m.replace(&body("", &[("FOO", vec![foo]), ("OTHER", vec![rec("OTHER", "o", "10.0.9.1", "UP", "ADDED")])]))
            .unwrap();
        let before = m.lists();
        assert_eq!(m.hash_code(), "UP_2_");
        let d = body("DOWN_1_UP_1_", &[("OTHER", vec![rec("OTHER", "o", "10.0.9.1", "DOWN", "MODIFIED")])]);
        assert_eq!(m.apply_delta(&d).unwrap(), (Some("DOWN_1_UP_1_".into()), "DOWN_1_UP_1_".into()));
        assert_eq!(m.lists(), before, "no configured list changed");
        // its instance leaves: counted out, still nobody's member
        let d = body("UP_1_", &[("OTHER", vec![rec("OTHER", "o", "10.0.9.1", "DOWN", "DELETED")])]);
        assert_eq!(m.apply_delta(&d).unwrap().1, "UP_1_");
        assert_eq!((m.len(), m.lists()), (1, before));
    }

    #[test]
    fn hash_disagreement_fetches_in_full_at_once() {
        let mut f = Fetcher::new(mirror(), 30_000);
        f.due(NOW);
        let full = body("", &[("FOO", vec![rec("FOO", "a", "10.0.0.1", "UP", "ADDED")])]);
        assert_eq!(f.on_reply(Fetch::Full, &ok(&full), &ep(), NOW, 30_000), Fetched::Synced);
        f.due(NOW + 30_000);
        // the server holds an instance this mirror never saw (a change older than the delta)
        let d = body("UP_3_", &[("FOO", vec![rec("FOO", "b", "10.0.0.2", "UP", "ADDED")])]);
        let out = f.on_reply(Fetch::Delta, &ok(&d), &ep(), NOW + 30_000, 30_000);
        assert_eq!(out, Fetched::Mismatch { theirs: Some("UP_3_".into()), ours: "UP_2_".into() });
        assert_eq!(f.due(NOW + 30_000), Some(Fetch::Full), "a full fetch at once");
        let full = body(
            "UP_3_",
            &[(
                "FOO",
                vec![
                    rec("FOO", "a", "10.0.0.1", "UP", "ADDED"),
                    rec("FOO", "b", "10.0.0.2", "UP", "ADDED"),
                    rec("FOO", "c", "10.0.0.3", "UP", "ADDED"),
                ],
            )],
        );
        assert_eq!(f.on_reply(Fetch::Full, &ok(&full), &ep(), NOW + 30_100, 30_000), Fetched::Synced);
        assert_eq!(addrs(&f.mirror, 0).len(), 3);
        assert_eq!(f.due(NOW + 60_100), Some(Fetch::Delta));
        // a delta without a hash code disagrees (Eureka's client compares it with null)
        let d = br#"{"applications":{"application":[]}}"#;
        assert!(matches!(
            f.on_reply(Fetch::Delta, &ok(d), &ep(), NOW + 60_100, 30_000),
            Fetched::Mismatch { theirs: None, .. }
        ));
    }

    #[test]
    fn empty_delta_changes_nothing() {
        let mut f = Fetcher::new(mirror(), 30_000);
        f.due(NOW);
        let full = body("", &[("FOO", vec![rec("FOO", "a", "10.0.0.1", "UP", "ADDED")])]);
        f.on_reply(Fetch::Full, &ok(&full), &ep(), NOW, 30_000);
        let before = f.mirror.lists();
        for (k, d) in [
            br#"{"applications":{"versions__delta":"5","apps__hashcode":"UP_1_","application":[]}}"#.as_slice(),
            br#"{"applications":{"versions__delta":"5","apps__hashcode":"UP_1_"}}"#.as_slice(),
        ]
        .into_iter()
        .enumerate()
        {
            let t = NOW + 30_000 * (k as i64 + 1);
            assert_eq!(f.due(t), Some(Fetch::Delta));
            assert_eq!(f.on_reply(Fetch::Delta, &ok(d), &ep(), t, 30_000), Fetched::Synced);
            assert_eq!(f.mirror.lists(), before);
        }
    }

    #[test]
    fn unusable_replies_change_nothing() {
        let mut f = Fetcher::new(mirror(), 30_000);
        f.due(NOW);
        let full = body("", &[("FOO", vec![rec("FOO", "a", "10.0.0.1", "UP", "ADDED")])]);
        f.on_reply(Fetch::Full, &ok(&full), &ep(), NOW, 30_000);
        let before = (f.mirror.lists(), f.mirror.hash_code());
        let mut t = NOW;
        // a garbage delta: nothing applied, a full fetch at once
        for garbage in [
            b"<applications/>".as_slice(),
            b"{\"applications\":{\"application\":[".as_slice(),
            br#"{"application":{"name":"FOO"}}"#.as_slice(),
            br#"{"applications":{"application":"FOO"}}"#.as_slice(),
            br#"{"applications":[]}"#.as_slice(),
        ] {
            t += 30_000;
            f.synced_at = Some(t);
            f.next_due_ms = t;
            assert_eq!(f.due(t), Some(Fetch::Delta));
            let out = f.on_reply(Fetch::Delta, &ok(garbage), &ep(), t, 30_000);
            assert!(
                matches!(out, Fetched::Failed { error: RegistryError::Parse(_), full_next: true, at_once: true }),
                "{out:?}"
            );
            assert_eq!((f.mirror.lists(), f.mirror.hash_code()), before);
            assert_eq!(f.due(t), Some(Fetch::Full));
            // the full reply is garbage too: still nothing, tried again after the interval
            let out = f.on_reply(Fetch::Full, &ok(garbage), &ep(), t, 30_000);
            assert!(matches!(out, Fetched::Failed { full_next: true, at_once: false, .. }), "{out:?}");
            assert_eq!((f.mirror.lists(), f.mirror.hash_code()), before);
            assert_eq!(f.due(t + 29_999), None);
        }
        // no answer, too large: the delta again after the interval (its 3 minutes still hold
        // what changed)
        t += 30_000;
        f.synced_at = Some(t);
        f.next_due_ms = t;
        f.due(t);
        let none = HttpResponse { status: None, headers: &[], body: b"", body_size: 0 };
        assert!(matches!(f.on_reply(Fetch::Delta, &none, &ep(), t, 30_000), Fetched::Failed { full_next: false, .. }));
        assert_eq!(f.due(t + 30_000), Some(Fetch::Delta));
        let big = vec![b' '; 2 << 20];
        let out = f.on_reply(Fetch::Delta, &ok(&big), &ep(), t + 30_000, 30_000);
        assert!(matches!(out, Fetched::Failed { error: RegistryError::TooLarge { .. }, full_next: false, .. }));
        // a delta the server refuses (403 with disableDelta): a full fetch at once
        f.due(t + 60_000);
        let refused = HttpResponse { status: Some(403), headers: &[], body: b"", body_size: 0 };
        assert!(matches!(
            f.on_reply(Fetch::Delta, &refused, &ep(), t + 60_000, 30_000),
            Fetched::Failed { at_once: true, .. }
        ));
        assert_eq!(f.due(t + 60_000), Some(Fetch::Full));
        assert_eq!((f.mirror.lists(), f.mirror.hash_code()), before);
    }

    #[test]
    fn an_old_sync_is_refreshed_in_full() {
        let mut f = Fetcher::new(mirror(), 30_000);
        f.due(NOW);
        f.on_reply(Fetch::Full, &ok(FULL), &ep(), NOW, 30_000);
        // deltas fail for longer than the server keeps a change: the next is a full fetch
        let none = HttpResponse { status: None, headers: &[], body: b"", body_size: 0 };
        let mut t = NOW;
        for _ in 0..4 {
            t += 30_000;
            assert_eq!(f.due(t), Some(Fetch::Delta), "at {}", t - NOW);
            f.on_reply(Fetch::Delta, &none, &ep(), t, 30_000);
        }
        assert_eq!(f.due(t + 30_000), Some(Fetch::Full));
        // the lease moved: a full fetch at once
        f.reset();
        assert_eq!(f.due(t + 30_000), Some(Fetch::Full));
    }

    #[test]
    fn requests() {
        let r = Fetch::Delta.request(&ep(), "/eureka");
        assert_eq!((r.header(":path"), r.header("accept")), (Some("/eureka/apps/delta"), Some("application/json")));
        assert_eq!(Fetch::Full.request(&ep(), "").header(":path"), Some("/apps"));
    }

    #[test]
    fn two_services_of_one_application_read_it_each_their_way() {
        let a = BuildOptions::default();
        let b = BuildOptions { default_weight: 7, ..BuildOptions::default() };
        let mut m = Mirror::new([(3, "foo", &a), (5, "FOO", &b)]);
        m.replace(&body("", &[("FOO", vec![rec("FOO", "a", "10.0.0.1", "UP", "ADDED")])])).unwrap();
        let lists = m.lists();
        let w: Vec<(usize, i32)> = lists.iter().map(|(s, p)| (*s, p.instances[0].weight)).collect();
        assert_eq!(w, [(3, 100), (5, 7)]);
    }
}
