//! `registry::eureka::parse` (`/eureka/apps/{APP}` and `/eureka/apps`, full and delta), and the
//! registry-wide fetch's mirror (`registry::eureka::delta`) fed the same bytes as a full reply and
//! as a delta: its lists pass the parser checks and its hash code counts every instance it keeps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossless::instance::BuildOptions;
use lossless::registry::eureka::delta::Mirror;
use lossless::registry::eureka::parse;
use lossless_fuzz::{check_parsed, check_parser};

/// The instances a reconcile hash code counts (`UP_2_DOWN_1_` -> 3).
fn counted(hash: &str) -> usize {
    let parts: Vec<&str> = hash.split('_').filter(|p| !p.is_empty()).collect();
    parts.iter().filter_map(|p| p.parse::<usize>().ok()).sum()
}

fuzz_target!(|data: &[u8]| {
    let build = BuildOptions::default();
    check_parser(|| parse(data, &build));
    let mut m = Mirror::new([(0, "FOO", &build), (1, "bar", &build)]);
    let full = m.replace(data).is_ok();
    let delta = m.apply_delta(data);
    if let Ok((_, ours)) = &delta {
        assert_eq!(*ours, m.hash_code());
    }
    assert_eq!(counted(&m.hash_code()), m.len(), "the hash code counts every instance kept");
    if full || delta.is_ok() {
        for (_, p) in m.lists() {
            check_parsed(&p);
        }
    }
});
