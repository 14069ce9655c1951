//! proxy-wasm glue: the only code that talks to the host. Everything it decides comes from
//! [`crate::runtime`]; this module moves bytes between Envoy and that logic.

mod http;
mod metrics;
mod root;

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

use crate::runtime::Shared;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::new()) });
}}

/// Wall-clock ms since the epoch from the host (0 if the host cannot say).
pub fn now_ms() -> i64 {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Host time in µs since the epoch, for measuring work inside the VM.
pub fn now_us() -> u64 {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A property as a string (`["xds", "cluster_name"]`, `["source", "address"]`).
pub fn property(path: Vec<&str>) -> Option<String> {
    hostcalls::get_property(path).ok().flatten().and_then(|b| String::from_utf8(b).ok())
}

/// Envoy shared data.
pub struct HostShared;

impl Shared for HostShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}
