#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 10: the CI-sized smoke
# run, 8 targets in about 80 s plus the build), on the stable toolchain.
#
#   fuzz/run.sh            # smoke: 10 s per target
#   fuzz/run.sh 600        # a long session: 10 min per target
#   fuzz/run.sh 60 frames message   # chosen targets only
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Stable Rust works because
# no sanitizer is requested (`-s none`: libFuzzer's coverage instrumentation
# uses only stable rustc flags); with a nightly toolchain installed,
# FUZZ_SANITIZER=address FUZZ_TOOLCHAIN=+nightly adds AddressSanitizer.
#
# Seeds are read from corpus/<target>/ (committed, never written); what the
# fuzzer finds goes to corpus-new/<target>/ and crashes to
# artifacts/<target>/ (both ignored by git). Add a crash file to corpus/
# once fixed: the replay tests then run it on every `cargo test`.
# Prints one summary line per target: executions, seconds, coverage.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-10}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(control_stream message frames chunk_stream lan_announcement folder_key device_id ignore_rules rel_path)
fi
sanitizer="${FUZZ_SANITIZER:-none}"
toolchain="${FUZZ_TOOLCHAIN:-}"
# shellcheck disable=SC2086
cargo $toolchain fuzz build -s "$sanitizer"
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus-new/$t" "artifacts/$t"
  log="$(mktemp)"
  # shellcheck disable=SC2086
  if ! cargo $toolchain fuzz run -s "$sanitizer" "$t" "corpus-new/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    status=1
    echo "== $t: FAILED (see artifacts/$t/)"
    tail -40 "$log"
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  echo "== $t: $runs executions in ${secs} s, coverage $cov edges, corpus $(ls "corpus-new/$t" | wc -l) new inputs"
  rm -f "$log"
done
exit $status
