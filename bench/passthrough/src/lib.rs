//! The smallest HTTP filter: every request continues untouched. `make bench` loads it in Envoy as
//! the cost floor of a Rust proxy-wasm filter (same SDK and runtime as lossless, no logic).
//!
//! With a plugin configuration of `kind:N` items (comma-separated) it also makes N host calls of
//! each kind on every request, the kinds lossless' request path uses: `absent` reads a request
//! header that is absent (one host call), `present` reads `:path` (one host call, plus the host
//! allocating the value in the VM), `pairs` reads all request headers at once through the SDK's
//! reader (a string per header), `block` reads them at once as the host's serialized bytes (as
//! lossless does), `property` reads `xds.cluster_name`, `shared` reads a shared-data key holding
//! an empty value, `set` sets a request header, `response` reads all response headers at once as
//! bytes (in the response's headers callback). What each crossing of the VM boundary costs Envoy.

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Host calls per request, by kind.
#[derive(Default, Clone, Copy)]
struct Calls {
    absent: u32,
    present: u32,
    pairs: u32,
    block: u32,
    property: u32,
    shared: u32,
    set: u32,
    response: u32,
}

#[derive(Default)]
struct Root {
    calls: Rc<Cell<Calls>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let text = self.get_plugin_configuration().and_then(|b| String::from_utf8(b).ok()).unwrap_or_default();
        let mut c = Calls::default();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let Some((kind, n)) = part.split_once(':') else { return false };
            let n = n.trim().parse().unwrap_or(0);
            match kind {
                "absent" => c.absent = n,
                "present" => c.present = n,
                "pairs" => c.pairs = n,
                "block" => c.block = n,
                "property" => c.property = n,
                "shared" => c.shared = n,
                "set" => c.set = n,
                "response" => c.response = n,
                _ => return false,
            }
        }
        if c.shared > 0 && self.set_shared_data("passthrough/empty", Some(b""), None).is_err() {
            return false;
        }
        self.calls.set(c);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass { calls: self.calls.get() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Pass {
    calls: Calls,
}

impl Context for Pass {}

impl HttpContext for Pass {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let c = self.calls;
        for _ in 0..c.absent {
            std::hint::black_box(self.get_http_request_header("x-bench-absent"));
        }
        for _ in 0..c.present {
            std::hint::black_box(self.get_http_request_header(":path"));
        }
        for _ in 0..c.pairs {
            std::hint::black_box(self.get_http_request_headers_bytes());
        }
        for _ in 0..c.block {
            std::hint::black_box(header_block(MapType::HttpRequestHeaders));
        }
        for _ in 0..c.property {
            std::hint::black_box(self.get_property(vec!["xds", "cluster_name"]));
        }
        for _ in 0..c.shared {
            std::hint::black_box(self.get_shared_data("passthrough/empty"));
        }
        for _ in 0..c.set {
            self.set_http_request_header("x-bench-set", Some("1"));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for _ in 0..self.calls.response {
            std::hint::black_box(header_block(MapType::HttpResponseHeaders));
        }
        Action::Continue
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: MapType, data: *mut *mut u8, size: *mut usize) -> Status;
}

/// A whole header map as the host serializes it, undecoded (empty if the host has none).
fn header_block(map: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: on Ok the host has written `size` bytes it allocated through this module's
    // `proxy_on_memory_allocate`, and their ownership passes to the VM; null means no pairs.
    unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    }
}
