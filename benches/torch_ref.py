#!/usr/bin/env python3
"""PyTorch eager peer of `cargo bench -p dfrt-tests --bench cpu_ref`.

The same Wan2.1 causal DiT forward (patch embed, per-frame time embedding and 6-row adaLN
modulation, blocks with RMSNorm'd q/k, 3D RoPE, self-attention over a full KV cache,
cross-attention over the text, GELU-tanh FFN, gated residuals, head) and the same Self-Forcing
loop (chunks of 3 frames, 4 steps + a clean pass that writes the cache), written plainly in
PyTorch eager on the CPU with random weights of the same config. Attention is
`F.scaled_dot_product_attention`. Only the work is compared, not the numerics.

  python3 benches/torch_ref.py [--preset small] [--frames 9] [--hw 32] [--threads N] [--dtype f32|bf16]

Prints the same two figures as cpu_ref (forward tokens/s on chunk 0; latent tokens/s of a whole
generation), and a JSON line.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

PRESETS = {
    "tiny": dict(dim=256, ffn=512, text_dim=64, text_len=16, heads=2, layers=2),
    "small": dict(dim=512, ffn=1024, text_dim=256, text_len=32, heads=8, layers=4),
    "wan-1.3b": dict(dim=1536, ffn=8960, text_dim=4096, text_len=512, heads=12, layers=30),
}
IN_DIM, FREQ_DIM, EPS = 16, 256, 1e-6


def lin(o, i, dt):
    return (torch.randn(o, i, dtype=dt) / math.sqrt(i), torch.randn(o, dtype=dt) * 0.02)


def make_weights(c, dt):
    d = c["dim"]
    w = dict(
        patch=lin(d, IN_DIM * 4, dt), text0=lin(d, c["text_dim"], dt), text2=lin(d, d, dt),
        time0=lin(d, FREQ_DIM, dt), time2=lin(d, d, dt), proj=lin(6 * d, d, dt),
        head=lin(IN_DIM * 4, d, dt), head_mod=torch.randn(2, d, dtype=dt) / math.sqrt(d), blocks=[],
    )
    for _ in range(c["layers"]):
        b = {k: lin(d, d, dt) for k in ["sq", "sk", "sv", "so", "cq", "ck", "cv", "co"]}
        b.update(mod=torch.randn(6, d, dtype=dt) / math.sqrt(d), ffn0=lin(c["ffn"], d, dt), ffn2=lin(d, c["ffn"], dt),
                 n3=(torch.ones(d, dtype=dt), torch.zeros(d, dtype=dt)),
                 nq=torch.ones(d, dtype=dt), nk=torch.ones(d, dtype=dt), cnq=torch.ones(d, dtype=dt), cnk=torch.ones(d, dtype=dt))
        w["blocks"].append(b)
    return w


def rope_freqs(hd, frames, gh, gw, start):
    c = hd // 2
    parts = [c - 2 * (c // 3), c // 3, c // 3]
    out = []
    for n, pos in zip(parts, [torch.arange(start, start + frames), torch.arange(gh), torch.arange(gw)]):
        th = 1.0 / 10000 ** (torch.arange(n, dtype=torch.float64) * 2 / (2 * n))
        out.append(torch.polar(torch.ones(len(pos), n, dtype=torch.float64), pos[:, None].double() * th))
    f, h, w = out
    grid = torch.cat([f[:, None, None, :].expand(frames, gh, gw, -1), h[None, :, None, :].expand(frames, gh, gw, -1),
                      w[None, None, :, :].expand(frames, gh, gw, -1)], -1)
    return grid.reshape(frames * gh * gw, 1, c)


def rope(x, fr, heads):
    n, d = x.shape
    xc = torch.view_as_complex(x.double().reshape(n, heads, -1, 2))
    return torch.view_as_real(xc * fr).reshape(n, d).to(x.dtype)


def rms(x, w):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * w


def attn(q, k, v, heads):
    hd = q.shape[1] // heads
    q, k, v = (t.reshape(t.shape[0], heads, hd).transpose(0, 1) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(q.shape[1], heads * hd)


def sinusoid(t, dim):
    half = dim // 2
    fr = torch.pow(10000, -torch.arange(half, dtype=torch.float64) / half)
    a = t.double()[:, None] * fr
    return torch.cat([a.cos(), a.sin()], 1)


def forward(w, c, x, t, start, cache, ctx_kv, commit, dt):
    """x: [3, 16, H, W] noisy latents of the chunk; returns flow [3, 16, H, W]."""
    d, heads = c["dim"], c["heads"]
    f, _, hh, ww = x.shape
    gh, gw = hh // 2, ww // 2
    tpf = gh * gw
    p = x.reshape(f, IN_DIM, gh, 2, gw, 2).permute(0, 2, 4, 1, 3, 5).reshape(f * tpf, IN_DIM * 4)
    h = F.linear(p, *w["patch"])
    e = F.linear(F.silu(F.linear(sinusoid(torch.full((f,), t), FREQ_DIM).to(dt), *w["time0"])), *w["time2"])
    e6 = F.linear(F.silu(e), *w["proj"]).reshape(f, 6, d)
    fr = rope_freqs(d // heads, f, gh, gw, start)
    rep = lambda m: m.repeat_interleave(tpf, 0)
    for li, b in enumerate(w["blocks"]):
        m = [rep(b["mod"][i] + e6[:, i]) for i in range(6)]
        y = F.layer_norm(h, (d,), eps=EPS) * (1 + m[1]) + m[0]
        q = rope(rms(F.linear(y, *b["sq"]), b["nq"]), fr, heads)
        k = rope(rms(F.linear(y, *b["sk"]), b["nk"]), fr, heads)
        v = F.linear(y, *b["sv"])
        ck, cv = cache[li]
        kk, vv = torch.cat([ck, k]), torch.cat([cv, v])
        h = h + F.linear(attn(q, kk, vv, heads), *b["so"]) * m[2]
        if commit:
            cache[li] = (kk, vv)
        y = F.layer_norm(h, (d,), b["n3"][0], b["n3"][1], EPS)
        tk, tv = ctx_kv[li]
        h = h + F.linear(attn(rms(F.linear(y, *b["cq"]), b["cnq"]), tk, tv, heads), *b["co"])
        y = F.layer_norm(h, (d,), eps=EPS) * (1 + m[4]) + m[3]
        h = h + F.linear(F.gelu(F.linear(y, *b["ffn0"]), approximate="tanh"), *b["ffn2"]) * m[5]
    hm = w["head_mod"][None] + e[:, None]
    y = F.layer_norm(h, (d,), eps=EPS) * (1 + rep(hm[:, 1])) + rep(hm[:, 0])
    o = F.linear(y, *w["head"]).reshape(f, gh, gw, 2, 2, IN_DIM)
    return o.permute(0, 5, 1, 3, 2, 4).reshape(f, IN_DIM, hh, ww)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--hw", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--dtype", default="f32")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dt = torch.float32 if a.dtype == "f32" else torch.bfloat16
    c = PRESETS[a.preset]
    torch.manual_seed(0)
    w = make_weights(c, dt)
    tpf = (a.hw // 2) ** 2
    ctx = torch.randn(c["text_len"], c["text_dim"], dtype=dt)
    with torch.inference_mode():
        te = F.linear(F.gelu(F.linear(ctx, *w["text0"]), approximate="tanh"), *w["text2"])
        ctx_kv = [(rms(F.linear(te, *b["ck"]), b["cnk"]), F.linear(te, *b["cv"])) for b in w["blocks"]]
        empty = lambda: [(torch.empty(0, c["dim"], dtype=dt), torch.empty(0, c["dim"], dtype=dt)) for _ in w["blocks"]]
        x = torch.randn(3, IN_DIM, a.hw, a.hw, dtype=dt)
        forward(w, c, x, 1000.0, 0, empty(), ctx_kv, False, dt)  # warm-up
        reps = 3
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(reps):
            forward(w, c, x, 1000.0, 0, empty(), ctx_kv, False, dt)
        fwd = (time.perf_counter() - t0) / reps
        fwd_cpu = (time.process_time() - c0) / reps

        # Self-Forcing: warped timesteps of [1000, 750, 500, 250] with shift 5, then t=0.
        sig = lambda s: 5 * s / (1 + 4 * s)
        ts = [1000 * sig(s / 1000) for s in [1000, 750, 500, 250]]
        c0, t0 = time.process_time(), time.perf_counter()
        cache = empty()
        for ch in range(a.frames // 3):
            xt = torch.randn(3, IN_DIM, a.hw, a.hw, dtype=dt)
            for i, t in enumerate(ts):
                x0 = xt - (t / 1000) * forward(w, c, xt, t, 3 * ch, cache, ctx_kv, False, dt)
                if i + 1 < len(ts):
                    s = ts[i + 1] / 1000
                    xt = (1 - s) * x0 + s * torch.randn_like(x0)
            forward(w, c, x0, 0.0, 3 * ch, cache, ctx_kv, True, dt)
        gen = time.perf_counter() - t0
        gen_cpu = time.process_time() - c0
    print(f"torch {torch.__version__} eager, {torch.get_num_threads()} threads, {a.preset} preset, {a.hw}x{a.hw} latent "
          f"({tpf} tokens/frame), {a.dtype}: forward (chunk 0, {3 * tpf} tokens) {fwd * 1e3:.1f} ms = {3 * tpf / fwd:.0f} tokens/s; "
          f"generation of {a.frames} frames {gen:.2f} s = {a.frames * tpf / gen:.0f} latent tokens/s")
    print(json.dumps(dict(peer="torch-eager", torch=torch.__version__, threads=torch.get_num_threads(), preset=a.preset, hw=a.hw,
                          dtype=a.dtype, frames=a.frames, forward_ms=fwd * 1e3, forward_tokens_per_s=3 * tpf / fwd,
                          generation_s=gen, forward_cpu_ms=fwd_cpu * 1e3, generation_cpu_s=gen_cpu, latent_tokens_per_s=a.frames * tpf / gen)))


if __name__ == "__main__":
    main()
