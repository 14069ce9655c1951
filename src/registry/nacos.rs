//! Nacos v1 / v2 adapter (with optional username/password auth).

use super::{Adapter, Call, Endpoint, HttpRequest, HttpResponse, RegistryError, Reply, ServiceQuery};
use crate::instance::BuildOptions;

/// Which Nacos open API to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    V2,
}

/// Username and password for `POST /nacos/v1/auth/login`.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: \"***\" }}", self.username)
    }
}

#[derive(Debug, Clone)]
pub struct Nacos {
    pub endpoint: Endpoint,
    pub api: Api,
    pub auth: Option<Credentials>,
    pub build: BuildOptions,
}

impl Nacos {
    pub fn new(endpoint: Endpoint, api: Api, auth: Option<Credentials>, build: BuildOptions) -> Self {
        Nacos { endpoint, api, auth, build }
    }
}

impl Adapter for Nacos {
    fn request(&mut self, _q: &ServiceQuery, _now_ms: i64) -> (Call, HttpRequest) {
        (Call::List, HttpRequest { headers: vec![], body: None, timeout_ms: self.endpoint.timeout_ms })
    }
    fn on_reply(&mut self, _q: &mut ServiceQuery, _call: Call, _resp: &HttpResponse<'_>, _now_ms: i64) -> Reply {
        Reply::Error(RegistryError::Parse("not implemented".into()))
    }
}
