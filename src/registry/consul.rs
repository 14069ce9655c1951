//! Consul adapter: `GET /v1/health/service/{name}` with blocking queries.

use super::{Adapter, Call, Endpoint, HttpRequest, HttpResponse, RegistryError, Reply, ServiceQuery};
use crate::instance::BuildOptions;

#[derive(Clone)]
pub struct Consul {
    pub endpoint: Endpoint,
    pub token: Option<String>,
    /// Blocking query `wait`, seconds (0 = no blocking queries).
    pub wait_s: u64,
    pub build: BuildOptions,
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consul").field("endpoint", &self.endpoint).field("token", &self.token.as_ref().map(|_| "***")).field("wait_s", &self.wait_s).finish()
    }
}

impl Consul {
    pub fn new(endpoint: Endpoint, token: Option<String>, wait_s: u64, build: BuildOptions) -> Self {
        Consul { endpoint, token, wait_s, build }
    }
}

impl Adapter for Consul {
    fn request(&mut self, _q: &ServiceQuery, _now_ms: i64) -> (Call, HttpRequest) {
        (Call::List, HttpRequest { headers: vec![], body: None, timeout_ms: self.endpoint.timeout_ms })
    }
    fn on_reply(&mut self, _q: &mut ServiceQuery, _call: Call, _resp: &HttpResponse<'_>, _now_ms: i64) -> Reply {
        Reply::Error(RegistryError::Parse("not implemented".into()))
    }
    fn long_poll(&self) -> bool {
        self.wait_s > 0
    }
}
