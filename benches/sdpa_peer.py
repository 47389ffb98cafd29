#!/usr/bin/env python3
"""Side-by-side peer of the attention benchmark: PyTorch SDPA (FlashAttention backend when
available) on the same shapes as `attn_bench`, bf16, on the GPU.

FLOPs per call: 4 * Lq * Lk * H * d (QK^T and PV, 2 FLOPs per multiply-add), non-causal.
Shapes (DESIGN §7): Lq 4680 (3 frames x 1560 tokens at 480p); Lk 6240, 9360, 32760; 12 heads;
d 128.

  python3 benches/sdpa_peer.py [--reps 50] [--json out.json]
"""
import argparse
import json

import torch
import torch.nn.functional as F


def bench(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--json")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device visible to PyTorch")
        return
    dev = torch.device("cuda")
    rows = []
    H, d, Lq = 12, 128, 4680
    for lk in [6240, 9360, 32760]:
        q = torch.randn(1, H, Lq, d, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, H, lk, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, H, lk, d, device=dev, dtype=torch.bfloat16)
        s = bench(lambda: F.scaled_dot_product_attention(q, k, v), a.reps)
        fl = 4 * Lq * lk * H * d
        rows.append(dict(op="sdpa", lq=Lq, lk=lk, heads=H, d=d, ms=s * 1e3, tflops=fl / s / 1e12))
        print(f"sdpa bf16 Lq {Lq} Lk {lk:6d} H {H} d {d}: {s * 1e3:8.3f} ms  {fl / s / 1e12:7.1f} TFLOP/s  (4*Lq*Lk*H*d)")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
