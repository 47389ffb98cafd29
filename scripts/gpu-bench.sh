#!/usr/bin/env bash
# Builds, HERE (the machine with Rust), everything a GPU session runs, into one folder that the
# device call carries (the GPU machine has CUDA, PyTorch, ncu and compute-sanitizer, but no
# Rust). Then, on the GPU machine: `bash dist/gpu-run.sh` (see docs/benchmarks.md).
#
#   scripts/gpu-bench.sh            # -> dist/ (ignored by git; carry it: carry=["dist"])
#
# Env: DIST (default dist), TEST_BINS (test targets to ship, default "gpu_sim"),
#      GOLDEN_CASES (default: all four public cases), DFRT_GOLDEN_DIR (default ../shared/golden),
#      GOLDEN_SLIM (default 1: outputs.safetensors keeps only `latents` and `assignment`, what
#      the CUDA golden test compares; 0 ships the files whole).
# To fit a device call (64 MiB with the tree), binaries travel gzipped and golden files that
# are byte-identical to one already shipped travel once (gpu-run.sh restores both).
set -euo pipefail
cd "$(dirname "$0")/.."
DIST=${DIST:-dist}
TEST_BINS=${TEST_BINS:-gpu_sim}
GOLDEN_CASES=${GOLDEN_CASES:-tiny-full tiny-full-bf16 tiny-window df-tiny}
GOLDEN_SLIM=${GOLDEN_SLIM:-1}
GOLDEN=${DFRT_GOLDEN_DIR:-../shared/golden}
LIMIT_MB=60  # the device call carries 64 MiB in all (the tree included)

rm -rf "$DIST"
mkdir -p "$DIST/bin" "$DIST/tests" "$DIST/golden"

# Prints "name<TAB>executable" for each executable artifact of a cargo JSON message stream.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"] + "\t" + m["executable"])
'
}

ship() {  # ship SRC DST: a stripped, gzipped copy as DST.gz (debug info and size)
  cp "$1" "$2"
  strip --strip-debug "$2" 2>/dev/null || true
  gzip -9 -f "$2"
}

echo "== benches (release)"
cargo bench -p dfrt-tests --no-run --bench kernels --bench e2e --message-format=json 2>/dev/null | executables > "$DIST/.benches"
while IFS=$'\t' read -r name exe; do ship "$exe" "$DIST/bin/$name"; done < "$DIST/.benches"

echo "== dfrt CLI and the profile example (release, NVTX on)"
cargo build --release -p dfrt --features nvtx --bin dfrt --example profile
ship target/release/dfrt "$DIST/bin/dfrt"
ship target/release/examples/profile "$DIST/bin/profile"

echo "== test binaries: $TEST_BINS"
cargo test --workspace --no-run --message-format=json 2>/dev/null | executables > "$DIST/.tests"
for t in $TEST_BINS; do
  exe=$(awk -F'\t' -v n="$t" '$1 == n { print $2 }' "$DIST/.tests" | tail -1)
  if [ -z "$exe" ]; then
    echo "warning: no test target named $t (skipped)"
    continue
  fi
  ship "$exe" "$DIST/tests/$t"
done
# The tests run the CLI named by $DFRT_BIN (gpu-run.sh sets it): ship the test build of it.
dfrt_test_bin=$(awk -F'\t' '$1 == "dfrt" { print $2 }' "$DIST/.tests" | tail -1)
if [ -n "$dfrt_test_bin" ] && [ -x "$dfrt_test_bin" ]; then
  ship "$dfrt_test_bin" "$DIST/tests/dfrt"
fi

echo "== golden cases: $GOLDEN_CASES (slim: $GOLDEN_SLIM)"
: > "$DIST/golden/dups.txt"
for c in $GOLDEN_CASES; do
  if [ ! -d "$GOLDEN/$c" ]; then echo "warning: no golden case $GOLDEN/$c"; continue; fi
  mkdir -p "$DIST/golden/$c"
  for f in "$GOLDEN/$c"/*; do
    b=$(basename "$f")
    if [ "$GOLDEN_SLIM" = 1 ] && [ "$b" = outputs.safetensors ]; then
      # Keep only what the CUDA golden test compares.
      python3 scripts/slim-golden.py "$f" "$DIST/golden/$c/$b"
      continue
    fi
    dup=""
    for g in "$DIST"/golden/*/"$b"; do
      [ -f "$g" ] && cmp -s "$f" "$g" && { dup=$g; break; }
    done
    if [ -n "$dup" ]; then
      echo "${dup#"$DIST"/golden/} $c/$b" >> "$DIST/golden/dups.txt"
    else
      cp "$f" "$DIST/golden/$c/$b"
    fi
  done
done
[ -f "$GOLDEN/README.md" ] && cp "$GOLDEN/README.md" "$DIST/golden/"

cp benches/sdpa_peer.py scripts/gpu-run.sh "$DIST/"
git rev-parse --short HEAD > "$DIST/commit.txt" 2>/dev/null || echo unknown > "$DIST/commit.txt"
rm -f "$DIST/.benches" "$DIST/.tests"

mb=$(du -sm "$DIST" | cut -f1)
echo "== $DIST: ${mb} MiB"
ls -la "$DIST/bin" "$DIST/tests"
if [ "$mb" -gt "$LIMIT_MB" ]; then
  echo "error: $DIST is ${mb} MiB; a device call carries 64 MiB in all. Ship fewer GOLDEN_CASES or TEST_BINS." >&2
  exit 1
fi
echo "next: run on the GPU machine, carrying $DIST:  bash $DIST/gpu-run.sh   (results in \$OUT)"
echo "then: python3 scripts/bench-log.py <the fetched OUT folder>   (appends to BENCHMARKS.md)"
