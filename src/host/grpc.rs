//! proxy-wasm's gRPC calls for the push sessions ([`crate::push::Grpc`]), every host status
//! handled.
//!
//! proxy-wasm-rust-sdk 0.2.5 panics (which kills the VM) on statuses its wrappers do not expect:
//! `send_grpc_stream_message`, `cancel_grpc_*` and `close_grpc_stream` on anything but Ok and
//! NotFound (and the `Context` methods `unwrap` even those), `get_grpc_status` on a message that is
//! not UTF-8, `get_buffer` on anything but Ok and NotFound. Those go through the ABI here, with
//! every status a value. `dispatch_grpc_call` and `open_grpc_stream` must go through the SDK: it
//! registers the token with its dispatcher, which otherwise drops the callbacks. They panic on
//! BadArgument, which Envoy returns when it cannot make a client for the "upstream" it was given
//! (`Context::grpcCall`/`grpcStream`): Envoy reads that string as a serialized `GrpcService`
//! first and as a cluster name only if it does not parse, so the configuration refuses a
//! `grpc_cluster` that could parse ([`crate::push::proto::could_be_message`]); a cluster name that
//! Envoy does not know comes back as ParseFailure, a client that cannot start as
//! InternalFailure, both handled.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;

use crate::push::Grpc;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_grpc_send(token: u32, message_ptr: *const u8, message_len: usize, end_stream: bool) -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
}

/// proxy-wasm's name of a host status (for logs).
fn status_name(s: u32) -> String {
    match s {
        1 => "NotFound".into(),
        2 => "BadArgument".into(),
        3 => "SerializationFailure".into(),
        4 => "ParseFailure (no such cluster?)".into(),
        10 => "InternalFailure".into(),
        other => format!("status {other}"),
    }
}

/// The host's gRPC calls.
pub struct HostGrpc;

impl Grpc for HostGrpc {
    fn call(&self, cluster: &str, service: &str, method: &str, message: &[u8], timeout_ms: u64) -> Result<u32, String> {
        hostcalls::dispatch_grpc_call(
            cluster,
            service,
            method,
            vec![],
            Some(message),
            Duration::from_millis(timeout_ms),
        )
        .map_err(|s| status_name(s as u32))
    }

    fn open(&self, cluster: &str, service: &str, method: &str) -> Result<u32, String> {
        hostcalls::open_grpc_stream(cluster, service, method, vec![]).map_err(|s| status_name(s as u32))
    }

    fn send(&self, token: u32, message: &[u8]) -> Result<(), String> {
        // SAFETY: the pointer and length describe `message`, alive for the call; the host copies it
        match unsafe { proxy_grpc_send(token, message.as_ptr(), message.len(), false) } {
            0 => Ok(()),
            s => Err(status_name(s)),
        }
    }

    fn cancel(&self, token: u32) {
        // SAFETY: no memory crosses; an unknown token is NotFound, which is fine here
        let _ = unsafe { proxy_grpc_cancel(token) };
    }
}

/// The gRPC message just received (a unary answer or a stream message), at most `max` bytes;
/// `None` when it is larger or the host has none.
pub fn received(size: usize, max: usize) -> Option<Vec<u8>> {
    if size > max {
        return None;
    }
    if size == 0 {
        return Some(Vec::new());
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: on Ok the host has written a buffer of `len` bytes that it allocated through this
    // module's `proxy_on_memory_allocate` (a boxed slice of exactly `len` bytes), and its
    // ownership passes to the VM; a null pointer means no data.
    unsafe {
        match proxy_get_buffer_bytes(BufferType::GrpcReceiveBuffer as u32, 0, size, &mut data, &mut len) {
            0 if !data.is_null() => Some(Vec::from_raw_parts(data, len, len)),
            _ => None,
        }
    }
}
