//! proxy-wasm glue: the only code that talks to the host. It gathers facts, calls
//! [`crate::vm::Vm`], and applies what comes back, handling every host-call result.

mod grpc;
mod http;
mod metrics;
mod root;

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType, Status};

use crate::headers::Headers;
use crate::store::Shared;
use crate::vm::Host;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::new()) });
}}

/// Host time since the epoch (zero if the host cannot say).
fn since_epoch() -> std::time::Duration {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default()
}

/// Wall-clock ms since the epoch (a host call); also remembered as the request path's clock.
pub fn now_ms() -> i64 {
    let now = since_epoch().as_millis() as i64;
    TICK_CLOCK.with(|c| c.set(now));
    now
}

thread_local! {
    /// The time the VM last read from the host (every tick, every registry reply): the request
    /// path's clock, at most one tick (100 ms) old, without a host call per request.
    static TICK_CLOCK: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// Host time in µs since the epoch, for measuring work inside the VM.
pub fn now_us() -> u64 {
    since_epoch().as_micros() as u64
}

/// Envoy itself: shared data, headers and properties of the current HTTP exchange.
pub struct Envoy;

impl Shared for Envoy {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

impl Host for Envoy {
    fn now_ms(&self) -> i64 {
        match TICK_CLOCK.with(std::cell::Cell::get) {
            0 => now_ms(),
            t => t,
        }
    }
    fn clock_ms(&self) -> i64 {
        now_ms()
    }
    fn request_headers(&self) -> Headers {
        Headers::from_wire(header_pairs(MapType::HttpRequestHeaders))
    }
    fn set_request_header(&self, name: &str, value: Option<&str>) -> bool {
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value).is_ok()
    }
    fn response_headers(&self) -> Headers {
        Headers::from_wire(header_pairs(MapType::HttpResponseHeaders))
    }
    fn set_response_header(&self, name: &str, value: Option<&str>) -> bool {
        hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value).is_ok()
    }
    fn property(&self, path: &[&str]) -> Option<String> {
        hostcalls::get_property(path.to_vec()).ok().flatten().and_then(|b| String::from_utf8(b).ok())
    }
    fn clear_route_cache(&self) -> bool {
        // Envoy >= 1.33; before that (and for plugins of ABI 0.2.1, which the SDK is) Envoy
        // clears the route cache on every request header change already
        match hostcalls::call_foreign_function("clear_route_cache", None::<&[u8]>) {
            Ok(_) | Err(Status::NotFound) => true,
            Err(_) => false,
        }
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// A whole header map as the host serializes it (see [`Headers`]); empty when the host has none
/// or refuses. Read through the ABI call itself: the SDK's readers turn every value into a
/// `String` and abort the VM on one that is not UTF-8, which any client (a request header), any
/// upstream (a response header) or a registry (a reply header) could send.
pub fn header_pairs(map: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: on Ok the host has written a buffer of `size` bytes that it allocated through this
    // module's `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes, so length and
    // capacity are `size`), and its ownership passes to the VM; a null pointer means no pairs.
    unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    }
}
