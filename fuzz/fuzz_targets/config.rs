//! `config::parse`: never panics, and a configuration it accepts satisfies what `validate`
//! promises (every index in range, every bound checked); every adapter can build its first request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossless::config::{parse, Mode, RegistryKind, RoutingMode};
use lossless::registry::{Adapter, Cursor, Session};

fn valid_header(h: &str) -> bool {
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fuzz_target!(|data: &[u8]| {
    let c = match parse(data) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let st = &c.settings;
    assert!((100..=3_600_000).contains(&st.refresh_interval_ms));
    assert!(st.jitter_percent <= 50);
    assert!((10..=10_000).contains(&st.weight_refresh_ms));
    assert!(!c.registries.is_empty() && !c.services.is_empty());
    assert!(st.drain.retry_after_s <= 3600);
    assert!(valid_header(&st.drain.header));
    assert!(st.drain.pin_header.as_deref().is_none_or(valid_header));
    assert!(st.admin_prefix.starts_with('/') && st.admin_prefix.len() >= 2 && !st.admin_prefix.ends_with('/'));
    match (&st.mode, &st.inbound) {
        (Mode::Outbound, None) => {}
        (Mode::Inbound, Some(ib)) => {
            assert!(ib.service < c.services.len());
            let sa: std::net::SocketAddr = ib.self_address.parse().expect("inbound.self_address is ip:port");
            assert_ne!(sa.port(), 0);
            assert_eq!(sa.to_string(), ib.self_address);
        }
        (m, ib) => panic!("mode {m:?} with inbound {ib:?}"),
    }
    for r in &c.registries {
        assert!(!r.cluster.is_empty());
        let ep = r.kind.endpoint();
        assert!(!ep.authority.is_empty() && !ep.authority.bytes().any(|b| b.is_ascii_whitespace() || b == b'/'));
        assert!((10..=900_000).contains(&ep.timeout_ms));
        assert!((1024..=(256 << 20)).contains(&ep.max_body_bytes));
        match &r.kind {
            RegistryKind::Nacos(_) | RegistryKind::Eureka(_) => {}
            RegistryKind::Consul(a) => {
                assert!(a.wait_s <= 600);
                // a blocking request may be held wait + wait/16: its timeout covers that
                let q = lossless::registry::ServiceQuery { service: "s".into(), ..Default::default() };
                let (_, req) = a.request(&Session::default(), &Cursor { index: 7 }, &q, 0);
                let held = a.wait_s * 1000 + a.wait_s * 1000 / 16;
                assert!(req.timeout_ms > held, "timeout {} for a wait of {} s", req.timeout_ms, a.wait_s);
            }
            RegistryKind::Static(a) => assert!(a.path.starts_with('/')),
        }
    }
    let mut seen_names = std::collections::BTreeSet::new();
    let mut seen_clusters = std::collections::BTreeSet::new();
    for s in &c.services {
        assert!(seen_names.insert(s.name.as_str()), "duplicate service name {:?}", s.name);
        assert!(s.registry < c.registries.len());
        assert!(s.fallbacks <= 16);
        assert!(s.routing != RoutingMode::OriginalDst || s.fallbacks == 0);
        assert!(valid_header(&s.header));
        assert!(!s.match_clusters.is_empty());
        for m in &s.match_clusters {
            assert!(!m.is_empty());
            assert!(seen_clusters.insert(m.as_str()), "cluster {m:?} matched by two services");
            assert_eq!(c.service_for_cluster(m).map(|k| c.services[k].name.as_str()), Some(s.name.as_str()));
        }
        assert!((0.0..=1.0).contains(&s.guard.protect_threshold) && (0.0..=1.0).contains(&s.guard.max_drop));
        assert!(s.curve.aggression.is_finite() && s.curve.aggression > 0.0 && s.curve.aggression <= 100.0);
        assert!((0.0..=100.0).contains(&s.curve.min_weight_percent));
        let build = &s.query.build;
        assert!(build.default_weight >= 0 && build.default_warmup_ms >= 0);
        assert!(build.weight_scale.is_finite() && build.weight_scale > 0.0 && build.weight_scale <= 1e6);
    }
    // Every service's first request can be built, with the pseudo headers first.
    for s in &c.services {
        let (session, cursor) = (Session::default(), Cursor::default());
        let (_, req) = c.registries[s.registry].kind.adapter().request(&session, &cursor, &s.query, 1_800_000_000_000);
        let names: Vec<&str> = req.headers.iter().take(3).map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, [":method", ":path", ":authority"], "request headers {:?}", req.headers);
        assert!(req.header(":path").is_some_and(|p| p.starts_with('/')));
    }
});
