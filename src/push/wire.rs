//! The JSON bodies of the Nacos gRPC messages lossless sends and reads (field names as Nacos'
//! Jackson writes them, camelCase; unknown fields ignored both ways, as Nacos' `JacksonUtils` and
//! rnacos' serde models do). Sources: Nacos `api/.../remote/request/*`, `api/.../naming/remote/*`,
//! rnacos `src/grpc/api_model.rs`.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::proto;
use crate::emit::json_str;

/// `resultCode` of a successful response (Nacos `ResponseCode.SUCCESS`).
pub const SUCCESS: i64 = 200;
/// `errorCode` of a call on a connection the server does not know (Nacos `NacosException.UN_REGISTER`,
/// rnacos the same): the bi-stream of this connection is gone or was never set up.
pub const UNREGISTERED: i64 = 301;
/// `errorCode` of a call without the right (a missing or expired `accessToken`).
pub const NO_RIGHT: i64 = 403;

/// The value of `clientVersion` in `ConnectionSetupRequest` (`name:version`, as Nacos' clients
/// write theirs).
pub const CLIENT_VERSION: &str = concat!("lossless:", env!("CARGO_PKG_VERSION"));

/// What one service subscription names (Nacos' `namespace`, `groupName`, `serviceName`,
/// `clusters`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub namespace: String,
    pub group: String,
    pub service: String,
    /// Cluster names, comma-separated ("" for all).
    pub clusters: String,
}

/// A JSON object of string fields (`(key, value)`), then `raw` members written as they are
/// (`,"subscribe":true`).
fn object(fields: &[(&str, &str)], raw: &str) -> Vec<u8> {
    let mut o = String::with_capacity(64 + fields.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>());
    o.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        json_str(&mut o, k);
        o.push(':');
        json_str(&mut o, v);
    }
    o.push_str(raw);
    o.push('}');
    o.into_bytes()
}

/// The `metadata.headers` of a request: `accessToken` when a token is held.
fn headers(token: Option<&str>) -> Vec<(&str, &str)> {
    token.map(|t| vec![("accessToken", t)]).unwrap_or_default()
}

/// `ServerCheckRequest`: the unary call that opens a session (answered without any check).
pub fn server_check(request_id: &str) -> Vec<u8> {
    proto::encode("ServerCheckRequest", &[], &object(&[("requestId", request_id), ("module", "internal")], ""))
}

/// `HealthCheckRequest`: the unary keep-alive.
pub fn health_check(request_id: &str, token: Option<&str>) -> Vec<u8> {
    let body = object(&[("requestId", request_id), ("module", "internal")], "");
    proto::encode("HealthCheckRequest", &headers(token), &body)
}

/// `ConnectionSetupRequest`, the first message on the bi-stream: labels `{source: sdk, module:
/// naming}` (Nacos' naming client's; Nacos' `ConnectionMeta` calls `labels.putAll`, so never
/// null), `tenant` (the namespace), and an empty `abilityTable` (present, it asks a Nacos 3 server
/// for its `SetupAckRequest`).
pub fn setup(request_id: &str, tenant: &str, token: Option<&str>) -> Vec<u8> {
    let body = object(
        &[("requestId", request_id), ("module", "internal"), ("clientVersion", CLIENT_VERSION), ("tenant", tenant)],
        r#","labels":{"source":"sdk","module":"naming"},"abilityTable":{}"#,
    );
    proto::encode("ConnectionSetupRequest", &headers(token), &body)
}

/// `SubscribeServiceRequest` for `s` (module `naming`, `subscribe: true`).
pub fn subscribe(request_id: &str, s: &Subscription, token: Option<&str>) -> Vec<u8> {
    let body = object(
        &[
            ("requestId", request_id),
            ("module", "naming"),
            ("namespace", &s.namespace),
            ("groupName", &s.group),
            ("serviceName", &s.service),
            ("clusters", &s.clusters),
        ],
        r#","subscribe":true"#,
    );
    proto::encode("SubscribeServiceRequest", &headers(token), &body)
}

/// The success response of type `kind` to the server request `request_id`
/// (`NotifySubscriberResponse`, `ClientDetectionResponse`, `ConnectResetResponse`).
pub fn ack(kind: &str, request_id: &str) -> Vec<u8> {
    proto::encode(kind, &[], &object(&[("requestId", request_id)], r#","resultCode":200,"errorCode":0"#))
}

/// Any response (unary reply, or a server request on the stream): the fields lossless reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Message<'a> {
    pub result_code: Option<i64>,
    pub error_code: Option<i64>,
    pub message: Option<String>,
    pub request_id: Option<String>,
    /// `ServerCheckResponse`: the server sends `SetupAckRequest` after the setup (Nacos 3).
    pub support_ability_negotiation: Option<bool>,
    /// `SubscribeServiceResponse` and `NotifySubscriberRequest`: the list, unparsed.
    #[serde(borrow)]
    pub service_info: Option<&'a RawValue>,
    /// `NotifySubscriberRequest` (rnacos fills them; Nacos leaves them null and names the service
    /// in `serviceInfo`).
    pub namespace: Option<String>,
    pub group_name: Option<String>,
    pub service_name: Option<String>,
}

impl<'a> Message<'a> {
    /// Reads a payload body; `None` when it is not a JSON object of this shape.
    pub fn parse(body: &'a [u8]) -> Option<Message<'a>> {
        // serde would read a struct from an array too
        let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        object.then(|| serde_json::from_slice(body).ok()).flatten()
    }

    /// Success: `resultCode` 200 (or none, as in a server request).
    pub fn ok(&self) -> bool {
        self.result_code.is_none_or(|c| c == SUCCESS) && self.error_code.is_none_or(|c| c == 0)
    }

    /// The error for the log: `errorCode message`.
    pub fn error(&self) -> String {
        format!(
            "error {}: {}",
            self.error_code.or(self.result_code).unwrap_or(0),
            self.message.as_deref().unwrap_or("")
        )
    }
}

/// The service a `serviceInfo` is of: its `groupName` and `name` (which may be the grouped
/// `group@@name`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct InfoName {
    name: Option<String>,
    group_name: Option<String>,
}

/// `(group, service)` a pushed list is of: from the notify's own fields when the server fills
/// them (rnacos), else from its `serviceInfo` (Nacos: `groupName`, and `name` plain or grouped
/// `group@@name`). Empty group means `DEFAULT_GROUP`.
pub fn pushed_service(m: &Message<'_>) -> Option<(String, String)> {
    let group = |g: Option<&str>| g.filter(|g| !g.is_empty()).unwrap_or(DEFAULT_GROUP).to_string();
    if let Some(s) = m.service_name.as_deref().filter(|s| !s.is_empty()) {
        return Some((group(m.group_name.as_deref()), s.to_string()));
    }
    let info: InfoName = serde_json::from_str(m.service_info?.get()).ok()?;
    let name = info.name?;
    match name.split_once("@@") {
        Some((g, n)) => Some((group(Some(g)), n.to_string())),
        None => Some((group(info.group_name.as_deref()), name)),
    }
}

/// Nacos' default group.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// Nacos' default namespace id (2.x clients and 3.x servers use `public`; rnacos maps "" to it).
pub const DEFAULT_NAMESPACE: &str = "public";

#[cfg(test)]
mod tests {
    use super::*;

    fn json(payload: &[u8]) -> (String, serde_json::Value) {
        let p = proto::decode(payload).unwrap();
        (p.kind.to_string(), serde_json::from_slice(p.body).unwrap())
    }

    #[test]
    fn requests_carry_what_nacos_reads() {
        let (kind, v) = json(&server_check("1"));
        assert_eq!(
            (kind.as_str(), v),
            ("ServerCheckRequest", serde_json::json!({"requestId":"1","module":"internal"}))
        );
        let (kind, v) = json(&setup("2", "public", None));
        assert_eq!(kind, "ConnectionSetupRequest");
        assert_eq!(v["labels"], serde_json::json!({"source":"sdk","module":"naming"}));
        assert_eq!(v["abilityTable"], serde_json::json!({}));
        assert_eq!((v["tenant"].as_str(), v["clientVersion"].as_str()), (Some("public"), Some(CLIENT_VERSION)));
        let s = Subscription {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            service: "providers:com.acme.Orders::".into(),
            clusters: "a,b".into(),
        };
        let msg = subscribe("3", &s, Some("tok"));
        let (kind, v) = json(&msg);
        assert_eq!(kind, "SubscribeServiceRequest");
        assert_eq!(
            v,
            serde_json::json!({"requestId":"3","module":"naming","namespace":"public","groupName":"DEFAULT_GROUP",
                "serviceName":"providers:com.acme.Orders::","subscribe":true,"clusters":"a,b"})
        );
        // names are escaped
        let odd = Subscription { service: "a\"b\\c\u{1}".into(), ..s.clone() };
        assert_eq!(json(&subscribe("4", &odd, None)).1["serviceName"], "a\"b\\c\u{1}");
        // the token travels in metadata.headers, not in the JSON
        assert!(msg.windows(11).any(|w| w == b"accessToken"));
        assert!(!String::from_utf8_lossy(proto::decode(&msg).unwrap().body).contains("tok"));
        let (kind, v) = json(&ack("NotifySubscriberResponse", "17"));
        assert_eq!(
            (kind.as_str(), v),
            ("NotifySubscriberResponse", serde_json::json!({"resultCode":200,"errorCode":0,"requestId":"17"}))
        );
    }

    /// Bodies as rnacos 0.8.8 and Nacos write them.
    #[test]
    fn reads_responses_and_pushes() {
        let m = Message::parse(
            br#"{"resultCode":200,"errorCode":0,"message":"","requestId":"","connectionId":"1_127.0.0.1:5555"}"#,
        )
        .unwrap();
        assert!(m.ok() && m.support_ability_negotiation.is_none());
        let m = Message::parse(
            br#"{"resultCode":500,"errorCode":301,"message":"Connection is unregistered.","requestId":null}"#,
        )
        .unwrap();
        assert!(!m.ok());
        assert_eq!(
            (m.error_code, m.error()),
            (Some(UNREGISTERED), "error 301: Connection is unregistered.".to_string())
        );
        // rnacos: the notify names the service; its serviceInfo is handed on unparsed
        let body = br#"{"module":"naming","requestId":"4","headers":{},"namespace":"public","serviceName":"demo","groupName":"DEFAULT_GROUP",
            "serviceInfo":{"name":"demo","groupName":"DEFAULT_GROUP","hosts":[{"ip":"10.0.0.1","port":80}],"lastRefTime":1}}"#;
        let m = Message::parse(body).unwrap();
        assert_eq!(m.request_id.as_deref(), Some("4"));
        assert!(m.service_info.unwrap().get().starts_with(r#"{"name":"demo""#));
        assert_eq!(pushed_service(&m), Some(("DEFAULT_GROUP".into(), "demo".into())));
        // Nacos: only serviceInfo, with a grouped name or a plain one
        let m = Message::parse(br#"{"requestId":"5","serviceInfo":{"name":"g1@@demo","groupName":"g1","hosts":[]}}"#)
            .unwrap();
        assert_eq!(pushed_service(&m), Some(("g1".into(), "demo".into())));
        let m =
            Message::parse(br#"{"requestId":"5","serviceInfo":{"name":"demo","groupName":"g2","hosts":[]}}"#).unwrap();
        assert_eq!(pushed_service(&m), Some(("g2".into(), "demo".into())));
        let m = Message::parse(br#"{"requestId":"5","serviceInfo":{"name":"demo","hosts":[]}}"#).unwrap();
        assert_eq!(pushed_service(&m), Some(("DEFAULT_GROUP".into(), "demo".into())));
        // no service at all, and a serviceInfo of null
        assert_eq!(pushed_service(&Message::parse(br#"{"requestId":"5"}"#).unwrap()), None);
        assert!(Message::parse(br#"{"serviceInfo":null}"#).unwrap().service_info.is_none());
        // not an object
        assert!(Message::parse(b"[1]").is_none());
        assert!(Message::parse(b"").is_none());
    }
}
