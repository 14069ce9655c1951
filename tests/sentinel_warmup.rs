//! Cross-check of lossless' admission cap ([`lossless::admission`]) against Alibaba Sentinel's own
//! warm-up flow control (`FlowRule` with `CONTROL_BEHAVIOR_WARM_UP`, `WarmUpController` on a
//! `StatisticNode`), run from the released sentinel-core jar by `peers/sentinel-warmup`
//! (`org.lossless.peer.SentinelWarmUp`) over one shared file of per-second request sequences,
//! `tests/fixtures/sentinel/warmup-sequences.tsv` (its header says the format).
//!
//! Sentinel's answers are recorded in `tests/fixtures/sentinel/sentinel-1.8.8-warmup.tsv` (how, in
//! the `.txt` beside it). With `SENTINEL_WARMUP` set to the peer's build folder (`make unit` sets
//! it) the peer runs again and must give the recorded answers, so the recording is Sentinel's
//! answer today; without it the recording is the reference.
//!
//! Every request goes through [`admission::check`] on a shared bucket, at the same millisecond
//! Sentinel's clock read for it. Where a sequence keeps every request in one half of its second
//! (placements `early`, `late`, `start`) Sentinel's rolling window of two 500 ms buckets counts
//! exactly the current wall-clock second, as lossless does, and every second must admit what
//! Sentinel admitted. Elsewhere (`even`, `random`, `late-early`) Sentinel's window also counts the
//! previous second's second half while the current second is in its first half; lossless counts
//! the wall-clock second only, so it can admit more than Sentinel, by what is checked in
//! [`unexplained`] (in the recorded sequences: none with evenly spread requests, up to 8 % of
//! `count` in a second with random arrivals at the cap, and in the worst case, a late burst then an
//! early one in every second, Sentinel stays cold while lossless warms up).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

use lossless::admission::{self, Admit, WarmUp};
use lossless::store::FakeShared;

const SEQUENCES: &str = "tests/fixtures/sentinel/warmup-sequences.tsv";
const RECORDED: &str = "tests/fixtures/sentinel/sentinel-1.8.8-warmup.tsv";
/// The first sequence's first second and the spacing of sequences (ms), as the peer runs them.
const EPOCH: i64 = 1_700_000_000_000;
const SPACING: i64 = 1_000_000;

#[derive(Debug)]
struct Sequence {
    name: String,
    max_rps: u32,
    cold_factor: u32,
    warmup_s: u32,
    placement: String,
    load: Vec<u64>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_sequences() -> Vec<Sequence> {
    let text = std::fs::read_to_string(root().join(SEQUENCES)).unwrap();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 6, "not 6 fields: {line:?}");
        let mut load = Vec::new();
        for part in f[5].split(',') {
            let (n, seconds) = part.split_once('x').unwrap_or((part, "1"));
            let (n, seconds): (u64, usize) = (n.parse().unwrap(), seconds.parse().unwrap());
            assert!(seconds >= 1, "{line:?}");
            load.extend(std::iter::repeat_n(n, seconds));
        }
        assert!((load.len() as i64) * 1000 < SPACING, "{line:?}: too long");
        out.push(Sequence {
            name: f[0].to_string(),
            max_rps: f[1].parse().unwrap(),
            cold_factor: f[2].parse().unwrap(),
            warmup_s: f[3].parse().unwrap(),
            placement: f[4].to_string(),
            load,
        });
    }
    out
}

/// Sentinel's admitted requests in one second: before 500 ms, and from 500 ms on.
#[derive(Debug, Clone, Copy)]
struct Halves {
    first: u64,
    second: u64,
}

impl Halves {
    fn total(self) -> u64 {
        self.first + self.second
    }
}

/// The peer's output: the version line, then `name TAB A+B,A+B,...` per sequence.
fn parse_results(text: &str) -> (String, Vec<(String, Vec<Halves>)>) {
    let mut lines = text.lines();
    let head = lines.next().unwrap_or_default().to_string();
    let rows = lines
        .map(|l| {
            let (name, seconds) = l.split_once('\t').unwrap_or_else(|| panic!("bad result line {l:?}"));
            let seconds = seconds
                .split(',')
                .map(|h| {
                    let (a, b) = h.split_once('+').unwrap_or_else(|| panic!("bad second {h:?} in {l:?}"));
                    Halves { first: a.parse().unwrap(), second: b.parse().unwrap() }
                })
                .collect();
            (name.to_string(), seconds)
        })
        .collect();
    (head, rows)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// When each of the `n` requests of second `s` arrives, in ms after its start (as the peer).
fn offsets(placement: &str, s: u64, n: u64) -> Vec<i64> {
    let mut out: Vec<i64> = (0..n)
        .map(|i| {
            let ms = match placement {
                "even" => i * 1000 / n,
                "early" => i * 500 / n,
                "late" => 500 + i * 500 / n,
                "start" => 0,
                "late-early" => (if s % 2 == 0 { 500 } else { 0 }) + i * 500 / n,
                "random" => splitmix64((s << 32) | i) % 1000,
                other => panic!("unknown placement {other:?}"),
            };
            ms as i64
        })
        .collect();
    out.sort_unstable();
    out
}

/// What lossless admits per second, every request through [`admission::check`].
fn lossless(k: usize, q: &Sequence) -> Vec<u64> {
    let shared = FakeShared::default();
    let rule = WarmUp::new(q.max_rps, q.cold_factor, q.warmup_s);
    let start = EPOCH + k as i64 * SPACING;
    let mut out = Vec::new();
    for (s, &n) in q.load.iter().enumerate() {
        let mut admitted = 0;
        for at in offsets(&q.placement, s as u64, n) {
            match admission::check(&shared, "admission", &rule, start + s as i64 * 1000 + at) {
                Admit::Yes => admitted += 1,
                Admit::No => {}
                Admit::Unsure => panic!("{}: one worker's CAS cannot lose", q.name),
            }
        }
        out.push(admitted);
    }
    out
}

/// Runs the peer over the sequences (`SENTINEL_WARMUP` = its build folder) into `out`.
fn run_peer(dir: &Path, out: &Path) {
    let cp = format!("{}:{}", dir.join("sentinel-warmup.jar").display(), dir.join("lib/*").display());
    // Mockito's static mock of Sentinel's clock needs its agent: given at start rather than attached
    // at run time (which newer JDKs warn about); class sharing off, as the agent extends the boot
    // class path
    let mockito = std::fs::read_dir(dir.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("mockito-core-"))
        .expect("mockito-core in the peer's lib/");
    let run = Command::new("java")
        .arg(format!("-javaagent:{}", mockito.display()))
        .args(["-Xshare:off", "-cp", &cp, "org.lossless.peer.SentinelWarmUp"])
        .arg(root().join(SEQUENCES))
        .arg(out)
        .output()
        .expect("java runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("sentinel warm-up: "), "{stdout}");
}

/// Whether every request of the sequence falls in one half of its second, where Sentinel's window
/// of two 500 ms buckets holds exactly the current second's admitted requests.
fn one_half(placement: &str) -> bool {
    matches!(placement, "early" | "late" | "start")
}

/// Why lossless' seconds may differ from Sentinel's, checked: `None` when they may, else what is
/// wrong.
///
/// In one half of the second the two count the same requests, so every second must be equal.
/// Elsewhere Sentinel's window, in the first half of second `s`, also holds what it admitted in the
/// second half of `s - 1`; lossless' does not. Before any difference both have the same tokens,
/// so the first second that differs must be one where lossless admits more, by at most what
/// Sentinel admitted in the previous second's second half (Sentinel's window never holds less than
/// the current second, and only those requests more). From there lossless has taken more tokens,
/// so it is as warm as Sentinel or warmer: it admits at least what Sentinel admits in every later
/// second.
fn unexplained(q: &Sequence, sentinel: &[Halves], lossless: &[u64]) -> Option<String> {
    let want: Vec<u64> = sentinel.iter().map(|h| h.total()).collect();
    let first = want.iter().zip(lossless).position(|(a, b)| a != b)?;
    if one_half(&q.placement) {
        return Some(format!("second {first} differs in a sequence where both count the same requests"));
    }
    let carried = first.checked_sub(1).map_or(0, |p| sentinel[p].second);
    let (got, want_first) = (lossless[first], want[first]);
    if got < want_first || got - want_first > carried {
        return Some(format!(
            "second {first}: lossless {got}, Sentinel {want_first}; Sentinel's window carried {carried} from the second before"
        ));
    }
    let stricter: Vec<usize> = (first..want.len()).filter(|s| lossless[*s] < want[*s]).collect();
    (!stricter.is_empty()).then(|| format!("lossless admits less than Sentinel after second {first}, in {stricter:?}"))
}

#[test]
fn lossless_matches_sentinel_warm_up() {
    let sequences = read_sequences();
    let recorded = std::fs::read_to_string(root().join(RECORDED)).unwrap();
    let source = match std::env::var_os("SENTINEL_WARMUP") {
        Some(dir) => {
            let out = std::env::temp_dir().join(format!("sentinel-warmup-{}.tsv", std::process::id()));
            run_peer(Path::new(&dir), &out);
            let fresh = std::fs::read_to_string(&out).unwrap();
            std::fs::remove_file(&out).unwrap();
            assert!(
                fresh == recorded,
                "Sentinel's answers differ from {RECORDED}: record them again (see the .txt beside it)\n{fresh}"
            );
            "sentinel-core run now, equal to the recording"
        }
        None => "the recorded answers; SENTINEL_WARMUP (the peer's build folder) runs sentinel-core again",
    };
    let (head, sentinel) = parse_results(&recorded);
    assert_eq!(head, "# sentinel-core 1.8.8: admitted per second (first half + second half), per sequence");
    assert_eq!(sentinel.len(), sequences.len(), "one result per sequence");

    let row = |c: [&str; 11]| {
        format!(
            "{:<24} {:>5} {:>2} {:>3} {:<10} {:>4} {:>8} {:>8} {:>6} {:>5} {:>5}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
        )
    };
    let mut table = vec![row([
        "sequence",
        "count",
        "cf",
        "s",
        "placement",
        "secs",
        "sentinel",
        "lossless",
        "differ",
        "max",
        "first",
    ])];
    let (mut failures, mut exact, mut differing) = (Vec::new(), 0, 0);
    for (k, (q, (name, want))) in sequences.iter().zip(&sentinel).enumerate() {
        assert_eq!(&q.name, name, "results in sequence order");
        assert_eq!(want.len(), q.load.len(), "{name}: one count per second");
        let got = lossless(k, q);
        let diffs: Vec<u64> = got.iter().zip(want).map(|(a, b)| a.abs_diff(b.total())).collect();
        let first = diffs.iter().position(|d| *d > 0);
        exact += usize::from(one_half(&q.placement));
        differing += usize::from(first.is_some());
        table.push(row([
            &q.name,
            &q.max_rps.to_string(),
            &q.cold_factor.to_string(),
            &q.warmup_s.to_string(),
            &q.placement,
            &q.load.len().to_string(),
            &want.iter().map(|h| h.total()).sum::<u64>().to_string(),
            &got.iter().sum::<u64>().to_string(),
            &diffs.iter().filter(|d| **d > 0).count().to_string(),
            &diffs.iter().max().unwrap_or(&0).to_string(),
            &first.map_or("-".to_string(), |s| s.to_string()),
        ]));
        if let Some(why) = unexplained(q, want, &got) {
            let want: Vec<u64> = want.iter().map(|h| h.total()).collect();
            failures.push(format!("{}: {why}\n  sentinel {want:?}\n  lossless {got:?}", q.name));
        }
    }
    println!(
        "sentinel warm-up cross-check ({source}): admitted per second, {} sequences ({exact} in one half of each \
         second, compared second by second), {differing} with differences\n{}",
        sequences.len(),
        table.join("\n")
    );
    assert!(failures.is_empty(), "{}\n{}", table.join("\n"), failures.join("\n"));
}
