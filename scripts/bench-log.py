#!/usr/bin/env python3
"""Turns the JSON files of a GPU session (scripts/gpu-run.sh: kernels.json, sdpa.json,
e2e-*.json) into one dated entry of BENCHMARKS.md, newest first.

  python3 scripts/bench-log.py OUT_DIR [--log BENCHMARKS.md] [--note TEXT] [--print]

The entry holds the date, the card, the commit, the kernel table (time and GB/s or TFLOP/s
with each formula), attention against PyTorch SDPA on the same shapes (ratio ours/SDPA in
throughput: above 1 is faster than SDPA), and the end-to-end table. Sim runs are refused
(their times are not GPU figures).
"""
import argparse
import datetime
import glob
import json
import os
import re
import subprocess
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def md_table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def fmt_ms(ms):
    return f"{ms:.4f}" if ms < 1 else f"{ms:.3f}" if ms < 100 else f"{ms:.1f}"


def kernels_section(k):
    rows = []
    for r in k["rows"]:
        thr = f"{r['tflops']:.1f} TFLOP/s" if r.get("tflops") is not None else f"{r['gbps']:.0f} GB/s"
        rows.append([r["kernel"], r["dtype"], r["shape"], fmt_ms(r["ms"]), thr, r["formula"]])
    return md_table(["kernel", "dtype", "shape", "ms", "throughput", "formula"], rows)


def sdpa_section(k, s):
    """Our attn_bf16_d128 against SDPA, matched by (Lq, Lk, H, d)."""
    ours = {}
    for r in k["rows"] if k else []:
        m = re.match(r"Lq (\d+) Lk (\d+) H (\d+) d (\d+)", r["shape"])
        if r["kernel"] == "attn_bf16_d128" and m:
            ours[tuple(int(x) for x in m.groups())] = r
    rows = []
    for p in s["rows"]:
        key = (p["lq"], p["lk"], p["heads"], p["d"])
        o = ours.get(key)
        if o is None:
            rows.append([*key, "-", f"{p['ms']:.3f}", "-", f"{p['tflops']:.1f}", "-"])
            continue
        rows.append([*key, f"{o['ms']:.3f}", f"{p['ms']:.3f}", f"{o['tflops']:.1f}", f"{p['tflops']:.1f}", f"{p['ms'] / o['ms']:.2f}"])
    head = ["Lq", "Lk", "H", "d", "ours ms", "SDPA ms", "ours TFLOP/s", "SDPA TFLOP/s", "ours/SDPA"]
    return md_table(head, rows)


def e2e_section(es):
    rows = []
    for e in es:
        for r in e["rows"]:
            lat = "x".join(str(x) for x in r["latent"])
            kv = r["kv_bytes"] / 1e6
            ratio = 100.0 * r["kv_policy_bytes"] / r["kv_full_bytes"] if r["kv_full_bytes"] else float("nan")
            allocs = "-" if r.get("loop_allocs") is None else r["loop_allocs"]
            graphs = {True: "on", False: "off"}.get(r.get("graphs"), "-")
            rows.append([r["res"], lat, r["policy"], graphs, r["chunks"], f"{r['fps']:.2f}", fmt_ms(r["ms_per_chunk"]), fmt_ms(r["chunk_ms"][0]), f"{kv:.1f}", f"{ratio:.1f}%", allocs])
    head = ["res", "latent", "policy", "graphs", "chunks", "FPS", "ms/chunk", "chunk 0 ms", "KV MB", "KV vs full", "loop allocs"]
    return md_table(head, rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--log", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "BENCHMARKS.md"))
    ap.add_argument("--note", default="", help="what changed since the last entry")
    ap.add_argument("--print", action="store_true", help="print the entry instead of writing the log")
    a = ap.parse_args()

    def opt(name):
        p = os.path.join(a.out_dir, name)
        return load(p) if os.path.exists(p) else None

    k, s = opt("kernels.json"), opt("sdpa.json")
    es = [load(p) for p in sorted(glob.glob(os.path.join(a.out_dir, "e2e*.json")))]
    if not (k or s or es):
        sys.exit(f"bench-log: no kernels.json, sdpa.json or e2e*.json in {a.out_dir}")
    for d in [k, *es]:
        if d and d.get("device") != "cuda":
            sys.exit(f"bench-log: {d.get('bench')} ran on `{d.get('device')}`: simulator/CPU times are not GPU figures; not logged")

    stamps = [d["unix_time"] for d in [k, *es] if d and d.get("unix_time")]
    when = datetime.datetime.fromtimestamp(min(stamps), datetime.timezone.utc) if stamps else datetime.datetime.now(datetime.timezone.utc)
    card = (k or (es[0] if es else {})).get("card") or (s or {}).get("device", "?")
    commit = ""
    cpath = os.path.join(a.out_dir, "commit.txt")
    if os.path.exists(cpath):
        commit = open(cpath).read().strip()
    else:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        except OSError:
            pass

    parts = [f"## {when:%Y-%m-%d %H:%M} UTC: {card}" + (f", commit {commit}" if commit else "")]
    if a.note:
        parts.append(a.note)
    if k:
        parts.append(
            "Kernels at the Wan2.1 1.3B shapes (480p chunk: T = 3 x 1560 = 4680 tokens). Time per launch "
            f"({k['rows'][0]['timer'] if k['rows'] else '?'}-timed back-to-back launches, buffers rotated past the L2); "
            "throughput from the formula beside it (e = element bytes)."
        )
        parts.append(kernels_section(k))
    if s:
        parts.append(f"Attention against PyTorch SDPA ({s.get('device')}, torch {s.get('torch')}), bf16, same shapes, same card, same session. FLOPs 4·Lq·Lk·H·d; ours/SDPA = SDPA time / our time.")
        parts.append(sdpa_section(k, s))
    if es:
        e0 = es[0]
        parts.append(
            f"End to end, model {e0.get('model')} with synthetic weights, dtype {e0.get('dtype')}. "
            "FPS = video frames / diffusion time (1 latent frame = 4 video frames; the chunk loop only: "
            "4 denoising forwards + 1 cache-writing forward per 3-frame chunk). ms/chunk = mean after chunk 0. "
            "1080p is 1920x1088 (135 latent rows are not patchable)."
        )
        parts.append(e2e_section(es))
    entry = "\n\n".join(parts) + "\n"

    if a.print:
        print(entry)
        return
    with open(a.log) as f:
        log = f.read()
    # Newest first: the entry goes before the first existing entry (or at the end of the header).
    i = log.find("\n## ")
    log = log.rstrip("\n") + "\n\n" + entry if i < 0 else log[: i + 1] + entry + "\n" + log[i + 1 :]
    with open(a.log, "w") as f:
        f.write(log)
    print(f"bench-log: added the {when:%Y-%m-%d} entry ({card}) to {a.log}")


if __name__ == "__main__":
    main()
