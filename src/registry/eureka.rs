//! Eureka adapter: `GET {prefix}/apps/{APP}` with `Accept: application/json`.

use super::{Adapter, Call, Endpoint, HttpRequest, HttpResponse, RegistryError, Reply, ServiceQuery};
use crate::instance::BuildOptions;

#[derive(Debug, Clone)]
pub struct Eureka {
    pub endpoint: Endpoint,
    /// Path prefix of the Eureka REST API, default `/eureka`.
    pub prefix: String,
    pub build: BuildOptions,
}

impl Eureka {
    pub fn new(endpoint: Endpoint, prefix: String, build: BuildOptions) -> Self {
        Eureka { endpoint, prefix, build }
    }
}

impl Adapter for Eureka {
    fn request(&mut self, _q: &ServiceQuery, _now_ms: i64) -> (Call, HttpRequest) {
        (Call::List, HttpRequest { headers: vec![], body: None, timeout_ms: self.endpoint.timeout_ms })
    }
    fn on_reply(&mut self, _q: &mut ServiceQuery, _call: Call, _resp: &HttpResponse<'_>, _now_ms: i64) -> Reply {
        Reply::Error(RegistryError::Parse("not implemented".into()))
    }
}
