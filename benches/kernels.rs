//! Kernel benchmarks: every hot kernel at its Wan2.1 1.3B shape, with its FLOP or byte formula.
//!
//!   cargo bench --bench kernels -- [--device auto|cuda|sim] [--size full|14b|tiny]
//!                                  [--filter NAME] [--json FILE]
//!
//! The device is `--device`, else `$DFRT_BENCH_DEVICE`, else `auto` (cuda when a GPU answers,
//! otherwise sim). On cuda the default size is `full` (the real shapes, see
//! `support/kernel_cases.rs`; `14b` is the 14B model's: 40 heads, dim 5120, ffn 13824); each entry rotates over enough buffer copies to defeat the L2,
//! captures the timed launches into one CUDA graph (so launch overhead is left out), times a
//! replay with CUDA events and reports time per launch. On sim the default size is `tiny` and
//! the times are the CPU simulator's: they show that every entry builds, launches and writes
//! its whole output, and are NOT GPU figures. Every run checks that each output was fully
//! written (finite).

#[path = "support/kernel_cases/mod.rs"]
mod kernel_cases;
#[path = "support/report.rs"]
mod report;

use dfrt::gpu::SimDevice;
use dfrt::run::DeviceChoice;
use kernel_cases::{Row, RunOpts, Shapes};
use report::{ms, Args};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("kernels bench: error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let a = Args::parse(&["device", "size", "filter", "json"])?;
    let choice = a.device_choice(DeviceChoice::Sim)?;
    if choice == DeviceChoice::Cpu {
        return Err("the kernel bench runs on a GPU device (auto, cuda[:N] or sim), not cpu".into());
    }
    let cuda = choice.open_cuda().map_err(|e| e.to_string())?;
    let size = a.get("size").unwrap_or(if cuda.is_some() { "full" } else { "tiny" });
    let shapes = match size {
        "full" => Shapes::full(),
        "14b" => Shapes::wan14b(),
        "tiny" => Shapes::tiny(),
        s => return Err(format!("unknown size `{s}` (full, 14b or tiny)")),
    };
    let filter = a.get("filter").map(str::to_string);
    match cuda {
        Some(dev) => {
            let card = dev.describe();
            println!("device: cuda, {card}; size {size}; times per launch from a CUDA graph of back-to-back launches, L2 defeated by rotating buffers");
            let opts = RunOpts {
                warmup: 3,
                min_reps: 10,
                max_reps: 2000,
                target_secs: 0.2,
                rotate_bytes: 128 << 20,
                filter,
                graph: true,
            };
            finish(&a, "cuda", &card, size, None, |on| kernel_cases::run(&dev, &shapes, &opts, on))
        }
        None => {
            let dev = SimDevice::new();
            println!("{}", report::SIM_NOTE);
            if size == "full" {
                eprintln!("warning: the simulator at the full shapes runs for hours (attention over 32760 keys); --size tiny is the check");
            }
            let opts = RunOpts {
                warmup: 0,
                min_reps: 1,
                max_reps: 1,
                target_secs: 0.0,
                rotate_bytes: 0,
                filter,
                graph: false,
            };
            finish(&a, "sim", "SIMT simulator (CPU)", size, Some(report::SIM_NOTE), |on| {
                kernel_cases::run(&dev, &shapes, &opts, on)
            })
        }
    }
}

type RunFn<'a> = dyn FnMut(&Row) + 'a;

fn finish(
    a: &Args,
    device: &str,
    card: &str,
    size: &str,
    note: Option<&str>,
    run: impl FnOnce(&mut RunFn<'_>) -> dfrt::Result<Vec<Row>>,
) -> Result<(), String> {
    let mut on = |r: &Row| {
        eprintln!("  {:<26} {:<5} {:<40} {:>10} ms", r.kernel, r.dtype, r.shape, ms(r.secs));
    };
    let rows = run(&mut on).map_err(|e| e.to_string())?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let thr = match r.tflops() {
                Some(t) => format!("{t:.2} TFLOP/s"),
                None => format!("{:.1} GB/s", r.gbps()),
            };
            vec![r.kernel.to_string(), r.dtype.to_string(), r.shape.clone(), ms(r.secs), thr, r.formula.to_string()]
        })
        .collect();
    print!(
        "{}",
        report::table(
            &["kernel", "dtype", "shape", "ms", "throughput", "formula (e = element bytes)"],
            &cells,
            &[3, 4]
        )
    );
    if let Some(p) = a.json() {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "kernel": r.kernel, "dtype": r.dtype, "shape": r.shape, "formula": r.formula,
                    "ms": r.secs * 1e3, "bytes": r.bytes, "flops": r.flops, "gbps": r.gbps(), "tflops": r.tflops(),
                    "copies": r.copies, "reps": r.reps, "timer": r.timer,
                })
            })
            .collect();
        let v = serde_json::json!({
            "bench": "kernels", "device": device, "card": card, "size": size, "unix_time": report::unix_time(),
            "note": note, "rows": rows,
        });
        report::write_json(&p, &v)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
