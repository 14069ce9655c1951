//! A recording [`Grpc`] for the tests of the push path.

use std::cell::RefCell;

use super::{proto, Grpc};

/// A host that records every gRPC call and hands out tokens (odd for calls, even for streams,
/// as Envoy does); `refuse` makes the next calls fail.
#[derive(Default)]
pub struct Fake {
    pub next: RefCell<u32>,
    /// (token, type, body JSON, metadata carries an accessToken)
    pub calls: RefCell<Vec<(u32, String, serde_json::Value, bool)>>,
    pub opened: RefCell<Vec<u32>>,
    pub sent: RefCell<Vec<(u32, String, serde_json::Value)>>,
    pub cancelled: RefCell<Vec<u32>>,
    pub refuse_calls: RefCell<bool>,
    pub refuse_sends: RefCell<bool>,
}

pub fn decode(msg: &[u8]) -> (String, serde_json::Value) {
    let p = proto::decode(msg).unwrap();
    (p.kind.to_string(), serde_json::from_slice(p.body).unwrap())
}

impl Fake {
    fn token(&self, stream: bool) -> u32 {
        let mut n = self.next.borrow_mut();
        *n += 1;
        2 * *n + u32::from(!stream)
    }
    /// The calls made so far of type `kind`: (token, body).
    pub fn calls_of(&self, kind: &str) -> Vec<(u32, serde_json::Value)> {
        self.calls.borrow().iter().filter(|c| c.1 == kind).map(|c| (c.0, c.2.clone())).collect()
    }
    pub fn sent_of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.sent.borrow().iter().filter(|c| c.1 == kind).map(|c| c.2.clone()).collect()
    }
}

impl Grpc for Fake {
    fn call(&self, cluster: &str, service: &str, method: &str, message: &[u8], timeout_ms: u64) -> Result<u32, String> {
        assert_eq!((cluster, service, method, timeout_ms), ("nacos-grpc", "Request", "request", 1500));
        if *self.refuse_calls.borrow() {
            return Err("InternalFailure".into());
        }
        let (kind, body) = decode(message);
        let token = self.token(false);
        let with_token = message.windows(11).any(|w| w == b"accessToken");
        self.calls.borrow_mut().push((token, kind, body, with_token));
        Ok(token)
    }
    fn open(&self, cluster: &str, service: &str, method: &str) -> Result<u32, String> {
        assert_eq!((cluster, service, method), ("nacos-grpc", "BiRequestStream", "requestBiStream"));
        let token = self.token(true);
        self.opened.borrow_mut().push(token);
        Ok(token)
    }
    fn send(&self, token: u32, message: &[u8]) -> Result<(), String> {
        if *self.refuse_sends.borrow() {
            return Err("NotFound".into());
        }
        let (kind, body) = decode(message);
        self.sent.borrow_mut().push((token, kind, body));
        Ok(())
    }
    fn cancel(&self, token: u32) {
        self.cancelled.borrow_mut().push(token);
    }
}
