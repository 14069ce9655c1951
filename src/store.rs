//! Envoy shared data: the process-wide key/value store every worker VM of one Envoy sees, its key
//! names, the poller lease, and the one compare-and-swap loop every cross-VM write goes through.
//!
//! Envoy's `SharedData::set` (source/extensions/common/wasm/context.cc and proxy-wasm-cpp-host's
//! `shared_data.cc`) checks `cas` only when the key exists and `cas` is not 0: a set on an absent
//! key always succeeds, whatever `cas` says. So "create if absent" is not atomic. Two rules follow:
//! a key is created with [`create_if_absent`] (a set with a CAS value no live key carries, so a
//! racing creator fails instead of overwriting), and every later write is a CAS on a value read
//! before ([`update_cas`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Process-wide key/value store with compare-and-swap (Envoy shared data).
pub trait Shared {
    /// The value and its CAS token (`None` when absent).
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Sets the value; with `cas` only if the stored token still matches (Envoy: a `cas` on an
    /// absent key is not checked). `false` on mismatch or a host error.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// An in-memory [`Shared`] with Envoy's CAS semantics (including "an absent key is not checked"),
/// for tests and benchmarks.
#[derive(Debug, Default)]
pub struct FakeShared {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    /// Number of `get` and `set` calls, for host-call counts.
    pub calls: Cell<u64>,
}

impl Shared for FakeShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.calls.set(self.calls.get() + 1);
        match self.map.borrow().get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.calls.set(self.calls.get() + 1);
        let mut m = self.map.borrow_mut();
        if let (Some(c), Some((_, cur))) = (cas.filter(|c| *c != 0), m.get(key)) {
            if *cur != c {
                return false;
            }
        }
        let n = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(n);
        m.insert(key.to_string(), (value.to_vec(), n));
        true
    }
}

/// The CAS value [`create_if_absent`] sends. Envoy numbers CAS values from 1 upwards in one
/// process-wide counter; a key holding exactly this one would need four billion writes first.
pub const CREATE_CAS: u32 = u32::MAX;

/// Creates `key` with `initial` unless it exists. Safe against a racing creator: a key that
/// appeared since the read is left alone (its CAS value is not [`CREATE_CAS`]).
pub fn create_if_absent(shared: &dyn Shared, key: &str, initial: &[u8]) {
    if shared.get(key).1.is_none() {
        shared.set(key, initial, Some(CREATE_CAS));
    }
}

/// Reads `key`, lets `edit` change the decoded value, and writes it back only if nobody wrote in
/// between; retried a few times under contention. `edit` returns `false` for "nothing to change"
/// (nothing is written). Returns `true` when a change was written. The key must exist (created at
/// start with [`create_if_absent`]): an absent key is created here the same way, then edited.
pub fn update_cas<T>(
    shared: &dyn Shared,
    key: &str,
    decode: impl Fn(&[u8]) -> T,
    encode: impl Fn(&T) -> Vec<u8>,
    mut edit: impl FnMut(&mut T) -> bool,
) -> bool {
    for _ in 0..8 {
        let (bytes, cas) = shared.get(key);
        let Some(cas) = cas else {
            create_if_absent(shared, key, b"");
            continue;
        };
        let mut value = decode(bytes.as_deref().unwrap_or_default());
        if !edit(&mut value) {
            return false;
        }
        if shared.set(key, &encode(&value), Some(cas)) {
            return true;
        }
    }
    false
}

/// FNV-1a (64 bits) of `bytes`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Shared-data key names, prefixed per configuration so that two filter configurations in one
/// Envoy never read each other's state.
///
/// One thing crosses configurations: the lineage key of each service (`lossless/lineage/<hash>`,
/// the hash of what defines the service's membership: the top-level `mode` and `inbound`, the
/// service's own object and its registry's, in the configuration's JSON with keys sorted). The
/// configuration that publishes the service writes its own prefix there, so that a later
/// configuration of the same Envoy process (an LDS update that changed anything else) finds the
/// membership and marks to start from ([`adopt`]). Shared data is the process' own
/// (proxy-wasm-cpp-host `getGlobalSharedData()`): nothing reaches a new process after a hot
/// restart.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// The generation's key, read on every request: built once.
    gen: String,
    /// Per service (configuration order): its lineage key; empty when the configuration's JSON
    /// could not be read again (nothing is carried then).
    lineage: Vec<String>,
}

impl Keys {
    pub fn new(config_bytes: &[u8]) -> Self {
        let prefix = format!("lossless/{:016x}/", fnv1a(config_bytes));
        Keys { gen: format!("{prefix}gen"), lineage: lineage_keys(config_bytes), prefix }
    }

    /// The keys of the configuration whose prefix is `prefix` (as a lineage key holds it).
    fn with_prefix(prefix: &str) -> Self {
        Keys { gen: format!("{prefix}gen"), prefix: prefix.to_string(), lineage: Vec::new() }
    }

    /// This configuration's key prefix (`lossless/<16 hex digits>/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Service `svc`'s lineage key (see [`Keys`]), if known.
    pub fn lineage(&self, svc: usize) -> Option<&str> {
        self.lineage.get(svc).map(String::as_str)
    }
    /// The poller lease: `vm_id|expiry_ms`.
    pub fn lease(&self) -> String {
        format!("{}lease", self.prefix)
    }
    /// Bumped after every write that changes what VMs route by; read on every request.
    pub fn gen(&self) -> &str {
        &self.gen
    }
    /// A service's published [`crate::membership::Snapshot`].
    pub fn service(&self, name: &str) -> String {
        format!("{}svc/{}", self.prefix, name)
    }
    /// The [`crate::marks::Marks`] table.
    pub fn marks(&self) -> String {
        format!("{}marks", self.prefix)
    }
    /// Inbound: `1` while the local drain endpoint asked for a drain.
    pub fn self_drain(&self) -> String {
        format!("{}selfdrain", self.prefix)
    }

    /// Inbound with `registration`: the registration's phase and progress
    /// ([`crate::registration::Online::encode`]).
    pub fn online(&self) -> String {
        format!("{}online", self.prefix)
    }
    /// Inbound with `admission`: the shared [`crate::admission::Bucket`].
    pub fn admission(&self) -> String {
        format!("{}admission", self.prefix)
    }

    /// Transparent mode: the process-wide pick estimate of a corrected service, one slot per VM
    /// ([`crate::transparent::estimate::Slots`]).
    pub fn picks(&self, service: &str) -> String {
        format!("{}picks-by-vm/{}", self.prefix, service)
    }

    /// Transparent mode: the departed addresses of a corrected service
    /// ([`crate::transparent::Departed`]), written by the poller VM.
    pub fn departed(&self, service: &str) -> String {
        format!("{}departed/{}", self.prefix, service)
    }

    /// Creates the keys that are edited with CAS later, so no write ever meets an absent key.
    pub fn create_all(&self, shared: &dyn Shared) {
        create_if_absent(shared, &self.lease(), b"");
        create_if_absent(shared, &self.marks(), b"");
        create_if_absent(shared, self.gen(), b"");
    }
}

/// The lineage key of every service of the configuration `config_bytes`, in order (see [`Keys`]);
/// empty when the JSON does not read as an object with a `services` array (it was validated
/// before: that does not happen).
fn lineage_keys(config_bytes: &[u8]) -> Vec<String> {
    use serde_json::Value;
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(config_bytes) else { return Vec::new() };
    let Some(Value::Array(services)) = doc.get("services") else { return Vec::new() };
    let top = [doc.get("mode"), doc.get("inbound")];
    services
        .iter()
        .map(|s| {
            let registry = s.get("registry").and_then(Value::as_str).and_then(|r| doc.get("registries")?.get(r));
            // serde_json's maps keep their keys sorted: the same definition, the same bytes
            let identity = serde_json::to_vec(&(top, registry, s)).unwrap_or_default();
            format!("lossless/lineage/{:016x}", fnv1a(&identity))
        })
        .collect()
}

/// Records in service `svc`'s lineage key that this configuration publishes it (see [`Keys`]).
pub fn note_lineage(shared: &dyn Shared, keys: &Keys, svc: usize) {
    if let Some(key) = keys.lineage(svc) {
        if shared.get(key).0.as_deref() != Some(keys.prefix.as_bytes()) {
            shared.set(key, keys.prefix.as_bytes(), None);
        }
    }
}

/// A new configuration starts from its predecessor's state in this process: for each service
/// `names[i]` that this configuration has not published yet and whose lineage key names another
/// configuration holding a snapshot of it that decodes (`valid`), that snapshot is copied as this
/// configuration's, and the predecessor's marks (drains, ejections, failing checks, stalls) are
/// copied into this configuration's table while it is still empty. Returns how many services were
/// adopted; the generation is bumped when any was. What the predecessor learnt since is not
/// followed: from here on, this configuration refreshes on its own.
pub fn adopt(shared: &dyn Shared, keys: &Keys, names: &[&str], valid: impl Fn(&[u8]) -> bool) -> usize {
    let mut adopted = 0;
    let mut marks_from: Option<Keys> = None;
    for (i, name) in names.iter().enumerate() {
        let own = keys.service(name);
        if shared.get(&own).1.is_some() {
            continue;
        }
        let Some(lineage) = keys.lineage(i) else { continue };
        let Some(prefix) = shared.get(lineage).0.and_then(|b| String::from_utf8(b).ok()) else { continue };
        if prefix == keys.prefix || !prefix.starts_with("lossless/") || !prefix.ends_with('/') {
            continue;
        }
        let old = Keys::with_prefix(&prefix);
        let Some(bytes) = shared.get(&old.service(name)).0 else { continue };
        if !valid(&bytes) {
            continue;
        }
        create_if_absent(shared, &own, &bytes);
        adopted += 1;
        marks_from.get_or_insert(old);
    }
    if let Some(old) = marks_from {
        if let Some(bytes) = shared.get(&old.marks()).0.filter(|b| !b.is_empty()) {
            update_cas(
                shared,
                &keys.marks(),
                |b| b.to_vec(),
                |b: &Vec<u8>| b.clone(),
                |mine| {
                    if !mine.is_empty() {
                        return false;
                    }
                    mine.clone_from(&bytes);
                    true
                },
            );
        }
    }
    if adopted > 0 {
        bump_gen(shared, keys);
    }
    adopted
}

/// Bumps the generation so that every VM re-reads what changed. Only its CAS token matters: the
/// value stays empty, so the read every request makes copies nothing into the VM (the host
/// allocates no buffer for an empty value).
pub fn bump_gen(shared: &dyn Shared, keys: &Keys) {
    shared.set(keys.gen(), b"", None);
}

/// One poller per Envoy process: the VM holding an unexpired lease (`vm_id|expiry_ms`) polls; when
/// it stops renewing, another VM takes over after `ttl_ms`. Every write is a CAS on the value just
/// read, so of two VMs racing for a free or expired lease exactly one wins. Returns whether this
/// VM is the poller now.
pub fn take_poller_lease(shared: &dyn Shared, keys: &Keys, vm_id: u64, now_ms: i64, ttl_ms: i64) -> bool {
    let value = format!("{vm_id}|{}", now_ms.saturating_add(ttl_ms));
    update_cas(
        shared,
        &keys.lease(),
        |b| {
            let text = String::from_utf8_lossy(b);
            let mut parts = text.splitn(2, '|');
            let holder = parts.next().and_then(|s| s.parse::<u64>().ok());
            let expiry = parts.next().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            (holder, expiry)
        },
        |_| value.clone().into_bytes(),
        |(holder, expiry)| *holder == Some(vm_id) || *expiry <= now_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn keys() -> Keys {
        Keys::new(b"{}")
    }

    #[test]
    fn lease_has_one_holder_and_expires() {
        let keys = keys();
        let s = FakeShared::default();
        keys.create_all(&s);
        assert!(take_poller_lease(&s, &keys, 1, NOW, 3000));
        assert!(!take_poller_lease(&s, &keys, 2, NOW + 1000, 3000));
        assert!(take_poller_lease(&s, &keys, 1, NOW + 1000, 3000), "renewal");
        assert!(!take_poller_lease(&s, &keys, 2, NOW + 3999, 3000));
        assert!(take_poller_lease(&s, &keys, 2, NOW + 4001, 3000), "expired lease passes on");
        assert!(!take_poller_lease(&s, &keys, 1, NOW + 4002, 3000));
    }

    /// A service's lineage key follows what defines its membership and nothing else.
    #[test]
    fn lineage_follows_the_service_definition_only() {
        let base = r#"{"registries":{"n":{"type":"nacos","cluster":"r","authority":"a:8848"},"o":{"type":"static","cluster":"s","authority":"s","path":"/x"}},"services":[{"name":"demo","registry":"n","registry_service":"svc"},{"name":"two","registry":"o"}],"refresh_interval_ms":1000}"#;
        let lineage = |cfg: &str| Keys::new(cfg.as_bytes()).lineage(0).map(str::to_string).unwrap();
        let k = lineage(base);
        assert!(k.starts_with("lossless/lineage/"), "{k}");
        let same = [
            base.replace("\"refresh_interval_ms\":1000", "\"refresh_interval_ms\":900"),
            base.replace("\"path\":\"/x\"", "\"path\":\"/y\""), // another registry's field
            base.replace("{\"name\":\"two\",\"registry\":\"o\"}", "{\"registry\":\"o\",\"name\":\"two\"}"),
            // the same definition with its keys in another order
            base.replace(
                "{\"name\":\"demo\",\"registry\":\"n\",\"registry_service\":\"svc\"}",
                "{\"registry_service\":\"svc\",\"name\":\"demo\",\"registry\":\"n\"}",
            ),
        ];
        for cfg in &same {
            assert_ne!(cfg, base);
            assert_eq!(lineage(cfg), k, "{cfg}");
            assert_ne!(Keys::new(cfg.as_bytes()).prefix(), Keys::new(base.as_bytes()).prefix());
        }
        let other = [
            base.replace("\"registry_service\":\"svc\"", "\"registry_service\":\"svc2\""),
            base.replace("a:8848", "b:8848"),
            base.replace("\"services\"", "\"mode\":\"inbound\",\"services\""),
        ];
        for cfg in &other {
            assert_ne!(lineage(cfg), k, "{cfg}");
        }
        assert_ne!(Keys::new(base.as_bytes()).lineage(1).unwrap(), k, "each service its own");
        assert!(Keys::new(b"not json").lineage(0).is_none());
    }

    #[test]
    fn fake_store_follows_envoy_on_absent_keys() {
        let s = FakeShared::default();
        assert!(s.set("k", b"a", Some(12345)), "Envoy does not check a CAS on an absent key");
        let (_, cas) = s.get("k");
        assert!(!s.set("k", b"b", Some(cas.unwrap() + 1)));
        assert!(s.set("k", b"b", cas));
    }

    /// A store that lets another VM act between a read and the write that follows it: every
    /// interleaving of two VMs' read/write steps at the points where the real host switches
    /// threads.
    struct Interleaved<'a> {
        inner: &'a FakeShared,
        /// Runs once, right after the first `get` of `key`.
        between: RefCell<Option<Box<dyn FnOnce() + 'a>>>,
        key: String,
    }

    impl Shared for Interleaved<'_> {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            let r = self.inner.get(key);
            if key == self.key {
                if let Some(f) = self.between.borrow_mut().take() {
                    f();
                }
            }
            r
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn two_vms_racing_for_a_new_lease_elect_one() {
        // VM 1 reads, VM 2 runs a whole election in between, then VM 1 writes: with or without the
        // key created at start, exactly one of them holds the lease afterwards.
        for created in [true, false] {
            let keys = keys();
            let s = FakeShared::default();
            if created {
                keys.create_all(&s);
            }
            let k2 = keys.clone();
            let won2 = Cell::new(false);
            let racing = Interleaved {
                inner: &s,
                between: RefCell::new(Some(Box::new(|| won2.set(take_poller_lease(&s, &k2, 2, NOW, 2000))))),
                key: keys.lease(),
            };
            let won1 = take_poller_lease(&racing, &keys, 1, NOW, 2000);
            assert!(won1 != won2.get(), "created={created}: one poller, got vm1={won1} vm2={}", won2.get());
            // and the stored lease names the winner
            let holder = if won1 { 1 } else { 2 };
            assert!(take_poller_lease(&s, &keys, holder, NOW + 1, 2000));
            assert!(!take_poller_lease(&s, &keys, 3 - holder, NOW + 1, 2000));
        }
    }

    #[test]
    fn concurrent_first_writes_are_both_kept() {
        // two VMs add to a set stored under a key nobody created: neither overwrites the other
        let s = FakeShared::default();
        let dec = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let enc = |v: &String| v.clone().into_bytes();
        let racing = Interleaved {
            inner: &s,
            between: RefCell::new(Some(Box::new(|| {
                assert!(update_cas(&s, "set", dec, enc, |v| {
                    v.push('b');
                    true
                }));
            }))),
            key: "set".into(),
        };
        assert!(update_cas(&racing, "set", dec, enc, |v| {
            v.push('a');
            true
        }));
        let (v, _) = s.get("set");
        let mut v = v.unwrap();
        v.sort();
        assert_eq!(v, b"ab");
    }

    #[test]
    fn create_if_absent_never_overwrites() {
        let s = FakeShared::default();
        s.set("k", b"data", None);
        create_if_absent(&s, "k", b"");
        assert_eq!(s.get("k").0.unwrap(), b"data");
    }
}
