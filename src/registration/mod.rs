//! Inbound online: the sidecar registers its own instance once the application is ready and warm,
//! keeps the registration alive, and deregisters it when draining starts. Pure code: the VM
//! dispatches the [`Step`]s [`Online::due`] returns and hands each answer to [`Online::on_answer`].
//!
//! Phases ([`Phase`]): `unready` (the readiness path, through the local cluster, has not yet
//! answered `healthy_threshold` times in a row) → `warming` (the self-warm requests) →
//! `registering` (the registry call, retried with back-off while the registry fails: the instance
//! stays unregistered) → `registered` (heartbeats every `heartbeat_ms`; a heartbeat the registry
//! answers "unknown instance" registers again; readiness keeps being checked, and
//! `unhealthy_threshold` failures in a row deregister the instance and start over) →
//! `deregistering` (draining started, or the application stopped answering) → `deregistered`
//! (draining; an undrain registers again).
//!
//! This module is the state machine and the local requests (readiness, self-warm); each
//! registry's register / renew / deregister calls and what its answers mean are its wire format:
//! [`nacos`] (Nacos 1.x/2.x/3, rnacos) and [`eureka`].
//!
//! The published metadata ([`Me::metadata`]) carries what callers read the warm-up from: the
//! configured `metadata` pairs, then the service's first configured start-time key (Dubbo's
//! `timestamp`, ms) set to the moment the instance became ready and its first warmup key
//! (`warmup`), in their units.

pub mod eureka;
pub mod nacos;

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::config::{InboundConfig, RegistrationConfig, SelfWarmConfig, ServiceConfig};
use crate::emit::json_str;
use crate::instance::Unit;
use crate::registry::HttpRequest;
use crate::stats::OnlineStats;

/// Where the instance is in going online or offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Unready,
    Warming,
    Registering,
    Registered,
    Deregistering,
    Deregistered,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unready => "unready",
            Phase::Warming => "warming",
            Phase::Registering => "registering",
            Phase::Registered => "registered",
            Phase::Deregistering => "deregistering",
            Phase::Deregistered => "deregistered",
        }
    }
}

/// One request to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `GET readiness.path` through the local cluster.
    Readiness,
    /// The i-th self-warm request (index into `self_warm.requests`, round robin).
    Warm(usize),
    Register,
    Heartbeat,
    Deregister,
}

/// What an answer meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// The registry does not know the instance (expired or never registered).
    NotFound,
    Failed(String),
}

/// Back-off of failed registry calls (ms): doubling from the first to the last.
const BACKOFF_MS: (i64, i64) = (1_000, 30_000);

/// Self-warm progress, for stats and the membership JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmProgress {
    pub sent: u32,
    pub ok: u32,
    pub failed: u32,
    pub in_flight: u32,
    pub started_ms: i64,
    /// How long self-warm took (ms), once it is over.
    pub took_ms: Option<i64>,
}

/// The registration state machine of one instance (run by the poller VM only).
#[derive(Debug, Clone)]
pub struct Online {
    pub phase: Phase,
    /// When the application became ready (the published start time), ms since the epoch.
    pub ready_ms: Option<i64>,
    pub registered_ms: Option<i64>,
    pub warm: WarmProgress,
    pub stats: OnlineStats,
    /// Readiness answers in a row: passes while unready, failures while registered.
    streak: u32,
    probe_in_flight: bool,
    call_in_flight: bool,
    next_probe_ms: i64,
    next_call_ms: i64,
    backoff_ms: i64,
    /// The deregistration under way is for a drain (else the application stopped being ready).
    for_drain: bool,
    /// The last registry failure, for the log and the membership JSON.
    pub last_error: Option<String>,
    /// The phase last written to shared data.
    pub shared: Option<Phase>,
    /// "It stays unregistered" was logged since the last registration.
    pub told: bool,
}

impl Default for Online {
    fn default() -> Self {
        Online {
            phase: Phase::Unready,
            ready_ms: None,
            registered_ms: None,
            warm: WarmProgress::default(),
            stats: OnlineStats::default(),
            streak: 0,
            probe_in_flight: false,
            call_in_flight: false,
            next_probe_ms: i64::MIN,
            next_call_ms: i64::MIN,
            backoff_ms: 0,
            for_drain: false,
            last_error: None,
            shared: None,
            told: false,
        }
    }
}

impl Online {
    /// Continues where a previous poller left off (its [`Online::encode`]d state): a registered
    /// instance keeps its start time and is only renewed; anything else starts over.
    pub fn resume(bytes: Option<&[u8]>) -> Self {
        let mut o = Online::default();
        let text = bytes.and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default();
        let mut it = text.split('|');
        let (phase, ready) = (it.next(), it.next().and_then(|v| v.parse::<i64>().ok()));
        match (phase, ready) {
            (Some("registered"), Some(t)) => {
                o.phase = Phase::Registered;
                o.ready_ms = Some(t);
                o.registered_ms = it.next().and_then(|v| v.parse().ok());
            }
            (Some("deregistered"), _) => o.phase = Phase::Deregistered,
            _ => {}
        }
        o
    }

    /// `phase|ready_ms|registered_ms|warm_sent|warm_ok|warm_failed|warm_took_ms`, shared so every
    /// VM's membership JSON shows it and a new poller resumes from it.
    pub fn encode(&self) -> String {
        let opt = |v: Option<i64>| v.map(|t| t.to_string()).unwrap_or_default();
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.phase.as_str(),
            opt(self.ready_ms),
            opt(self.registered_ms),
            self.warm.sent,
            self.warm.ok,
            self.warm.failed,
            opt(self.warm.took_ms)
        )
    }

    /// The requests due at `now_ms`. `draining`: the instance is draining (preStop, the drain
    /// endpoint, or the registry took it offline).
    pub fn due(&mut self, ib: &InboundConfig, reg: &RegistrationConfig, draining: bool, now_ms: i64) -> Vec<Step> {
        let mut out = Vec::new();
        match (self.phase, draining) {
            (Phase::Unready | Phase::Warming | Phase::Registering, true) => {
                // never registered (a register call in flight is undone once it answers)
                self.phase = if self.call_in_flight { Phase::Deregistering } else { Phase::Deregistered };
                self.for_drain = true;
                self.backoff_ms = 0;
            }
            (Phase::Registered, true) => self.deregister(true, now_ms),
            (Phase::Deregistered, false) if self.ready_ms.is_some() => {
                // undrained: the application is still ready and warm
                self.phase = Phase::Registering;
                self.next_call_ms = now_ms;
            }
            (Phase::Deregistered, false) => self.phase = Phase::Unready,
            _ => {}
        }
        let probing = matches!(self.phase, Phase::Unready | Phase::Registered);
        if probing && !self.probe_in_flight && now_ms >= self.next_probe_ms {
            self.probe_in_flight = true;
            self.next_probe_ms = now_ms + reg.readiness.interval_ms;
            out.push(Step::Readiness);
        }
        if self.phase == Phase::Warming {
            self.warm_due(ib.self_warm.as_ref(), now_ms, &mut out);
        }
        let call = match self.phase {
            Phase::Registering => Some(Step::Register),
            Phase::Registered => Some(Step::Heartbeat),
            Phase::Deregistering => Some(Step::Deregister),
            _ => None,
        };
        if let Some(step) = call.filter(|_| !self.call_in_flight && now_ms >= self.next_call_ms) {
            self.call_in_flight = true;
            out.push(step);
        }
        out
    }

    fn warm_due(&mut self, sw: Option<&SelfWarmConfig>, now_ms: i64, out: &mut Vec<Step>) {
        let Some(sw) = sw.filter(|s| !s.requests.is_empty()) else {
            self.warmed(now_ms);
            return;
        };
        let over = now_ms.saturating_sub(self.warm.started_ms) >= sw.time_limit_ms;
        if over || (self.warm.sent >= sw.count && self.warm.in_flight == 0) {
            // late answers of a timed-out self-warm are only counted
            self.warmed(now_ms);
            return;
        }
        while self.warm.sent < sw.count && self.warm.in_flight < sw.concurrency {
            out.push(Step::Warm(self.warm.sent as usize % sw.requests.len()));
            self.warm.sent += 1;
            self.warm.in_flight += 1;
        }
    }

    fn warmed(&mut self, now_ms: i64) {
        self.warm.took_ms = Some(now_ms.saturating_sub(self.warm.started_ms));
        self.phase = Phase::Registering;
        self.next_call_ms = now_ms;
    }

    fn deregister(&mut self, for_drain: bool, now_ms: i64) {
        self.phase = Phase::Deregistering;
        self.for_drain = for_drain;
        self.backoff_ms = 0;
        if !self.call_in_flight {
            self.next_call_ms = now_ms;
        }
    }

    /// A registry call that cannot be made yet (the registry's API is still being detected, or
    /// its login has not answered): asked again shortly, not counted as a failure.
    pub fn defer(&mut self, now_ms: i64) {
        self.call_in_flight = false;
        self.next_call_ms = now_ms + 200;
    }

    /// The line to log once when the instance cannot be registered yet (`None` once said).
    pub fn tell_unregistered(&mut self, why: &str, addr: &str) -> Option<String> {
        if self.told {
            return None;
        }
        self.told = true;
        Some(format!("cannot register {addr} yet ({why}); it stays unregistered, retrying with back-off"))
    }

    fn back_off(&mut self, now_ms: i64) {
        self.backoff_ms = if self.backoff_ms == 0 { BACKOFF_MS.0 } else { (self.backoff_ms * 2).min(BACKOFF_MS.1) };
        self.next_call_ms = now_ms + self.backoff_ms;
    }

    /// Applies the answer to `step`; returns true when the phase changed.
    pub fn on_answer(
        &mut self,
        reg: &RegistrationConfig,
        step: Step,
        answer: Answer,
        draining: bool,
        now_ms: i64,
    ) -> bool {
        let before = self.phase;
        match step {
            Step::Readiness => self.on_readiness(reg, answer == Answer::Ok, draining, now_ms),
            Step::Warm(_) => {
                self.warm.in_flight = self.warm.in_flight.saturating_sub(1);
                if answer == Answer::Ok {
                    self.warm.ok += 1;
                    self.stats.warm_ok += 1;
                } else {
                    self.warm.failed += 1;
                    self.stats.warm_failed += 1;
                }
            }
            Step::Register | Step::Heartbeat | Step::Deregister => {
                self.call_in_flight = false;
                self.on_call(reg, step, answer, now_ms);
            }
        }
        self.phase != before
    }

    fn on_readiness(&mut self, reg: &RegistrationConfig, ok: bool, draining: bool, now_ms: i64) {
        self.probe_in_flight = false;
        if !ok {
            self.stats.readiness_failed += 1;
        }
        match self.phase {
            Phase::Unready if ok => {
                self.streak += 1;
                if self.streak >= reg.readiness.healthy_threshold && !draining {
                    self.streak = 0;
                    self.ready_ms = Some(now_ms);
                    self.phase = Phase::Warming;
                    self.warm = WarmProgress { started_ms: now_ms, ..WarmProgress::default() };
                }
            }
            Phase::Registered if !ok => {
                self.streak += 1;
                if self.streak >= reg.readiness.unhealthy_threshold {
                    self.streak = 0;
                    self.deregister(false, now_ms);
                }
            }
            _ => self.streak = 0,
        }
    }

    fn on_call(&mut self, reg: &RegistrationConfig, step: Step, answer: Answer, now_ms: i64) {
        match (step, self.phase, answer) {
            (Step::Register, Phase::Registering, Answer::Ok) => {
                self.phase = Phase::Registered;
                self.told = false;
                self.registered_ms = Some(now_ms);
                self.stats.registrations += 1;
                self.backoff_ms = 0;
                self.last_error = None;
                self.next_call_ms = now_ms + reg.heartbeat_ms;
            }
            (Step::Register, Phase::Registering, failed) => {
                self.stats.registration_failed += 1;
                self.last_error = Some(describe(step, &answer_text(&failed)));
                self.back_off(now_ms);
            }
            (Step::Heartbeat, Phase::Registered, Answer::Ok) => {
                self.stats.heartbeats += 1;
                self.next_call_ms = now_ms + reg.heartbeat_ms;
            }
            (Step::Heartbeat, Phase::Registered, Answer::NotFound) => {
                // expired in the registry: register again with the full information
                self.stats.heartbeat_failed += 1;
                self.phase = Phase::Registering;
                self.next_call_ms = now_ms;
            }
            (Step::Heartbeat, Phase::Registered, Answer::Failed(why)) => {
                self.stats.heartbeat_failed += 1;
                self.last_error = Some(describe(step, &why));
                self.next_call_ms = now_ms + reg.heartbeat_ms.min(BACKOFF_MS.0 * 5);
            }
            (Step::Register, Phase::Deregistering, Answer::Ok) => {
                // registered while the drain began: undo it at once
                self.next_call_ms = now_ms;
            }
            (Step::Deregister, Phase::Deregistering, Answer::Ok | Answer::NotFound) => {
                self.stats.deregistrations += 1;
                self.registered_ms = None;
                self.backoff_ms = 0;
                if self.for_drain {
                    self.phase = Phase::Deregistered;
                } else {
                    self.phase = Phase::Unready;
                    self.ready_ms = None;
                    self.next_probe_ms = now_ms;
                }
            }
            (Step::Deregister, Phase::Deregistering, Answer::Failed(why)) => {
                self.last_error = Some(describe(step, &why));
                self.back_off(now_ms);
            }
            // an answer to a call of an earlier phase (e.g. a heartbeat that returned after the
            // drain began): the new phase's own call follows
            _ => self.next_call_ms = self.next_call_ms.min(now_ms),
        }
    }
}

fn answer_text(a: &Answer) -> String {
    match a {
        Answer::Ok => "ok".into(),
        Answer::NotFound => "the registry does not know the instance".into(),
        Answer::Failed(why) => why.clone(),
    }
}

fn describe(step: Step, why: &str) -> String {
    let what = match step {
        Step::Register => "registration",
        Step::Heartbeat => "heartbeat",
        _ => "deregistration",
    };
    format!("{what} failed: {why}")
}

/// Whether the shared [`Online::encode`] text says the application does not take traffic yet
/// (`unready`, `warming`, or nothing shared yet): requests get 503 `not_ready`.
pub fn not_ready(bytes: Option<&[u8]>) -> bool {
    let phase = bytes.and_then(|b| b.split(|c| *c == b'|').next()).unwrap_or_default();
    matches!(phase, b"" | b"unready" | b"warming")
}

/// The shared [`Online::encode`] text as a JSON object for the membership document:
/// `{"phase", "ready_ms", "registered_ms", "self_warm": {"sent", "ok", "failed", "took_ms"}}`
/// (`null` for what is not known yet); `None` before the poller wrote it.
pub fn status_json(bytes: Option<&[u8]>) -> Option<String> {
    let text = std::str::from_utf8(bytes?).ok()?;
    let f: Vec<&str> = text.split('|').collect();
    let [phase, ready, registered, sent, ok, failed, took] = f.as_slice() else { return None };
    let num = |v: &str| v.parse::<i64>().map_or_else(|_| "null".to_string(), |n| n.to_string());
    let mut o = String::from("{\"phase\":");
    json_str(&mut o, phase);
    let _ = write!(
        o,
        ",\"ready_ms\":{},\"registered_ms\":{},\"self_warm\":{{\"sent\":{},\"ok\":{},\"failed\":{},\"took_ms\":{}}}}}",
        num(ready),
        num(registered),
        num(sent),
        num(ok),
        num(failed),
        num(took)
    );
    Some(o)
}

/// What a local request (readiness or self-warm) answered.
pub fn local_answer(step: Step, reg: &RegistrationConfig, status: Option<u16>) -> Answer {
    let ok = match step {
        Step::Readiness => reg.readiness.passes(status),
        // self-warm: the application answered (a 5xx still warmed something, but is counted)
        _ => status.is_some_and(|s| s < 500),
    };
    if ok {
        Answer::Ok
    } else {
        Answer::Failed(status.map_or_else(|| "no answer".to_string(), |s| format!("HTTP {s}")))
    }
}

/// A local request through the local cluster: readiness or the i-th self-warm request.
pub fn local_request(step: Step, ib: &InboundConfig, reg: &RegistrationConfig) -> Option<HttpRequest> {
    let (method, path, timeout_ms) = match step {
        Step::Readiness => ("GET", reg.readiness.path.as_str(), reg.readiness.timeout_ms),
        Step::Warm(i) => {
            let sw = ib.self_warm.as_ref()?;
            let (m, p) = sw.requests.get(i)?;
            (m.as_str(), p.as_str(), sw.timeout_ms)
        }
        _ => return None,
    };
    let headers = vec![
        (":method".to_string(), method.to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "localhost".to_string()),
    ];
    Some(HttpRequest { headers, body: None, timeout_ms: u64::try_from(timeout_ms).unwrap_or(1000) })
}

/// The instance as a registry sees it.
#[derive(Debug, Clone)]
pub struct Me<'a> {
    pub ip: &'a str,
    pub port: u16,
    pub service: &'a ServiceConfig,
    pub reg: &'a RegistrationConfig,
    /// The published warmup (ms).
    pub warmup_ms: i64,
    /// The published start time (ms since the epoch).
    pub ready_ms: i64,
}

impl Me<'_> {
    /// `ip:port` split; `None` for anything else (the config validated it).
    pub fn split(addr: &str) -> Option<(&str, u16)> {
        let (ip, port) = addr.rsplit_once(':')?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        Some((ip, port.parse().ok()?))
    }

    /// The metadata to publish: the configured pairs, then the warm-up keys callers read.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = self.reg.metadata.clone();
        let keys = &self.service.query.build.keys;
        let in_unit = |ms: i64, u: Unit| match u {
            Unit::Ms => ms,
            Unit::S => ms / 1000,
        };
        if let Some(k) = keys.start_time.first() {
            m.insert(k.key.clone(), in_unit(self.ready_ms, k.unit).to_string());
        }
        if let Some(k) = keys.warmup.first() {
            m.insert(k.key.clone(), in_unit(self.warmup_ms, k.unit).to_string());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Config};

    pub(super) fn cfg(registry: &str, extra: &str) -> Config {
        let scope = if registry.contains("nacos") { r#","group":"G","namespace":"ns1""# } else { "" };
        let json = format!(
            r#"{{"mode":"inbound","inbound":{{"service":"orders","self_address":"10.0.0.7:8080","warmup_ms":120000,
                "registration":{{"local_cluster":"local_app","readiness":{{"path":"/ready","interval_ms":1000,"healthy_threshold":3,"unhealthy_threshold":2}},
                                 "heartbeat_ms":5000,"metadata":{{"version":"2"}}}}{extra}}},
              "registries":{{"r":{registry}}},
              "services":[{{"name":"orders","registry":"r"{scope}}}]}}"#
        );
        config::parse(json.as_bytes()).unwrap()
    }
    pub(super) const NACOS: &str = r#"{"type":"nacos","cluster":"registry","authority":"nacos:8848","api":"v1"}"#;
    pub(super) const NACOS3: &str = r#"{"type":"nacos","cluster":"registry","authority":"nacos:8848","api":"v3"}"#;
    pub(super) const EUREKA: &str = r#"{"type":"eureka","cluster":"registry","authority":"eureka:8761"}"#;
    const WARM: &str = r#","self_warm":{"requests":["/a","POST /b"],"count":5,"concurrency":2,"time_limit_ms":10000}"#;

    struct Run {
        c: Config,
        o: Online,
        now: i64,
    }

    impl Run {
        fn new(extra: &str) -> Run {
            Run { c: cfg(NACOS, extra), o: Online::default(), now: 1_000_000 }
        }
        fn ib(&self) -> &InboundConfig {
            self.c.settings.inbound.as_ref().unwrap()
        }
        fn due(&mut self, draining: bool) -> Vec<Step> {
            let ib = self.c.settings.inbound.clone().unwrap();
            self.o.due(&ib, ib.registration.as_ref().unwrap(), draining, self.now)
        }
        fn answer(&mut self, step: Step, a: Answer) {
            let reg = self.ib().registration.clone().unwrap();
            self.o.on_answer(&reg, step, a, false, self.now);
        }
        /// Ticks every 100 ms for `ms`, answering every step with `reply`.
        fn run(&mut self, ms: i64, draining: bool, reply: &dyn Fn(Step) -> Answer) -> Vec<Step> {
            let mut all = Vec::new();
            for _ in 0..ms / 100 {
                for s in self.due(draining) {
                    all.push(s);
                    self.answer(s, reply(s));
                }
                self.now += 100;
            }
            all
        }
    }

    fn ok(_: Step) -> Answer {
        Answer::Ok
    }

    /// unready → warming → registering → registered → deregistering → deregistered, with the
    /// readiness streak, the self-warm count and concurrency, heartbeats every `heartbeat_ms`.
    #[test]
    fn the_whole_way_online_and_off() {
        let mut r = Run::new(WARM);
        // two passes, a failure (the streak starts over), then three passes
        let n = std::cell::Cell::new(0);
        let steps = r.run(6_000, false, &|s| {
            if s == Step::Readiness {
                n.set(n.get() + 1);
                if n.get() == 3 {
                    return Answer::Failed("HTTP 503".into());
                }
            }
            Answer::Ok
        });
        let ready_at = steps.iter().position(|s| *s != Step::Readiness).unwrap();
        assert_eq!(ready_at, 6, "ready after three passes in a row: {steps:?}");
        assert_eq!(r.o.ready_ms, Some(1_000_000 + 5_000));
        let warm: Vec<&Step> = steps.iter().filter(|s| matches!(s, Step::Warm(_))).collect();
        assert_eq!(warm, [&Step::Warm(0), &Step::Warm(1), &Step::Warm(0), &Step::Warm(1), &Step::Warm(0)]);
        assert_eq!((r.o.warm.sent, r.o.warm.ok, r.o.warm.failed), (5, 5, 0));
        assert_eq!(steps.iter().filter(|s| **s == Step::Register).count(), 1);
        assert_eq!(r.o.phase, Phase::Registered);
        let beats = r.run(20_000, false, &ok).iter().filter(|s| **s == Step::Heartbeat).count();
        assert_eq!(beats, 4, "one heartbeat per 5 s");
        let off = r.run(1_000, true, &ok);
        assert_eq!(off.iter().filter(|s| **s == Step::Deregister).count(), 1);
        assert_eq!(r.o.phase, Phase::Deregistered);
        assert!(r.run(5_000, true, &ok).is_empty(), "deregistered and draining: nothing more is sent");
        assert_eq!((r.o.stats.registrations, r.o.stats.deregistrations), (1, 1));
    }

    /// The registry is down at start: the instance stays unregistered and the registration is
    /// retried with back-off (1 s doubling to 30 s); once the registry answers it registers.
    #[test]
    fn registry_down_at_start_backs_off_and_stays_unregistered() {
        let mut r = Run::new("");
        let steps = r.run(70_000, false, &|s| match s {
            Step::Register => Answer::Failed("no answer".into()),
            _ => Answer::Ok,
        });
        assert_eq!(r.o.phase, Phase::Registering);
        let tries = steps.iter().filter(|s| **s == Step::Register).count();
        // ready at 2 s; tries 0.1 s later and then 1, 3, 7, 15, 31, 61 s after that
        assert_eq!(tries, 7, "{steps:?}");
        assert!(r.o.last_error.as_deref().unwrap().contains("registration failed: no answer"));
        r.run(40_000, false, &ok);
        assert_eq!(r.o.phase, Phase::Registered);
        assert_eq!(r.o.stats.registration_failed, 7);
    }

    /// A heartbeat the registry answers "unknown instance" (Nacos 20404 / 21003, Eureka 404)
    /// registers again; other heartbeat failures keep the registration and are counted.
    #[test]
    fn expired_registration_registers_again() {
        let mut r = Run::new("");
        r.run(3_000, false, &ok);
        assert_eq!(r.o.phase, Phase::Registered);
        let steps = r.run(6_000, false, &|s| if s == Step::Heartbeat { Answer::NotFound } else { Answer::Ok });
        assert!(steps.windows(2).any(|w| w == [Step::Heartbeat, Step::Register]), "{steps:?}");
        assert_eq!((r.o.phase, r.o.stats.registrations), (Phase::Registered, 2));
        r.run(6_000, false, &|s| if s == Step::Heartbeat { Answer::Failed("HTTP 500".into()) } else { Answer::Ok });
        assert_eq!(r.o.phase, Phase::Registered);
        assert!(r.o.stats.heartbeat_failed >= 2);
    }

    /// An application that stops answering its readiness path while registered is deregistered
    /// after `unhealthy_threshold` failures in a row (a sidecar must not keep a dead application
    /// registered), and registered again, warm-up time anew, once it is ready again.
    #[test]
    fn dead_application_is_deregistered_then_registered_again() {
        let mut r = Run::new("");
        r.run(3_000, false, &ok);
        let first_ready = r.o.ready_ms;
        let steps = r.run(3_000, false, &|s| {
            if s == Step::Readiness {
                Answer::Failed("no answer".into())
            } else {
                Answer::Ok
            }
        });
        assert!(steps.contains(&Step::Deregister), "{steps:?}");
        assert_eq!(r.o.phase, Phase::Unready);
        r.run(4_000, false, &ok);
        assert_eq!(r.o.phase, Phase::Registered);
        assert!(r.o.ready_ms > first_ready, "a restarted application warms up anew");
    }

    /// A drain while the registration is in flight undoes it as soon as it lands; an undrain
    /// registers again without another readiness wait or self-warm.
    #[test]
    fn drain_during_registration_and_undrain() {
        let mut r = Run::new(WARM);
        r.run(2_200, false, &ok);
        // the register call goes out and is still in flight when the drain starts
        loop {
            let s = r.due(false);
            if s.contains(&Step::Register) {
                break;
            }
            for x in s {
                r.answer(x, Answer::Ok);
            }
            r.now += 100;
        }
        assert!(r.due(true).is_empty());
        assert_eq!(r.o.phase, Phase::Deregistering);
        r.answer(Step::Register, Answer::Ok);
        assert_eq!(r.due(true), [Step::Deregister]);
        r.answer(Step::Deregister, Answer::Ok);
        assert_eq!(r.o.phase, Phase::Deregistered);
        let warm_sent = r.o.warm.sent;
        let steps = r.run(500, false, &ok);
        assert_eq!(steps.first(), Some(&Step::Register), "{steps:?}");
        assert_eq!((r.o.phase, r.o.warm.sent), (Phase::Registered, warm_sent));
    }

    /// A deregistration the registry refuses is retried with back-off until it lands; the
    /// instance keeps draining meanwhile (nothing is registered again).
    #[test]
    fn failed_deregistration_is_retried() {
        let mut r = Run::new("");
        r.run(3_000, false, &ok);
        let steps = r.run(8_000, true, &|s| match s {
            Step::Deregister => Answer::Failed("HTTP 500".into()),
            _ => Answer::Ok,
        });
        let tries = steps.iter().filter(|s| **s == Step::Deregister).count();
        assert_eq!(tries, 4, "at once, then after 1, 2 and 4 s: {steps:?}");
        assert!(!steps.contains(&Step::Register) && !steps.contains(&Step::Heartbeat));
        assert_eq!(r.o.phase, Phase::Deregistering);
        assert!(r.o.last_error.as_deref().unwrap().starts_with("deregistration failed"));
        r.run(10_000, true, &ok);
        assert_eq!((r.o.phase, r.o.stats.deregistrations), (Phase::Deregistered, 1));
    }

    /// Self-warm ends at its time limit even when requests never answer.
    #[test]
    fn self_warm_time_limit() {
        let mut r = Run::new(r#","self_warm":{"requests":["/slow"],"count":100,"concurrency":4,"time_limit_ms":3000}"#);
        for _ in 0..80 {
            for s in r.due(false) {
                if !matches!(s, Step::Warm(_)) {
                    r.answer(s, Answer::Ok);
                }
            }
            r.now += 100;
        }
        assert_eq!(r.o.warm.sent, 4, "never more than `concurrency` at once");
        assert_eq!(r.o.warm.took_ms, Some(3_000));
        assert_eq!(r.o.phase, Phase::Registered);
    }

    /// A new poller continues a registration: same start time, heartbeats only.
    #[test]
    fn a_new_poller_resumes() {
        let mut r = Run::new("");
        r.run(3_000, false, &ok);
        let text = r.o.encode();
        let mut o = Online::resume(Some(text.as_bytes()));
        assert_eq!((o.phase, o.ready_ms), (Phase::Registered, r.o.ready_ms));
        let ib = r.ib().clone();
        let steps = o.due(&ib, ib.registration.as_ref().unwrap(), false, r.now);
        assert!(steps.contains(&Step::Heartbeat) && !steps.contains(&Step::Register), "{steps:?}");
        assert_eq!(Online::resume(Some(b"warming|5|||||")).phase, Phase::Unready);
        assert_eq!(Online::resume(None).phase, Phase::Unready);
        let j = status_json(Some(text.as_bytes())).unwrap();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["phase"], "registered");
        assert!(v["self_warm"]["took_ms"].is_u64() && v["ready_ms"].is_u64(), "{j}");
    }

    pub(super) fn me(c: &Config) -> Me<'_> {
        let ib = c.settings.inbound.as_ref().unwrap();
        Me {
            ip: "10.0.0.7",
            port: 8080,
            service: &c.services[0],
            reg: ib.registration.as_ref().unwrap(),
            warmup_ms: ib.warmup_ms,
            ready_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn refused_configs_name_the_field() {
        let bad = |registry: &str, extra: &str| {
            let json = format!(
                r#"{{"mode":"inbound","inbound":{{"service":"orders","self_address":"10.0.0.7:8080"{extra}}},
                  "registries":{{"r":{registry}}},"services":[{{"name":"orders","registry":"r"}}]}}"#
            );
            config::parse(json.as_bytes()).unwrap_err()
        };
        let consul = r#"{"type":"consul","cluster":"c","authority":"consul:8500"}"#;
        let reg = r#","registration":{"local_cluster":"app"}"#;
        for (registry, extra, path, msg) in [
            (consul, reg, "inbound.registration", "nacos or eureka"),
            (NACOS, r#","registration":{"local_cluster":""}"#, "inbound.registration.local_cluster", "Envoy cluster"),
            (
                NACOS,
                r#","registration":{"local_cluster":"a","heartbeat_ms":100}"#,
                "inbound.registration.heartbeat_ms",
                "1000 and 60000",
            ),
            (
                NACOS,
                r#","registration":{"local_cluster":"a","readiness":{"path":"ready"}}"#,
                "inbound.registration.readiness.path",
                "start with '/'",
            ),
            (NACOS, r#","self_warm":{"requests":["/"]}"#, "inbound.self_warm", "needs inbound.registration"),
            (NACOS, &format!(r#"{reg},"self_warm":{{"requests":[]}}"#), "inbound.self_warm.requests", "at least one"),
            (
                NACOS,
                &format!(r#"{reg},"self_warm":{{"requests":["/ok","DELETE /"]}}"#),
                "inbound.self_warm.requests[1]",
                "GET, HEAD",
            ),
            (
                NACOS,
                &format!(r#"{reg},"self_warm":{{"requests":["GET /a b"]}}"#),
                "inbound.self_warm.requests[0]",
                "without spaces",
            ),
            (
                NACOS,
                &format!(r#"{reg},"self_warm":{{"requests":["/"],"concurrency":0}}"#),
                "inbound.self_warm.concurrency",
                "between 1 and 64",
            ),
            (NACOS, r#","admission":{"max_rps":0}"#, "inbound.admission.max_rps", "between 1"),
            (
                NACOS,
                r#","admission":{"max_rps":10,"cold_factor":1}"#,
                "inbound.admission.cold_factor",
                "between 2 and 10",
            ),
            (NACOS, r#","warmup_ms":10"#, "inbound.warmup_ms", "between 1000"),
            (NACOS, r#","admission":{"max_rps":2}"#, "inbound.admission.max_rps", "at least cold_factor"),
        ] {
            let e = bad(registry, extra);
            assert_eq!(e.path, path, "{extra}: {e}");
            assert!(e.message.contains(msg), "{extra}: {e}");
        }
    }
}
