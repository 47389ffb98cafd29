//! Rough simulator throughput: `cargo run --release -p dfrt-kernels --example sim_speed`.
use dfrt_kernels::elementwise::*;
use dfrt_kernels::norm::*;
use dfrt_kernels::Launch;
use std::time::Instant;

fn main() {
    let (rows, cols) = (64u32, 512u32);
    let x = vec![1.0f32; (rows * cols) as usize];
    let mut y = vec![0f32; x.len()];
    let p = RmsNormParams {
        x: x.as_ptr() as u64,
        w: 0,
        y: y.as_mut_ptr() as u64,
        rows,
        cols,
        eps: 1e-6,
    };
    let d = p.dims();
    let t = Instant::now();
    // SAFETY: buffers sized for the params.
    unsafe { dfrt_kernels::sim::launch(d.grid, d.block, d.dyn_smem, rms_norm_f32, p) }.unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "rms_norm {rows}x{cols}: {s:.3}s ({:.1} us/block, {} threads)",
        s * 1e6 / rows as f64,
        rows * d.block[0]
    );
    let n = 200_000u32;
    let x = vec![0.5f32; n as usize];
    let mut y = vec![0f32; n as usize];
    let p = GeluParams {
        x: x.as_ptr() as u64,
        y: y.as_mut_ptr() as u64,
        n,
    };
    let d = p.dims();
    let t = Instant::now();
    // SAFETY: buffers sized for the params.
    unsafe { dfrt_kernels::sim::launch(d.grid, d.block, d.dyn_smem, gelu_tanh_f32, p) }.unwrap();
    let s = t.elapsed().as_secs_f64();
    println!("gelu n={n}: {s:.3}s ({} blocks)", d.grid[0]);

    // One warp: 6 ldmatrix + 4 mma + 6 raw ldmatrix rendezvous and one barrier.
    use dfrt_kernels::testk::*;
    let z16 = vec![0u16; 16 * 32];
    let mut f = vec![0f32; 16 * 8 * 3];
    let mut raw = vec![0u32; 32 * 14];
    let p = MmaTileParams {
        a: z16.as_ptr() as u64,
        bt: z16.as_ptr() as u64,
        bk: z16.as_ptr() as u64,
        c: f.as_ptr() as u64,
        d1: f[128..].as_mut_ptr() as u64,
        d2: f[256..].as_mut_ptr() as u64,
        raw: raw.as_mut_ptr() as u64,
    };
    let reps = 50;
    let t = Instant::now();
    for _ in 0..reps {
        // SAFETY: buffers sized for the kernel.
        unsafe {
            dfrt_kernels::sim::launch([1, 1, 1], [32, 1, 1], MMA_TILE_SMEM, test_mma_tile, p)
        }
        .unwrap();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "test_mma_tile (1 warp, 17 warp collectives + 1 barrier): {:.0} us/launch",
        s * 1e6
    );
}
