//! Cross-check of lossless's warmup weight against Apache Dubbo's own
//! `AbstractLoadBalance.getWeight`, run from the released dubbo-cluster jar by
//! `peers/dubbo-provider/weights` (`org.lossless.peer.DubboWeights`) over one shared vector file.
//!
//! The end-to-end test `tests/e2e/test_dubbo.py::test_weight_cross_check` writes the vectors (from
//! a seed), runs Dubbo over them and then this test with `DUBBO_WEIGHT_VECTORS` (the vectors:
//! `weight TAB timestamp TAB warmup`, `\N` = absent, `now-N` / `now+N` in a timestamp = the clock
//! Dubbo saw minus / plus N ms) and `DUBBO_WEIGHT_RESULTS` (Dubbo's answers, one line per vector:
//! `now TAB weight TAB malformed-keys TAB weight-without-them`). Without them it says so and passes.
//!
//! For each vector lossless reads the same metadata (its default keys) with `now` = the clock
//! Dubbo saw, and must give Dubbo's weight; where Dubbo's own parsing throws (the call would fail),
//! lossless must count exactly the parameters Dubbo's URL cannot parse as malformed and give what
//! Dubbo gives without them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use lossless::instance::{BuildOptions, State};
use lossless::warmup::Curve;

const KEYS: [&str; 3] = ["weight", "timestamp", "warmup"];

/// `now-N` / `now+N` replaced as the Java side does (first occurrence only).
fn resolve(v: &str, now: i64) -> String {
    let Some(at) = v.find("now") else { return v.to_string() };
    let tail = &v[at + 3..];
    let sign = tail.chars().next();
    let digits: String = tail.chars().skip(1).take_while(char::is_ascii_digit).collect();
    if !matches!(sign, Some('-' | '+')) || digits.is_empty() {
        return v.to_string();
    }
    let n: i64 = digits.parse().unwrap();
    let t = if sign == Some('-') { now - n } else { now + n };
    format!("{}{t}{}", &v[..at], &tail[1 + digits.len()..])
}

#[test]
fn lossless_matches_dubbo_get_weight() {
    let (Ok(vectors), Ok(results)) = (std::env::var("DUBBO_WEIGHT_VECTORS"), std::env::var("DUBBO_WEIGHT_RESULTS"))
    else {
        println!("dubbo weight cross-check skipped: DUBBO_WEIGHT_VECTORS / DUBBO_WEIGHT_RESULTS not set (make e2e sets them)");
        return;
    };
    let vectors = std::fs::read_to_string(vectors).unwrap();
    let results = std::fs::read_to_string(results).unwrap();
    let (vectors, results): (Vec<&str>, Vec<&str>) = (vectors.lines().collect(), results.lines().collect());
    assert_eq!(vectors.len(), results.len(), "one result per vector");
    let opts = BuildOptions::default();
    let curve = Curve::default();
    let (mut differences, mut thrown, mut ramped) = (Vec::new(), 0usize, 0usize);
    for (line, (vector, result)) in vectors.iter().zip(&results).enumerate() {
        let f: Vec<&str> = vector.split('\t').collect();
        let r: Vec<&str> = result.split('\t').collect();
        assert_eq!((f.len(), r.len()), (3, 4), "line {}: {vector:?} -> {result:?}", line + 1);
        let now: i64 = r[0].parse().unwrap();
        let md: BTreeMap<String, String> =
            KEYS.iter().zip(&f).filter(|(_, v)| **v != "\\N").map(|(k, v)| (k.to_string(), resolve(v, now))).collect();
        let bad = if r[2] == "-" { 0 } else { r[2].split(',').count() as u32 };
        let want: i32 = if bad == 0 {
            r[1].parse().unwrap_or_else(|_| panic!("line {}: Dubbo threw on well-formed values: {result}", line + 1))
        } else {
            thrown += usize::from(r[1] == "NumberFormatException");
            r[3].parse().unwrap()
        };
        let (inst, malformed) = opts.build("127.0.0.1:1".into(), None, None, State::Serving, &md);
        let got = curve.weight(inst.weight, inst.start_ms, inst.warmup_ms, now);
        if got != inst.weight && got > 1 {
            ramped += 1;
        }
        if (got, malformed) != (want, bad) {
            differences.push(format!(
                "line {}: {vector:?} now {now}: dubbo {want} ({bad} malformed), lossless {got} ({malformed} malformed)",
                line + 1
            ));
        }
    }
    println!(
        "dubbo weight cross-check: {} vectors ({thrown} where Dubbo's parsing throws, {ramped} on the ramp), {} differences",
        vectors.len(),
        differences.len()
    );
    assert!(differences.is_empty(), "{}", differences.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
}
