//! HTTP context: hands each request and response to [`crate::vm::Vm`] and applies its answer.

use std::cell::RefCell;
use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::Envoy;
use crate::vm::{Exchange, Flow, Vm};

pub struct Http {
    vm: Rc<RefCell<Vm>>,
    ex: Exchange,
}

impl Http {
    pub fn new(vm: Rc<RefCell<Vm>>) -> Self {
        Http { vm, ex: Exchange::default() }
    }
}

impl Http {
    /// The request's last byte went upstream (stall detection starts its clock).
    fn request_end(&mut self) {
        if let Ok(mut vm) = self.vm.try_borrow_mut() {
            vm.on_request_end(&Envoy, &self.ex);
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Ok(mut vm) = self.vm.try_borrow_mut() else {
            return Action::Continue;
        };
        match vm.on_request(&Envoy, &mut self.ex) {
            Flow::Continue => {
                if end_of_stream {
                    vm.on_request_end(&Envoy, &self.ex);
                }
                Action::Continue
            }
            Flow::Reply(r) => {
                let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                match hostcalls::send_http_response(r.status, headers, Some(r.body.as_bytes())) {
                    Ok(()) => Action::Pause,
                    Err(e) => {
                        // never leave the request paused without an answer
                        warn!("cannot send the local {} reply: {e:?}; forwarding the request", r.status);
                        self.ex.local = false;
                        Action::Continue
                    }
                }
            }
        }
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            self.request_end();
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.request_end();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Ok(mut vm) = self.vm.try_borrow_mut() {
            vm.on_response(&Envoy, &self.ex);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Ok(mut vm) = self.vm.try_borrow_mut() {
            vm.on_log(&Envoy, &self.ex);
        }
    }
}
