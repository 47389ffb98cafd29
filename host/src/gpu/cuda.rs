//! The CUDA device: cudarc with dynamic loading (libcuda and libcublasLt are opened at run
//! time, so this builds and type-checks on machines without CUDA), the committed PTX
//! (`dfrt_kernels::PTX`, JIT-compiled by the driver), cuBLASLt for GEMMs.
//!
//! Memory is handled as raw device pointers (`cuMemAlloc`), because the kernels' params structs
//! hold raw pointers; cudarc's event tracking is switched off and everything runs in order on
//! one stream. cuBLASLt takes the raw pointers through `Raw`, a pointer + length view.
//!
//! Not verified without a GPU (this machine has none): everything that talks to the driver.
//! The code compiles against cudarc 0.19.10; `tests/gpu_sim.rs` has CUDA tests that print
//! `skipped: <reason>` and return when no GPU is present.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::{sys as ltsys, Activation, CudaBlasLT, Matmul, MatmulConfig, MatmulShared, Workspace};
use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, DeviceSlice, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use dfrt_kernels::Launch;

use super::{DevPtr, Device, Gemm};
use crate::backend::Precision;
use crate::{Error, Result};

/// A kernel's params struct as the single by-value kernel argument. `#[repr(transparent)]`
/// keeps `P`'s `#[repr(C)]` layout, which is exactly the `.param` struct the PTX entry takes.
#[repr(transparent)]
struct KernelArg<P>(P);

// SAFETY: every `Launch` type is a `#[repr(C)]` `Copy` struct of plain integers and floats
// (the kernels crate's contract, checked against the PTX signatures by its `ptx_contract`
// test), so its bytes are a valid CUDA kernel parameter of the same layout.
unsafe impl<P: Launch> DeviceRepr for KernelArg<P> {}

/// A raw device range as a cudarc slice, so cuBLASLt's safe wrapper can take our pointers.
/// Synchronisation is ours (one stream, in order), so the returned [`SyncOnDrop`] does nothing.
struct Raw<'s, T> {
    ptr: DevPtr,
    len: usize,
    stream: &'s Arc<CudaStream>,
    _t: std::marker::PhantomData<T>,
}

impl<'s, T> Raw<'s, T> {
    fn new(ptr: DevPtr, len: usize, stream: &'s Arc<CudaStream>) -> Self {
        Raw { ptr, len, stream, _t: std::marker::PhantomData }
    }
}
impl<T> DeviceSlice<T> for Raw<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.stream
    }
}
impl<T> DevicePtr<T> for Raw<'_, T> {
    fn device_ptr<'a>(&'a self, _stream: &'a CudaStream) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Sync(None))
    }
}
impl<T> DevicePtrMut<T> for Raw<'_, T> {
    fn device_ptr_mut<'a>(&'a mut self, _stream: &'a CudaStream) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Sync(None))
    }
}

/// cuBLASLt with exact f32 compute (`CUBLAS_COMPUTE_32F`): cudarc's own `Matmul<f32>` uses
/// TF32, which would break the f32 path's 1e-4 contract.
struct ExactF32<'a>(&'a CudaBlasLT);
impl MatmulShared for ExactF32<'_> {
    fn handle(&self) -> &ltsys::cublasLtHandle_t {
        self.0.handle()
    }
    fn workspace(&self) -> &Workspace {
        self.0.workspace()
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.0.stream()
    }
}
impl Matmul<f32> for ExactF32<'_> {
    fn matrix_type() -> ltsys::cudaDataType {
        ltsys::cudaDataType_t::CUDA_R_32F
    }
    fn compute_type() -> ltsys::cublasComputeType_t {
        ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    }
}

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    funcs: Mutex<HashMap<&'static str, CudaFunction>>,
    lt: CudaBlasLT,
    live: Mutex<BTreeMap<u64, usize>>,
    allocs: AtomicU64,
    sync_debug: bool,
    /// Instantiated CUDA graphs, by the id `end_capture` returned.
    graphs: Mutex<Graphs>,
    /// The pinned ring small eager uploads go through (allocated at first use).
    uploads: Mutex<Uploads>,
}

/// Bytes of the pinned upload ring; uploads up to a quarter of it go through the ring (the
/// per-call attention segment tables, a chunk's latents), larger ones (weights) are copied
/// synchronously.
const UPLOAD_RING: usize = 8 << 20;

struct Uploads {
    buf: Option<Pinned>,
    ring: super::ring::Ring<CudaEvent>,
}
// SAFETY: the pinned buffer is a host allocation and the events are driver handles; moving
// them between threads is allowed, and the Mutex serialises their use.
unsafe impl Send for Uploads {}

/// The instantiated graphs with the pinned host memory their uploads read at every replay,
/// and the pinned memory of the capture in progress. CUDA graph objects are not internally
/// synchronised: every access goes through the `Mutex` above, which serialises them as the
/// CUDA docs require.
#[derive(Default)]
struct Graphs {
    /// By id; None once dropped.
    done: Vec<Option<(CudaGraph, Staging)>>,
    /// Some while a capture is open.
    open: Option<Staging>,
    /// Pinned chunks of dropped graphs, reused by later captures (a session records one graph
    /// per chunk, so after the first chunk captures allocate no page-locked memory).
    spare: Vec<Pinned>,
}
// SAFETY: a CudaGraph is a pair of driver handles and Staging owns host allocations; moving
// them to another thread is allowed, only concurrent use is not, and the Mutex rules that out.
unsafe impl Send for Graphs {}

/// Page-locked host memory holding the bytes of a capture's uploads: a bump allocator over
/// chunks of at least [`STAGING_CHUNK`] bytes, so that a capture with a few hundred small
/// uploads (segment tables) makes a handful of `cuMemHostAlloc` calls, not hundreds.
#[derive(Default)]
struct Staging {
    chunks: Vec<Pinned>,
    /// Bytes used in the last chunk.
    used: usize,
}

const STAGING_CHUNK: usize = 256 << 10;

impl Staging {
    /// Copies `src` into pinned memory that lives as long as this staging area; new chunks
    /// come from `spare` when one is large enough.
    fn stage(&mut self, src: &[u8], spare: &mut Vec<Pinned>) -> Result<&[u8]> {
        // 16-byte alignment keeps the driver's copy engines on their fast path.
        let at = self.used.div_ceil(16) * 16;
        let fits = self.chunks.last().is_some_and(|c| at + src.len() <= c.1);
        let (base, at) = if fits {
            (self.chunks.last().unwrap().0, at)
        } else {
            let chunk = match spare.iter().position(|c| c.1 >= src.len()) {
                Some(i) => spare.swap_remove(i),
                None => {
                    let cap = src.len().max(STAGING_CHUNK);
                    // SAFETY: a plain page-locked allocation of `cap` bytes (0 flags). Allowed
                    // during the capture: it is taken in relaxed mode (see begin_capture).
                    let p =
                        unsafe { result::malloc_host(cap, 0) }.map_err(drv("pinned staging for a captured upload"))?;
                    Pinned(p, cap)
                }
            };
            let p = chunk.0;
            self.chunks.push(chunk);
            (p, 0)
        };
        self.used = at + src.len();
        // SAFETY: [at, at + len) lies inside the chunk at `base` (checked above or fresh) and
        // is handed out once; the chunk is freed only with this Staging, which the graph that
        // reads it owns.
        unsafe {
            let dst = (base as *mut u8).add(at);
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
            Ok(std::slice::from_raw_parts(dst, src.len()))
        }
    }
}

/// One page-locked host allocation and its size.
struct Pinned(*mut std::ffi::c_void, usize);
impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_host`, freed once; its graph (which reads it) is gone and
        // the stream was synchronised before (see `drop_graph`).
        let _ = unsafe { result::free_host(self.0) };
    }
}

fn drv(what: &str) -> impl Fn(result::DriverError) -> Error + '_ {
    move |e| Error::driver("cuda", what, e)
}

/// Runs a cudarc call that may panic when a library or symbol is missing (cudarc's loader
/// panics rather than returning an error) and turns the panic into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Error::not_available(format!("cuda: {what}: {msg}")))
        }
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal`: loads libcuda, creates the context and a stream, loads the PTX
    /// module and cuBLASLt. Without a driver or GPU this is a clear [`Error::Device`].
    /// `sync_debug` synchronises after every launch and names the kernel that faulted.
    pub fn new(ordinal: usize, sync_debug: bool) -> Result<Self> {
        Self::open(ordinal, sync_debug, None)
    }

    /// Like [`CudaDevice::new`], but all work (kernels, copies, GEMMs, graph replays) is queued
    /// on the caller's stream `stream` (a `CUstream` / `cudaStream_t`), so that it orders with
    /// the caller's own work. The stream must belong to GPU `ordinal`'s primary context (the
    /// one the CUDA runtime API uses); a stream of another context is refused. The legacy
    /// default stream cannot be captured into graphs, so it is refused too (pass a stream the
    /// caller created). Downloads and [`Device::synchronize`] wait on that stream.
    ///
    /// # Safety
    /// `stream` must be a valid stream that stays alive until this device is dropped, and
    /// the caller must not destroy it while work of this device may still be queued on it.
    pub unsafe fn with_stream(ordinal: usize, sync_debug: bool, stream: *mut std::ffi::c_void) -> Result<Self> {
        if stream.is_null() || stream as usize == 1 {
            return Err(Error::invalid_op("cuda: the legacy default stream cannot be used (it cannot be captured into a CUDA graph); pass a stream you created, or none"));
        }
        Self::open(ordinal, sync_debug, Some(stream as sys::CUstream))
    }

    fn open(ordinal: usize, sync_debug: bool, borrowed: Option<sys::CUstream>) -> Result<Self> {
        // SAFETY: only tries to dlopen the library; nothing from it is called.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::not_available("no CUDA driver: libcuda.so could not be loaded (is this a machine with an NVIDIA GPU and driver? use --device cpu or --device sim)"));
        }
        // SAFETY: as above.
        if !unsafe { ltsys::is_culib_present() } {
            return Err(Error::not_available("CUDA driver found, but libcublasLt.so could not be loaded (install the CUDA toolkit libraries or put them on LD_LIBRARY_PATH)"));
        }
        guarded("initialisation", || {
            let n = CudaContext::device_count().map_err(drv("counting devices"))?;
            if n <= ordinal as i32 {
                return Err(Error::not_available(format!("no CUDA GPU {ordinal}: the driver reports {n} device(s)")));
            }
            let ctx = CudaContext::new(ordinal).map_err(drv("creating the context"))?;
            // SAFETY: we use raw allocations and a single stream in order, never CudaSlices
            // across streams (the one CudaSlice, cuBLASLt's workspace, lives on our stream).
            unsafe { ctx.disable_event_tracking() };
            let stream = match borrowed {
                // A stream of our own: the legacy default stream cannot be captured into graphs.
                None => ctx.new_stream().map_err(drv("creating a stream"))?,
                Some(s) => {
                    let mut owner: sys::CUcontext = std::ptr::null_mut();
                    // SAFETY: `s` is a live stream (the caller's contract); the driver writes
                    // its context handle into `owner`.
                    unsafe { sys::cuStreamGetCtx(s, &mut owner) }
                        .result()
                        .map_err(drv("querying the caller's stream (is it a valid CUDA stream?)"))?;
                    if owner != ctx.cu_ctx() {
                        return Err(Error::invalid_op(format!("cuda: the caller's stream belongs to another CUDA context than GPU {ordinal}'s primary context (create it with the CUDA runtime on that GPU, or pass none)")));
                    }
                    // SAFETY: the stream is of this context (checked) and outlives the device
                    // (the caller's contract); the wrapper never destroys it.
                    unsafe { ctx.wrap_borrowed_stream(s) }
                }
            };
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(dfrt_kernels::PTX))
                .map_err(drv("loading the PTX module (driver too old for the PTX ISA?)"))?;
            let lt = CudaBlasLT::new(stream.clone())
                .map_err(|e| Error::driver("cuda", "creating the cuBLASLt handle", e))?;
            Ok(CudaDevice {
                ctx,
                stream,
                module,
                funcs: Mutex::new(HashMap::new()),
                lt,
                live: Mutex::new(BTreeMap::new()),
                allocs: AtomicU64::new(0),
                sync_debug,
                graphs: Mutex::new(Graphs::default()),
                uploads: Mutex::new(Uploads { buf: None, ring: super::ring::Ring::new(UPLOAD_RING) }),
            })
        })
    }

    /// The stream all work is queued on (the device's own, or the caller's).
    pub fn cu_stream(&self) -> *mut std::ffi::c_void {
        self.stream.cu_stream() as *mut std::ffi::c_void
    }

    /// The GPU's name and compute capability, e.g. "NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "?".into());
        match self.ctx.compute_capability() {
            Ok((a, b)) => format!("{name} (sm_{a}{b})"),
            Err(_) => name,
        }
    }

    fn function(&self, name: &'static str) -> Result<CudaFunction> {
        let mut f = self.funcs.lock().unwrap();
        if let Some(k) = f.get(name) {
            return Ok(k.clone());
        }
        let k = self
            .module
            .load_function(name)
            .map_err(|e| Error::driver("cuda", format!("kernel `{name}` is not in the PTX module"), e))?;
        f.insert(name, k.clone());
        Ok(k)
    }

    /// Makes our context current on the calling thread (driver calls act on the current one);
    /// cheap when it already is.
    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv("binding the context to this thread"))
    }

    fn check(&self, ptr: DevPtr, len: usize, what: &str) -> Result<()> {
        self.bind()?;
        super::check_live(&self.live.lock().unwrap(), "cuda", ptr, len, what)
    }

    fn capturing(&self) -> bool {
        self.graphs.lock().unwrap().open.is_some()
    }

    fn not_capturing(&self, what: &str) -> Result<()> {
        if self.capturing() {
            return Err(Error::invalid_op(format!("cuda: {what} is not allowed during a graph capture")));
        }
        Ok(())
    }

    /// A small upload without waiting for the GPU: the bytes go into the pinned upload ring
    /// and an asynchronous copy reads them from there, in stream order; the host waits only
    /// when the ring wraps onto copies the GPU has not reached yet (see [`super::ring`]).
    fn h2d_ring(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        let mut up = self.uploads.lock().unwrap();
        if up.buf.is_none() {
            // SAFETY: a plain page-locked allocation of UPLOAD_RING bytes (0 flags).
            let p = unsafe { result::malloc_host(UPLOAD_RING, 0) }.map_err(drv("pinned upload ring"))?;
            up.buf = Some(Pinned(p, UPLOAD_RING));
        }
        let (at, wait) = up.ring.reserve(src.len()).expect("small uploads fit the ring");
        for e in wait {
            e.synchronize().map_err(drv("waiting for an earlier upload"))?;
        }
        let base = up.buf.as_ref().unwrap().0 as *mut u8;
        // SAFETY: [at, at + len) lies inside the ring's allocation (Ring::reserve) and no copy
        // in flight reads it any more (its fences were waited for above); the slice lives in
        // the ring until the event recorded below has passed.
        let host = unsafe {
            let p = base.add(at);
            std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len());
            std::slice::from_raw_parts(p as *const u8, src.len())
        };
        // SAFETY: the destination is inside a live allocation; the pinned source stays
        // untouched until the fence below passes.
        unsafe { result::memcpy_htod_async(dst, host, self.stream.cu_stream()) }.map_err(drv("h2d"))?;
        let fence =
            self.stream.record_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)).map_err(drv("h2d fence"))?;
        up.ring.commit(at, src.len(), fence);
        drop(up);
        self.after("h2d")
    }

    fn after(&self, what: &str) -> Result<()> {
        if self.sync_debug && !self.capturing() {
            self.stream
                .synchronize()
                .map_err(|e| Error::kernel_fault(what, format!("cuda: {what} faulted: {e} (--sync-debug)")))?;
        }
        Ok(())
    }
}

impl Device for CudaDevice {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.not_capturing("a device allocation")?;
        let bytes = super::heap::round_up(bytes);
        self.bind()?;
        // SAFETY: a plain allocation; the memory is only reached through the returned pointer.
        let p = unsafe { result::malloc_sync(bytes) }.map_err(|e| {
            let (free, total) = self.mem_info().unwrap_or((0, 0));
            Error::out_of_memory(
                bytes,
                free,
                format!("cuda: allocating {bytes} bytes: {e} ({free} of {total} bytes free)"),
            )
        })?;
        self.live.lock().unwrap().insert(p, bytes);
        self.allocs.fetch_add(1, Ordering::Relaxed);
        Ok(p)
    }

    fn free(&self, ptr: DevPtr) -> Result<()> {
        self.not_capturing("freeing device memory")?;
        if self.live.lock().unwrap().remove(&ptr).is_none() {
            return Err(Error::invalid_op(format!("cuda: free of {ptr:#x}, which is not an allocation")));
        }
        self.bind()?;
        // Work queued on the pointer must finish first.
        self.stream.synchronize().map_err(drv("synchronize before free"))?;
        // SAFETY: `ptr` came from `malloc_sync` (it was in `live`, now removed: freed once) and
        // no queued work uses it any more (synchronised above).
        unsafe { result::free_sync(ptr) }.map_err(drv("free"))
    }

    fn h2d(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.check(dst, src.len(), "h2d")?;
        let mut g = self.graphs.lock().unwrap();
        let Graphs { open, spare, .. } = &mut *g;
        if let Some(staged) = open {
            // In a capture the copy becomes a graph node that reads its source at every replay:
            // the bytes go to page-locked memory owned by the graph.
            if src.is_empty() {
                return Ok(());
            }
            let host = staged.stage(src, spare)?;
            // SAFETY: the destination is inside a live allocation; the pinned source lives as
            // long as the graph.
            return unsafe { result::memcpy_htod_async(dst, host, self.stream.cu_stream()) }
                .map_err(drv("captured h2d"));
        }
        drop(g);
        if src.is_empty() {
            return Ok(());
        }
        if src.len() <= UPLOAD_RING / 4 {
            return self.h2d_ring(dst, src);
        }
        // SAFETY: the destination is inside a live allocation; the copy is finished before
        // returning (synchronize), so `src` may be dropped afterwards.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(drv("h2d"))?;
        self.stream.synchronize().map_err(drv("h2d"))
    }

    fn d2h(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.not_capturing("a device-to-host copy")?;
        self.check(src, dst.len(), "d2h")?;
        // SAFETY: the source is inside a live allocation; we wait for the copy before `dst`
        // can be read or dropped.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(drv("d2h"))?;
        self.stream.synchronize().map_err(drv("d2h (an earlier kernel may have faulted; rerun with --sync-debug)"))
    }

    fn d2d(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.check(dst, bytes, "d2d destination")?;
        self.check(src, bytes, "d2d source")?;
        // SAFETY: both ranges are inside live allocations; stream-ordered.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }.map_err(drv("d2d"))?;
        self.after("d2d")
    }

    fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<()> {
        self.check(dst, bytes, "memset")?;
        // SAFETY: the range is inside a live allocation; stream-ordered.
        unsafe { result::memset_d8_async(dst, byte, bytes, self.stream.cu_stream()) }.map_err(drv("memset"))?;
        self.after("memset")
    }

    unsafe fn launch<P: Launch>(&self, p: P) -> Result<()> {
        let f = self.function(P::NAME)?;
        let d = p.dims();
        if d.dyn_smem > 48 * 1024 {
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                d.dyn_smem as i32,
            )
            .map_err(|e| {
                Error::invalid_op(format!(
                    "cuda: kernel `{}`: {} bytes of dynamic shared memory: {e}",
                    P::NAME,
                    d.dyn_smem
                ))
            })?;
        }
        let cfg = LaunchConfig {
            grid_dim: (d.grid[0], d.grid[1], d.grid[2]),
            block_dim: (d.block[0], d.block[1], d.block[2]),
            shared_mem_bytes: d.dyn_smem,
        };
        let arg = KernelArg(p);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&arg);
        // SAFETY: the kernel `P::NAME` takes exactly one parameter, the `#[repr(C)]` struct `P`
        // (the kernel! macro ties each params type to its entry point), passed by value; the
        // caller guarantees the pointers inside are valid for the kernel's accesses.
        unsafe { b.launch(cfg) }.map_err(|e| Error::driver("cuda", format!("launching kernel `{}`", P::NAME), e))?;
        if self.sync_debug && !self.capturing() {
            self.stream.synchronize().map_err(|e| {
                Error::kernel_fault(
                    P::NAME,
                    format!(
                        "cuda: kernel `{}` faulted: {e} (grid {:?}, block {:?}, {} B shared)",
                        P::NAME,
                        d.grid,
                        d.block,
                        d.dyn_smem
                    ),
                )
            })?;
        }
        Ok(())
    }

    fn gemm(&self, g: &Gemm) -> Result<()> {
        let [x, w, y, b] = g.extents();
        for (r, what) in [(x, "x"), (w, "w"), (y, "y"), (b, "bias")] {
            self.check(r.0, r.1, &format!("gemm operand {what}"))?;
        }
        if g.n == 0 || g.m == 0 {
            return Ok(());
        }
        // Row-major y[n,m] = x[n,k]·w[m,k]ᵀ is column-major yᵀ[m,n] = w·xᵀ: A = w (k×m col-major,
        // transposed), B = x (k×n col-major), C = yᵀ with leading dimension m. The bias runs
        // along C's rows (m), which is the epilogue's broadcast direction.
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: g.m as u64,
            n: g.n as u64,
            k: g.k as u64,
            alpha: 1.0,
            lda: g.k as i64,
            ldb: g.k as i64,
            beta: 0.0,
            ldc: g.m as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        let act = (g.epilogue == super::Epilogue::Gelu).then_some(Activation::Gelu);
        let s = &self.stream;
        let r = match g.dtype {
            Precision::F32 => {
                let (a, bb, mut c) = (
                    Raw::<f32>::new(g.w, g.m * g.k, s),
                    Raw::<f32>::new(g.x, g.n * g.k, s),
                    Raw::<f32>::new(g.y, g.n * g.m, s),
                );
                let bias = g.bias.map(|p| Raw::<f32>::new(p, g.m, s));
                // SAFETY: every operand range was checked against live allocations above and
                // matches the config's shapes; the output does not alias the inputs.
                unsafe { ExactF32(&self.lt).matmul(cfg, &a, &bb, &mut c, bias.as_ref(), act.as_ref()) }
            }
            Precision::Bf16 => {
                let (a, bb, mut c) = (
                    Raw::<half::bf16>::new(g.w, g.m * g.k, s),
                    Raw::<half::bf16>::new(g.x, g.n * g.k, s),
                    Raw::<half::bf16>::new(g.y, g.n * g.m, s),
                );
                let bias = g.bias.map(|p| Raw::<half::bf16>::new(p, g.m, s));
                // SAFETY: as above.
                unsafe { self.lt.matmul(cfg, &a, &bb, &mut c, bias.as_ref(), act.as_ref()) }
            }
        };
        r.map_err(|e| Error::driver("cuda", format!("cuBLASLt {} GEMM {}×{}×{}", g.dtype.name(), g.n, g.k, g.m), e))?;
        self.after("gemm")
    }

    fn synchronize(&self) -> Result<()> {
        self.not_capturing("synchronize")?;
        self.stream.synchronize().map_err(drv("synchronize"))
    }

    /// Captures the stream (thread-local mode) into a CUDA graph.
    fn begin_capture(&self) -> Result<()> {
        let mut g = self.graphs.lock().unwrap();
        if g.open.is_some() {
            return Err(Error::invalid_op("cuda: a graph capture is already open"));
        }
        // Relaxed mode: the capture does not forbid calls such as cuMemHostAlloc (pinned
        // staging) or cuModuleGetFunction (a kernel's first use) on this thread. What must not
        // happen during a capture (allocation, freeing, downloads, synchronisation) this
        // device refuses itself.
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(drv("begin graph capture"))?;
        g.open = Some(Staging::default());
        Ok(())
    }

    fn end_capture(&self) -> Result<usize> {
        let mut g = self.graphs.lock().unwrap();
        let staged = g.open.take().ok_or_else(|| Error::invalid_op("cuda: end_capture without begin_capture"))?;
        let graph = self.stream.end_capture(sys::CUgraphInstantiate_flags(0)).map_err(drv("end graph capture"))?;
        let graph = graph.ok_or_else(|| Error::invalid_op("cuda: graph capture recorded nothing"))?;
        g.done.push(Some((graph, staged)));
        Ok(g.done.len() - 1)
    }

    fn replay(&self, id: usize) -> Result<()> {
        {
            let g = self.graphs.lock().unwrap();
            if g.open.is_some() {
                return Err(Error::invalid_op("cuda: a graph replay is not allowed during a graph capture"));
            }
            let (graph, _) = g
                .done
                .get(id)
                .and_then(|g| g.as_ref())
                .ok_or_else(|| Error::invalid_op(format!("cuda: no graph {id}")))?;
            graph.launch().map_err(drv("graph launch"))?;
        }
        self.after("graph replay")
    }

    fn drop_graph(&self, id: usize) -> Result<()> {
        let mut g = self.graphs.lock().unwrap();
        if g.open.is_some() {
            return Err(Error::invalid_op("cuda: dropping a graph is not allowed during a graph capture"));
        }
        let slot = g
            .done
            .get_mut(id)
            .filter(|s| s.is_some())
            .ok_or_else(|| Error::invalid_op(format!("cuda: no graph {id}")))?;
        // A replay may still be reading the graph's pinned uploads: wait for it before they
        // are reused (the executable graph itself may be destroyed while in flight).
        self.stream.synchronize().map_err(drv("synchronize before dropping a graph"))?;
        let (graph, staging) = slot.take().expect("checked above");
        drop(graph);
        g.spare.extend(staging.chunks);
        Ok(())
    }

    fn live_graphs(&self) -> usize {
        self.graphs.lock().unwrap().done.iter().filter(|g| g.is_some()).count()
    }

    type Event = CudaEvent;
    fn record(&self) -> Result<CudaEvent> {
        self.stream.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("record event"))
    }
    fn elapsed_ms(&self, start: &CudaEvent, end: &CudaEvent) -> Result<f32> {
        start.elapsed_ms(end).map_err(drv("event timing"))
    }

    fn allocations(&self) -> u64 {
        self.allocs.load(Ordering::Relaxed)
    }

    fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(drv("mem_get_info"))
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        self.graphs.lock().unwrap().done.clear();
        // The stream is idle: no copy reads the upload ring any more.
        let mut up = self.uploads.lock().unwrap();
        up.ring = super::ring::Ring::new(0);
        up.buf = None;
        for (p, _) in std::mem::take(&mut *self.live.lock().unwrap()) {
            // SAFETY: every entry is a live allocation of ours; the stream is idle.
            let _ = unsafe { result::free_sync(p) };
        }
    }
}
