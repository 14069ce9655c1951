//! One registry's push session, as Nacos' Java client runs it (`GrpcClient.connectToServer`,
//! `RpcClient`, `NamingGrpcClientProxy`), over the calls of [`Grpc`]:
//!
//! 1. `ServerCheckRequest`, a unary call: the server is there and speaks gRPC;
//! 2. the bi-stream `BiRequestStream/requestBiStream` is opened and `ConnectionSetupRequest` is
//!    its first message; the server registers the connection;
//! 3. then, at the server's `SetupAckRequest` (Nacos 3, when its `ServerCheckResponse` says
//!    `supportAbilityNegotiation`; at most [`SETUP_ACK_WAIT_MS`]) or after [`SETUP_WAIT_MS`]
//!    (Nacos 2, rnacos: the Java client sleeps 100 ms), one unary `SubscribeServiceRequest` per
//!    subscription; each answer carries the current list;
//! 4. the server pushes `NotifySubscriberRequest` on the stream at each change; each is acked with
//!    `NotifySubscriberResponse` (same `requestId`), as are `ClientDetectionRequest` and
//!    `ConnectResetRequest`;
//! 5. a unary `HealthCheckRequest` goes out after [`HEALTH_CHECK_MS`] without a word from the
//!    server (under rnacos' 15 s and Nacos' 20 s detection).
//!
//! Nacos and rnacos bind a unary call to the connection it travels on and refuse it (error 301,
//! "Connection is unregistered.") unless that connection carries a set-up bi-stream: the unary
//! calls and the stream must share one HTTP/2 connection, which Envoy's per-worker connection pool
//! gives when one VM makes them all to a single-host cluster. A 301, a failed or unanswered call,
//! the stream's close, a `ConnectResetRequest` or a refused send tears the session down; it starts
//! over after a back-off of [`MIN_BACKOFF_MS`] doubling to [`MAX_BACKOFF_MS`] (±20 % jitter; reset
//! after [`STABLE_MS`] up). With `push: auto`, a server that never completed a session in 3
//! attempts is retried at most every [`AUTO_MAX_BACKOFF_MS`].

use crate::clock::Rng;

use super::wire::{self, Message, Subscription};
use super::{proto, Grpc, PushConfig, PushMode, PushStats};

/// Nacos' unary service and method (`service Request { rpc request(Payload) returns (Payload) }`).
pub const REQUEST: (&str, &str) = ("Request", "request");
/// Nacos' bi-stream service and method.
pub const BI_STREAM: (&str, &str) = ("BiRequestStream", "requestBiStream");
/// The wait after `ConnectionSetupRequest` when the server does not negotiate abilities (Nacos'
/// `GrpcClient`: `Thread.sleep(100L)`).
pub const SETUP_WAIT_MS: i64 = 100;
/// The longest wait for `SetupAckRequest` when the server negotiates.
pub const SETUP_ACK_WAIT_MS: i64 = 3000;
/// A health check goes out after this long without a word from the server.
pub const HEALTH_CHECK_MS: i64 = 10_000;
/// The first back-off after a failure.
pub const MIN_BACKOFF_MS: i64 = 1000;
/// The longest back-off.
pub const MAX_BACKOFF_MS: i64 = 30_000;
/// With `push: auto`, the longest back-off once 3 attempts in a row failed without a session.
pub const AUTO_MAX_BACKOFF_MS: i64 = 300_000;
/// A session up this long resets the back-off.
pub const STABLE_MS: i64 = 30_000;
/// A unary call unanswered this long after its own timeout is taken as failed (Envoy answers
/// every call, but a call that failed inside the host call never reaches the VM).
const CALL_SLACK_MS: i64 = 1000;

/// What a session tells the VM.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A list for the VM's services `services`: the `serviceInfo` JSON of a subscription's answer
    /// (`pushed: false`) or of a push.
    List { services: Vec<usize>, info: Vec<u8>, pushed: bool },
    /// The subscription of `services` is up: pushes come, polls may slow down.
    Live(Vec<usize>),
    /// The session is down (`reason`, for the log); `was_up`: it had been set up. Polls resume.
    Down { reason: String, was_up: bool },
    /// The server refused the token (403): a new login is due.
    Unauthorized,
    /// A message that could not be used (for the log).
    Malformed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No session; the next attempt at `retry_at` (ms).
    Idle { retry_at: i64 },
    /// `ServerCheckRequest` in flight.
    Checking,
    /// The stream is open and set up since `since`; subscriptions go out after `wait` ms or at the
    /// server's `SetupAckRequest`.
    Setup { since: i64, wait: i64 },
    /// Subscriptions sent (or live).
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    ServerCheck,
    Subscribe(usize),
    HealthCheck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    Idle,
    Asked,
    Live,
}

/// One subscription and the VM's services it feeds.
#[derive(Debug, Clone)]
struct Sub {
    sub: Subscription,
    services: Vec<usize>,
    state: SubState,
}

/// The push session of one registry. Only the poller VM runs one; [`Session::stop`] ends it when
/// the poller lease moves.
#[derive(Debug)]
pub struct Session {
    cfg: PushConfig,
    /// `tenant` of the setup: the namespace of the first subscription.
    tenant: String,
    subs: Vec<Sub>,
    phase: Phase,
    stream: Option<u32>,
    /// Unary calls in flight: token, purpose, when to give up on it.
    calls: Vec<(u32, Call, i64)>,
    seq: u64,
    backoff_ms: i64,
    /// Attempts in a row that ended before a session was set up.
    failures: u32,
    ever_up: bool,
    up_since: i64,
    /// When the server last said anything (a reply or a stream message).
    heard_ms: i64,
    /// The registry's access token, when one is held (sent in `metadata.headers`).
    token: Option<String>,
    /// Whether the registry needs a token: no session starts without one.
    needs_token: bool,
    pub stats: PushStats,
}

impl Session {
    /// A session for `subs`: each subscription with the VM's services it feeds.
    pub fn new(cfg: PushConfig, subs: Vec<(Subscription, Vec<usize>)>, needs_token: bool) -> Session {
        let tenant = subs.first().map(|(s, _)| s.namespace.clone()).unwrap_or_default();
        Session {
            cfg,
            tenant,
            subs: subs.into_iter().map(|(sub, services)| Sub { sub, services, state: SubState::Idle }).collect(),
            phase: Phase::Idle { retry_at: 0 },
            stream: None,
            calls: Vec::new(),
            seq: 0,
            backoff_ms: MIN_BACKOFF_MS,
            failures: 0,
            ever_up: false,
            up_since: 0,
            heard_ms: 0,
            token: None,
            needs_token,
            stats: PushStats::default(),
        }
    }

    /// The session's settings.
    pub fn config(&self) -> &PushConfig {
        &self.cfg
    }

    /// The registry's current access token (`None`: none held).
    pub fn set_token(&mut self, token: Option<&str>) {
        if self.token.as_deref() != token {
            self.token = token.map(str::to_string);
        }
    }

    /// Set up: the stream is open and the subscriptions were sent.
    pub fn connected(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// The VM's service `svc` is fed by a live subscription.
    pub fn live(&self, svc: usize) -> bool {
        self.phase == Phase::Ready && self.subs.iter().any(|s| s.state == SubState::Live && s.services.contains(&svc))
    }

    /// When the next attempt is due, while idle.
    pub fn retry_at(&self) -> Option<i64> {
        match self.phase {
            Phase::Idle { retry_at } => Some(retry_at),
            _ => None,
        }
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    /// A unary call, remembered under its token; a refusal tears the session down.
    fn call(&mut self, g: &dyn Grpc, what: Call, message: &[u8], now: i64) -> Result<(), String> {
        let (service, method) = REQUEST;
        let token = g
            .call(&self.cfg.cluster, service, method, message, self.cfg.timeout_ms)
            .map_err(|e| format!("the host refused a call on cluster '{}': {e}", self.cfg.cluster))?;
        let deadline =
            now.saturating_add(i64::try_from(self.cfg.timeout_ms).unwrap_or(i64::MAX)).saturating_add(CALL_SLACK_MS);
        self.calls.push((token, what, deadline));
        Ok(())
    }

    /// Sends on the stream; a refusal tears the session down.
    fn send(&mut self, g: &dyn Grpc, message: &[u8]) -> Result<(), String> {
        let stream = self.stream.ok_or_else(|| "no stream".to_string())?;
        g.send(stream, message).map_err(|e| format!("the host refused to send on the stream: {e}"))
    }

    /// The periodic work at `now`: an attempt when one is due, the subscriptions when the setup
    /// wait is over, a health check when the server has been quiet, a call that got no answer.
    pub fn tick(&mut self, g: &dyn Grpc, now: i64, rng: &mut Rng) -> Vec<Event> {
        if self.calls.iter().any(|(_, _, deadline)| now > *deadline) {
            return self.teardown(g, "a call got no answer in time".into(), now, rng);
        }
        let step = match self.phase {
            Phase::Idle { retry_at } if now >= retry_at => {
                if self.needs_token && self.token.is_none() {
                    // the registry's login (made by the HTTP path) comes first
                    return Vec::new();
                }
                let msg = wire::server_check(&self.next_id());
                self.call(g, Call::ServerCheck, &msg, now).map(|()| {
                    self.phase = Phase::Checking;
                    Vec::new()
                })
            }
            Phase::Setup { since, wait } if now.saturating_sub(since) >= wait => self.subscribe_all(g, now),
            Phase::Ready
                if now.saturating_sub(self.heard_ms) >= HEALTH_CHECK_MS
                    && !self.calls.iter().any(|(_, c, _)| *c == Call::HealthCheck) =>
            {
                let msg = wire::health_check(&self.next_id(), self.token.as_deref());
                self.call(g, Call::HealthCheck, &msg, now).map(|()| Vec::new())
            }
            _ => Ok(Vec::new()),
        };
        step.unwrap_or_else(|why| self.teardown(g, why, now, rng))
    }

    /// Setup done: one subscription call each.
    fn subscribe_all(&mut self, g: &dyn Grpc, now: i64) -> Result<Vec<Event>, String> {
        self.phase = Phase::Ready;
        self.up_since = now;
        self.heard_ms = now;
        for i in 0..self.subs.len() {
            let Some(s) = self.subs.get(i).filter(|s| s.state == SubState::Idle) else { continue };
            let msg = wire::subscribe(&(self.seq + 1).to_string(), &s.sub, self.token.as_deref());
            self.seq += 1;
            self.call(g, Call::Subscribe(i), &msg, now)?;
            if let Some(s) = self.subs.get_mut(i) {
                s.state = SubState::Asked;
            }
        }
        Ok(Vec::new())
    }

    /// The answer to a unary call `token` (`status`: its gRPC status, 0 = OK; `body`: the
    /// message). `None` when the token is not this session's.
    pub fn on_call_reply(
        &mut self,
        g: &dyn Grpc,
        token: u32,
        status: u32,
        body: &[u8],
        now: i64,
        rng: &mut Rng,
    ) -> Option<Vec<Event>> {
        let at = self.calls.iter().position(|(t, _, _)| *t == token)?;
        let (_, what, _) = self.calls.remove(at);
        self.heard_ms = now;
        let step = self.reply(g, what, status, body, now);
        Some(match step {
            Ok(events) => events,
            Err((why, unauthorized)) => {
                let mut out = if unauthorized { vec![Event::Unauthorized] } else { Vec::new() };
                out.extend(self.teardown(g, why, now, rng));
                out
            }
        })
    }

    fn reply(
        &mut self,
        g: &dyn Grpc,
        what: Call,
        status: u32,
        body: &[u8],
        now: i64,
    ) -> Result<Vec<Event>, (String, bool)> {
        let name = match what {
            Call::ServerCheck => "ServerCheckRequest",
            Call::Subscribe(_) => "SubscribeServiceRequest",
            Call::HealthCheck => "HealthCheckRequest",
        };
        if status != 0 {
            return Err((format!("{name} failed with gRPC status {status} ({})", grpc_status_name(status)), false));
        }
        let p = proto::decode(body).map_err(|e| (format!("{name}: {e}"), false))?;
        let m = Message::parse(p.body).ok_or_else(|| (format!("{name}: the answer {} is not JSON", p.kind), false))?;
        if !m.ok() || p.kind == "ErrorResponse" {
            let unauthorized = m.error_code == Some(wire::NO_RIGHT) || m.result_code == Some(wire::NO_RIGHT);
            return Err((format!("{name} answered {}", m.error()), unauthorized));
        }
        match what {
            Call::ServerCheck if self.phase == Phase::Checking => {
                let (service, method) = BI_STREAM;
                let stream = g.open(&self.cfg.cluster, service, method).map_err(|e| {
                    (format!("the host refused to open a stream on cluster '{}': {e}", self.cfg.cluster), false)
                })?;
                self.stream = Some(stream);
                self.stats.stream_opened += 1;
                let setup = wire::setup(&self.next_id(), &self.tenant, self.token.as_deref());
                self.send(g, &setup).map_err(|e| (e, false))?;
                let wait = if m.support_ability_negotiation == Some(true) { SETUP_ACK_WAIT_MS } else { SETUP_WAIT_MS };
                self.phase = Phase::Setup { since: now, wait };
                Ok(Vec::new())
            }
            Call::Subscribe(i) => {
                let Some(s) = self.subs.get_mut(i).filter(|s| s.state == SubState::Asked) else {
                    return Ok(Vec::new());
                };
                s.state = SubState::Live;
                let services = s.services.clone();
                let mut out = Vec::new();
                if let Some(info) = m.service_info {
                    out.push(Event::List {
                        services: services.clone(),
                        info: info.get().as_bytes().to_vec(),
                        pushed: false,
                    });
                }
                out.push(Event::Live(services));
                Ok(out)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// A message on stream `token`; `None` when it is not this session's stream.
    pub fn on_stream_message(
        &mut self,
        g: &dyn Grpc,
        token: u32,
        body: &[u8],
        now: i64,
        rng: &mut Rng,
    ) -> Option<Vec<Event>> {
        if self.stream != Some(token) {
            return None;
        }
        self.heard_ms = now;
        let p = match proto::decode(body) {
            Ok(p) => p,
            Err(e) => return Some(vec![Event::Malformed(e.to_string())]),
        };
        let Some(m) = Message::parse(p.body) else {
            return Some(vec![Event::Malformed(format!("a {} that is not JSON", p.kind))]);
        };
        let request_id = m.request_id.as_deref().unwrap_or_default();
        let step = match p.kind {
            "NotifySubscriberRequest" => {
                let ack = wire::ack("NotifySubscriberResponse", request_id);
                self.send(g, &ack).map(|()| {
                    self.stats.acks += 1;
                    self.pushed(&m)
                })
            }
            "ClientDetectionRequest" => {
                self.send(g, &wire::ack("ClientDetectionResponse", request_id)).map(|()| Vec::new())
            }
            "ConnectResetRequest" => {
                let sent = self.send(g, &wire::ack("ConnectResetResponse", request_id));
                let backoff = self.backoff_ms;
                let out = self.teardown(g, "the server asked to reconnect (ConnectResetRequest)".into(), now, rng);
                if sent.is_ok() {
                    // asked, not failed: the back-off stays where it was, and the next attempt
                    // comes after the shortest one (a server that keeps asking is not hammered)
                    self.phase = Phase::Idle { retry_at: now.saturating_add(MIN_BACKOFF_MS) };
                    self.backoff_ms = backoff;
                }
                return Some(out);
            }
            "SetupAckRequest" if matches!(self.phase, Phase::Setup { .. }) => self.subscribe_all(g, now),
            _ => Ok(Vec::new()),
        };
        Some(step.unwrap_or_else(|why| self.teardown(g, why, now, rng)))
    }

    /// The lists a `NotifySubscriberRequest` brings: to each subscription of its service.
    fn pushed(&self, m: &Message<'_>) -> Vec<Event> {
        let Some(info) = m.service_info else {
            return vec![Event::Malformed("a NotifySubscriberRequest without serviceInfo".into())];
        };
        let Some((group, service)) = wire::pushed_service(m) else {
            return vec![Event::Malformed("a NotifySubscriberRequest that names no service".into())];
        };
        let namespace = m.namespace.as_deref().filter(|n| !n.is_empty());
        let mut out = Vec::new();
        for s in self.subs.iter().filter(|s| s.state != SubState::Idle) {
            let ns_ok = namespace
                .is_none_or(|n| n == s.sub.namespace || (n == wire::DEFAULT_NAMESPACE && s.sub.namespace.is_empty()));
            if s.sub.group == group && s.sub.service == service && ns_ok {
                out.push(Event::List {
                    services: s.services.clone(),
                    info: info.get().as_bytes().to_vec(),
                    pushed: true,
                });
            }
        }
        if out.is_empty() {
            out.push(Event::Malformed(format!("a push for '{group}@@{service}', which is not subscribed")));
        }
        out
    }

    /// Stream `token` closed (`status`: its gRPC status); `None` when it is not this session's.
    pub fn on_stream_close(
        &mut self,
        g: &dyn Grpc,
        token: u32,
        status: u32,
        now: i64,
        rng: &mut Rng,
    ) -> Option<Vec<Event>> {
        if self.stream != Some(token) {
            return None;
        }
        self.stream = None;
        self.stats.stream_closed += 1;
        Some(self.teardown(
            g,
            format!("the stream closed with gRPC status {status} ({})", grpc_status_name(status)),
            now,
            rng,
        ))
    }

    /// Ends the session (the stream reset, calls cancelled) and schedules the next attempt after
    /// the back-off.
    fn teardown(&mut self, g: &dyn Grpc, reason: String, now: i64, rng: &mut Rng) -> Vec<Event> {
        let was_up = self.phase == Phase::Ready;
        self.cancel_all(g);
        if was_up {
            self.ever_up = true;
            self.failures = 0;
            if now.saturating_sub(self.up_since) >= STABLE_MS {
                self.backoff_ms = MIN_BACKOFF_MS;
            }
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        let spread = self.backoff_ms / 5;
        let delay = self.backoff_ms - spread
            + i64::try_from(rng.below(u64::try_from(2 * spread + 1).unwrap_or(1))).unwrap_or(0);
        let cap = if self.cfg.mode == PushMode::Auto && !self.ever_up && self.failures >= 3 {
            AUTO_MAX_BACKOFF_MS
        } else {
            MAX_BACKOFF_MS
        };
        self.backoff_ms = self.backoff_ms.saturating_mul(2).min(cap);
        self.phase = Phase::Idle { retry_at: now.saturating_add(delay) };
        vec![Event::Down { reason, was_up }]
    }

    /// Resets the stream and cancels the calls in flight; every subscription is to be made again.
    fn cancel_all(&mut self, g: &dyn Grpc) {
        if let Some(t) = self.stream.take() {
            g.cancel(t);
            self.stats.stream_closed += 1;
        }
        for (t, _, _) in self.calls.drain(..) {
            g.cancel(t);
        }
        for s in &mut self.subs {
            s.state = SubState::Idle;
        }
    }

    /// This VM no longer polls (the lease moved): the session ends at once, and a new one starts
    /// without delay if the lease comes back.
    pub fn stop(&mut self, g: &dyn Grpc) {
        if self.phase != (Phase::Idle { retry_at: 0 }) || self.stream.is_some() || !self.calls.is_empty() {
            self.cancel_all(g);
            self.phase = Phase::Idle { retry_at: 0 };
            self.backoff_ms = MIN_BACKOFF_MS;
        }
    }
}

/// gRPC's name of a status code (for logs).
pub fn grpc_status_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        16 => "UNAUTHENTICATED",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::proto;
    use crate::push::testing::Fake;

    const T0: i64 = 1_800_000_000_000;

    fn cfg(mode: PushMode) -> PushConfig {
        PushConfig { cluster: "nacos-grpc".into(), mode, reconcile_interval_ms: 30_000, timeout_ms: 1500 }
    }

    fn sub(service: &str) -> Subscription {
        Subscription {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            service: service.into(),
            clusters: String::new(),
        }
    }

    /// A session over two subscriptions (services 0 and 2 share the first).
    fn session(mode: PushMode) -> Session {
        Session::new(cfg(mode), vec![(sub("orders"), vec![0, 2]), (sub("users"), vec![1])], false)
    }

    fn reply(kind: &str, json: &str) -> Vec<u8> {
        proto::encode(kind, &[], json.as_bytes())
    }

    fn info(service: &str, ips: &[&str]) -> String {
        let hosts: Vec<String> =
            ips.iter().map(|ip| format!(r#"{{"ip":"{ip}","port":80,"healthy":true,"enabled":true}}"#)).collect();
        format!(r#"{{"name":"{service}","groupName":"DEFAULT_GROUP","hosts":[{}],"lastRefTime":1}}"#, hosts.join(","))
    }

    /// Drives a session to live subscriptions; returns the stream token.
    fn establish(s: &mut Session, g: &Fake, rng: &mut Rng, now: i64) -> u32 {
        assert!(s.tick(g, now, rng).is_empty());
        let (check, _) = *g.calls_of("ServerCheckRequest").last().unwrap();
        let ok = reply("ServerCheckResponse", r#"{"resultCode":200,"errorCode":0,"connectionId":"c1"}"#);
        assert_eq!(s.on_call_reply(g, check, 0, &ok, now + 5, rng), Some(vec![]));
        let stream = *g.opened.borrow().last().unwrap();
        assert!(!s.connected());
        s.tick(g, now + 105, rng);
        assert!(s.connected());
        let subs = g.calls_of("SubscribeServiceRequest");
        for (token, body) in subs.iter().rev().take(2) {
            let name = body["serviceName"].as_str().unwrap();
            let ans = reply(
                "SubscribeServiceResponse",
                &format!(r#"{{"resultCode":200,"serviceInfo":{}}}"#, info(name, &["10.0.0.1"])),
            );
            let ev = s.on_call_reply(g, *token, 0, &ans, now + 110, rng).unwrap();
            assert!(matches!(ev.last(), Some(Event::Live(_))), "{ev:?}");
        }
        stream
    }

    /// The Java client's sequence: ServerCheck (unary), the stream with ConnectionSetupRequest
    /// first, 100 ms, one SubscribeServiceRequest per subscription on the unary path; each
    /// answer's list goes to the services it feeds.
    #[test]
    fn sets_up_as_the_java_client_does() {
        let (g, mut rng) = (Fake::default(), Rng::new(1));
        let mut s = session(PushMode::On);
        assert!(s.tick(&g, T0, &mut rng).is_empty());
        let checks = g.calls_of("ServerCheckRequest");
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].1["module"], "internal");
        // nothing else until the server answered
        s.tick(&g, T0 + 50, &mut rng);
        assert_eq!(g.calls.borrow().len(), 1);
        assert!(g.opened.borrow().is_empty());
        let ok = reply(
            "ServerCheckResponse",
            r#"{"resultCode":200,"errorCode":0,"message":"","requestId":"","connectionId":"1_127.0.0.1:1"}"#,
        );
        assert_eq!(s.on_call_reply(&g, checks[0].0, 0, &ok, T0 + 60, &mut rng), Some(vec![]));
        let stream = g.opened.borrow()[0];
        let setup = g.sent_of("ConnectionSetupRequest");
        assert_eq!(setup.len(), 1);
        assert_eq!(setup[0]["labels"], serde_json::json!({"source":"sdk","module":"naming"}));
        assert_eq!((setup[0]["tenant"].as_str(), setup[0]["abilityTable"].is_object()), (Some("public"), true));
        assert!(g.sent.borrow().iter().all(|(t, _, _)| *t == stream));
        // rnacos and Nacos 2 do not negotiate: subscriptions after 100 ms, not before
        s.tick(&g, T0 + 159, &mut rng);
        assert!(g.calls_of("SubscribeServiceRequest").is_empty());
        s.tick(&g, T0 + 160, &mut rng);
        let subs = g.calls_of("SubscribeServiceRequest");
        let names: Vec<&str> = subs.iter().map(|(_, b)| b["serviceName"].as_str().unwrap()).collect();
        assert_eq!(names, ["orders", "users"]);
        assert_eq!(subs[0].1["subscribe"], true);
        assert!(s.connected() && !s.live(0));
        let ans = reply(
            "SubscribeServiceResponse",
            &format!(r#"{{"resultCode":200,"serviceInfo":{}}}"#, info("orders", &["10.0.0.1", "10.0.0.2"])),
        );
        let ev = s.on_call_reply(&g, subs[0].0, 0, &ans, T0 + 170, &mut rng).unwrap();
        let Event::List { services, info: body, pushed: false } = &ev[0] else { panic!("{ev:?}") };
        assert_eq!(services, &[0, 2]);
        assert!(String::from_utf8_lossy(body).contains("10.0.0.2"));
        assert_eq!(ev[1], Event::Live(vec![0, 2]));
        assert!(s.live(0) && s.live(2) && !s.live(1));
        assert_eq!(s.stats.stream_opened, 1);
    }

    /// Nacos 3 negotiates abilities: its SetupAckRequest starts the subscriptions at once; without
    /// it they go after 3 s.
    #[test]
    fn nacos_3_setup_ack_starts_the_subscriptions() {
        let (g, mut rng) = (Fake::default(), Rng::new(1));
        for ack in [true, false] {
            let mut s = session(PushMode::On);
            s.tick(&g, T0, &mut rng);
            let check = g.calls_of("ServerCheckRequest").last().unwrap().0;
            let ok = reply(
                "ServerCheckResponse",
                r#"{"resultCode":200,"connectionId":"c","supportAbilityNegotiation":true}"#,
            );
            s.on_call_reply(&g, check, 0, &ok, T0, &mut rng);
            let stream = *g.opened.borrow().last().unwrap();
            let before = g.calls_of("SubscribeServiceRequest").len();
            s.tick(&g, T0 + 500, &mut rng);
            assert_eq!(g.calls_of("SubscribeServiceRequest").len(), before, "waits for the ack");
            if ack {
                let m = reply("SetupAckRequest", r#"{"abilityTable":{},"requestId":"1","module":"internal"}"#);
                assert_eq!(s.on_stream_message(&g, stream, &m, T0 + 600, &mut rng), Some(vec![]));
                assert!(g.sent_of("SetupAckResponse").is_empty(), "sent without ack");
            } else {
                s.tick(&g, T0 + SETUP_ACK_WAIT_MS, &mut rng);
            }
            assert_eq!(g.calls_of("SubscribeServiceRequest").len(), before + 2);
        }
    }

    /// Each push is acknowledged with its requestId and goes to the services of its subscription;
    /// the server's detection is answered.
    #[test]
    fn acks_pushes_and_answers_detection() {
        let (g, mut rng) = (Fake::default(), Rng::new(1));
        let mut s = session(PushMode::On);
        let stream = establish(&mut s, &g, &mut rng, T0);
        // rnacos' notify names the service; Nacos' names it in serviceInfo only
        let rn = format!(
            r#"{{"module":"naming","requestId":"41","headers":{{}},"namespace":"public","serviceName":"users","groupName":"DEFAULT_GROUP","serviceInfo":{}}}"#,
            info("users", &["10.0.0.7"])
        );
        let ev = s.on_stream_message(&g, stream, &reply("NotifySubscriberRequest", &rn), T0 + 1000, &mut rng).unwrap();
        let Event::List { services, pushed: true, .. } = &ev[0] else { panic!("{ev:?}") };
        assert_eq!(services, &[1]);
        let nacos = format!(r#"{{"requestId":"42","serviceInfo":{}}}"#, info("DEFAULT_GROUP@@orders", &[]));
        let ev =
            s.on_stream_message(&g, stream, &reply("NotifySubscriberRequest", &nacos), T0 + 1001, &mut rng).unwrap();
        assert!(matches!(&ev[..], [Event::List { services, pushed: true, .. }] if services == &[0, 2]), "{ev:?}");
        let acks = g.sent_of("NotifySubscriberResponse");
        assert_eq!(
            acks,
            [
                serde_json::json!({"resultCode":200,"errorCode":0,"requestId":"41"}),
                serde_json::json!({"resultCode":200,"errorCode":0,"requestId":"42"})
            ]
        );
        assert_eq!(s.stats.acks, 2);
        // a push of another namespace or service is acked and reported, not applied
        let other = format!(
            r#"{{"requestId":"43","namespace":"dev","serviceName":"users","serviceInfo":{}}}"#,
            info("users", &[])
        );
        let ev =
            s.on_stream_message(&g, stream, &reply("NotifySubscriberRequest", &other), T0 + 1002, &mut rng).unwrap();
        assert!(matches!(&ev[..], [Event::Malformed(_)]), "{ev:?}");
        assert_eq!(s.stats.acks, 3);
        let ev = s.on_stream_message(
            &g,
            stream,
            &reply("ClientDetectionRequest", r#"{"requestId":"9","module":"internal"}"#),
            T0 + 1003,
            &mut rng,
        );
        assert_eq!(ev, Some(vec![]));
        assert_eq!(g.sent_of("ClientDetectionResponse")[0]["requestId"], "9");
        // garbage on the stream is reported and changes nothing
        let ev = s.on_stream_message(&g, stream, b"\xff\xff", T0 + 1004, &mut rng).unwrap();
        assert!(matches!(&ev[..], [Event::Malformed(_)]));
        assert!(s.connected());
        // another stream's message is not this session's
        assert_eq!(s.on_stream_message(&g, stream + 2, &reply("ClientDetectionRequest", "{}"), T0, &mut rng), None);
    }

    /// 301 ("Connection is unregistered.": the unary call went on another connection than the
    /// stream), a closed stream, a failed call, a refused send: torn down, retried after a
    /// back-off that doubles from 1 s to 30 s, and everything is made again.
    #[test]
    fn tears_down_and_retries_with_back_off() {
        let (g, mut rng) = (Fake::default(), Rng::new(1));
        let mut s = session(PushMode::On);
        let stream = establish(&mut s, &g, &mut rng, T0);
        // a health check after 10 s of silence, answered with 301
        let t = T0 + 110 + HEALTH_CHECK_MS;
        s.tick(&g, t - 1, &mut rng);
        assert!(g.calls_of("HealthCheckRequest").is_empty());
        s.tick(&g, t, &mut rng);
        let hc = g.calls_of("HealthCheckRequest")[0].0;
        s.tick(&g, t + 100, &mut rng);
        assert_eq!(g.calls_of("HealthCheckRequest").len(), 1, "one in flight at a time");
        let unregistered = reply(
            "ErrorResponse",
            r#"{"resultCode":500,"errorCode":301,"message":"Connection is unregistered.","requestId":null}"#,
        );
        let ev = s.on_call_reply(&g, hc, 0, &unregistered, t + 200, &mut rng).unwrap();
        let [Event::Down { reason, was_up: true }] = &ev[..] else { panic!("{ev:?}") };
        assert!(reason.contains("301"), "{reason}");
        assert!(g.cancelled.borrow().contains(&stream), "the stream is reset");
        assert!(!s.connected() && !s.live(0));
        // first retry after 1 s ± 20 %
        let retry = s.retry_at().unwrap() - (t + 200);
        assert!((800..=1200).contains(&retry), "{retry}");
        // then each failure doubles it, up to 30 s
        let mut delays = Vec::new();
        for _ in 0..8 {
            let now = s.retry_at().unwrap();
            s.tick(&g, now, &mut rng);
            let check = g.calls_of("ServerCheckRequest").last().unwrap().0;
            let ev = s.on_call_reply(&g, check, 14, b"", now + 1, &mut rng).unwrap();
            assert!(matches!(&ev[..], [Event::Down { was_up: false, .. }]), "{ev:?}");
            delays.push(s.retry_at().unwrap() - now - 1);
        }
        let base = [2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000];
        for (d, b) in delays.iter().zip(base) {
            assert!((b * 4 / 5..=b * 6 / 5).contains(d), "{delays:?}");
        }
        // a stream that closes tears down too; after 30 s up, the back-off starts over at 1 s
        let mut now = s.retry_at().unwrap();
        let stream = establish(&mut s, &g, &mut rng, now);
        now += STABLE_MS + 200;
        let ev = s.on_stream_close(&g, stream, 14, now, &mut rng).unwrap();
        assert!(matches!(&ev[..], [Event::Down { was_up: true, .. }]));
        assert!((800..=1200).contains(&(s.retry_at().unwrap() - now)));
        // a refused send (the stream is gone) and a refused call tear down as well
        now = s.retry_at().unwrap();
        let stream = establish(&mut s, &g, &mut rng, now);
        *g.refuse_sends.borrow_mut() = true;
        let push = format!(r#"{{"requestId":"1","serviceName":"users","serviceInfo":{}}}"#, info("users", &[]));
        let ev =
            s.on_stream_message(&g, stream, &reply("NotifySubscriberRequest", &push), now + 200, &mut rng).unwrap();
        assert!(matches!(&ev[..], [Event::Down { .. }]), "{ev:?}");
        *g.refuse_sends.borrow_mut() = false;
        *g.refuse_calls.borrow_mut() = true;
        let ev = s.tick(&g, s.retry_at().unwrap(), &mut rng);
        assert!(matches!(&ev[..], [Event::Down { reason, .. }] if reason.contains("refused")), "{ev:?}");
    }

    /// A call the host accepted but never answered is given up after its timeout.
    #[test]
    fn an_unanswered_call_is_a_failure() {
        let (g, mut rng) = (Fake::default(), Rng::new(1));
        let mut s = session(PushMode::On);
        s.tick(&g, T0, &mut rng);
        assert!(s.tick(&g, T0 + 1500 + CALL_SLACK_MS, &mut rng).is_empty());
        let ev = s.tick(&g, T0 + 1501 + CALL_SLACK_MS, &mut rng);
        assert!(matches!(&ev[..], [Event::Down { reason, .. }] if reason.contains("no answer")), "{ev:?}");
        let check = g.calls_of("ServerCheckRequest")[0].0;
        assert!(g.cancelled.borrow().contains(&check));
        // its late answer is no longer this session's
        assert_eq!(s.on_call_reply(&g, check, 0, b"", T0 + 5000, &mut rng), None);
    }

    /// `auto`: a server that never set up a session is tried less and less often, up to every
    /// 5 minutes; `on` keeps trying every 30 s.
    #[test]
    fn auto_backs_off_further_from_a_server_without_grpc() {
        for (mode, cap) in [(PushMode::Auto, AUTO_MAX_BACKOFF_MS), (PushMode::On, MAX_BACKOFF_MS)] {
            let (g, mut rng) = (Fake::default(), Rng::new(1));
            let mut s = session(mode);
            let mut now = T0;
            let mut last = 0;
            for _ in 0..12 {
                s.tick(&g, now, &mut rng);
                let check = g.calls_of("ServerCheckRequest").last().unwrap().0;
                s.on_call_reply(&g, check, 12, b"", now, &mut rng);
                last = s.retry_at().unwrap() - now;
                now = s.retry_at().unwrap();
            }
            assert!((cap * 4 / 5..=cap * 6 / 5).contains(&last), "{mode:?}: {last}");
        }
    }

    /// The token goes into every request's metadata; a 403 asks for a new login; without a token
    /// (credentials configured) no session starts.
    #[test]
    fn auth_token_in_metadata_and_refusal() {
        let (g, mut rng) = (Fake::default(), Rng::new(1));
        let mut s = Session::new(cfg(PushMode::On), vec![(sub("orders"), vec![0])], true);
        assert!(s.tick(&g, T0, &mut rng).is_empty());
        assert!(g.calls.borrow().is_empty(), "waits for the login");
        s.set_token(Some("tok-1"));
        s.tick(&g, T0 + 100, &mut rng);
        let check = g.calls_of("ServerCheckRequest")[0].0;
        s.on_call_reply(&g, check, 0, &reply("ServerCheckResponse", r#"{"resultCode":200}"#), T0 + 100, &mut rng);
        s.tick(&g, T0 + 200, &mut rng);
        let subscribe = g.calls.borrow().iter().find(|c| c.1 == "SubscribeServiceRequest").cloned().unwrap();
        assert!(subscribe.3, "accessToken in metadata.headers");
        let refused = reply("ErrorResponse", r#"{"resultCode":500,"errorCode":403,"message":"unknown user!"}"#);
        let ev = s.on_call_reply(&g, subscribe.0, 0, &refused, T0 + 300, &mut rng).unwrap();
        assert_eq!(ev[0], Event::Unauthorized);
        assert!(matches!(ev[1], Event::Down { .. }));
    }

    /// The lease moved: everything is cancelled at once; a regained lease starts again without
    /// delay. A ConnectResetRequest is acked and reconnects after the shortest back-off.
    #[test]
    fn stop_and_connect_reset() {
        let (g, mut rng) = (Fake::default(), Rng::new(1));
        let mut s = session(PushMode::On);
        let stream = establish(&mut s, &g, &mut rng, T0);
        let hc_before = g.calls.borrow().len();
        s.stop(&g);
        assert!(g.cancelled.borrow().contains(&stream) && !s.connected());
        assert_eq!(s.retry_at(), Some(0));
        let cancelled = g.cancelled.borrow().len();
        s.stop(&g);
        assert_eq!(g.cancelled.borrow().len(), cancelled, "stopping twice cancels nothing more");
        assert_eq!(g.calls.borrow().len(), hc_before);
        let stream = establish(&mut s, &g, &mut rng, T0 + 5000);
        let ev = s
            .on_stream_message(
                &g,
                stream,
                &reply("ConnectResetRequest", r#"{"requestId":"3","serverIp":"10.0.0.2","serverPort":"9848"}"#),
                T0 + 6000,
                &mut rng,
            )
            .unwrap();
        assert!(matches!(&ev[..], [Event::Down { .. }]));
        assert_eq!(g.sent_of("ConnectResetResponse")[0]["requestId"], "3");
        assert_eq!(s.retry_at(), Some(T0 + 6000 + MIN_BACKOFF_MS));
    }
}
