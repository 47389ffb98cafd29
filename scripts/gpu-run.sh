#!/usr/bin/env bash
# Runs ON THE GPU MACHINE (no Rust there), from the repository root, over the folder that
# scripts/gpu-bench.sh built here and the device call carried:
#
#   bash dist/gpu-run.sh
#
# Steps (each time-boxed; a failing step is logged and the next one still runs):
#   1. the CUDA tests (ops vs CPU, golden cases through `dfrt generate --device cuda`);
#   2. compute-sanitizer memcheck on the CUDA op test;
#   3. the kernel bench at the real shapes, then PyTorch SDPA on the same attention shapes;
#   4. the e2e bench (1.3B synthetic weights) at 480p, 720p, 1080p;
#   5. optional (RUN_NCU=1): ncu on one block of the profile example.
# Writes kernels.json, sdpa.json, e2e-*.json and log.txt into $OUT (default ./out): at most 8
# files come back from a device call. Then, here: python3 scripts/bench-log.py OUT_DIR.
#
# Env: OUT, DIST (default: this script's folder), E2E_480P / E2E_720P / E2E_1080P (extra e2e
# arguments per resolution, e.g. "--chunks 3"; "skip" skips one), RUN_NCU=1, STEP_TIMEOUT (s).
set -uo pipefail
DIST=${DIST:-$(cd "$(dirname "$0")" && pwd)}
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
T=${STEP_TIMEOUT:-300}
status=0

step() {  # step NAME TIMEOUT CMD...: runs, logs, never stops the script
  local name=$1 t=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), timeout ${t}s): $*" | tee -a "$LOG"
  timeout "$t" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc" | tee -a "$LOG"
  [ "$rc" = 0 ] || status=1
}

{
  echo "dfrt GPU session, commit $(cat "$DIST/commit.txt" 2>/dev/null), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
} | tee "$LOG"

# Unpack what gpu-bench.sh packed: gzipped binaries, golden files shipped once.
BIN=${BIN:-/tmp/dfrt-dist}
rm -rf "$BIN" && mkdir -p "$BIN/bin" "$BIN/tests"
for f in "$DIST"/bin/*.gz "$DIST"/tests/*.gz; do
  [ -f "$f" ] || continue
  d="$BIN/$(basename "$(dirname "$f")")/$(basename "$f" .gz)"
  gunzip -c "$f" > "$d" && chmod +x "$d"
done
if [ -s "$DIST/golden/dups.txt" ]; then
  while read -r src dst; do cp -n "$DIST/golden/$src" "$DIST/golden/$dst"; done < "$DIST/golden/dups.txt"
fi
export DFRT_GOLDEN_DIR="$DIST/golden"
export DFRT_BENCH_TMP=${DFRT_BENCH_TMP:-/tmp}
# NVTX for the profile example: CUDA 13's library from the pip wheel, or CUDA 12's.
if [ -z "${DFRT_NVTX_LIB:-}" ]; then
  DFRT_NVTX_LIB=$(python3 -c 'import nvidia, os, glob; print(next(iter(sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib", "libnvtx3interop.so*")))), ""))' 2>/dev/null)
  [ -n "$DFRT_NVTX_LIB" ] || DFRT_NVTX_LIB=$(ls /usr/local/cuda/lib64/libnvToolsExt.so* 2>/dev/null | head -1)
  export DFRT_NVTX_LIB
fi

# 1. CUDA tests; they run the shipped CLI build through $DFRT_BIN.
export DFRT_BIN="$BIN/tests/dfrt"
for t in "$BIN"/tests/*; do
  name=$(basename "$t")
  [ "$name" = dfrt ] && continue
  step "test $name (cuda)" "$T" "$t" cuda --test-threads=1 --nocapture
done

# 2. compute-sanitizer on the test that runs every op's kernels on CUDA.
if command -v compute-sanitizer >/dev/null && [ -x "$BIN/tests/gpu_sim" ]; then
  step "compute-sanitizer memcheck" "$T" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$BIN/tests/gpu_sim" cuda_ops_match_cpu --test-threads=1 --nocapture
fi

# 3. Kernels, then the peer on the same attention shapes, back to back on the same card.
step "kernel bench" "$T" "$BIN/bin/kernels" --device cuda --json "$OUT/kernels.json"
step "sdpa peer" 120 python3 "$DIST/sdpa_peer.py" --json "$OUT/sdpa.json"

# 4. End to end (the first run synthesises the 1.3B weights into $DFRT_BENCH_TMP).
for r in 480p 720p 1080p; do
  var="E2E_${r^^}"
  extra=${!var:-}
  [ "$extra" = skip ] && continue
  if [ -z "$extra" ]; then
    case $r in 480p) extra="--chunks 7 --graphs both" ;; 720p) extra="--chunks 3" ;; 1080p) extra="--chunks 2" ;; esac
  fi
  # shellcheck disable=SC2086
  step "e2e $r" "$T" "$BIN/bin/e2e" --device cuda --res "$r" $extra --json "$OUT/e2e-$r.json"
done

# 5. ncu over block 7 of one forward of the profile example (NVTX ranges; see docs/profiling.md).
if [ "${RUN_NCU:-0}" = 1 ] && command -v ncu >/dev/null; then
  step "ncu block07" "$T" ncu --nvtx --nvtx-include "dit.block07/" --launch-count 40 --section SpeedOfLight \
    --csv --log-file "$OUT/ncu-block07.csv" "$BIN/bin/profile" --device cuda --chunks 1
fi

echo "== done, exit $status; files in $OUT:" | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
exit $status
