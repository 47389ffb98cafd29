//! Host-only SIMT simulator: runs the kernels of this crate on the CPU.
//!
//! A launch runs its blocks one after another. Every GPU thread runs the kernel body on its own
//! stack with its own indices (a thread-local context). Two engines schedule the threads of a
//! block ([`Engine`]):
//! - **fibers** (default on x86_64 Linux): all threads of a block are user-mode fibers on the
//!   launching OS thread, switched only where a thread waits; a deadlock (every live thread
//!   waiting) is reported at once;
//! - **threads** (`DFRT_SIM_ENGINE=threads`, and elsewhere): one OS thread per GPU thread, real
//!   blocking waits, deadlocks found by a timeout ([`timeout`]).
//!
//! Kernels declared `kernel!(independent; ...)` never meet, so their threads simply run one
//! after another. Block barriers are real barriers; warp collectives meet at a per-warp
//! rendezvous and are emulated to the PTX ISA lane layouts. Shared memory is bounds-checked and
//! starts poisoned. Anything that goes wrong (out-of-range or misaligned shared access, a
//! barrier or collective not reached by every thread, a panic in kernel code) ends the launch
//! with a [`SimError`] naming the kernel, block and thread, never a hang.

pub mod ctx;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod fiber;

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ctx::BlockState;

/// What went wrong in a simulated launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimErrorKind {
    /// The launch configuration is invalid (zero or too large dims, too much shared memory).
    Launch,
    /// A shared-memory access outside the dynamic shared memory.
    SharedOutOfBounds,
    /// A misaligned shared or global address for an op that needs alignment.
    Misaligned,
    /// A block barrier that not every thread reached (or threads at different barriers).
    Barrier,
    /// A warp collective that not every lane reached (or lanes at different collectives).
    Collective,
    /// Kernel code panicked (e.g. a failed assertion).
    Panic,
    /// PTX engine: a global access outside every live allocation (memcheck).
    Memcheck,
    /// PTX engine: a shared-memory race (both sites in the detail).
    Race,
    /// PTX engine: a trap (the Rust panic path), a division by zero or a bad jump index.
    Trap,
    /// PTX engine: the params struct does not match the entry's `.param` declaration, or an
    /// `ld.param` outside it.
    Params,
    /// PTX engine: the committed PTX does not load, or has no such entry.
    Load,
    /// Dual mode: the PTX and native runs wrote different bytes.
    Mismatch,
}

/// A failed simulated launch. `Display` names the kernel, block, thread and what happened.
#[derive(Clone, Debug)]
pub struct SimError {
    /// What went wrong.
    pub kind: SimErrorKind,
    /// The kernel's entry-point name.
    pub kernel: String,
    /// The block (x, y, z) where it happened.
    pub block: [u32; 3],
    /// The thread that detected the problem, where one did.
    pub thread: Option<[u32; 3]>,
    /// A human-readable description (addresses, sizes, the panic message).
    pub detail: String,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [bx, by, bz] = self.block;
        write!(f, "sim: kernel `{}` block ({bx},{by},{bz})", self.kernel)?;
        if let Some([x, y, z]) = self.thread {
            write!(f, " thread ({x},{y},{z})")?;
        }
        write!(f, ": {:?}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for SimError {}

/// How long a thread waits at a barrier or collective before the launch fails. Override with
/// the env var `DFRT_SIM_TIMEOUT_MS`.
pub fn timeout() -> Duration {
    let ms = std::env::var("DFRT_SIM_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    Duration::from_millis(ms)
}

/// Most dynamic shared memory a block may have (sm_90 opt-in limit).
pub const MAX_DYN_SMEM: u32 = 227 * 1024;

/// A kernel as the simulator sees it: its entry-point name and its body.
pub struct Kernel<P> {
    /// The entry-point name (as in the PTX).
    pub name: &'static str,
    /// The kernel body, run once per simulated thread.
    pub f: unsafe fn(P),
    /// Declared with `kernel!(independent; ...)`: its threads never meet, so a block's threads
    /// run one after another on the launching thread.
    pub independent: bool,
}

impl<P> Clone for Kernel<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Kernel<P> {}

/// Runs `kernel(params)` over `grid` × `block` threads with `dyn_smem_bytes` of dynamic shared
/// memory (filled with 0xff bytes at the start of each block, which read as NaN: real
/// hardware leaves it undefined).
///
/// # Safety
/// The device pointers in `params` must point to host memory valid for everything the kernel
/// reads and writes, exactly as they would have to on the GPU.
pub unsafe fn launch<P: Copy + Send + Sync>(
    grid: [u32; 3],
    block: [u32; 3],
    dyn_smem_bytes: u32,
    kernel: Kernel<P>,
    params: P,
) -> Result<(), SimError> {
    launch_with(
        Options::from_env(),
        grid,
        block,
        dyn_smem_bytes,
        kernel,
        params,
    )
}

/// Launches the kernel of params `p` with its own dims (see [`crate::Launch`]).
///
/// # Safety
/// As [`launch`].
pub unsafe fn run<P: crate::Launch>(p: P) -> Result<(), SimError> {
    let d = p.dims();
    launch(d.grid, d.block, d.dyn_smem, P::SIM, p)
}

/// How the simulator runs the threads of a block that may meet at barriers or collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// User-mode fibers on the launching thread (x86_64 Linux): each GPU thread has its own
    /// stack; switches happen only where a thread waits. Fast, and a deadlock is seen at once.
    Fibers,
    /// One OS thread per GPU thread, with real blocking waits and a timeout.
    Threads,
    /// The committed PTX itself, interpreted ([`crate::ptx`]): `DFRT_SIM_ENGINE=ptx`.
    Ptx,
    /// Each launch on the PTX engine and natively (fibers), comparing the bytes written:
    /// `DFRT_SIM_ENGINE=dual`.
    Dual,
}

/// Launch options.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How long a thread waits at a barrier or collective before the launch fails.
    pub timeout: Duration,
    /// How a block's threads are scheduled.
    pub engine: Engine,
}

impl Options {
    /// Timeout from `DFRT_SIM_TIMEOUT_MS` (default 3000); engine from `DFRT_SIM_ENGINE`
    /// (`fibers`, `threads`, `ptx` or `dual`; default fibers where supported).
    pub fn from_env() -> Options {
        let v = std::env::var("DFRT_SIM_ENGINE").unwrap_or_default();
        let engine = match v.as_str() {
            "ptx" => Engine::Ptx,
            "dual" => Engine::Dual,
            _ => native_engine(v == "threads"),
        };
        Options {
            timeout: timeout(),
            engine,
        }
    }
}

/// Fibers where supported, else OS threads.
fn native_engine(threads: bool) -> Engine {
    if threads || !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        Engine::Threads
    } else {
        Engine::Fibers
    }
}

/// The engine `DFRT_SIM_ENGINE` asks for when it names the PTX engine (`ptx` or `dual`), so
/// tests that pick a native engine explicitly still run on the PTX one in the PTX CI pass.
pub fn ptx_engine_from_env() -> Option<Engine> {
    match Options::from_env().engine {
        e @ (Engine::Ptx | Engine::Dual) => Some(e),
        _ => None,
    }
}

/// [`launch`] with explicit options.
///
/// # Safety
/// As [`launch`].
pub unsafe fn launch_with<P: Copy + Send + Sync>(
    opts: Options,
    grid: [u32; 3],
    block: [u32; 3],
    dyn_smem_bytes: u32,
    kernel: Kernel<P>,
    params: P,
) -> Result<(), SimError> {
    let timeout = opts.timeout;
    let name = kernel.name.to_string();
    let bad = |detail: String| SimError {
        kind: SimErrorKind::Launch,
        kernel: name.clone(),
        block: [0; 3],
        thread: None,
        detail,
    };
    let threads: u64 = block.iter().map(|&d| d as u64).product();
    if grid.contains(&0) || block.contains(&0) {
        return Err(bad(format!(
            "zero dimension: grid {grid:?} block {block:?}"
        )));
    }
    if threads > 1024 || block[2] > 64 || grid[1] > 65535 || grid[2] > 65535 {
        return Err(bad(format!(
            "launch too large: grid {grid:?} block {block:?}"
        )));
    }
    if dyn_smem_bytes > MAX_DYN_SMEM {
        return Err(bad(format!(
            "{dyn_smem_bytes} bytes of dynamic shared memory > {MAX_DYN_SMEM}"
        )));
    }
    match opts.engine {
        Engine::Ptx => {
            let o = crate::ptx::PtxOptions::default();
            // SAFETY: forwarded from this function's contract.
            return unsafe {
                crate::ptx::launch(kernel.name, grid, block, dyn_smem_bytes, &params, o, None)
            };
        }
        Engine::Dual => {
            let o = crate::ptx::PtxOptions::default();
            let native = Options {
                engine: native_engine(false),
                ..opts
            };
            // SAFETY: forwarded from this function's contract.
            return unsafe {
                crate::ptx::dual(kernel.name, grid, block, dyn_smem_bytes, &params, o, || {
                    launch_with(native, grid, block, dyn_smem_bytes, kernel, params)
                })
            };
        }
        Engine::Fibers | Engine::Threads => {}
    }
    let blocks = (0..grid[2])
        .flat_map(|z| (0..grid[1]).flat_map(move |y| (0..grid[0]).map(move |x| [x, y, z])));
    let new_block = |idx| {
        Arc::new(BlockState::new(
            name.clone(),
            idx,
            block,
            grid,
            dyn_smem_bytes,
            timeout,
            kernel.independent,
        ))
    };
    let n_threads = threads as u32;
    let tid_of = |linear: u32| {
        [
            linear % block[0],
            linear / block[0] % block[1],
            linear / (block[0] * block[1]),
        ]
    };
    if kernel.independent {
        for idx in blocks {
            let state = new_block(idx);
            for linear in 0..n_threads {
                ctx::run_thread(Arc::clone(&state), tid_of(linear), || {
                    // SAFETY: the caller of `launch` vouched for the params.
                    unsafe { (kernel.f)(params) }
                });
                if let Some(e) = state.take_error() {
                    return Err(e);
                }
            }
        }
        return Ok(());
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if opts.engine == Engine::Fibers {
        let mut blocks = blocks.peekable();
        while let Some(&idx) = blocks.peek() {
            let state = new_block(idx);
            let body = |linear: usize| {
                ctx::run_thread(Arc::clone(&state), tid_of(linear as u32), || {
                    // SAFETY: the caller of `launch` vouched for the params.
                    unsafe { (kernel.f)(params) }
                })
            };
            if !fiber::run(n_threads as usize, &body, &|| state.progress(), &|| {
                state.set_stalled()
            }) {
                // No memory for fiber stacks: run the remaining blocks on OS threads.
                let rest: Vec<[u32; 3]> = blocks.collect();
                return run_threads(
                    rest.into_iter(),
                    n_threads,
                    &new_block,
                    tid_of,
                    kernel,
                    params,
                );
            }
            if let Some(e) = state.take_error() {
                return Err(e);
            }
            blocks.next();
        }
        return Ok(());
    }
    run_threads(blocks, n_threads, &new_block, tid_of, kernel, params)
}

/// The OS-thread engine: one worker thread per GPU thread of a block, reused for every block.
fn run_threads<P: Copy + Send + Sync>(
    blocks: impl Iterator<Item = [u32; 3]>,
    n_threads: u32,
    new_block: &dyn Fn([u32; 3]) -> Arc<BlockState>,
    tid_of: impl Fn(u32) -> [u32; 3],
    kernel: Kernel<P>,
    params: P,
) -> Result<(), SimError> {
    // Spawning OS threads dominates small blocks, so one set of workers (one per GPU thread of
    // a block) runs every block of the launch in turn. Each worker has its own channel, so
    // starting a block wakes each worker once without a shared lock; the last worker to finish
    // a block wakes the launcher.
    let remaining = AtomicU32::new(0);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let mut workers = Vec::with_capacity(n_threads as usize);
        for linear in 0..n_threads {
            let tid = tid_of(linear);
            let (tx, rx) = mpsc::channel::<Arc<BlockState>>();
            workers.push(tx);
            let (remaining, done_tx) = (&remaining, done_tx.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || {
                    // The channel closes (recv fails) when the launch is over.
                    while let Ok(st) = rx.recv() {
                        ctx::run_thread(st, tid, || {
                            // SAFETY: the caller of `launch` vouched for the params.
                            unsafe { (kernel.f)(params) }
                        });
                        if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                            let _ = done_tx.send(());
                        }
                    }
                })
                .expect("sim: cannot spawn a thread");
        }
        let mut result = Ok(());
        for idx in blocks {
            let state = new_block(idx);
            remaining.store(n_threads, Ordering::Release);
            for w in &workers {
                // A worker only stops after its channel closes, so the send cannot fail.
                let _ = w.send(Arc::clone(&state));
            }
            let _ = done_rx.recv();
            if let Some(e) = state.take_error() {
                result = Err(e);
                break;
            }
        }
        drop(workers);
        result
    })
}
