#!/usr/bin/env bash
# The CUDA checks of the GPU backend, for sessions that are lent a GPU (DESIGN §7).
#
# Here (with Rust):   scripts/gpu-check.sh build
#   builds the host test binary and the CLI, strips them and copies them with the golden cases
#   into target/gpu-carry/ (ignored by git; carry `target/gpu-carry` to the GPU machine).
# There (no Rust):    scripts/gpu-check.sh run
#   runs every CUDA test (ops vs the CPU reference in f32/bf16, graph capture/replay, the
#   golden cases through `dfrt generate --device cuda`), then the op test under
#   compute-sanitizer when it is installed. Tests print `skipped: <reason>` when no GPU is found.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=target/gpu-carry
case "${1:-}" in
build)
    mkdir -p "$CARRY"
    bin=$(cargo test -p dfrt --test gpu_sim --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu_sim" and m.get("executable"):
        print(m["executable"])')
    cargo build -p dfrt --profile test --bin dfrt
    cp "$bin" "$CARRY/gpu_sim"
    cp target/debug/dfrt "$CARRY/dfrt"
    strip "$CARRY/gpu_sim" "$CARRY/dfrt"
    golden=${DFRT_GOLDEN_DIR:-../shared/golden}
    rm -rf "$CARRY/golden" && mkdir -p "$CARRY/golden"
    for c in "$golden"/*/; do
        [ -f "$c/manifest.json" ] || continue
        mkdir -p "$CARRY/golden/$(basename "$c")"
        cp "$c"/manifest.json "$c"/weights.safetensors "$c"/inputs.safetensors "$CARRY/golden/$(basename "$c")/"
        # Only what the CUDA tests compare (the full outputs would not fit the carry limit).
        python3 scripts/slim-golden.py "$c/outputs.safetensors" "$CARRY/golden/$(basename "$c")/outputs.safetensors"
    done
    du -sh "$CARRY"
    ;;
run)
    export DFRT_GOLDEN_DIR=$PWD/$CARRY/golden DFRT_BIN=$PWD/$CARRY/dfrt
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$CARRY/gpu_sim" --test-threads 1 --nocapture cuda_
    if command -v compute-sanitizer >/dev/null; then
        compute-sanitizer --error-exitcode 1 "$CARRY/gpu_sim" --test-threads 1 cuda_ops_match_cpu
    fi
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
