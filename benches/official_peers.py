#!/usr/bin/env python3
"""The official modules as peers, on the CPU, with random weights of the benches' configs:

- `dit`: diffusers' `WanTransformer3DModel` (the Wan2.1 DiT as Wan-AI publishes it through
  diffusers; attention is `F.scaled_dot_product_attention`) at the `small` config of
  `benches/cpu_ref.rs` (dim 512, 8 heads × 64, ffn 1024, 4 layers, text 32 × 256), one forward
  of chunk 0: a `[1, 16, 3, hw, hw]` latent, no cache. Self-Forcing's `CausalWanModel` is this
  model with a block-causal mask and a KV cache; on chunk 0 the mask is full, so the work is
  the same forward.
- `t5`: transformers' `UMT5EncoderModel` (google/umt5-xxl's encoder: gated-GELU FFN, per-layer
  relative position bias, no attention scaling) at umT5-XXL's widths (dim 4096, 64 heads × 64,
  FFN 10240) with `--layers` layers, one 512-token prompt; the vocabulary is cut to 1024 rows
  (the embedding is a gather, not compute). The figure is seconds per layer.

  python3 benches/official_peers.py dit [--hw 32] [--threads 2] [--dtype f32|bf16] [--reps 3]
  python3 benches/official_peers.py t5 [--layers 2] [--threads 2] [--dtype f32|bf16] [--reps 3]

Each prints one JSON line: the best and median of `--reps` timed runs after a warm-up, wall and
process CPU seconds.
"""
import argparse
import json
import statistics
import time

import torch


def timed(f, reps):
    f()  # warm-up
    walls, cpus = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        f()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def dit(a, dt):
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=64, in_channels=16, out_channels=16,
        text_dim=256, freq_dim=256, ffn_dim=1024, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6,
    ).to(dt).eval()
    x = torch.randn(1, 16, 3, a.hw, a.hw, dtype=dt)
    ctx = torch.randn(1, 32, 256, dtype=dt)
    t = torch.tensor([1000])

    def f():
        with torch.no_grad():
            m(x, t, ctx, return_dict=False)

    walls, cpus = timed(f, a.reps)
    tokens = 3 * (a.hw // 2) ** 2
    return dict(peer="diffusers-WanTransformer3DModel", what="forward chunk 0", tokens=tokens, hw=a.hw,
                forward_ms=min(walls) * 1e3, forward_ms_median=statistics.median(walls) * 1e3,
                forward_cpu_ms=min(cpus) * 1e3)


def t5(a, dt):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=1024, d_model=4096, d_kv=64, d_ff=10240, num_layers=a.layers, num_heads=64,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6)
    m = UMT5EncoderModel(cfg).to(dt).eval()
    ids = torch.randint(2, 1024, (1, 512))
    mask = torch.ones(1, 512, dtype=torch.long)

    def f():
        with torch.no_grad():
            m(input_ids=ids, attention_mask=mask)

    walls, cpus = timed(f, a.reps)
    return dict(peer="transformers-UMT5EncoderModel", what="umT5-XXL widths, 512 tokens", layers=a.layers,
                s_per_layer=min(walls) / a.layers, s_per_layer_median=statistics.median(walls) / a.layers,
                cpu_s_per_layer=min(cpus) / a.layers)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=["dit", "t5"])
    p.add_argument("--hw", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dt = torch.float32 if a.dtype == "f32" else torch.bfloat16
    r = (dit if a.which == "dit" else t5)(a, dt)
    r.update(threads=a.threads, dtype=a.dtype, torch=torch.__version__,
             cpu=torch.backends.cpu.get_cpu_capability())
    print(json.dumps(r))


if __name__ == "__main__":
    main()
