#!/usr/bin/env bash
# Runs the libFuzzer targets of fuzz/ one after the other, each for SECONDS, and prints the
# executions per target. Usage: fuzz/run.sh [SECONDS] [TARGET...] (default 60 s, every target).
#
# Stable toolchain: cargo-fuzz with `-s none` (no sanitizer, so no -Z flag) still instruments for
# coverage (-Cpasses=sancov-module); `-a` keeps debug assertions and overflow checks on.
# Corpora live in fuzz/corpus/<target> (git-ignored), seeded at run time from the registry
# fixtures in ../shared/fixtures/registry (FIXTURES overrides) and the hand-written fuzz/seeds/.
# Crashes land in fuzz/artifacts/<target>/; the full libFuzzer log in fuzz/target/logs/<target>.log.
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
fixtures=${FIXTURES:-../shared/fixtures/registry}
flags=(-s none -O -a)
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

cargo fuzz build "${flags[@]}" || exit 1

# Fixtures that seed each target (globs under $fixtures).
fixtures_for() {
  case $1 in
    nacos) echo "nacos-*.json rnacos-*.json" ;;
    eureka) echo "eureka-*.json" ;;
    consul) echo "consul-*.json" ;;
    *) echo "" ;;
  esac
}

mkdir -p fuzz/target/logs
[ -d "$fixtures" ] || echo "warning: no fixtures at $fixtures; seeding from fuzz/seeds only" >&2
failed=()
summary=()
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus"
  for g in $(fixtures_for "$t"); do
    for f in "$fixtures"/$g; do [ -f "$f" ] && cp -f "$f" "$corpus/"; done
  done
  [ -d "fuzz/seeds/$t" ] && cp -f fuzz/seeds/"$t"/* "$corpus/"
  args=(-max_total_time="$secs" -print_final_stats=1 -timeout=10)
  [ -f "fuzz/dict/$t.dict" ] && args+=(-dict="fuzz/dict/$t.dict")
  log=fuzz/target/logs/$t.log
  echo "== fuzz $t for ${secs}s (corpus $corpus, log $log)"
  cargo fuzz run "${flags[@]}" "$t" "$corpus" -- "${args[@]}" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    status=ok
  else
    status="FAILED (exit $rc)"
    failed+=("$t")
    echo "---- $t: end of $log"
    grep -vE '^#[0-9]+\s+(NEW|REDUCE|pulse)' "$log" | tail -60
    echo "---- artifacts: $(ls fuzz/artifacts/"$t" 2>/dev/null | tr '\n' ' ')"
  fi
  line=$(printf '%-20s %12s execs  %s  %s' "$t" "${execs:-?}" "${cov:-}" "$status")
  echo "$line"
  summary+=("$line")
done

echo "== fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crash or invariant failure in: ${failed[*]} (inputs under fuzz/artifacts/; reproduce with: cargo fuzz run ${flags[*]} TARGET fuzz/artifacts/TARGET/FILE)" >&2
  exit 1
fi
