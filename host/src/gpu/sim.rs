//! The simulated device: host memory, the SIMT simulator, a CPU GEMM.
//!
//! Device memory is host memory (256-byte aligned, filled with 0xff bytes on allocation so a
//! read of anything never written is NaN in f32 and bf16). Every copy and GEMM range is checked
//! against the live allocations. Kernels run in `dfrt_kernels::sim`, the same source as the
//! PTX. The GEMM widens bf16 to f32, accumulates in f32 (matrixmultiply) and rounds the result
//! once, exactly as the CPU reference backend does.

use std::alloc::Layout;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use half::bf16;

use super::{heap::ALIGN, DevPtr, Device, Gemm};
use crate::backend::Precision;
use crate::{Error, Result};

pub struct SimDevice {
    live: Mutex<BTreeMap<u64, usize>>,
    used: AtomicU64,
    limit: usize,
    allocs: AtomicU64,
    launches: AtomicU64,
    /// Per kernel (and "gemm"): calls and total time, when `DFRT_SIM_PROFILE` is set.
    profile: Option<Mutex<HashMap<&'static str, (u64, Duration)>>>,
    /// The ops being recorded while a graph capture is open.
    capture: Mutex<Option<Vec<SimOp>>>,
    /// Recorded graphs, by id (None once dropped).
    graphs: Mutex<Vec<Option<Arc<Vec<SimOp>>>>>,
}

/// One recorded device op of a simulated graph: replaying it runs it on the device again.
type SimOp = Box<dyn Fn(&SimDevice) -> Result<()> + Send + Sync>;

/// What a simulated device reports as its total memory unless given a limit.
pub const DEFAULT_SIM_MEMORY: usize = 16 << 30;

impl Default for SimDevice {
    fn default() -> Self {
        Self::with_limit(DEFAULT_SIM_MEMORY)
    }
}

impl SimDevice {
    pub fn new() -> Self {
        Self::default()
    }

    /// A device with `bytes` of memory in all: allocations beyond it fail as out of memory,
    /// and `mem_info` reports it (to test the memory plan).
    pub fn with_limit(bytes: usize) -> Self {
        SimDevice {
            live: Mutex::new(BTreeMap::new()),
            used: AtomicU64::new(0),
            limit: bytes,
            allocs: AtomicU64::new(0),
            launches: AtomicU64::new(0),
            profile: std::env::var_os("DFRT_SIM_PROFILE").map(|_| Mutex::new(HashMap::new())),
            capture: Mutex::new(None),
            graphs: Mutex::new(Vec::new()),
        }
    }

    /// Kernel launches so far.
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    fn record(&self, name: &'static str, t0: Instant) {
        if let Some(p) = &self.profile {
            let mut m = p.lock().unwrap();
            let e = m.entry(name).or_default();
            e.0 += 1;
            e.1 += t0.elapsed();
        }
    }

    /// The profile as lines "name calls total_ms", slowest first (empty unless
    /// `DFRT_SIM_PROFILE` is set).
    pub fn profile_report(&self) -> String {
        let Some(p) = &self.profile else { return String::new() };
        let mut v: Vec<_> = p.lock().unwrap().iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1 .1));
        v.iter().map(|(k, (n, t))| format!("{k:<28} {n:>7} calls {:>10.1} ms\n", t.as_secs_f64() * 1e3)).collect()
    }

    /// While a capture is open: records `op` instead of running it and returns true.
    fn recorded(&self, op: impl Fn(&SimDevice) -> Result<()> + Send + Sync + 'static) -> bool {
        match &mut *self.capture.lock().unwrap() {
            Some(ops) => {
                ops.push(Box::new(op));
                true
            }
            None => false,
        }
    }

    fn not_capturing(&self, what: &str) -> Result<()> {
        if self.capture.lock().unwrap().is_some() {
            return Err(Error::invalid_op(format!("sim: {what} is not allowed during a graph capture")));
        }
        Ok(())
    }

    /// Checks that `[ptr, ptr + len)` lies inside one live allocation.
    fn check(&self, ptr: DevPtr, len: usize, what: &str) -> Result<()> {
        super::check_live(&self.live.lock().unwrap(), "sim", ptr, len, what)
    }
}

fn overlaps(a: (DevPtr, usize), b: (DevPtr, usize)) -> bool {
    a.1 > 0 && b.1 > 0 && a.0 < b.0 + b.1 as u64 && b.0 < a.0 + a.1 as u64
}

impl Device for SimDevice {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.not_capturing("a device allocation")?;
        let bytes = super::heap::round_up(bytes);
        let used = self.used.load(Ordering::Relaxed) as usize;
        if used + bytes > self.limit {
            return Err(Error::out_of_memory(
                bytes,
                self.limit - used,
                format!("sim: out of memory: {bytes} bytes requested, {} of {} free", self.limit - used, self.limit),
            ));
        }
        let layout = Layout::from_size_align(bytes, ALIGN)
            .map_err(|e| Error::invalid_op(format!("sim: bad allocation size {bytes}: {e}")))?;
        // SAFETY: the layout has a non-zero size (round_up gives at least ALIGN).
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            return Err(Error::out_of_memory(
                bytes,
                self.limit - used,
                format!("sim: host allocation of {bytes} bytes failed"),
            ));
        }
        // SAFETY: `p` is a fresh allocation of `bytes` bytes. Poison: 0xff.. is NaN in f32 and bf16.
        unsafe { std::ptr::write_bytes(p, 0xff, bytes) };
        self.live.lock().unwrap().insert(p as u64, bytes);
        // The PTX engine's memcheck checks every global access against the live allocations.
        dfrt_kernels::ptx::register_allocation(p as u64, bytes);
        self.used.fetch_add(bytes as u64, Ordering::Relaxed);
        self.allocs.fetch_add(1, Ordering::Relaxed);
        Ok(p as u64)
    }

    fn free(&self, ptr: DevPtr) -> Result<()> {
        self.not_capturing("freeing device memory")?;
        let size = self
            .live
            .lock()
            .unwrap()
            .remove(&ptr)
            .ok_or_else(|| Error::invalid_op(format!("sim: free of {ptr:#x}, which is not an allocation")))?;
        dfrt_kernels::ptx::unregister_allocation(ptr);
        self.used.fetch_sub(size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this size and alignment (it was in `live`), and
        // it is removed from `live`, so it is freed once.
        unsafe { std::alloc::dealloc(ptr as *mut u8, Layout::from_size_align_unchecked(size, ALIGN)) };
        Ok(())
    }

    fn h2d(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.check(dst, src.len(), "h2d")?;
        let bytes = src.to_vec();
        if self.recorded(move |d| d.h2d(dst, &bytes)) {
            return Ok(());
        }
        // SAFETY: the destination range is inside a live allocation (checked above); `copy`
        // allows overlap, so even a host slice aliasing device memory is fine.
        unsafe { std::ptr::copy(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn d2h(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.not_capturing("a device-to-host copy")?;
        self.check(src, dst.len(), "d2h")?;
        // SAFETY: the source range is inside a live allocation (checked above).
        unsafe { std::ptr::copy(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn d2d(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.check(dst, bytes, "d2d destination")?;
        self.check(src, bytes, "d2d source")?;
        if self.recorded(move |d| d.d2d(dst, src, bytes)) {
            return Ok(());
        }
        // SAFETY: both ranges are inside live allocations (checked above); `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<()> {
        self.check(dst, bytes, "memset")?;
        if self.recorded(move |d| d.memset(dst, byte, bytes)) {
            return Ok(());
        }
        // SAFETY: the range is inside a live allocation (checked above).
        unsafe { std::ptr::write_bytes(dst as *mut u8, byte, bytes) };
        Ok(())
    }

    unsafe fn launch<P: dfrt_kernels::Launch>(&self, p: P) -> Result<()> {
        // SAFETY (of the recorded launch): the caller of `launch` vouched for the pointers in `p`
        // for as long as the graph may be replayed (the backend keeps every block a capture
        // touched alive while the graph exists).
        if self.recorded(move |d| unsafe { d.launch(p) }) {
            return Ok(());
        }
        self.launches.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        // SAFETY: the caller guarantees the pointers in `p` are valid for the kernel; on this
        // device, device memory is host memory, which is what the simulator dereferences.
        let r = unsafe { dfrt_kernels::sim::run(p) }
            .map_err(|e| Error::kernel_fault(P::NAME, format!("kernel `{}`: {e}", P::NAME)));
        self.record(P::NAME, t0);
        r
    }

    fn gemm(&self, g: &Gemm) -> Result<()> {
        let [x, w, y, b] = g.extents();
        for (r, what) in [(x, "x"), (w, "w"), (y, "y"), (b, "bias")] {
            self.check(r.0, r.1, &format!("gemm operand {what}"))?;
        }
        if overlaps(y, x) || overlaps(y, w) || overlaps(y, b) {
            return Err(Error::invalid_op("sim: gemm output overlaps an input"));
        }
        let rec = *g;
        if self.recorded(move |d| d.gemm(&rec)) {
            return Ok(());
        }
        let (n, k, m) = (g.n, g.k, g.m);
        if n == 0 || m == 0 {
            return Ok(());
        }
        let t0 = Instant::now();
        // Widen the inputs (bf16) or use them in place (f32).
        let widen = |p: DevPtr, len: usize| -> Vec<f32> {
            // SAFETY: `p` is valid for `len` bf16 (checked above) and bf16 has no invalid bits.
            let s = unsafe { std::slice::from_raw_parts(p as *const bf16, len) };
            s.iter().map(|v| v.to_f32()).collect()
        };
        let (xs, ws, bs): (Vec<f32>, Vec<f32>, Vec<f32>);
        let (xp, wp, bp): (*const f32, *const f32, Option<*const f32>) = match g.dtype {
            Precision::F32 => (g.x as *const f32, g.w as *const f32, g.bias.map(|b| b as *const f32)),
            Precision::Bf16 => {
                xs = widen(g.x, n * k);
                ws = widen(g.w, m * k);
                bs = g.bias.map(|b| widen(b, m)).unwrap_or_default();
                (xs.as_ptr(), ws.as_ptr(), g.bias.map(|_| bs.as_ptr()))
            }
        };
        let mut acc = vec![0f32; n * m];
        if k > 0 {
            // SAFETY: x is n×k row-major and w is m×k row-major (read as its transpose), both
            // valid (checked above, or our own widened copies); `acc` is n×m, exclusively ours.
            unsafe {
                matrixmultiply::sgemm(
                    n,
                    k,
                    m,
                    1.0,
                    xp,
                    k as isize,
                    1,
                    wp,
                    1,
                    k as isize,
                    0.0,
                    acc.as_mut_ptr(),
                    m as isize,
                    1,
                );
            }
        }
        // Epilogue in the CPU backend's order: + bias, (GELU), one rounding to the storage type.
        let bias: Option<&[f32]> = bp.map(|p| {
            // SAFETY: valid for m f32 (checked above, or our widened copy).
            unsafe { std::slice::from_raw_parts(p, m) }
        });
        for row in acc.chunks_mut(m) {
            for (j, v) in row.iter_mut().enumerate() {
                if let Some(b) = bias {
                    *v += b[j];
                }
                if g.epilogue == super::Epilogue::Gelu {
                    *v = crate::backend::gelu_tanh_f32(*v);
                }
            }
        }
        match g.dtype {
            Precision::F32 => {
                // SAFETY: y is valid for n·m f32 (checked) and overlaps no input.
                let out = unsafe { std::slice::from_raw_parts_mut(g.y as *mut f32, n * m) };
                out.copy_from_slice(&acc);
            }
            Precision::Bf16 => {
                // SAFETY: y is valid for n·m bf16 (checked) and overlaps no input.
                let out = unsafe { std::slice::from_raw_parts_mut(g.y as *mut bf16, n * m) };
                for (o, a) in out.iter_mut().zip(&acc) {
                    *o = bf16::from_f32(*a);
                }
            }
        }
        self.record("gemm", t0);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.not_capturing("synchronize")
    }

    fn begin_capture(&self) -> Result<()> {
        let mut c = self.capture.lock().unwrap();
        if c.is_some() {
            return Err(Error::invalid_op("sim: a graph capture is already open"));
        }
        *c = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&self) -> Result<usize> {
        let ops = self
            .capture
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| Error::invalid_op("sim: end_capture without begin_capture"))?;
        let mut g = self.graphs.lock().unwrap();
        g.push(Some(Arc::new(ops)));
        Ok(g.len() - 1)
    }

    fn replay(&self, graph: usize) -> Result<()> {
        self.not_capturing("a graph replay")?;
        let ops = self
            .graphs
            .lock()
            .unwrap()
            .get(graph)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::invalid_op(format!("sim: no graph {graph}")))?;
        for op in ops.iter() {
            op(self)?;
        }
        Ok(())
    }

    fn drop_graph(&self, graph: usize) -> Result<()> {
        self.not_capturing("dropping a graph")?;
        match self.graphs.lock().unwrap().get_mut(graph) {
            Some(g @ Some(_)) => {
                *g = None;
                Ok(())
            }
            _ => Err(Error::invalid_op(format!("sim: no graph {graph}"))),
        }
    }

    /// Graphs recorded and not dropped.
    fn live_graphs(&self) -> usize {
        self.graphs.lock().unwrap().iter().filter(|g| g.is_some()).count()
    }

    /// Every simulated op is synchronous, so an event is the wall-clock time of its recording.
    type Event = Instant;
    fn record(&self) -> Result<Instant> {
        Ok(Instant::now())
    }
    fn elapsed_ms(&self, start: &Instant, end: &Instant) -> Result<f32> {
        Ok(end.saturating_duration_since(*start).as_secs_f32() * 1e3)
    }

    fn allocations(&self) -> u64 {
        self.allocs.load(Ordering::Relaxed)
    }

    fn mem_info(&self) -> Result<(usize, usize)> {
        let used = self.used.load(Ordering::Relaxed) as usize;
        Ok((self.limit.saturating_sub(used), self.limit))
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        if self.profile.is_some() {
            eprint!("sim profile:\n{}", self.profile_report());
        }
        let live = std::mem::take(&mut *self.live.lock().unwrap());
        for (p, size) in live {
            dfrt_kernels::ptx::unregister_allocation(p);
            // SAFETY: every entry of `live` is an allocation of ours with this size and alignment.
            unsafe { std::alloc::dealloc(p as *mut u8, Layout::from_size_align_unchecked(size, ALIGN)) };
        }
    }
}
