//! The one protobuf message of Nacos' gRPC protocol, by hand: `Payload` of
//! `api/src/main/proto/nacos_grpc_service.proto` (Nacos 2.x and 3.x, rnacos 0.8):
//!
//! ```text
//! message Metadata { string type = 3; string clientIp = 8; map<string, string> headers = 7; }
//! message Payload  { Metadata metadata = 2; google.protobuf.Any body = 3; }
//! // google.protobuf.Any { string type_url = 1; bytes value = 2; }
//! ```
//!
//! `metadata.type` is the Java simple class name of the request or response
//! (`SubscribeServiceRequest`), `metadata.headers` carries the request headers (`accessToken`),
//! and `body.value` the JSON of the object; `body.type_url` stays empty (Nacos' `GrpcUtils`).
//! Three messages of two to three fields each: a hand-written codec is smaller in the module than
//! a protobuf runtime, and it is all the protocol needs. Envoy adds and strips gRPC's 5-byte
//! frame header itself (`Grpc::Common::prependGrpcFrameHeader`), so these are the bare messages.

use std::fmt;

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(pub &'static str);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a Nacos gRPC payload: {}", self.0)
    }
}

/// A decoded `Payload`: its type and its JSON body (borrowed from the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Payload<'a> {
    /// `metadata.type`: the Java simple class name (`NotifySubscriberRequest`).
    pub kind: &'a str,
    /// `body.value`: the JSON of the object.
    pub body: &'a [u8],
}

const LEN: u8 = 2;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (`field`, wire type 2): tag, length, bytes.
fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encodes a `Payload` of type `kind` (the class name), with `headers` in `metadata.headers`
/// (each a map entry `{key = 1, value = 2}`) and `json` as `body.value`; `metadata.clientIp` and
/// `body.type_url` are left empty (proto3 leaves empty strings out).
pub fn encode(kind: &str, headers: &[(&str, &str)], json: &[u8]) -> Vec<u8> {
    let mut meta = Vec::with_capacity(kind.len() + 16);
    put_bytes(&mut meta, 3, kind.as_bytes());
    for (k, v) in headers {
        let mut entry = Vec::with_capacity(k.len() + v.len() + 4);
        put_bytes(&mut entry, 1, k.as_bytes());
        put_bytes(&mut entry, 2, v.as_bytes());
        put_bytes(&mut meta, 7, &entry);
    }
    let mut any = Vec::with_capacity(json.len() + 6);
    put_bytes(&mut any, 2, json);
    let mut out = Vec::with_capacity(meta.len() + any.len() + 12);
    put_bytes(&mut out, 2, &meta);
    put_bytes(&mut out, 3, &any);
    out
}

/// A protobuf reader over one message's bytes.
struct Reader<'a> {
    rest: &'a [u8],
}

/// One field as the reader saw it.
enum Value<'a> {
    Varint,
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let (&b, rest) = self.rest.split_first().ok_or(ProtoError("truncated varint"))?;
            self.rest = rest;
            if shift == 63 && b > 1 {
                return Err(ProtoError("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(ProtoError("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ProtoError> {
        let n = usize::try_from(n).map_err(|_| ProtoError("length overflows"))?;
        if n > self.rest.len() {
            return Err(ProtoError("truncated field"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// The next field: its number and value; `None` at the end. Groups (wire types 3 and 4) are
    /// refused: no message of this protocol has one.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, ProtoError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let number = tag >> 3;
        if number == 0 || number > 0x1fff_ffff {
            return Err(ProtoError("bad field number"));
        }
        let value = match tag & 7 {
            0 => {
                self.varint()?;
                Value::Varint
            }
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err(ProtoError("unsupported wire type")),
        };
        Ok(Some((number, value)))
    }
}

/// Decodes a `Payload`: its `metadata.type` (UTF-8) and `body.value`. Unknown fields are
/// skipped; a missing type or body reads as empty; anything that is not protobuf is an error.
pub fn decode(bytes: &[u8]) -> Result<Payload<'_>, ProtoError> {
    let mut out = Payload::default();
    let mut r = Reader { rest: bytes };
    while let Some((n, v)) = r.field()? {
        match (n, v) {
            (2, Value::Bytes(meta)) => {
                let mut m = Reader { rest: meta };
                while let Some((n, v)) = m.field()? {
                    if let (3, Value::Bytes(t)) = (n, v) {
                        out.kind = std::str::from_utf8(t).map_err(|_| ProtoError("type is not UTF-8"))?;
                    }
                }
            }
            (3, Value::Bytes(any)) => {
                let mut a = Reader { rest: any };
                while let Some((n, v)) = a.field()? {
                    if let (2, Value::Bytes(value)) = (n, v) {
                        out.body = value;
                    }
                }
            }
            (2 | 3, _) => return Err(ProtoError("metadata or body is not length-delimited")),
            _ => {}
        }
    }
    Ok(out)
}

/// Whether `bytes` could be read as a protobuf message at all (any fields, groups included,
/// length-delimited contents taken as opaque). Envoy reads the "upstream" of a proxy-wasm gRPC
/// call as a serialized `GrpcService` first and as a cluster name only when that fails
/// (`Context::grpcCall`/`grpcStream`); a cluster name that parses would be taken for a service
/// without a target, which Envoy refuses with a status the SDK turns into a panic. True errs on
/// the side of refusing: it is what a protobuf parser might accept.
pub fn could_be_message(bytes: &[u8]) -> bool {
    fn scan(r: &mut Reader<'_>, group: Option<u64>, depth: u32) -> bool {
        if depth > 100 {
            return true;
        }
        loop {
            if r.rest.is_empty() {
                return group.is_none();
            }
            let Ok(tag) = r.varint() else { return false };
            let number = tag >> 3;
            if number == 0 || number > 0x1fff_ffff {
                return false;
            }
            let ok = match tag & 7 {
                0 => r.varint().is_ok(),
                1 => r.take(8).is_ok(),
                2 => r.varint().and_then(|n| r.take(n)).is_ok(),
                5 => r.take(4).is_ok(),
                3 => scan(r, Some(number), depth + 1),
                4 => return group == Some(number),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
    }
    scan(&mut Reader { rest: bytes }, None, 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever arrives, decoding returns (never panics); what `encode` writes reads back.
        #[test]
        fn decode_never_panics_and_round_trips(
            noise in proptest::collection::vec(any::<u8>(), 0..200),
            kind in "[A-Za-z]{0,40}",
            headers in proptest::collection::vec(("[a-zA-Z]{1,12}", ".{0,20}"), 0..3),
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let _ = decode(&noise);
            let _ = could_be_message(&noise);
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let msg = encode(&kind, &pairs, &body);
            prop_assert_eq!(decode(&msg), Ok(Payload { kind: &kind, body: &body }));
            prop_assert!(could_be_message(&msg));
        }
    }

    /// The bytes protoc gives for `Payload{metadata{type: "HealthCheckRequest", headers
    /// {accessToken: "t"}}, body{value: "{}"}}`, written out field by field.
    #[test]
    fn encodes_as_protobuf_does() {
        let got = encode("HealthCheckRequest", &[("accessToken", "t")], b"{}");
        let mut want = vec![0x12, 38]; // metadata, 38 bytes
        want.extend([0x1a, 18]); // type = 3, 18 bytes
        want.extend(b"HealthCheckRequest");
        want.extend([0x3a, 16]); // headers = 7, a map entry of 16 bytes
        want.extend([0x0a, 11]); // key = 1
        want.extend(b"accessToken");
        want.extend([0x12, 1]); // value = 2
        want.extend(b"t");
        want.extend([0x1a, 4, 0x12, 2]); // body = 3 (4 bytes): value = 2 (2 bytes)
        want.extend(b"{}");
        assert_eq!(got, want);
        assert_eq!(decode(&got), Ok(Payload { kind: "HealthCheckRequest", body: b"{}" }));
    }

    #[test]
    fn long_fields_use_multibyte_lengths() {
        let json = vec![b'x'; 300];
        let got = encode("T", &[], &json);
        // metadata (5 bytes), then body: tag, varint 303 (0xaf 0x02), value: tag, varint 300
        assert_eq!(&got[..5], &[0x12, 3, 0x1a, 1, b'T']);
        assert_eq!(&got[5..11], &[0x1a, 0xaf, 0x02, 0x12, 0xac, 0x02]);
        assert_eq!(got.len(), 5 + 3 + 303);
        assert_eq!(decode(&got).unwrap().body, &json[..]);
    }

    /// What rnacos and Nacos send: type and body, a `clientIp`, an empty `type_url`, and fields
    /// this reader does not know (skipped).
    #[test]
    fn decodes_server_payloads_and_skips_unknown_fields() {
        let mut meta = Vec::new();
        put_bytes(&mut meta, 8, b"10.0.0.9");
        put_bytes(&mut meta, 3, b"NotifySubscriberRequest");
        meta.extend([0x48, 0x96, 0x01]); // an unknown varint field 9 = 150
        let mut any = Vec::new();
        put_bytes(&mut any, 1, b"");
        put_bytes(&mut any, 2, br#"{"requestId":"7"}"#);
        let mut msg = Vec::new();
        msg.extend([0x0d, 1, 2, 3, 4]); // unknown fixed32 field 1
        put_bytes(&mut msg, 3, &any);
        put_bytes(&mut msg, 2, &meta);
        let p = decode(&msg).unwrap();
        assert_eq!(p.kind, "NotifySubscriberRequest");
        assert_eq!(p.body, br#"{"requestId":"7"}"#);
        assert_eq!(decode(b""), Ok(Payload::default()));
    }

    #[test]
    fn refuses_what_is_not_a_payload() {
        for bad in [
            &b"\x12"[..],                                        // truncated length
            b"\x12\x05abc",                                      // length past the end
            b"\x12\x02\x1a\x05",                                 // metadata's type truncated
            b"\x10\x01",                                         // metadata as a varint
            b"\x0b\x0c",                                         // a group
            b"\x00\x01",                                         // field 0
            b"\x12\x03\x1a\x01\xff",                             // type not UTF-8
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", // varint of 11 bytes
            b"<html>",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    /// Cluster names as Envoy would read them: most names are not protobuf, a few are.
    #[test]
    fn which_cluster_names_envoy_would_parse() {
        for name in [
            "nacos-grpc",
            "registry-grpc",
            "rnacos-grpc",
            "grpc",
            "nacos_grpc",
            "outbound|9848||nacos.default.svc.cluster.local",
        ] {
            assert!(!could_be_message(name.as_bytes()), "{name}");
        }
        // empty: an empty message; "hi": field 13 varint 105; "abcdefghi": field 12 fixed64
        for name in ["", "hi", "abcdefghi", "(\u{1}", "\u{1b}\u{1c}"] {
            assert!(could_be_message(name.as_bytes()), "{name:?}");
        }
        // an unclosed group, and an end-group at the top, do not parse
        assert!(!could_be_message(b"\x1b"));
        assert!(!could_be_message(b"\x1c"));
    }
}
