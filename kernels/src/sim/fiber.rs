//! User-mode fibers for the simulator (x86_64 Linux).
//!
//! With one OS thread per GPU thread, every barrier or warp collective costs one kernel
//! context switch per thread, and an mma-heavy kernel spends nearly all its time there. Fibers
//! run all GPU threads of a block on the launching OS thread and switch between them in user
//! mode (a few registers saved and restored) when one waits at a rendezvous. Each GPU thread
//! still has its own stack and runs the same kernel code; only the scheduling changes. Because
//! the scheduler sees every thread, a deadlock is found at once (a full pass in which no thread
//! made progress) instead of after a timeout.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

// switch(save: *mut usize, to: usize): saves the callee-saved registers on the current stack,
// stores the stack pointer in *save, loads `to` and restores the registers saved there.
// fiber_start: first code of a new fiber; r12 = argument, r13 = entry function. The CFI marks
// it as the outermost frame so an unwinder walking a fiber stack stops here.
std::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl dfrt_sim_fiber_switch",
    ".type dfrt_sim_fiber_switch,@function",
    "dfrt_sim_fiber_switch:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rdi], rsp",
    "mov rsp, rsi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size dfrt_sim_fiber_switch, .-dfrt_sim_fiber_switch",
    ".p2align 4",
    ".globl dfrt_sim_fiber_start",
    ".type dfrt_sim_fiber_start,@function",
    "dfrt_sim_fiber_start:",
    ".cfi_startproc",
    ".cfi_undefined rip",
    "mov rdi, r12",
    "call r13",
    "ud2",
    ".cfi_endproc",
    ".size dfrt_sim_fiber_start, .-dfrt_sim_fiber_start",
);

extern "C" {
    fn dfrt_sim_fiber_switch(save: *mut usize, to: usize);
    fn dfrt_sim_fiber_start();
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn mprotect(addr: *mut u8, len: usize, prot: i32) -> i32;
    fn munmap(addr: *mut u8, len: usize) -> i32;
}

const PROT_NONE: i32 = 0;
const PROT_RW: i32 = 3;
const MAP_PRIVATE_ANON_NORESERVE: i32 = 0x02 | 0x20 | 0x4000;
const PAGE: usize = 4096;
/// Stack per simulated thread (committed lazily), below it one guard page.
const STACK: usize = 256 * 1024;

/// An mmap'd fiber stack with a guard page at its low end.
struct Stack {
    base: *mut u8,
    len: usize,
}

impl Stack {
    fn new() -> Option<Stack> {
        let len = STACK + PAGE;
        // SAFETY: an anonymous private mapping; checked for failure below.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                PROT_RW,
                MAP_PRIVATE_ANON_NORESERVE,
                -1,
                0,
            )
        };
        if base.is_null() || base as isize == -1 {
            return None;
        }
        // SAFETY: the first page of our own mapping becomes the guard page, so an overflow
        // faults instead of corrupting the neighbouring stack.
        if unsafe { mprotect(base, PAGE, PROT_NONE) } != 0 {
            // SAFETY: unmapping the mapping made just above.
            unsafe { munmap(base, len) };
            return None;
        }
        Some(Stack { base, len })
    }
    fn top(&self) -> usize {
        (self.base as usize + self.len) & !15
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no fiber runs on it any more.
        unsafe { munmap(self.base, self.len) };
    }
}

thread_local! {
    /// Stacks kept by the launching thread between launches.
    static STACKS: std::cell::RefCell<Vec<Stack>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The scheduler of the fibers running on this OS thread, if any.
    static SCHED: Cell<*mut Sched> = const { Cell::new(std::ptr::null_mut()) };
}

struct Fiber<'a> {
    sp: usize,
    done: bool,
    start: Option<Box<dyn FnOnce() + 'a>>,
}

struct Sched {
    sp: usize,
    current: *mut Fiber<'static>,
}

/// True inside a fiber: waits must then [`yield_now`] instead of blocking the OS thread.
pub fn in_fiber() -> bool {
    SCHED.with(|s| !s.get().is_null())
}

/// Switches from the running fiber back to the scheduler; returns when it is resumed.
pub fn yield_now() {
    let s = SCHED.with(|s| s.get());
    assert!(!s.is_null(), "sim: yield_now outside a fiber");
    // SAFETY: `s` is the live scheduler of this OS thread (set by `run` for its whole
    // duration) and `current` the fiber running right now.
    unsafe { dfrt_sim_fiber_switch(&mut (*(*s).current).sp, (*s).sp) };
}

extern "C" fn fiber_entry(f: *mut Fiber<'static>) -> ! {
    // SAFETY: `run` passes a fiber that outlives its execution.
    let f = unsafe { &mut *f };
    if let Some(start) = f.start.take() {
        // The body (ctx::run_thread) catches kernel panics itself; anything escaping here would
        // unwind into the fiber trampoline, which has nowhere to go.
        if catch_unwind(AssertUnwindSafe(start)).is_err() {
            eprintln!("sim: panic escaped a fiber");
            std::process::abort();
        }
    }
    f.done = true;
    yield_now();
    eprintln!("sim: a finished fiber was resumed");
    std::process::abort();
}

/// Runs `n` fibers, fiber i running `body(i)`, until all have finished. `progress` must change
/// whenever any fiber does something that could let another continue (arrive at or leave a
/// rendezvous, finish); after a full pass without change, `on_stall` is called once (the
/// fibers are then expected to fail and finish). Returns false if stacks could not be mapped.
pub fn run(
    n: usize,
    body: &dyn Fn(usize),
    progress: &dyn Fn() -> u64,
    on_stall: &dyn Fn(),
) -> bool {
    let mut stacks = STACKS.with(|s| std::mem::take(&mut *s.borrow_mut()));
    while stacks.len() < n {
        match Stack::new() {
            Some(s) => stacks.push(s),
            None => {
                STACKS.with(|s| *s.borrow_mut() = stacks);
                return false;
            }
        }
    }
    let mut fibers: Vec<Fiber<'_>> = (0..n)
        .map(|i| Fiber {
            sp: 0,
            done: false,
            start: Some(Box::new(move || body(i))),
        })
        .collect();
    for (f, st) in fibers.iter_mut().zip(&stacks) {
        let sp = st.top() - 72;
        let init = [
            0,
            0,
            fiber_entry as *const () as usize,
            f as *mut Fiber<'_> as usize,
            0,
            0,
            dfrt_sim_fiber_start as *const () as usize,
        ];
        // SAFETY: the 72 bytes below the top of our own stack mapping; the layout is what
        // `dfrt_sim_fiber_switch` pops (r15, r14, r13, r12, rbx, rbp, return address).
        unsafe { std::ptr::copy_nonoverlapping(init.as_ptr(), sp as *mut usize, 7) };
        f.sp = sp;
    }
    let mut sched = Sched {
        sp: 0,
        current: std::ptr::null_mut(),
    };
    let prev = SCHED.with(|s| s.replace(&mut sched));
    let mut stalled = false;
    loop {
        let before = progress();
        let mut live = false;
        for f in fibers.iter_mut().filter(|f| !f.done) {
            live = true;
            // The scheduler's pointer type is lifetime-erased; the fiber outlives this pass.
            sched.current = (f as *mut Fiber<'_>).cast();
            // SAFETY: switches to a fiber whose stack holds a frame saved by the switch (or the
            // initial frame); it switches back to `sched.sp` when it waits or finishes.
            unsafe { dfrt_sim_fiber_switch(&mut sched.sp, f.sp) };
        }
        if !live {
            break;
        }
        if progress() == before {
            // After the stall report every waiting fiber fails and finishes, so a second
            // pass without progress would be a simulator bug, not a kernel bug.
            assert!(
                !stalled,
                "sim: fibers still stalled after the deadlock was reported"
            );
            stalled = true;
            on_stall();
        }
    }
    SCHED.with(|s| s.set(prev));
    drop(fibers);
    STACKS.with(|s| *s.borrow_mut() = stacks);
    true
}
