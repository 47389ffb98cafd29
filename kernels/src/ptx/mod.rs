//! PTX engine of the simulator: executes the committed `ptx/dfrt_kernels.ptx` itself.
//!
//! The native simulator runs the kernels' Rust source compiled for the host; a GPU runs the
//! PTX that LLVM made of it, with the inline asm, the params ABI and 32-bit shared addressing.
//! This engine runs that text: [`ir`] parses it once and decodes it to a typed IR (anything
//! outside the subset the file uses is a load-time error naming it), and [`exec`] runs it.
//!
//! Select it with `DFRT_SIM_ENGINE=ptx` (every [`crate::sim::launch`] then runs here), or
//! `DFRT_SIM_ENGINE=dual`: each launch runs on this engine into a shadow overlay, then
//! natively, and the bytes each wrote are compared; the first difference is an error naming
//! the kernel, the buffer and the offset.
//!
//! Checks on every launch:
//! - params: the struct's size and alignment must equal the entry's `.param` declaration,
//!   and every `ld.param` is bounds-checked;
//! - shared memory: bounds and natural alignment; racecheck (on unless
//!   `DFRT_PTX_RACECHECK=0`): an access to a byte another warp wrote since the last barrier
//!   (or a write to one another warp read), or to a byte under a cp.async no wait_group has
//!   retired yet, fails with both sites;
//! - global memory (memcheck): every access must lie inside one allocation registered with
//!   [`register_allocation`] (the host's simulated device registers all of its own). When
//!   nothing is registered (kernel tests on plain `Vec`s) only null-page and alignment checks
//!   apply;
//! - warp collectives need every lane at the same instruction, barriers every thread; a trap
//!   (a Rust panic path) names the kernel, block and thread.
//!
//! Counters ([`Counters`], `DFRT_PTX_COUNTERS=1` prints them per launch to stderr): dynamic
//! thread-instructions by class, shared-memory wavefronts per request (bank conflicts) and
//! global 32-byte sectors per request (coalescing). A "request" is one warp's execution of one
//! memory instruction (lanes matched by how often each has executed it). They do not model
//! timing, caches, latency hiding, the scheduler, or L1/L2 hit rates.

pub mod exec;
pub mod ir;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use crate::sim::{SimError, SimErrorKind};
pub use ir::IClass;

static MODULE: OnceLock<Result<ir::Module, String>> = OnceLock::new();

/// The committed PTX, decoded once per process.
pub fn module() -> Result<&'static ir::Module, String> {
    MODULE
        .get_or_init(|| ir::load(crate::PTX))
        .as_ref()
        .map_err(|e| e.clone())
}

static LIVE: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());

/// Registers a live device allocation: while any is registered, every global access of the
/// PTX engine must lie inside one.
pub fn register_allocation(ptr: u64, len: usize) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(ptr, len as u64);
}

/// Forgets an allocation from [`register_allocation`].
pub fn unregister_allocation(ptr: u64) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(&ptr);
}

/// Per-launch counters of the PTX engine (all blocks summed).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Dynamic thread-instructions by class.
    pub instrs: BTreeMap<IClass, u64>,
    /// Shared memory by instruction class: (warp requests, wavefronts). Wavefronts / requests
    /// above 1 means bank conflicts.
    pub shared: BTreeMap<IClass, (u64, u64)>,
    /// Global memory by instruction class: (warp requests, 32-byte sectors).
    pub global: BTreeMap<IClass, (u64, u64)>,
    /// Barriers released (summed over blocks).
    pub barriers: u64,
}

impl Counters {
    /// A readable multi-line summary.
    pub fn summary(&self) -> String {
        exec::summarize(self)
    }
}

const PAGE: u64 = 4096;

struct Page {
    data: Box<[u8; PAGE as usize]>,
    written: [u64; (PAGE / 64) as usize],
}

/// Global memory as the PTX engine sees it: host memory, optionally behind a write overlay
/// (dual mode), checked against a snapshot of the live allocations.
pub struct GlobalMem {
    live: Vec<(u64, u64)>,
    overlay: Option<HashMap<u64, Page>>,
}

impl GlobalMem {
    fn new(overlay: bool, live: Option<&[(u64, u64)]>) -> Self {
        let mut live: Vec<(u64, u64)> = match live {
            Some(l) => l.to_vec(),
            None => LIVE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(&a, &l)| (a, l))
                .collect(),
        };
        live.sort();
        GlobalMem {
            live,
            overlay: overlay.then(HashMap::new),
        }
    }

    /// Memcheck: `[addr, addr + len)` inside one live allocation (or, with none registered,
    /// outside the null page).
    pub fn check(&self, addr: u64, len: u64) -> Result<(), String> {
        if addr < 4096 {
            return Err("in the null page".into());
        }
        if self.live.is_empty() {
            return Ok(());
        }
        let i = self.live.partition_point(|&(a, _)| a <= addr);
        if i > 0 {
            let (a, l) = self.live[i - 1];
            if addr + len <= a + l {
                return Ok(());
            }
            return Err(format!(
                "the nearest allocation below is {a:#x}+{l}, which it passes by {} bytes",
                addr + len - (a + l)
            ));
        }
        Err("below every live allocation".into())
    }

    /// Reads host memory (through the overlay). The address was memchecked.
    pub fn read(&self, addr: u64, buf: &mut [u8]) {
        if self.overlay.is_none() {
            // SAFETY: as below; one copy instead of a byte loop (the common case).
            unsafe {
                std::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len())
            };
            return;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let a = addr + i as u64;
            if let Some(p) = self.overlay.as_ref().and_then(|o| o.get(&(a / PAGE))) {
                let o = (a % PAGE) as usize;
                if p.written[o / 64] >> (o % 64) & 1 == 1 {
                    *b = p.data[o];
                    continue;
                }
            }
            // SAFETY: the caller of the launch vouched (as on the GPU) that every address the
            // kernel reads is valid host memory; the range passed memcheck.
            *b = unsafe { std::ptr::read_volatile(a as *const u8) };
        }
    }

    /// Writes host memory, or the overlay in dual mode.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        match &mut self.overlay {
            None => {
                // SAFETY: as in `read`; the range passed memcheck.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len())
                }
            }
            Some(o) => {
                for (i, &b) in bytes.iter().enumerate() {
                    let a = addr + i as u64;
                    let p = o.entry(a / PAGE).or_insert_with(|| Page {
                        data: Box::new([0; PAGE as usize]),
                        written: [0; 64],
                    });
                    let off = (a % PAGE) as usize;
                    p.data[off] = b;
                    p.written[off / 64] |= 1 << (off % 64);
                }
            }
        }
    }

    /// The bytes written in dual mode, in address order.
    fn written(&self) -> Vec<(u64, u8)> {
        let mut out = Vec::new();
        if let Some(o) = &self.overlay {
            let mut pages: Vec<_> = o.iter().collect();
            pages.sort_by_key(|(k, _)| **k);
            for (k, p) in pages {
                for off in 0..PAGE as usize {
                    if p.written[off / 64] >> (off % 64) & 1 == 1 {
                        out.push((k * PAGE + off as u64, p.data[off]));
                    }
                }
            }
        }
        out
    }
}

/// Options of one PTX launch.
#[derive(Clone, Debug)]
pub struct PtxOptions {
    /// Shared-memory racecheck.
    pub racecheck: bool,
    /// The live allocations (base, bytes) for memcheck; `None`: those registered with
    /// [`register_allocation`].
    pub live: Option<Vec<(u64, u64)>>,
}

impl Default for PtxOptions {
    fn default() -> Self {
        PtxOptions {
            racecheck: std::env::var("DFRT_PTX_RACECHECK").map_or(true, |v| v != "0"),
            live: None,
        }
    }
}

fn launch_error(kernel: &str, kind: SimErrorKind, detail: String) -> SimError {
    SimError {
        kind,
        kernel: kernel.to_string(),
        block: [0; 3],
        thread: None,
        detail,
    }
}

/// Checks the params struct against the entry's `.param` declaration.
fn check_params(e: &ir::Entry, size: usize, align: usize) -> Result<(), SimError> {
    if size != e.param_size as usize || align != e.param_align as usize {
        return Err(launch_error(
            &e.name,
            SimErrorKind::Params,
            format!(
                "params struct is {size} bytes aligned to {align}, but the PTX declares `.param .align {} .b8 {}_param_0[{}]`",
                e.param_align, e.name, e.param_size
            ),
        ));
    }
    Ok(())
}

/// The bytes of a `Copy` params struct.
fn bytes_of<P: Copy>(p: &P) -> Vec<u8> {
    let mut v = vec![0u8; std::mem::size_of::<P>()];
    // SAFETY: copies size_of::<P>() bytes of a live value into a buffer of that size. The
    // params structs are `#[repr(C)]` plain fields; padding bytes (never read by the kernels'
    // `ld.param`s) come along as the driver would copy them.
    unsafe { std::ptr::copy_nonoverlapping(p as *const P as *const u8, v.as_mut_ptr(), v.len()) };
    v
}

/// Runs one launch on the PTX engine, writing host memory.
///
/// # Safety
/// As [`crate::sim::launch`]: the device pointers in `params` must be valid for what the
/// kernel reads and writes.
pub unsafe fn launch<P: Copy>(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    dyn_smem: u32,
    params: &P,
    opts: PtxOptions,
    counters: Option<&mut Counters>,
) -> Result<(), SimError> {
    let m = module().map_err(|e| {
        launch_error(
            name,
            SimErrorKind::Load,
            format!("the committed PTX does not load: {e}"),
        )
    })?;
    // SAFETY: forwarded from this function's contract.
    unsafe {
        launch_bytes(
            m,
            name,
            grid,
            block,
            dyn_smem,
            &bytes_of(params),
            std::mem::align_of::<P>(),
            opts,
            counters,
        )
    }
}

/// Runs one launch of entry `name` of module `m` with the params given as bytes (`align`:
/// the params struct's alignment), writing host memory.
///
/// # Safety
/// As [`launch`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn launch_bytes(
    m: &ir::Module,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    dyn_smem: u32,
    params: &[u8],
    align: usize,
    opts: PtxOptions,
    counters: Option<&mut Counters>,
) -> Result<(), SimError> {
    let mut mem = GlobalMem::new(false, opts.live.as_deref());
    run_on(
        m, name, grid, block, dyn_smem, params, align, opts, counters, &mut mem,
    )
}

#[allow(clippy::too_many_arguments)]
fn run_on(
    m: &ir::Module,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    dyn_smem: u32,
    params: &[u8],
    align: usize,
    opts: PtxOptions,
    counters: Option<&mut Counters>,
    mem: &mut GlobalMem,
) -> Result<(), SimError> {
    let e = m.entries.get(name).ok_or_else(|| {
        launch_error(
            name,
            SimErrorKind::Load,
            "no such entry in the committed PTX".into(),
        )
    })?;
    check_params(e, params.len(), align)?;
    let mut print = None;
    let counters = match counters {
        Some(c) => Some(c),
        None if std::env::var_os("DFRT_PTX_COUNTERS").is_some() => {
            Some(print.insert(Counters::default()))
        }
        None => None,
    };
    let mut run = exec::Run::new(
        e,
        grid,
        block,
        dyn_smem,
        params,
        mem,
        counters,
        opts.racecheck,
    );
    let r = run.run();
    drop(run);
    if let Some(c) = print {
        eprintln!(
            "ptx counters `{name}` grid {grid:?} block {block:?}:\n{}",
            c.summary()
        );
    }
    r
}

/// Dual mode: runs the launch on the PTX engine into an overlay, then `native` on host
/// memory, and compares every byte the PTX run wrote with what the native run left there.
///
/// # Safety
/// As [`launch`].
pub unsafe fn dual<P: Copy>(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    dyn_smem: u32,
    params: &P,
    opts: PtxOptions,
    native: impl FnOnce() -> Result<(), SimError>,
) -> Result<(), SimError> {
    let bytes = bytes_of(params);
    let mut mem = GlobalMem::new(true, opts.live.as_deref());
    let m = module().map_err(|e| {
        launch_error(
            name,
            SimErrorKind::Load,
            format!("the committed PTX does not load: {e}"),
        )
    })?;
    let ptx = run_on(
        m,
        name,
        grid,
        block,
        dyn_smem,
        &bytes,
        std::mem::align_of::<P>(),
        opts,
        None,
        &mut mem,
    );
    native()?;
    ptx?;
    for (addr, b) in mem.written() {
        // SAFETY: the PTX run wrote (into the overlay) at this address, which passed memcheck
        // and which the caller vouched for.
        let got = unsafe { std::ptr::read_volatile(addr as *const u8) };
        if got != b {
            // Name the buffer: the params field holding the nearest pointer at or below.
            let (field, base) = (0..bytes.len() / 8)
                .map(|i| {
                    (
                        i * 8,
                        u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap()),
                    )
                })
                .filter(|&(_, p)| p <= addr && addr - p < 1 << 32)
                .max_by_key(|&(_, p)| p)
                .unwrap_or((usize::MAX, addr));
            return Err(launch_error(
                name,
                SimErrorKind::Mismatch,
                format!(
                    "dual mode: first differing byte at {addr:#x}, offset {} in the buffer of params field at byte {field} (base {base:#x}): PTX wrote {b:#04x}, native {got:#04x}",
                    addr - base
                ),
            ));
        }
    }
    Ok(())
}
