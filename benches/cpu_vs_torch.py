#!/usr/bin/env python3
"""Side by side: the CPU backend (`benches/cpu_ref.rs`) against PyTorch eager
(`benches/torch_ref.py`) on the same config, interleaved, same thread count on both sides.

Each round runs, in this order, ours f32, torch f32, ours bf16, torch bf16 (one process each:
one forward of chunk 0 after a warm-up, timed over 3 repetitions, then a whole generation).
After all rounds it prints the median of every figure and ours/torch as a throughput ratio
(above 1: ours is faster), plus one JSON line. Figures are wall time and CPU time (all threads
of the process, user + system): on a machine shared with other work the CPU-time ratio is the
steadier one, though it charges the peer for OpenMP's spin-waiting.

  python3 benches/cpu_vs_torch.py [--rounds 5] [--threads 2] [--frames 9] [--hw 32]

Run it with a Python that has torch (`pip install torch`). It builds the bench once first
(`cargo bench --no-run`). Timings from a loaded machine are noisy: read the spread it prints.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build():
    out = subprocess.run(
        ["cargo", "bench", "-p", "dfrt-tests", "--bench", "cpu_ref", "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    for line in out.splitlines():
        m = json.loads(line)
        if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cpu_ref" and m.get("executable"):
            return m["executable"]
    sys.exit("cpu_vs_torch: cargo did not report the cpu_ref executable")


def last_json(text, what):
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    sys.exit(f"cpu_vs_torch: no JSON line from {what}:\n{text}")


def run_ours(exe, dtype, a):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), DFRT_BENCH_DTYPE=dtype,
               DFRT_BENCH_FRAMES=str(a.frames), DFRT_BENCH_HW=str(a.hw))
    out = subprocess.run([exe, "--bench"], cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return last_json(out, f"cpu_ref {dtype}")


def run_torch(dtype, a):
    cmd = [sys.executable, os.path.join(ROOT, "benches", "torch_ref.py"), "--threads", str(a.threads), "--dtype", dtype,
           "--frames", str(a.frames), "--hw", str(a.hw)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    return last_json(out, f"torch_ref {dtype}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--hw", type=int, default=32)
    ap.add_argument("--dtypes", default="f32,bf16")
    a = ap.parse_args()
    exe = build()
    dtypes = a.dtypes.split(",")
    runs = {(side, dt): [] for side in ["ours", "torch"] for dt in dtypes}
    for r in range(a.rounds):
        for dt in dtypes:
            for side in ["ours", "torch"]:
                res = run_ours(exe, dt, a) if side == "ours" else run_torch(dt, a)
                runs[(side, dt)].append(res)
                print(f"round {r + 1}/{a.rounds} {side:5s} {dt:4s}: forward {res['forward_ms']:8.1f} ms, "
                      f"generation {res['generation_s']:7.2f} s", flush=True)
    load = os.getloadavg()
    summary = dict(rounds=a.rounds, threads=a.threads, frames=a.frames, hw=a.hw, loadavg=load, rows=[])
    print(f"\nmedians of {a.rounds} interleaved rounds, {a.threads} threads each side, small preset, "
          f"{a.hw}x{a.hw} latent, {a.frames} frames (load average now {load[0]:.1f})")
    print("| | ours | torch | ours/torch (throughput) | ours min..max | torch min..max |")
    print("|---|---|---|---|---|---|")
    for dt in dtypes:
        for key, unit, scale in [("forward_ms", "ms", 1.0), ("generation_s", "s", 1.0),
                                 ("forward_cpu_ms", "CPU ms", 1.0), ("generation_cpu_s", "CPU s", 1.0)]:
            o = [x[key] * scale for x in runs[("ours", dt)]]
            t = [x[key] * scale for x in runs[("torch", dt)]]
            mo, mt = statistics.median(o), statistics.median(t)
            name = "forward" if key.startswith("forward") else f"generation ({a.frames} frames)"
            print(f"| {name} {dt}, {unit} | {mo:.1f} | {mt:.1f} | {mt / mo:.2f}x | {min(o):.1f}..{max(o):.1f} | {min(t):.1f}..{max(t):.1f} |")
            summary["rows"].append(dict(what=name, dtype=dt, unit=unit, ours=mo, torch=mt, ratio=mt / mo, ours_all=o, torch_all=t))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
