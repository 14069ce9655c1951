//! The test harness of the VM's paths: a fake host that counts every call crossing the VM
//! boundary, and a world of one VM over fake shared data.

use std::cell::{Cell, RefCell};

use super::{Dispatch, Exchange, Flow, Host, Purpose, Vm};
use crate::clock::Rng;
use crate::config;
use crate::drain::LocalReply;
use crate::headers::Headers;
use crate::instance::State;
use crate::poller::RefreshOutcome;
use crate::registry::HttpResponse;
use crate::store::{FakeShared, Shared};

pub(super) const NOW: i64 = 1_800_000_000_000;
pub(super) const CFG: &[u8] =
    br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
    "services":[{"name":"demo","registry":"s","match_clusters":["demo"]}],"drain":{"pin_header":"x-pin"}}"#;

/// A host for one exchange, counting every call that would cross the VM boundary.
pub(super) struct FakeHost<'a> {
    pub(super) shared: &'a FakeShared,
    pub(super) now: i64,
    pub(super) req: RefCell<Vec<(String, String)>>,
    pub(super) resp: RefCell<Vec<(String, String)>>,
    pub(super) props: Vec<(&'static str, String)>,
    pub(super) calls: Cell<u64>,
    /// How often the route cache was cleared.
    pub(super) route_cleared: Cell<u64>,
}

impl FakeHost<'_> {
    fn count(&self) {
        self.calls.set(self.calls.get() + 1);
    }
    /// Host calls so far, shared-data calls included.
    pub(super) fn total(&self) -> u64 {
        self.calls.get() + self.shared.calls.get()
    }
}

impl Shared for FakeHost<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.shared.set(key, value, cas)
    }
}

impl Host for FakeHost<'_> {
    fn now_ms(&self) -> i64 {
        // the glue answers from the tick's clock: no host call
        self.now
    }
    fn clock_ms(&self) -> i64 {
        // the host's clock read now: a host call
        self.count();
        self.now
    }
    fn request_headers(&self) -> Headers {
        self.count();
        Headers::from_pairs(&self.req.borrow())
    }
    fn set_request_header(&self, name: &str, value: Option<&str>) -> bool {
        self.count();
        set_header(&self.req, name, value)
    }
    fn response_headers(&self) -> Headers {
        self.count();
        Headers::from_pairs(&self.resp.borrow())
    }
    fn set_response_header(&self, name: &str, value: Option<&str>) -> bool {
        self.count();
        set_header(&self.resp, name, value)
    }
    fn property(&self, path: &[&str]) -> Option<String> {
        self.count();
        let key = path.join(".");
        self.props.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }
    fn clear_route_cache(&self) -> bool {
        self.count();
        self.route_cleared.set(self.route_cleared.get() + 1);
        true
    }
}

fn set_header(map: &RefCell<Vec<(String, String)>>, name: &str, value: Option<&str>) -> bool {
    let mut m = map.borrow_mut();
    m.retain(|(k, _)| k != name);
    if let Some(v) = value {
        m.push((name.into(), v.into()));
    }
    true
}

pub(super) struct World {
    pub(super) vm: Vm,
    pub(super) shared: FakeShared,
}

pub(super) fn host<'a>(shared: &'a FakeShared, now: i64, req: &[(&str, &str)], cluster: Option<&str>) -> FakeHost<'a> {
    let mut props = vec![("source.address", "127.0.0.1:40000".to_string())];
    if let Some(c) = cluster {
        props.push(("xds.cluster_name", c.to_string()));
    }
    let req = RefCell::new(req.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    FakeHost { shared, now, req, resp: RefCell::default(), props, calls: Cell::new(0), route_cleared: Cell::new(0) }
}

impl World {
    pub(super) fn new(cfg: &[u8]) -> Self {
        let mut vm = Vm::new(config::parse(cfg).unwrap(), cfg, 1, Rng::new(1));
        let shared = FakeShared::default();
        vm.on_start(&shared);
        World { vm, shared }
    }
    pub(super) fn refresh(&mut self, body: &str, now: i64) -> RefreshOutcome {
        let due: Vec<Dispatch> = self
            .vm
            .on_tick(&self.shared, now)
            .into_iter()
            .filter(|d| matches!(d.purpose, Purpose::Registry(_)))
            .collect();
        assert_eq!(due.len(), 1, "one request per interval");
        assert_eq!(due[0].request.header(":path"), Some("/demo"));
        self.vm.dispatched(7, &due[0]);
        let h = [(":status".to_string(), "200".to_string())];
        let resp = HttpResponse { status: Some(200), headers: &h, body: body.as_bytes(), body_size: body.len() };
        self.vm.on_call_reply(&self.shared, 7, &resp, now).unwrap().1
    }
    /// Routes a request to `cluster`; the routing header's value, or the local reply.
    pub(super) fn route(&mut self, cluster: &str, pin: Option<&str>, now: i64) -> Result<String, LocalReply> {
        let mut req = vec![(":path", "/x")];
        if let Some(p) = pin {
            req.push(("x-pin", p));
        }
        let h = host(&self.shared, now, &req, Some(cluster));
        let mut ex = Exchange::default();
        match self.vm.on_request(&h, &mut ex) {
            Flow::Reply(r) => Err(r),
            Flow::Continue => Ok(h
                .req
                .borrow()
                .iter()
                .find(|(k, _)| k == "x-lossless-upstream")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()),
        }
    }
    pub(super) fn members(&self) -> &[crate::instance::Instance] {
        &self.vm.services[0].view.members
    }
}

pub(super) fn reason(r: &LocalReply) -> &str {
    r.headers.iter().find(|(k, _)| k == "x-lossless-drain").map(|(_, v)| v.as_str()).unwrap_or("")
}

pub(super) const THREE: &str =
    r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"},{"address":"10.0.0.3:80"}]}"#;

pub(super) fn state_of(w: &World, addr: &str) -> State {
    crate::instance::find(w.members(), addr).unwrap().state
}
