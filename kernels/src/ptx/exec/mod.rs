//! The executor: runs one launch of a decoded entry, block after block.
//!
//! Each thread has its own registers and PC and runs until it reaches a warp collective, a
//! barrier or its exit. A collective executes when every lane of the warp waits at the same
//! instruction; a barrier when every thread of the block waits at one. Anything else (lanes at
//! different collectives, a lane that returned, a barrier some thread never reaches) is an
//! error, never a hang: when no thread can run and nothing can meet, the launch fails.

use std::collections::{HashMap, HashSet, VecDeque};

use super::ir::{
    CTy, Cmp, Entry, FOp, IClass, IOp, Op, Reg, ShflMode, Special, Src, Un, SMEM_BASE,
};
use super::{Counters, GlobalMem};
use crate::sim::{SimError, SimErrorKind};

mod collective;
mod memory;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Run,
    Meet,
    Done,
}

struct Cp {
    dst: u32,
    data: [u8; 16],
    pc: u32,
}

#[derive(Default)]
struct Thr {
    cp_open: Vec<Cp>,
    cp_groups: VecDeque<Vec<Cp>>,
}

/// Racecheck shadow of one shared byte. Epoch 0 never matches: epochs start at 1.
#[derive(Clone, Copy, Default)]
struct Shadow {
    w_epoch: u32,
    w_thr: u32,
    w_pc: u32,
    r_epoch: u32,
    r_thr: u32,
    r_pc: u32,
    /// Thread + 1 of an issued, not yet waited cp.async covering this byte (0: none).
    inflight: u32,
    inflight_pc: u32,
}

/// Launch-wide state.
pub struct Run<'a> {
    pub e: &'a Entry,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub params: &'a [u8],
    pub mem: &'a mut GlobalMem,
    pub counters: Option<&'a mut Counters>,
    pub racecheck: bool,
    smem: Vec<u8>,
    shadow: Vec<Shadow>,
    epoch: u32,
    // Per block:
    idx: [u32; 3],
    regs: Vec<u64>,
    pc: Vec<u32>,
    st: Vec<St>,
    thr: Vec<Thr>,
    /// Per-thread dynamic execution count of each pc (counters only), and the warp requests.
    visits: Vec<u32>,
    requests: HashMap<(u32, u32, u32), Vec<(u64, u32)>>,
}

type R<T> = Result<T, SimError>;

fn f32b(v: u64) -> f32 {
    f32::from_bits(v as u32)
}
fn f64b(v: u64) -> f64 {
    f64::from_bits(v)
}

impl<'a> Run<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        e: &'a Entry,
        grid: [u32; 3],
        block: [u32; 3],
        dyn_smem: u32,
        params: &'a [u8],
        mem: &'a mut GlobalMem,
        counters: Option<&'a mut Counters>,
        racecheck: bool,
    ) -> Self {
        Run {
            e,
            grid,
            block,
            params,
            mem,
            counters,
            racecheck,
            smem: vec![0xff; dyn_smem as usize],
            shadow: if racecheck {
                vec![Shadow::default(); dyn_smem as usize]
            } else {
                Vec::new()
            },
            epoch: 0,
            idx: [0; 3],
            regs: Vec::new(),
            pc: Vec::new(),
            st: Vec::new(),
            thr: Vec::new(),
            visits: Vec::new(),
            requests: HashMap::new(),
        }
    }

    fn n_threads(&self) -> usize {
        (self.block[0] * self.block[1] * self.block[2]) as usize
    }

    fn tid(&self, t: usize) -> [u32; 3] {
        let t = t as u32;
        let [x, y, _] = self.block;
        [t % x, t / x % y, t / (x * y)]
    }

    fn err(&self, kind: SimErrorKind, t: Option<usize>, detail: String) -> SimError {
        SimError {
            kind,
            kernel: self.e.name.clone(),
            block: self.idx,
            thread: t.map(|t| self.tid(t)),
            detail,
        }
    }

    fn at(&self, pc: u32) -> String {
        match self.e.code.get(pc as usize) {
            Some(i) => format!("PTX line {} `{}`", i.line, i.text),
            None => format!("pc {pc}"),
        }
    }

    fn thread_name(&self, t: u32) -> String {
        let [x, y, z] = self.tid(t as usize);
        format!("thread ({x},{y},{z}) (warp {})", t / 32)
    }

    pub fn run(&mut self) -> R<()> {
        for z in 0..self.grid[2] {
            for y in 0..self.grid[1] {
                for x in 0..self.grid[0] {
                    self.idx = [x, y, z];
                    self.run_block()?;
                }
            }
        }
        Ok(())
    }

    fn run_block(&mut self) -> R<()> {
        let n = self.n_threads();
        let nr = self.e.n_regs.max(1);
        self.regs.clear();
        self.regs.resize(n * nr, 0);
        self.pc = vec![0; n];
        self.st = vec![St::Run; n];
        self.thr = (0..n).map(|_| Thr::default()).collect();
        self.smem.fill(0xff);
        self.epoch += 1;
        let counting = self.counters.is_some();
        if counting {
            self.visits = vec![0; n * self.e.code.len()];
            self.requests.clear();
        }
        let warps = n.div_ceil(32);
        loop {
            for t in 0..n {
                if self.st[t] == St::Run {
                    self.run_thread(t)?;
                }
            }
            if self.st.iter().all(|&s| s == St::Done) {
                break;
            }
            // Warps whose every lane waits at the same collective.
            let mut met = false;
            for w in 0..warps {
                let lanes = w * 32..(w * 32 + 32).min(n);
                let pc0 = self.pc[lanes.start];
                let all = lanes
                    .clone()
                    .all(|t| self.st[t] == St::Meet && self.pc[t] == pc0);
                if all && !matches!(self.e.code[pc0 as usize].op, Op::Bar) {
                    self.collective(w, pc0)?;
                    for t in lanes {
                        self.pc[t] += 1;
                        self.st[t] = St::Run;
                    }
                    met = true;
                }
            }
            if met {
                continue;
            }
            // The block barrier.
            let at_bar = |s: &Self, t: usize| {
                s.st[t] == St::Meet && matches!(s.e.code[s.pc[t] as usize].op, Op::Bar)
            };
            if (0..n).all(|t| at_bar(self, t)) {
                self.epoch += 1;
                if let Some(c) = self.counters.as_deref_mut() {
                    c.barriers += 1;
                }
                for t in 0..n {
                    self.pc[t] += 1;
                    self.st[t] = St::Run;
                }
                continue;
            }
            return Err(self.stuck(n, warps));
        }
        if counting {
            self.flush_requests();
        }
        Ok(())
    }

    /// Explains why no thread can go on.
    fn stuck(&self, n: usize, warps: usize) -> SimError {
        for w in 0..warps {
            let lanes: Vec<usize> = (w * 32..(w * 32 + 32).min(n)).collect();
            let coll: Vec<usize> = lanes
                .iter()
                .copied()
                .filter(|&t| {
                    self.st[t] == St::Meet
                        && !matches!(self.e.code[self.pc[t] as usize].op, Op::Bar)
                })
                .collect();
            if let Some(&t0) = coll.first() {
                let done = lanes.iter().filter(|&&t| self.st[t] == St::Done).count();
                if let Some(&t1) = lanes
                    .iter()
                    .find(|&&t| self.st[t] == St::Meet && self.pc[t] != self.pc[t0])
                {
                    return self.err(
                        SimErrorKind::Collective,
                        Some(t1),
                        format!(
                            "deadlock: lanes of warp {w} are at different collectives (divergent): lane {} waits at {} while lane {} waits at {}",
                            t0 % 32,
                            self.at(self.pc[t0]),
                            t1 % 32,
                            self.at(self.pc[t1])
                        ),
                    );
                }
                return self.err(
                    SimErrorKind::Collective,
                    Some(t0),
                    format!(
                        "deadlock: {} not reached by all lanes of warp {w}: {} arrived, {done} returned",
                        self.at(self.pc[t0]),
                        coll.len()
                    ),
                );
            }
        }
        let arrived = (0..n).filter(|&t| self.st[t] == St::Meet).count();
        let t0 = (0..n).find(|&t| self.st[t] == St::Meet).unwrap_or(0);
        self.err(
            SimErrorKind::Barrier,
            Some(t0),
            format!(
                "deadlock: barrier at {} not reached by all threads: {arrived} arrived, {} returned",
                self.at(self.pc[t0]),
                n - arrived
            ),
        )
    }

    #[inline(always)]
    fn rd(&self, base: usize, s: Src) -> u64 {
        match s {
            Src::R(r) => self.r(base, r),
            Src::I(v) => v,
        }
    }

    /// Register `r` of the thread whose registers start at `base`.
    #[inline(always)]
    fn r(&self, base: usize, r: Reg) -> u64 {
        debug_assert!(base + (r as usize) < self.regs.len());
        // SAFETY: the decoder numbers registers below `n_regs`, `base` is a thread's first
        // register, and `regs` holds `n_regs` per thread of the block.
        unsafe { *self.regs.get_unchecked(base + r as usize) }
    }

    fn run_thread(&mut self, t: usize) -> R<()> {
        let nr = self.e.n_regs.max(1);
        let base = t * nr;
        let code = &self.e.code;
        let mut pc = self.pc[t] as usize;
        let counting = self.counters.is_some();
        loop {
            let ins = &code[pc];
            if counting {
                if let Some(c) = self.counters.as_deref_mut() {
                    *c.instrs.entry(ins.op.class()).or_default() += 1;
                }
                self.visits[t * code.len() + pc] += 1;
            }
            macro_rules! set {
                ($d:expr, $v:expr) => {{
                    let i = base + $d as usize;
                    debug_assert!(i < self.regs.len());
                    // SAFETY: as in `Run::r`.
                    unsafe { *self.regs.get_unchecked_mut(i) = $v }
                }};
            }
            match &ins.op {
                Op::I { op, mask, d, a, b } => {
                    let (a, b) = (self.rd(base, *a), self.rd(base, *b));
                    let v = match op {
                        IOp::Add => a.wrapping_add(b),
                        IOp::Sub => a.wrapping_sub(b),
                        IOp::MulLo => a.wrapping_mul(b),
                        IOp::MulHiU32 => ((a & 0xffff_ffff) * (b & 0xffff_ffff)) >> 32,
                        IOp::MulWideU32 => (a & 0xffff_ffff) * (b & 0xffff_ffff),
                        IOp::And => a & b,
                        IOp::Or => a | b,
                        IOp::Xor => a ^ b,
                        // PTX clamps shift amounts larger than the width.
                        IOp::Shl => {
                            if b >= 64 - mask.leading_zeros() as u64 {
                                0
                            } else {
                                a << b
                            }
                        }
                        IOp::ShrU => {
                            if b >= 64 - mask.leading_zeros() as u64 {
                                0
                            } else {
                                a >> b
                            }
                        }
                        IOp::DivU | IOp::RemU => {
                            if b == 0 {
                                // Undefined on the GPU (all ones for div); make it loud here.
                                return Err(self.err(
                                    SimErrorKind::Trap,
                                    Some(t),
                                    format!("integer division by zero at {}", self.at(pc as u32)),
                                ));
                            }
                            if *op == IOp::DivU {
                                a / b
                            } else {
                                a % b
                            }
                        }
                        IOp::MinU => a.min(b),
                        IOp::MaxU => a.max(b),
                    };
                    set!(*d, v & mask);
                }
                Op::Mad { mask, d, a, b, c } => {
                    let v = self
                        .rd(base, *a)
                        .wrapping_mul(self.rd(base, *b))
                        .wrapping_add(self.rd(base, *c));
                    set!(*d, v & mask);
                }
                Op::F32 { op, d, a, b } => {
                    let (x, y) = (f32b(self.rd(base, *a)), f32b(self.rd(base, *b)));
                    let v = match op {
                        FOp::Add => x + y,
                        FOp::Sub => x - y,
                        FOp::Mul => x * y,
                        FOp::Div => x / y,
                        FOp::Max => x.max(y),
                    };
                    set!(*d, v.to_bits() as u64);
                }
                Op::F64 { op, d, a, b } => {
                    let (x, y) = (f64b(self.rd(base, *a)), f64b(self.rd(base, *b)));
                    let v = match op {
                        FOp::Add => x + y,
                        FOp::Mul => x * y,
                        FOp::Sub => x - y,
                        FOp::Div => x / y,
                        FOp::Max => x.max(y),
                    };
                    set!(*d, v.to_bits());
                }
                Op::U { op, mask, d, a } => {
                    let a = self.rd(base, *a);
                    let v = match op {
                        Un::NegS32 => (a as u32).wrapping_neg() as u64,
                        Un::NegF64 => (-f64b(a)).to_bits(),
                        Un::Ex2 => {
                            let ftz = |v: f32| {
                                if v.is_subnormal() {
                                    0.0f32.copysign(v)
                                } else {
                                    v
                                }
                            };
                            ftz(ftz(f32b(a)).exp2()).to_bits() as u64
                        }
                        Un::Rcp => (1.0 / f32b(a)).to_bits() as u64,
                        Un::Sqrt => f32b(a).sqrt().to_bits() as u64,
                        Un::CvtF64F32 => (f32b(a) as f64).to_bits(),
                        Un::CvtF32F64 => (f64b(a) as f32).to_bits() as u64,
                        Un::CvtF32U32 => ((a as u32) as f32).to_bits() as u64,
                        Un::CvtF64S64 => ((a as i64) as f64).to_bits(),
                        Un::CvtRziS64F64 => {
                            let x = f64b(a);
                            // PTX: NaN converts to 0; Rust's saturating cast agrees.
                            (x.trunc() as i64) as u64
                        }
                        Un::Mov => a,
                        Un::Hi(s) => a >> s,
                    };
                    set!(*d, v & mask);
                }
                Op::Pack16 { d, lo, hi } => {
                    let v = (self.r(base, *lo) & 0xffff) | (self.r(base, *hi) & 0xffff) << 16;
                    set!(*d, v);
                }
                Op::CvtBf16x2 { d, hi, lo } => {
                    let (h, l) = (f32b(self.rd(base, *hi)), f32b(self.rd(base, *lo)));
                    set!(
                        *d,
                        crate::gpu::f32_to_bf16(l) as u64
                            | (crate::gpu::f32_to_bf16(h) as u64) << 16
                    );
                }
                Op::Bfe { d, a, pos, len } => {
                    let a = self.rd(base, *a) as u32;
                    let v = if *len == 0 || *pos >= 32 {
                        0
                    } else {
                        (a >> pos) & (((1u64 << len.min(&32)) - 1) as u32)
                    };
                    set!(*d, v as u64);
                }
                Op::Setp { cmp, ty, d, a, b } => {
                    let (a, b) = (self.rd(base, *a), self.rd(base, *b));
                    let r = match ty {
                        CTy::U16 | CTy::U32 | CTy::U64 => match cmp {
                            Cmp::Eq => a == b,
                            Cmp::Ne => a != b,
                            Cmp::Lt => a < b,
                            Cmp::Le => a <= b,
                            Cmp::Gt => a > b,
                            Cmp::Ge => a >= b,
                            _ => unreachable!("rejected by the decoder"),
                        },
                        CTy::F32 => fcmp(*cmp, f32b(a) as f64, f32b(b) as f64),
                        CTy::F64 => fcmp(*cmp, f64b(a), f64b(b)),
                    };
                    set!(*d, r as u64);
                }
                Op::Selp { mask, d, a, b, p } => {
                    let v = if self.r(base, *p) != 0 {
                        self.rd(base, *a)
                    } else {
                        self.rd(base, *b)
                    };
                    set!(*d, v & mask);
                }
                Op::Sreg { d, s } => {
                    let tid = self.tid(t);
                    let v = match *s {
                        Special::Tid(i) => tid[i],
                        Special::Ntid(i) => self.block[i],
                        Special::Ctaid(i) => self.idx[i],
                        Special::Nctaid(i) => self.grid[i],
                    };
                    set!(*d, v as u64);
                }
                Op::Bra { guard, target } => {
                    let take = match guard {
                        None => true,
                        Some((p, neg)) => (self.r(base, *p) != 0) != *neg,
                    };
                    if take {
                        pc = *target as usize;
                        continue;
                    }
                }
                Op::Brx { idx, targets } => {
                    let i = self.r(base, *idx) as usize;
                    match targets.get(i) {
                        Some(&tg) => {
                            pc = tg as usize;
                            continue;
                        }
                        None => {
                            return Err(self.err(
                                SimErrorKind::Trap,
                                Some(t),
                                format!(
                                    "brx.idx index {i} outside its {}-entry table at {}",
                                    targets.len(),
                                    self.at(pc as u32)
                                ),
                            ));
                        }
                    }
                }
                Op::Trap(what) => {
                    return Err(self.err(
                        SimErrorKind::Trap,
                        Some(t),
                        format!("trap: {what} at {}", self.at(pc as u32)),
                    ));
                }
                Op::Exit => {
                    self.pc[t] = pc as u32;
                    self.st[t] = St::Done;
                    return Ok(());
                }
                Op::LdParam { d, off, size } => {
                    let (o, s) = (*off as usize, *size as usize);
                    if o + s > self.params.len() || o % s != 0 {
                        return Err(self.err(
                            SimErrorKind::Params,
                            Some(t),
                            format!("ld.param of {s} bytes at offset {o} outside (or misaligned in) the {}-byte params at {}", self.params.len(), self.at(pc as u32)),
                        ));
                    }
                    let mut v = [0u8; 8];
                    v[..s].copy_from_slice(&self.params[o..o + s]);
                    set!(*d, u64::from_le_bytes(v));
                }
                Op::Ld {
                    d,
                    d2,
                    base: b,
                    off,
                    size,
                } => {
                    let addr = self.r(base, *b).wrapping_add(*off as u64);
                    let total = *size * if d2.is_some() { 2 } else { 1 };
                    let mut v = [0u8; 8];
                    self.global(t, pc, addr, total, total as u64, false)?;
                    self.mem.read(addr, &mut v[..total as usize]);
                    let x = u64::from_le_bytes(v);
                    match d2 {
                        Some(d2) => {
                            set!(*d, x & 0xffff_ffff);
                            set!(*d2, x >> 32);
                        }
                        None => set!(*d, x),
                    }
                }
                Op::St {
                    base: b,
                    off,
                    size,
                    v,
                } => {
                    let addr = self.r(base, *b).wrapping_add(*off as u64);
                    self.global(t, pc, addr, *size, *size as u64, true)?;
                    let x = self.r(base, *v).to_le_bytes();
                    self.mem.write(addr, &x[..*size as usize]);
                }
                Op::LdShared { d, addr, size } => {
                    let a = self.r(base, *addr) as u32;
                    let off = self.shared(t, pc, a, *size, false, "ld.shared")?;
                    let mut v = [0u8; 8];
                    v[..*size as usize].copy_from_slice(&self.smem[off..off + *size as usize]);
                    set!(*d, u64::from_le_bytes(v));
                }
                Op::StShared { addr, size, v } => {
                    let a = self.r(base, *addr) as u32;
                    let off = self.shared(t, pc, a, *size, true, "st.shared")?;
                    let x = self.r(base, *v).to_le_bytes();
                    self.smem[off..off + *size as usize].copy_from_slice(&x[..*size as usize]);
                }
                Op::CpAsync { dst, src, src_size } => {
                    let d = self.r(base, *dst) as u32;
                    let s = self.r(base, *src);
                    let n = self.rd(base, *src_size) as u32;
                    if n > 16 {
                        return Err(self.err(
                            SimErrorKind::Launch,
                            Some(t),
                            format!("cp.async src-size {n} > 16 at {}", self.at(pc as u32)),
                        ));
                    }
                    self.shared(t, pc, d, 16, true, "cp.async destination")?;
                    if s & 15 != 0 {
                        return Err(self.err(
                            SimErrorKind::Misaligned,
                            Some(t),
                            format!(
                                "cp.async source {s:#x} is not 16-byte aligned at {}",
                                self.at(pc as u32)
                            ),
                        ));
                    }
                    let mut data = [0u8; 16];
                    if n > 0 {
                        self.global(t, pc, s, n, 1, false)?;
                        self.mem.read(s, &mut data[..n as usize]);
                    }
                    if self.racecheck {
                        let off = (d - SMEM_BASE) as usize;
                        for sh in &mut self.shadow[off..off + 16] {
                            sh.inflight = t as u32 + 1;
                            sh.inflight_pc = pc as u32;
                        }
                    }
                    self.thr[t].cp_open.push(Cp {
                        dst: d,
                        data,
                        pc: pc as u32,
                    });
                }
                Op::Commit => {
                    let g = std::mem::take(&mut self.thr[t].cp_open);
                    self.thr[t].cp_groups.push_back(g);
                }
                Op::Wait(k) => {
                    while self.thr[t].cp_groups.len() > *k as usize {
                        let g = self.thr[t].cp_groups.pop_front().unwrap_or_default();
                        for cp in g {
                            let off = (cp.dst - SMEM_BASE) as usize;
                            self.smem[off..off + 16].copy_from_slice(&cp.data);
                            if self.racecheck {
                                for sh in &mut self.shadow[off..off + 16] {
                                    sh.inflight = 0;
                                    sh.w_epoch = self.epoch;
                                    sh.w_thr = t as u32;
                                    sh.w_pc = cp.pc;
                                }
                            }
                        }
                    }
                }
                Op::Shfl { .. }
                | Op::Ballot { .. }
                | Op::Mma { .. }
                | Op::Ldmatrix { .. }
                | Op::Bar => {
                    self.pc[t] = pc as u32;
                    self.st[t] = St::Meet;
                    return Ok(());
                }
            }
            pc += 1;
        }
    }
}

fn fcmp(c: Cmp, a: f64, b: f64) -> bool {
    let unordered = a.is_nan() || b.is_nan();
    match c {
        Cmp::Eq => a == b,
        Cmp::Ne => !unordered && a != b,
        Cmp::Lt => a < b,
        Cmp::Le => a <= b,
        Cmp::Gt => a > b,
        Cmp::Ge => a >= b,
        Cmp::Equ => unordered || a == b,
        Cmp::Neu => unordered || a != b,
        Cmp::Ltu => unordered || a < b,
        Cmp::Leu => unordered || a <= b,
        Cmp::Gtu => unordered || a > b,
        Cmp::Geu => unordered || a >= b,
        Cmp::Num => !unordered,
        Cmp::Nan => unordered,
    }
}

/// Summaries per class for reports.
pub fn summarize(c: &Counters) -> String {
    let mut s = String::new();
    let total: u64 = c.instrs.values().sum();
    s.push_str(&format!("thread-instructions {total}:"));
    for (k, v) in &c.instrs {
        s.push_str(&format!(" {k:?} {v}"));
    }
    s.push('\n');
    for (k, (req, wf)) in &c.shared {
        s.push_str(&format!(
            "shared {k:?}: {req} requests, {wf} wavefronts ({:.2} per request)\n",
            *wf as f64 / (*req).max(1) as f64
        ));
    }
    for (k, (req, sec)) in &c.global {
        s.push_str(&format!(
            "global {k:?}: {req} requests, {sec} sectors ({:.2} per request)\n",
            *sec as f64 / (*req).max(1) as f64
        ));
    }
    s.push_str(&format!("barriers (per block, summed) {}\n", c.barriers));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PTX's float `setp`: the plain comparisons are false on NaN (`ne` too), the `u` ones true,
    /// `num`/`nan` test for NaN alone.
    #[test]
    fn float_comparisons_follow_the_ordered_and_unordered_rules() {
        let all = [
            Cmp::Eq,
            Cmp::Ne,
            Cmp::Lt,
            Cmp::Le,
            Cmp::Gt,
            Cmp::Ge,
            Cmp::Equ,
            Cmp::Neu,
            Cmp::Ltu,
            Cmp::Leu,
            Cmp::Gtu,
            Cmp::Geu,
            Cmp::Num,
            Cmp::Nan,
        ];
        let on = |a: f64, b: f64| all.map(|c| fcmp(c, a, b));
        //                    eq     ne     lt     le     gt     ge     equ    neu    ltu    leu    gtu    geu    num   nan
        assert_eq!(
            on(1.0, 2.0),
            [
                false, true, true, true, false, false, false, true, true, true, false, false, true,
                false
            ]
        );
        assert_eq!(
            on(2.0, 2.0),
            [
                true, false, false, true, false, true, true, false, false, true, false, true, true,
                false
            ]
        );
        assert_eq!(
            on(f64::NAN, 2.0),
            [
                false, false, false, false, false, false, true, true, true, true, true, true,
                false, true
            ]
        );
        assert!(!on(f64::NEG_INFINITY, f64::NEG_INFINITY)[7], "−∞ neu −∞");
    }
}
