//! Invariants shared by the fuzz targets in `fuzz_targets/`. Each check panics (a libFuzzer crash
//! with the input saved under `fuzz/artifacts/<target>/`) when something that must hold does not.

use std::net::SocketAddr;

use lossless::instance::{Instance, State};
use lossless::membership::Snapshot;
use lossless::registry::Parsed;

/// One instance as every adapter must produce it.
pub fn check_instance(i: &Instance) {
    let sa: SocketAddr = match i.addr.parse() {
        Ok(sa) => sa,
        Err(e) => panic!("addr {:?} is not a SocketAddr: {e}", i.addr),
    };
    assert_ne!(sa.port(), 0, "addr {:?} has port 0", i.addr);
    // Envoy matches override_host / ORIGINAL_DST addresses textually: the form must be canonical.
    assert_eq!(sa.to_string(), i.addr, "addr {:?} is not in canonical form", i.addr);
    assert!(i.weight >= 0, "addr {:?}: negative weight {}", i.addr, i.weight);
    assert!(i.warmup_ms >= 0, "addr {:?}: negative warmup {}", i.addr, i.warmup_ms);
    if let Some(t) = i.start_ms {
        assert!(t > 0, "addr {:?}: start_ms {t} is not > 0", i.addr);
    }
}

/// A parsed membership list: valid instances, sorted by addr, no duplicate addr; and it survives
/// the shared-data snapshot encoding unchanged.
pub fn check_parsed(p: &Parsed) {
    for i in &p.instances {
        check_instance(i);
    }
    // host names refused for routing are named `name:port` and counted as skipped
    assert!(p.unroutable.len() <= p.skipped as usize, "{} unroutable, {} skipped", p.unroutable.len(), p.skipped);
    for u in &p.unroutable {
        let (host, port) = u.rsplit_once(':').unwrap_or_else(|| panic!("unroutable {u:?} is not name:port"));
        assert!(port.parse::<u16>().is_ok_and(|p| p != 0), "unroutable {u:?}: bad port");
        assert!(host.parse::<std::net::IpAddr>().is_err() && !host.is_empty(), "unroutable {u:?} is an IP");
    }
    for w in p.instances.windows(2) {
        if let [a, b] = w {
            assert!(a.addr < b.addr, "instances not sorted by addr or duplicate addr: {:?} then {:?}", a.addr, b.addr);
        }
    }
    let snap =
        Snapshot { version: p.instances.len() as u64, updated_ms: i64::from(p.skipped), members: p.instances.clone() };
    check_snapshot_roundtrip(&snap);
    for (k, m) in snap.members.iter().enumerate() {
        assert_eq!(snap.find(&m.addr), Some(k), "Snapshot::find({:?})", m.addr);
    }
}

/// Runs a registry parser twice: results must agree (no hidden nondeterminism) and, when Ok, pass
/// [`check_parsed`]. Errors must format without panicking.
pub fn check_parser<E: std::fmt::Display + std::fmt::Debug + PartialEq>(f: impl Fn() -> Result<Parsed, E>) {
    let a = f();
    let b = f();
    assert_eq!(a, b, "parser is not deterministic");
    match &a {
        Ok(p) => check_parsed(p),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `decode(encode(s)) == s`, and encoding is stable.
pub fn check_snapshot_roundtrip(s: &Snapshot) {
    let bytes = s.encode();
    assert!(!bytes.is_empty(), "Snapshot::encode gave nothing for {s:?}");
    match Snapshot::decode(&bytes) {
        Ok(d) => {
            assert_eq!(
                &d,
                s,
                "Snapshot round trip changed the snapshot (encoded as {:?})",
                String::from_utf8_lossy(&bytes)
            );
            assert_eq!(d.encode(), bytes, "Snapshot encoding is not stable");
        }
        Err(e) => panic!("Snapshot::decode rejected its own encoding {:?}: {e}", String::from_utf8_lossy(&bytes)),
    }
}

/// Maps a fuzzer byte onto a state.
pub fn state_of(b: u8) -> State {
    match b % 3 {
        0 => State::Serving,
        1 => State::Draining,
        _ => State::Down,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::catch_unwind;

    fn inst(addr: &str, weight: i32) -> Instance {
        Instance { addr: addr.into(), weight, start_ms: None, warmup_ms: 0, state: State::Serving }
    }
    fn parsed(v: Vec<Instance>) -> Parsed {
        Parsed { instances: v, ..Parsed::default() }
    }

    #[test]
    fn accepts_a_valid_list() {
        check_parsed(&parsed(vec![inst("10.0.0.1:80", 0), inst("10.0.0.2:80", 100), inst("[::1]:9", 7)]));
    }

    #[test]
    fn rejects_what_must_not_be() {
        let bad = [
            vec![inst("10.0.0.2:80", 1), inst("10.0.0.1:80", 1)],
            vec![inst("10.0.0.1:80", 1), inst("10.0.0.1:80", 1)],
            vec![inst("10.0.0.1:0", 1)],
            vec![inst("10.0.0.1", 1)],
            vec![inst("host:80", 1)],
            vec![inst("::1:80", 1)],
            vec![inst("10.0.0.1:80", -1)],
        ];
        for v in bad {
            let shown = format!("{v:?}");
            assert!(catch_unwind(|| check_parsed(&parsed(v))).is_err(), "accepted {shown}");
        }
    }
}
