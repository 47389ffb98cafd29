#!/usr/bin/env python3
"""PyTorch eager peer of `cargo bench -p dfrt-tests --bench text_encoder`.

The umT5 encoder block as the official Wan2.1 `wan/modules/t5.py` computes it (T5 RMSNorm
with the variance in f32, q/k/v/o without bias, logits q·kᵀ with no 1/sqrt(d) plus the
per-layer relative position bias, masked softmax in f32, gated GELU-tanh FFN), written plainly
here at the real umT5-XXL size with random weights, a reduced layer count, 512 tokens. Prints
seconds per layer and the 24-layer extrapolation, as the Rust bench does.

  python3 benches/text_encoder_torch.py [--layers 2] [--threads N] [--dtype f32|bf16]
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

DIM, DIM_ATTN, FFN, HEADS, LAYERS, BUCKETS, MAX_DIST, L = 4096, 4096, 10240, 64, 24, 32, 128, 512


def buckets(lq, lk):
    rel = torch.arange(lk).unsqueeze(0) - torch.arange(lq).unsqueeze(1)
    half = BUCKETS // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float() / exact) / math.log(MAX_DIST / exact) * (half - exact)).long()
    large = torch.clamp(large, max=half - 1)
    return out + torch.where(rel < exact, rel, large)


def rms(x, w):
    x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    return w * x.type_as(w)


def gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def block(x, p, mask, bk):
    n, c = HEADS, DIM_ATTN // HEADS
    h = rms(x, p["n1"])
    q = (h @ p["q"].T).view(L, n, c)
    k = (h @ p["k"].T).view(L, n, c)
    v = (h @ p["v"].T).view(L, n, c)
    bias = p["pos"][bk].permute(2, 0, 1)
    bias = bias.masked_fill(mask.view(1, 1, -1) == 0, torch.finfo(x.dtype).min)
    a = torch.einsum("inc,jnc->nij", q, k) + bias
    a = F.softmax(a.float(), dim=-1).type_as(a)
    o = torch.einsum("nij,jnc->inc", a, v).reshape(L, n * c)
    x = x + o @ p["o"].T
    h = rms(x, p["n2"])
    x = x + ((h @ p["fc1"].T) * gelu(h @ p["gate"].T)) @ p["fc2"].T
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dt = torch.float32 if a.dtype == "f32" else torch.bfloat16
    torch.manual_seed(0)
    r = lambda *s: (torch.randn(*s) / math.sqrt(s[-1])).to(dt)
    ps = [dict(n1=torch.ones(DIM, dtype=dt), n2=torch.ones(DIM, dtype=dt), q=r(DIM_ATTN, DIM), k=r(DIM_ATTN, DIM), v=r(DIM_ATTN, DIM),
               o=r(DIM, DIM_ATTN), gate=r(FFN, DIM), fc1=r(FFN, DIM), fc2=r(DIM, FFN), pos=torch.randn(BUCKETS, HEADS).to(dt)) for _ in range(a.layers)]
    x0 = torch.randn(L, DIM).to(dt)
    mask = torch.ones(L, dtype=torch.long)
    bk = buckets(L, L)
    with torch.no_grad():
        def run():
            x = x0
            for p in ps:
                x = block(x, p, mask, bk)
            return rms(x, ps[0]["n1"])
        run()
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
    per = best / a.layers
    flops = a.layers * (2 * L * (4 * DIM * DIM_ATTN + 3 * DIM * FFN) + 4 * L * L * DIM_ATTN)
    print(f"torch {torch.__version__} umT5-XXL encoder, {L} tokens, {a.dtype}, {torch.get_num_threads()} threads: {a.layers} layers in {best:.2f} s "
          f"({per:.2f} s/layer, {flops / best / 1e9:.1f} GFLOP/s); full {LAYERS} layers: {per * LAYERS:.1f} s")
    print(json.dumps({"bench": "text_encoder_torch", "torch": torch.__version__, "dtype": a.dtype, "threads": torch.get_num_threads(),
                      "layers_measured": a.layers, "seconds": best, "seconds_per_layer": per, "gflops": flops / best / 1e9, "full_encoder_s": per * LAYERS}))


if __name__ == "__main__":
    main()
