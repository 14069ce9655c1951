//! The Eureka wire format of the inbound registration ([`super::Step`]s made requests, replies
//! made [`Answer`]s), following Eureka's REST API: `POST {prefix}/apps/{APP}` with the
//! `InstanceInfo` JSON (204), renew with
//! `PUT {prefix}/apps/{APP}/{id}?status=UP&lastDirtyTimestamp=…` (404: register again, as
//! Eureka's `DiscoveryClient.renew` does), `DELETE {prefix}/apps/{APP}/{id}`.

use std::fmt::Write;

use super::{Answer, Me, Step};
use crate::emit::{json_object, json_str};
use crate::registry::eureka::Eureka;
use crate::registry::{encode, request_headers, HttpRequest, HttpResponse};

/// The Eureka application name (Eureka keys applications by their upper-cased name).
fn app(me: &Me<'_>) -> String {
    me.service.query.service.to_ascii_uppercase()
}

/// The Eureka instance id: `ip:service:port`, the shape of Spring Cloud's default.
pub fn instance_id(me: &Me<'_>) -> String {
    format!("{}:{}:{}", me.ip, me.service.query.service.to_ascii_lowercase(), me.port)
}

/// The Eureka request of `step`.
pub fn request(e: &Eureka, me: &Me<'_>, step: Step, now_ms: i64) -> HttpRequest {
    let app = app(me);
    let id = instance_id(me);
    let base = format!("{}/apps/{}", e.prefix, encode(&app));
    let (method, path, body) = match step {
        Step::Register => ("POST", base, Some(instance(me, &app, &id, now_ms))),
        Step::Heartbeat => {
            ("PUT", format!("{base}/{}?status=UP&lastDirtyTimestamp={}", encode(&id), me.ready_ms), None)
        }
        _ => ("DELETE", format!("{base}/{}", encode(&id)), None),
    };
    let mut headers = request_headers(&e.endpoint, method, path);
    if body.is_some() {
        headers.push(("content-type".to_string(), "application/json".to_string()));
    }
    HttpRequest { headers, body: body.map(String::into_bytes), timeout_ms: e.endpoint.timeout_ms }
}

/// Eureka's `InstanceInfo` JSON (root-wrapped in `instance`), with the fields its server needs.
fn instance(me: &Me<'_>, app: &str, id: &str, now_ms: i64) -> String {
    let mut s = String::from("{\"instance\":{\"instanceId\":");
    json_str(&mut s, id);
    for (k, v) in [("hostName", me.ip), ("app", app), ("ipAddr", me.ip), ("vipAddress", &me.service.query.service)] {
        let _ = write!(s, ",\"{k}\":");
        json_str(&mut s, v);
    }
    let renew_s = (me.reg.heartbeat_ms / 1000).max(1);
    let _ = write!(
        s,
        ",\"status\":\"UP\",\"overriddenStatus\":\"UNKNOWN\",\"port\":{{\"$\":{},\"@enabled\":\"true\"}},\
         \"securePort\":{{\"$\":443,\"@enabled\":\"false\"}},\"countryId\":1,\
         \"dataCenterInfo\":{{\"@class\":\"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo\",\"name\":\"MyOwn\"}},\
         \"leaseInfo\":{{\"renewalIntervalInSecs\":{renew_s},\"durationInSecs\":{}}},\
         \"lastDirtyTimestamp\":\"{}\",\"lastUpdatedTimestamp\":\"{now_ms}\",\"metadata\":{}}}}}",
        me.port,
        (renew_s * 3).max(90),
        me.ready_ms,
        json_object(&me.metadata())
    );
    s
}

/// What a Eureka reply means: 2xx done, 404 unknown instance (register again).
pub fn answer(resp: &HttpResponse<'_>) -> Answer {
    match resp.status {
        Some(200..=299) => Answer::Ok,
        Some(404) => Answer::NotFound,
        Some(s) => Answer::Failed(format!("HTTP {s}")),
        None => Answer::Failed("no answer".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registration::tests::{cfg, me, EUREKA};

    /// Eureka: the `InstanceInfo` its server needs, renew and cancel on `{APP}/{id}`.
    #[test]
    fn eureka_requests() {
        let c = cfg(EUREKA, "");
        let me = me(&c);
        let crate::config::RegistryKind::Eureka(e) = &c.registries[0].kind else { unreachable!() };
        let reg = request(e, &me, Step::Register, 1_700_000_001_000);
        assert_eq!((reg.header(":method"), reg.header(":path")), (Some("POST"), Some("/eureka/apps/ORDERS")));
        let v: serde_json::Value = serde_json::from_slice(reg.body.as_ref().unwrap()).unwrap();
        let i = &v["instance"];
        assert_eq!(i["instanceId"], "10.0.0.7:orders:8080");
        assert_eq!(
            (i["app"].as_str(), i["ipAddr"].as_str(), i["status"].as_str()),
            (Some("ORDERS"), Some("10.0.0.7"), Some("UP"))
        );
        assert_eq!(i["port"]["$"], 8080);
        assert_eq!(i["dataCenterInfo"]["name"], "MyOwn");
        assert_eq!(i["leaseInfo"]["renewalIntervalInSecs"], 5);
        assert_eq!(i["metadata"]["timestamp"], "1700000000123");
        // what lossless itself reads back from such a record
        let list = format!(r#"{{"application":{{"name":"ORDERS","instance":[{i}]}}}}"#);
        let parsed = crate::registry::eureka::parse(list.as_bytes(), &c.services[0].query.build).unwrap();
        assert_eq!(parsed.instances[0].addr, "10.0.0.7:8080");
        assert_eq!(parsed.instances[0].start_ms, Some(1_700_000_000_123));
        let beat = request(e, &me, Step::Heartbeat, 0);
        assert_eq!(beat.header(":method"), Some("PUT"));
        assert_eq!(
            beat.header(":path"),
            Some("/eureka/apps/ORDERS/10.0.0.7%3Aorders%3A8080?status=UP&lastDirtyTimestamp=1700000000123")
        );
        let del = request(e, &me, Step::Deregister, 0);
        assert_eq!(
            (del.header(":method"), del.header(":path")),
            (Some("DELETE"), Some("/eureka/apps/ORDERS/10.0.0.7%3Aorders%3A8080"))
        );
        let a = |s| answer(&HttpResponse { status: Some(s), headers: &[], body: b"", body_size: 0 });
        assert_eq!((a(204), a(200), a(404)), (Answer::Ok, Answer::Ok, Answer::NotFound));
    }
}
