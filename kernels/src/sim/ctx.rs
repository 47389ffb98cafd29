//! Per-block and per-thread state of the simulator, and the simulator bodies of the device
//! layer's primitives (called from `crate::gpu`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe, Location};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{SimError, SimErrorKind};

/// Shared-window address of the dynamic shared memory in the simulator. Not 0 on purpose: real
/// GPUs put reserved shared memory first, so a kernel that forgets to add the base must fail.
pub const SMEM_BASE: u32 = 0x400;

type Loc = &'static Location<'static>;

/// Unwind payload of a thread that stops because the launch has already failed.
struct SimAbort;

/// Which `shfl.sync` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shfl {
    Xor,
    Idx,
    Up,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Shfl(Shfl),
    Ballot,
    AllReduce,
    Mma,
    Ldmatrix { n: usize, trans: bool },
}

/// Payload one lane hands to a warp collective.
type Slot = [u32; 8];

struct BarState {
    arrived: u32,
    exited: u32,
    gen: u64,
    loc: Option<Loc>,
}

struct WarpState {
    arrived: u32,
    exited: u32,
    gen: u64,
    op: Option<(Op, Loc)>,
    slots: [Slot; 32],
    result: Arc<[Slot; 32]>,
}

struct Warp {
    present: u32,
    st: Mutex<WarpState>,
    cv: Waiters,
}

/// Threads parked at a rendezvous. Used instead of a `Condvar`: a release unparks each waiter
/// once, and the releaser holds no lock while it does, so the woken threads do not all pile up
/// on the state lock (with one OS thread per GPU thread, that herd dominated the run time).
#[derive(Default)]
struct Waiters(Mutex<Vec<std::thread::Thread>>);

impl Waiters {
    /// Registers this thread (while the caller still holds `guard`, so a release cannot be
    /// missed), releases `guard`, parks for at most `dur` and takes the state lock again.
    fn wait<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        m: &'a Mutex<T>,
        dur: Duration,
    ) -> MutexGuard<'a, T> {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if super::fiber::in_fiber() {
            // Let the other simulated threads run; this one is resumed on the next pass.
            drop(guard);
            let mine = CTX.with(|c| c.borrow_mut().take());
            super::fiber::yield_now();
            CTX.with(|c| *c.borrow_mut() = mine);
            return lock(m);
        }
        let me = std::thread::current();
        {
            let mut w = lock(&self.0);
            if !w.iter().any(|t| t.id() == me.id()) {
                w.push(me);
            }
        }
        drop(guard);
        std::thread::park_timeout(dur);
        lock(m)
    }

    /// Wakes every registered thread. Call it after releasing the state lock.
    fn notify_all(&self) {
        let ws = std::mem::take(&mut *lock(&self.0));
        for t in ws {
            t.unpark();
        }
    }
}

/// One simulated block: its indices, shared memory, barrier and warps.
pub struct BlockState {
    pub name: String,
    pub idx: [u32; 3],
    pub dim: [u32; 3],
    pub grid: [u32; 3],
    n_threads: u32,
    smem: Box<[AtomicU8]>,
    bar: Mutex<BarState>,
    bar_cv: Waiters,
    warps: Vec<Warp>,
    error: Mutex<Option<SimError>>,
    abort: AtomicBool,
    timeout: Duration,
    /// Threads run one after another (`kernel!(independent; ..)`): they must never meet.
    independent: bool,
    /// Bumped whenever a thread arrives at a rendezvous or finishes (fiber deadlock detection).
    progress: AtomicU64,
    /// Set by the fiber scheduler when every live thread is waiting: a deadlock.
    stalled: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another sim thread panicked; the state is still consistent
    // because every update is finished before anything that can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlockState {
    pub(super) fn new(
        name: String,
        idx: [u32; 3],
        dim: [u32; 3],
        grid: [u32; 3],
        smem_bytes: u32,
        timeout: Duration,
        independent: bool,
    ) -> Self {
        let n_threads = dim[0] * dim[1] * dim[2];
        let warps = (0..n_threads.div_ceil(32))
            .map(|w| Warp {
                present: (n_threads - 32 * w).min(32),
                st: Mutex::new(WarpState {
                    arrived: 0,
                    exited: 0,
                    gen: 0,
                    op: None,
                    slots: [[0; 8]; 32],
                    result: Arc::new([[0; 8]; 32]),
                }),
                cv: Waiters::default(),
            })
            .collect();
        BlockState {
            name,
            idx,
            dim,
            grid,
            n_threads,
            // Poisoned, not zeroed: real shared memory starts undefined, and 0xff bytes read as
            // NaN (f32 and bf16), so a read before any write shows up.
            smem: (0..smem_bytes).map(|_| AtomicU8::new(0xff)).collect(),
            bar: Mutex::new(BarState {
                arrived: 0,
                exited: 0,
                gen: 0,
                loc: None,
            }),
            bar_cv: Waiters::default(),
            warps,
            error: Mutex::new(None),
            abort: AtomicBool::new(false),
            timeout,
            independent,
            progress: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
        }
    }

    pub fn smem_len(&self) -> usize {
        self.smem.len()
    }

    pub fn smem_host_ptr(&self) -> *mut u8 {
        self.smem.as_ptr() as *mut u8
    }

    pub(super) fn take_error(&self) -> Option<SimError> {
        lock(&self.error).take()
    }

    /// Records the first error of the block and wakes every waiting thread so it can stop.
    fn record(&self, kind: SimErrorKind, thread: Option<[u32; 3]>, detail: String) {
        {
            let mut e = lock(&self.error);
            if e.is_none() {
                *e = Some(SimError {
                    kind,
                    kernel: self.name.clone(),
                    block: self.idx,
                    thread,
                    detail,
                });
            }
        }
        self.abort.store(true, Ordering::SeqCst);
        self.bar_cv.notify_all();
        for w in &self.warps {
            w.cv.notify_all();
        }
    }

    pub(super) fn progress(&self) -> u64 {
        self.progress.load(Ordering::SeqCst)
    }

    pub(super) fn set_stalled(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// A waiter gives up: its deadline passed, or every thread is waiting (fibers).
    fn give_up(&self, deadline: Instant) -> Option<String> {
        if self.stalled.load(Ordering::SeqCst) {
            Some("(deadlock: every thread of the block is waiting)".into())
        } else if Instant::now() > deadline {
            Some(format!("within {:?}", self.timeout))
        } else {
            None
        }
    }

    fn thread_exited(&self, linear: u32) {
        self.progress.fetch_add(1, Ordering::SeqCst);
        lock(&self.bar).exited += 1;
        self.bar_cv.notify_all();
        let w = &self.warps[(linear / 32) as usize];
        lock(&w.st).exited += 1;
        w.cv.notify_all();
    }
}

/// What a simulated thread knows about itself.
pub struct ThreadCtx {
    pub block: Arc<BlockState>,
    pub tid: [u32; 3],
    pub linear: u32,
    cp: RefCell<CpAsync>,
}

#[derive(Default)]
struct CpAsync {
    uncommitted: Vec<(u32, [u8; 16])>,
    groups: VecDeque<Vec<(u32, [u8; 16])>>,
}

thread_local! {
    static CTX: RefCell<Option<Rc<ThreadCtx>>> = const { RefCell::new(None) };
}

/// Runs `f` with this simulated thread's context. The thread-local is not borrowed while `f`
/// runs, so `f` may wait (and, with fibers, let other simulated threads run).
pub fn with<R>(f: impl FnOnce(&ThreadCtx) -> R) -> R {
    let ctx = CTX
        .with(|c| c.borrow().clone())
        .expect("dfrt_kernels::gpu function called outside sim::launch");
    f(&ctx)
}

pub(super) fn run_thread(block: Arc<BlockState>, tid: [u32; 3], f: impl FnOnce()) {
    let [dx, dy, _] = block.dim;
    let linear = tid[0] + dx * (tid[1] + dy * tid[2]);
    CTX.with(|c| {
        *c.borrow_mut() = Some(Rc::new(ThreadCtx {
            block: Arc::clone(&block),
            tid,
            linear,
            cp: RefCell::new(CpAsync::default()),
        }))
    });
    if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
        if !p.is::<SimAbort>() {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            block.record(
                SimErrorKind::Panic,
                Some(tid),
                format!("kernel code panicked: {msg}"),
            );
        }
    }
    CTX.with(|c| *c.borrow_mut() = None);
    block.thread_exited(linear);
}

impl ThreadCtx {
    /// Ends this thread's part of the launch with an error.
    fn fail(&self, kind: SimErrorKind, detail: String) -> ! {
        self.block.record(kind, Some(self.tid), detail);
        resume_unwind(Box::new(SimAbort));
    }

    fn check_smem(&self, addr: u32, len: u32, align: u32, what: &str) -> usize {
        let size = self.block.smem.len() as i64;
        let off = addr as i64 - SMEM_BASE as i64;
        if off < 0 || off + len as i64 > size {
            self.fail(
                SimErrorKind::SharedOutOfBounds,
                format!(
                    "{what} of {len} bytes at shared offset {off} (address {addr:#x}) is outside \
                     the {size}-byte dynamic shared memory"
                ),
            );
        }
        if addr & (align - 1) != 0 {
            self.fail(
                SimErrorKind::Misaligned,
                format!(
                    "{what} at shared offset {off} (address {addr:#x}) is not {align}-byte aligned"
                ),
            );
        }
        off as usize
    }

    /// Meets the other lanes of this warp at a collective; returns every lane's slot.
    fn exchange(&self, op: Op, loc: Loc, slot: Slot) -> Arc<[Slot; 32]> {
        let b = &*self.block;
        if b.independent {
            self.fail(
                SimErrorKind::Collective,
                format!("{op:?} at {loc} in a kernel declared `independent` (its threads must never meet)"),
            );
        }
        let wi = self.linear / 32;
        let w = &b.warps[wi as usize];
        let lane = (self.linear % 32) as usize;
        let mut st = lock(&w.st);
        match st.op {
            Some((o, l)) if (o, l) != (op, loc) => {
                drop(st);
                self.fail(
                    SimErrorKind::Collective,
                    format!("lanes of warp {wi} are at different collectives: {o:?} at {l} and {op:?} at {loc}"),
                );
            }
            Some(_) => {}
            None => st.op = Some((op, loc)),
        }
        st.slots[lane] = slot;
        st.arrived += 1;
        b.progress.fetch_add(1, Ordering::SeqCst);
        if st.arrived == w.present {
            st.result = Arc::new(st.slots);
            st.arrived = 0;
            st.op = None;
            st.gen += 1;
            let r = Arc::clone(&st.result);
            drop(st);
            w.cv.notify_all();
            return r;
        }
        let gen = st.gen;
        let deadline = Instant::now() + b.timeout;
        loop {
            if st.exited > 0 && st.arrived + st.exited >= w.present {
                let (a, e) = (st.arrived, st.exited);
                drop(st);
                self.fail(
                    SimErrorKind::Collective,
                    format!("{op:?} at {loc} not reached by all lanes of warp {wi}: {a} arrived, {e} returned"),
                );
            }
            if b.abort.load(Ordering::SeqCst) {
                drop(st);
                resume_unwind(Box::new(SimAbort));
            }
            if let Some(why) = b.give_up(deadline) {
                let a = st.arrived;
                drop(st);
                self.fail(
                    SimErrorKind::Collective,
                    format!(
                        "{op:?} at {loc} not reached by all lanes of warp {wi} {why}: {a} of {} arrived",
                        w.present
                    ),
                );
            }
            st = w.cv.wait(st, &w.st, Duration::from_millis(10));
            if st.gen != gen {
                return Arc::clone(&st.result);
            }
        }
    }
}

/// Block barrier.
pub fn barrier(loc: Loc) {
    with(|c| {
        let b = &*c.block;
        if b.independent {
            c.fail(
                SimErrorKind::Barrier,
                format!("barrier at {loc} in a kernel declared `independent` (its threads must never meet)"),
            );
        }
        let mut st = lock(&b.bar);
        match st.loc {
            Some(l) if l != loc => {
                drop(st);
                c.fail(
                    SimErrorKind::Barrier,
                    format!("barrier not reached by all threads: threads wait at different barriers ({l} and {loc})"),
                );
            }
            Some(_) => {}
            None => st.loc = Some(loc),
        }
        st.arrived += 1;
        b.progress.fetch_add(1, Ordering::SeqCst);
        if st.arrived == b.n_threads {
            st.arrived = 0;
            st.loc = None;
            st.gen += 1;
            drop(st);
            b.bar_cv.notify_all();
            return;
        }
        let gen = st.gen;
        let deadline = Instant::now() + b.timeout;
        loop {
            if st.exited > 0 && st.arrived + st.exited >= b.n_threads {
                let (a, e) = (st.arrived, st.exited);
                drop(st);
                c.fail(
                    SimErrorKind::Barrier,
                    format!(
                        "barrier at {loc} not reached by all threads: {a} arrived, {e} returned"
                    ),
                );
            }
            if b.abort.load(Ordering::SeqCst) {
                drop(st);
                resume_unwind(Box::new(SimAbort));
            }
            if let Some(why) = b.give_up(deadline) {
                let a = st.arrived;
                drop(st);
                c.fail(
                    SimErrorKind::Barrier,
                    format!(
                        "barrier at {loc} not reached by all threads {why}: {a} of {} arrived",
                        b.n_threads
                    ),
                );
            }
            st = b.bar_cv.wait(st, &b.bar, Duration::from_millis(10));
            if st.gen != gen {
                return;
            }
        }
    })
}

/// Bounds-checked shared load of `buf.len()` bytes (naturally aligned).
#[track_caller]
pub fn smem_read(addr: u32, buf: &mut [u8]) {
    with(|c| {
        let n = buf.len() as u32;
        let off = c.check_smem(addr, n, n, "shared load");
        for (i, b) in buf.iter_mut().enumerate() {
            *b = c.block.smem[off + i].load(Ordering::Relaxed);
        }
    })
}

/// Bounds-checked shared store (naturally aligned).
#[track_caller]
pub fn smem_write(addr: u32, bytes: &[u8]) {
    with(|c| {
        let n = bytes.len() as u32;
        let off = c.check_smem(addr, n, n, "shared store");
        for (i, &b) in bytes.iter().enumerate() {
            c.block.smem[off + i].store(b, Ordering::Relaxed);
        }
    })
}

fn smem_u16(c: &ThreadCtx, off: usize) -> u32 {
    let s = &c.block.smem;
    s[off].load(Ordering::Relaxed) as u32 | (s[off + 1].load(Ordering::Relaxed) as u32) << 8
}

/// `shfl.sync` over the full warp.
pub fn shfl(loc: Loc, mode: Shfl, v: u32, b: u32) -> u32 {
    with(|c| {
        let all = c.exchange(Op::Shfl(mode), loc, [v, b, 0, 0, 0, 0, 0, 0]);
        let lane = c.linear % 32;
        // The PTX ISA uses only the lane operand's low 5 bits (bval = b[4:0]).
        let b = b & 31;
        let src = match mode {
            Shfl::Xor => lane ^ b,
            Shfl::Idx => b & 31,
            Shfl::Up => lane.checked_sub(b).unwrap_or(lane),
            Shfl::Down => lane.checked_add(b).filter(|&j| j <= 31).unwrap_or(lane),
        };
        let src = if src > 31 { lane } else { src };
        let present = c.block.warps[(c.linear / 32) as usize].present;
        if src >= present {
            c.fail(
                SimErrorKind::Collective,
                format!("shfl {mode:?} at {loc} reads lane {src}, which does not exist in this partial warp"),
            );
        }
        all[src as usize][0]
    })
}

/// `vote.sync.ballot` over the full warp.
pub fn ballot(loc: Loc, pred: bool) -> u32 {
    with(|c| {
        let all = c.exchange(Op::Ballot, loc, [pred as u32, 0, 0, 0, 0, 0, 0, 0]);
        let present = c.block.warps[(c.linear / 32) as usize].present as usize;
        (0..present)
            .filter(|&l| all[l][0] != 0)
            .fold(0u32, |m, l| m | 1 << l)
    })
}

/// A warp all-reduce in one rendezvous: `f` gets all 32 lanes' values and returns each lane's
/// result.
pub fn warp_allreduce(loc: Loc, v: f32, f: impl FnOnce([f32; 32]) -> [f32; 32]) -> f32 {
    with(|c| {
        need_full_warp(c, "a warp all-reduce");
        let all = c.exchange(Op::AllReduce, loc, [v.to_bits(), 0, 0, 0, 0, 0, 0, 0]);
        let vals = std::array::from_fn(|l| f32::from_bits(all[l][0]));
        f(vals)[(c.linear % 32) as usize]
    })
}

fn need_full_warp(c: &ThreadCtx, what: &str) {
    if c.block.warps[(c.linear / 32) as usize].present != 32 {
        c.fail(
            SimErrorKind::Collective,
            format!("{what} needs a full warp of 32 threads"),
        );
    }
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`, to the PTX ISA fragment layout.
pub fn mma_m16n8k16(loc: Loc, d: &mut [f32; 4], a: &[u32; 4], b: &[u32; 2]) {
    with(|c| {
        need_full_warp(c, "mma.sync");
        let all = c.exchange(Op::Mma, loc, [a[0], a[1], a[2], a[3], b[0], b[1], 0, 0]);
        let lo = |v: u32| f32::from_bits(v << 16);
        let hi = |v: u32| f32::from_bits(v & 0xffff_0000);
        // Rebuild A (16×16, row-major) and B (16×8, [k][n]) from every lane's fragments.
        let mut am = [[0f32; 16]; 16];
        let mut bm = [[0f32; 8]; 16];
        for (l, s) in all.iter().enumerate() {
            let (g, t) = (l / 4, l % 4);
            for (reg, (r, k)) in [
                (g, 2 * t),
                (g + 8, 2 * t),
                (g, 2 * t + 8),
                (g + 8, 2 * t + 8),
            ]
            .into_iter()
            .enumerate()
            {
                am[r][k] = lo(s[reg]);
                am[r][k + 1] = hi(s[reg]);
            }
            for (reg, k) in [2 * t, 2 * t + 8].into_iter().enumerate() {
                bm[k][g] = lo(s[4 + reg]);
                bm[k + 1][g] = hi(s[4 + reg]);
            }
        }
        let lane = (c.linear % 32) as usize;
        let (g, t) = (lane / 4, lane % 4);
        for (i, (r, n)) in [
            (g, 2 * t),
            (g, 2 * t + 1),
            (g + 8, 2 * t),
            (g + 8, 2 * t + 1),
        ]
        .into_iter()
        .enumerate()
        {
            // bf16 × bf16 products are exact in f32; sum them in k order.
            let acc = (0..16).fold(0f32, |s, k| s + am[r][k] * bm[k][n]);
            d[i] += acc;
        }
    })
}

/// `ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16`.
pub fn ldmatrix(loc: Loc, addr: u32, trans: bool, out: &mut [u32]) {
    with(|c| {
        need_full_warp(c, "ldmatrix");
        let n = out.len();
        let lane = (c.linear % 32) as usize;
        if lane < 8 * n {
            // This lane supplies a row address: check it here so the error names the culprit.
            c.check_smem(addr, 16, 16, "ldmatrix row");
        }
        let all = c.exchange(Op::Ldmatrix { n, trans }, loc, [addr, 0, 0, 0, 0, 0, 0, 0]);
        let base = SMEM_BASE as usize;
        for (i, o) in out.iter_mut().enumerate() {
            let row = |r: usize| all[8 * i + r][0] as usize - base;
            *o = if trans {
                let (r, col) = (2 * (lane % 4), lane / 4);
                smem_u16(c, row(r) + 2 * col) | smem_u16(c, row(r + 1) + 2 * col) << 16
            } else {
                let off = row(lane / 4) + 4 * (lane % 4);
                smem_u16(c, off) | smem_u16(c, off + 2) << 16
            };
        }
    })
}

/// `cp.async.cg.shared.global` 16 bytes with zero-fill. The global bytes are read now; the
/// shared bytes are written when a `wait_group` retires the op's group.
///
/// # Safety
/// `src` must be valid for `src_size` bytes.
#[track_caller]
pub unsafe fn cp_async_16(dst: u32, src: *const u8, src_size: u32) {
    with(|c| {
        c.check_smem(dst, 16, 16, "cp.async destination");
        if src_size > 16 {
            c.fail(
                SimErrorKind::Launch,
                format!("cp.async src-size {src_size} > 16"),
            );
        }
        if src as usize & 15 != 0 {
            c.fail(
                SimErrorKind::Misaligned,
                format!("cp.async source {src:p} is not 16-byte aligned"),
            );
        }
        let mut data = [0u8; 16];
        // SAFETY: the kernel's contract (as on the GPU) is that `src` is valid for `src_size`
        // bytes; `src_size <= 16` was checked above.
        unsafe { std::ptr::copy_nonoverlapping(src, data.as_mut_ptr(), src_size as usize) };
        c.cp.borrow_mut().uncommitted.push((dst, data));
    })
}

/// `cp.async.commit_group`.
pub fn cp_async_commit() {
    with(|c| {
        let mut cp = c.cp.borrow_mut();
        let g = std::mem::take(&mut cp.uncommitted);
        cp.groups.push_back(g);
    })
}

/// `cp.async.wait_group n`: retires all but the newest `n` groups.
pub fn cp_async_wait(n: u32) {
    with(|c| {
        let mut cp = c.cp.borrow_mut();
        while cp.groups.len() > n as usize {
            for (dst, data) in cp.groups.pop_front().unwrap_or_default() {
                let off = (dst - SMEM_BASE) as usize;
                for (i, b) in data.into_iter().enumerate() {
                    c.block.smem[off + i].store(b, Ordering::Relaxed);
                }
            }
        }
    })
}
